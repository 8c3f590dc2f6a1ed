"""
Decompression bombs against `duplex serve` with permessage-deflate (on by
default), on raw sockets with zlib-crafted frames (pmd.py).

--max-message bounds the *inflated* size of a message (docs/deflate.md):
  - a compressed message inflating to exactly --max-message is delivered
    (echoed, checked byte for byte), in one frame and cut into 1,000 frames;
  - one byte more gets close 1009, in one frame and in 1,000 frames, with a
    log line;
  - 1 GiB of zeros (about 1 MB on the wire) gets 1009 at once, and the
    server's RSS does not grow by anything near the inflated size;
  - a compressed text message that inflates to invalid UTF-8 gets 1007;
  - a flood: 6 attackers send 1 GiB bombs back to back (one per connection,
    60 in all) while a well-behaved client keeps echoing on its own
    connection; no bomb gets another close code than 1009 (at least half
    read it; the others may see the connection end while their bomb is
    still being written), every echo succeeds, and the
    server's VmRSS (sampled all along) stays under its baseline + 64 MiB
    (a bomb that were inflated whole would need 1 GiB).
"""
import os
import threading
import time

from hostile import (OP_BINARY, OP_TEXT, Closed, Fail, Server, check, check_rss, echo_roundtrip, run, say)
from pmd import PmdConn, bomb, deflate

MAX = 1 << 20
RSS_MARGIN_KIB = 64 * 1024
ATTACKERS = 6
BOMBS = 60


def expect_close(c, code, what):
    try:
        while True:
            c.read_message()
    except Closed as e:
        check(e.code == code, "%s: expected close %d, got %d %r" % (what, code, e.code, e.payload[2:]))
    except (OSError, EOFError) as e:
        raise Fail("%s: expected close %d, the connection ended without one (%r)" % (what, code, e))
    c.sock.close()
    say("%s: close %d" % (what, code))


def open_pmd(srv):
    c = PmdConn.open(srv.port, offer="permessage-deflate; client_max_window_bits")
    check(c.ext is not None, "the server did not accept permessage-deflate: %r"
          % c.headers.get("sec-websocket-extensions"))
    return c


def at_limit(srv, pieces):
    c = open_pmd(srv)
    payload = bomb(MAX)
    c.send_message(OP_BINARY, b"", compressed=False)  # an empty uncompressed message first
    op, got, _ = c.read_message()
    check(op == OP_BINARY and got == b"", "empty uncompressed message not echoed")
    # bomb() compresses zeros; send the crafted bytes as one message in `pieces` frames
    c.sock.sendall(frames_of(payload, pieces))
    try:
        op, got, rsv1 = c.read_message()
    except Closed as e:
        raise Fail("a message inflating to exactly --max-message (%d) in %d frame(s) got close %d %r"
                   % (MAX, pieces, e.code, e.payload[2:]))
    check(op == OP_BINARY and got == bytes(MAX), "echo of the %d-byte bomb not intact (%d bytes)" % (MAX, len(got)))
    say("inflating to exactly %d bytes in %d frame(s): delivered and echoed (echo compressed: %s)"
        % (MAX, pieces, rsv1))
    c.close()


