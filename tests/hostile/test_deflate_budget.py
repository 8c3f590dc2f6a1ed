"""
The permessage-deflate memory budget under 2,000 connections.

`duplex serve --deflate-mem-budget 16MiB --workers 1` (the budget is per
worker); one process opens
2,000 raw connections (pmd.py), each offering plain permessage-deflate
(context takeover both ways, the costly kind), and sends one compressible
2 KiB message on each (so every compressor and decompressor the server
gave it is in use), then reads every echo (inflated and compared).

Checks:
  - the first connections get context takeover ("permessage-deflate"
    without parameters); once the budget is spent, the 101 responses carry
    the downgraded parameters (server_no_context_takeover;
    client_no_context_takeover), or no extension at all when nothing
    shared is left (docs/deflate.md, "Memory budget"); every connection,
    whatever it got, echoes its message intact;
  - fewer connections get context takeover than the budget can pay for at
    the smallest per-connection cost (zlib's 32 KiB inflate window);
  - /metrics: duplex_deflate_downgrades_total (or refused) counted every
    connection past the budget, and the zlib memory gauge stays under the
    budget + 1 MiB (the worker's shared compressor and decompressor);
  - the server's VmRSS with all 2,000 open stays under its baseline +
    the budget + 48 KiB per connection (a connection without deflate state
    costs a few KiB: test_many_conns) — were every connection given
    context takeover, zlib alone would need about 2,000 x 300 KiB = 600 MiB;
  - past the budget, offers whose downgraded answer is the longest
    possible (two-digit windows both ways) are still downgraded;
  - after they all leave, a new connection gets context takeover again
    (the budget was given back).
"""
import re
import resource
import time
import urllib.request

from hostile import OP_TEXT, Closed, Fail, Server, check, check_rss, echo_roundtrip, run, say
from pmd import PmdConn

N = 2000
BUDGET = 16 << 20
PER_CONN_KIB = 48
MARGIN_KIB = 32 * 1024
FULL = {}
DOWN = {"server_no_context_takeover": True, "client_no_context_takeover": True}


def metrics(srv):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % srv.port, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(duplex_[a-z_]*(?:deflate|inflate)[a-z_]*)(?:\{[^}]*\})?\s+([0-9.eE+-]+)$", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + float(m.group(2))
    return out