def frames_of(body, pieces, op=OP_BINARY):
    from hostile import OP_CONT, frame
    step = max(1, -(-len(body) // pieces))
    cuts = [body[i:i + step] for i in range(0, len(body), step)]
    while len(cuts) < pieces:
        cuts.append(b"")
    return b"".join(frame(op if i == 0 else OP_CONT, p, fin=i == len(cuts) - 1, rsv=4 if i == 0 else 0)
                    for i, p in enumerate(cuts))


def over_limit(srv, pieces):
    c = open_pmd(srv)
    c.sock.sendall(frames_of(bomb(MAX + 1), pieces))
    expect_close(c, 1009, "inflating to --max-message + 1 in %d frame(s)" % pieces)


def main(binary):
    srv = Server(binary, "--max-message", str(MAX), workers=1)
    try:
        echo_roundtrip(srv.port)
        at_limit(srv, 1)
        at_limit(srv, 1000)
        over_limit(srv, 1)
        over_limit(srv, 1000)
        srv.wait_log(r"1009", count=2)

        # invalid UTF-8 once inflated
        c = open_pmd(srv)
        c.send_message(OP_TEXT, b"valid start \xc3\x28 then invalid" * 10)
        expect_close(c, 1007, "compressed text inflating to invalid UTF-8")

        gib = bomb(1 << 30)
        say("1 GiB bomb: %d bytes on the wire" % len(gib))
        rss0 = srv.rss_kib()
        c = open_pmd(srv)
        t0 = time.monotonic()
        c.sock.sendall(frames_of(gib, 1))
        expect_close(c, 1009, "1 GiB bomb")
        say("1 GiB bomb refused in %.2f s; RSS %d -> %d KiB" % (time.monotonic() - t0, rss0, srv.rss_kib()))
        check_rss(srv.rss_kib() < rss0 + RSS_MARGIN_KIB, "RSS grew by %d KiB on one bomb" % (srv.rss_kib() - rss0))

        # The flood, with a well-behaved client echoing all along.
        rss0 = srv.rss_kib()
        peak = [rss0]
        errors = []
        stop = threading.Event()
        sent = [0]
        lock = threading.Lock()

        def attacker():
            while not stop.is_set():
                with lock:
                    if sent[0] >= BOMBS:
                        return
                    sent[0] += 1
                a = None
                try:
                    a = open_pmd(srv)
                    a.sock.sendall(frames_of(gib, 16))
                    while True:
                        a.read_message()
                except Closed as e:
                    with lock:
                        outcomes[e.code] = outcomes.get(e.code, 0) + 1
                except (OSError, EOFError, Fail) as e:
                    # the server may close while the rest of a bomb is still on its way
                    with lock:
                        outcomes[type(e).__name__] = outcomes.get(type(e).__name__, 0) + 1
                finally:
                    if a:
                        a.sock.close()

        def sampler():
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], srv.rss_kib())
                except (OSError, Fail):
                    pass
                time.sleep(0.02)

        echoes = [0]
        outcomes = {}

        def good():
            c = open_pmd(srv)
            rnd = os.urandom(3000)
            try:
                while not stop.is_set():
                    msg = b'{"n":%d,"data":"%s"}' % (echoes[0], rnd.hex().encode())
                    c.send_message(OP_TEXT, msg)
                    op, got, _ = c.read_message()
                    if got != msg:
                        errors.append("well-behaved client: echo %d differs" % echoes[0])
                        return
                    echoes[0] += 1
                c.close()
            except (Closed, OSError, EOFError, Fail) as e:
                errors.append("well-behaved client failed after %d echoes: %r" % (echoes[0], e))

        ts = [threading.Thread(target=attacker) for _ in range(ATTACKERS)]
        side = [threading.Thread(target=sampler), threading.Thread(target=good)]
        t0 = time.monotonic()
        for t in side + ts:
            t.start()
        for t in ts:
            t.join(90)
        stop.set()
        for t in side:
            t.join(30)
        took = time.monotonic() - t0
        say("flood: %d bombs of 1 GiB from %d attackers in %.1f s; %d echoes meanwhile; RSS baseline %d KiB, peak %d KiB"
            % (sent[0], ATTACKERS, took, echoes[0], rss0, peak[0]))
        say("flood outcomes (close codes, or how the connection ended): %r" % outcomes)
        check(not errors, "; ".join(errors[:5]))
        check(set(k for k in outcomes if isinstance(k, int)) <= {1009},
              "a bomb got another close code than 1009: %r" % outcomes)
        check(outcomes.get(1009, 0) >= BOMBS // 2, "fewer than half of the bombs saw close 1009: %r" % outcomes)
        check(echoes[0] > 0, "the well-behaved client got no echo during the flood")
        check_rss(peak[0] < rss0 + RSS_MARGIN_KIB, "RSS peaked %d KiB over its baseline during the flood"
                  % (peak[0] - rss0))
        check(srv.alive(), "server died")
        echo_roundtrip(srv.port)
        srv.stop()
    finally:
        srv.cleanup()


if __name__ == "__main__":
    run(main)