def main(binary):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < N + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, N + 1000), hard))
    # the budget is per worker: one worker holds every connection
    srv = Server(binary, "--deflate-mem-budget", str(BUDGET), "--close-timeout", "2s", workers=1)
    conns = []
    try:
        echo_roundtrip(srv.port)
        rss0 = srv.rss_kib()
        t0 = time.monotonic()
        kinds = {"full": 0, "down": 0, "none": 0, "other": 0}
        bypass = []
        first_down = None
        for i in range(N):
            c = PmdConn.open(srv.port, offer="permessage-deflate", timeout=30)
            conns.append(c)
            if c.ext == FULL:
                kinds["full"] += 1
                check(first_down is None, "connection %d got context takeover after connection %d was downgraded"
                      % (i, first_down or 0))
            elif c.ext == DOWN:
                kinds["down"] += 1
                first_down = i if first_down is None else first_down
            elif c.ext is None:
                kinds["none"] += 1
                first_down = i if first_down is None else first_down
            else:
                kinds["other"] += 1
                say("connection %d: unexpected answer %r" % (i, c.headers.get("sec-websocket-extensions")))
        say("%d handshakes in %.1f s: %r (first past the budget: %s)"
            % (N, time.monotonic() - t0, kinds, first_down))
        # past the budget (reserved, before any message made zlib allocate),
        # an offer whose downgraded answer is the longest possible (all four
        # parameters, two-digit windows) is still downgraded or declined,
        # never given context takeover
        for offer in ("permessage-deflate; server_max_window_bits=10; client_max_window_bits=10",
                      "permessage-deflate; server_max_window_bits=12; client_max_window_bits=11"):
            c = PmdConn.open(srv.port, offer=offer, timeout=30)
            c.send_message(OP_TEXT, b"x", compressed=False)
            ans = c.headers.get("sec-websocket-extensions")
            if not (c.ext is None or (c.ext.get("server_no_context_takeover")
                                      and c.ext.get("client_no_context_takeover"))):
                # checked at the end, so that the rest still runs
                bypass.append("past the budget, offer %r got context takeover: %r" % (offer, ans))
            say("past the budget, offer %r: answered %r" % (offer, ans))
            op, got, _ = c.read_message()
            check(got == b"x", "echo differs")
            c.close()
        msgs = []
        for i, c in enumerate(conns):
            m = b'{"conn":%d,"items":[%s]}' % (i, b",".join(b'{"k":"key-%d","v":%d}' % (j, j * i) for j in range(90)))
            msgs.append(m)
            c.send_message(OP_TEXT, m, compressed=c.ext is not None)
        for i, c in enumerate(conns):
            try:
                op, got, _ = c.read_message()
            except (Closed, OSError, EOFError) as e:
                raise Fail("connection %d (%s): no echo: %r" % (i, c.headers.get("sec-websocket-extensions"), e))
            check(op == OP_TEXT and got == msgs[i], "connection %d: echo differs" % i)
        time.sleep(1.2)  # /metrics samples every second
        peak = srv.rss_kib()
        m = metrics(srv)
        say("all %d echoed; server RSS baseline %d KiB, peak %d KiB (%.1f KiB per connection)"
            % (N, rss0, peak, (peak - rss0) / N))
        say("metrics: %r" % m)
        check(kinds["other"] == 0, "answers neither full, downgraded nor none: %d" % kinds["other"])
        check(kinds["full"] > 0, "no connection got context takeover under a %d-byte budget" % BUDGET)
        check(kinds["down"] + kinds["none"] > 0, "every one of %d connections got context takeover under a %d-byte "
              "budget" % (N, BUDGET))
        check(kinds["full"] * 32 * 1024 <= BUDGET, "%d connections with context takeover cannot fit in %d bytes"
              % (kinds["full"], BUDGET))
        past = sum(v for k, v in m.items() if "downgrade" in k or "refused" in k)
        check(past >= kinds["down"] + kinds["none"], "metrics count %d connections past the budget, the 101s say %d"
              % (past, kinds["down"] + kinds["none"]))
        gauge = [v for k, v in m.items() if k.endswith("mem_bytes") or k.endswith("deflate_mem")]
        check(gauge, "no zlib memory gauge in /metrics: %r" % sorted(m))
        # the worker's shared compressor and decompressor (what downgraded
        # connections use) come on top of the budget: allow 1 MiB for them
        say("zlib memory gauge %d, budget %d (%+d)" % (max(gauge), BUDGET, max(gauge) - BUDGET))
        check(max(gauge) <= BUDGET + (1 << 20), "zlib memory gauge %d over the budget %d + 1 MiB"
              % (max(gauge), BUDGET))
        check_rss(peak < rss0 + BUDGET // 1024 + N * PER_CONN_KIB + MARGIN_KIB,
                  "RSS peak %d KiB is over baseline %d + budget %d + %d x %d KiB + %d KiB"
                  % (peak, rss0, BUDGET // 1024, N, PER_CONN_KIB, MARGIN_KIB))
        t1 = time.monotonic()
        for c in conns:
            c.send_frame(0x8, b"\x03\xe8")
        for c in conns:
            try:
                c.read_close()
            except (OSError, EOFError):
                pass
            c.sock.close()
        conns = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            g = [v for k, v in metrics(srv).items() if k.endswith("mem_bytes") or k.endswith("deflate_mem")]
            if g and max(g) < BUDGET // 4:
                break
            time.sleep(0.1)
        say("closed in %.1f s; RSS after: %d KiB" % (time.monotonic() - t1, srv.rss_kib()))
        c = PmdConn.open(srv.port, offer="permessage-deflate")
        check(c.ext == FULL, "after everyone left, a new connection got %r instead of context takeover"
              % c.headers.get("sec-websocket-extensions"))
        c.send_message(OP_TEXT, b"again " * 100)
        op, got, _ = c.read_message()
        check(got == b"again " * 100, "echo after the budget was given back differs")
        c.close()
        echo_roundtrip(srv.port)
        check(not bypass, "; ".join(bypass))
        srv.stop()
    finally:
        for c in conns:
            c.sock.close()
        srv.cleanup()


if __name__ == "__main__":
    run(main)
