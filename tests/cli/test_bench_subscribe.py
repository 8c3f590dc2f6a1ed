"""
tests/cli/test_bench_subscribe.py: `duplex bench --subscribe TOPIC` (issue 9),
the gateway fan-out workload: N raw-dialect subscribers (URL?subscribe=TOPIC)
and one JSON-dialect publisher at --rate, every delivery checked.

    test_bench_subscribe.py PATH/TO/duplex

  - against a real `duplex serve --api-key KEY --workers 2` (fresh for each
    run): --json and the text summary (with --text and --procs 2) parse,
    no error, every subscriber received every published message exactly
    once (deliveries == published x N), the counts agree with the server's
    /metrics (publishes accepted, deliveries), the latency is plausible;
  - the checks catch a faulty gateway: a Python `websockets` stand-in that
    skips one message for one subscriber, sends one twice to another and a
    foreign message to a third: missing, out-of-order and verify errors are
    counted and the exit status is 1;
  - a URL that is not a gateway's /ws (no duplex.v1): a publisher error,
    exit 1; usage: a pattern, a --size too small for the header (exit 2).
"""
import asyncio
import base64
import json
import re
import threading
import urllib.request

import clitest
from clitest import Fail, Serve, check, main, say

KEY = "bench-sub-key-19c2"


def bench(*args, timeout=90):
    cmd = [clitest.BIN, "bench", "--no-progress"] + list(args)
    say("run:", " ".join(cmd))
    import subprocess
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    clitest._procs.append(p)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise Fail("bench did not exit within %d s\n%r" % (timeout, clitest.Result(None, out, err)))
    return clitest.Result(p.returncode, out, err)


def metrics(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        text = r.read().decode()
    vals = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, v = line.rpartition(" ")
            vals[name] = float(v)
    return vals


def test_gateway_json():
    s = Serve("--workers", "2", "--api-key", KEY)
    try:
        n = 20
        r = bench("--json", "--subscribe", "bench.sub", "--rate", "200", "-c", str(n), "-t", "1", "--warmup",
                  "0.3", s.url("/ws"))
        lines = [l for l in r.out.decode().splitlines() if l.strip()]
        check(len(lines) == 1, "--json printed %r" % r)
        j = json.loads(lines[0])
        say("  subscribe: published %s, delivered %s (%s/s in the window), latency p50 %s us p99 %s us" %
            (j["published"], j["received_total"], j["msgs_per_s"], j["lat_p50_us"], j["lat_p99_us"]))
        check(r.rc == 0 and j["errors"] == 0, "errors: %r" % r)
        check(j["mode"] == "subscribe" and j["open"] == n and j["topic"] == "bench.sub", "fields: %r" % j)
        check(j["out_of_order"] == 0 and j["missing"] == 0 and j["publish_errors"] == 0, "checks: %r" % j)
        # 200/s for 1.3 s (warm-up included): at least a few dozen, whatever the machine
        check(j["published"] >= 40 and j["acked"] == j["published"], "published/acked: %r" % j)
        check(j["received_total"] == j["published"] * n and j["deliveries_checked"] == j["received_total"],
              "every subscriber gets every message once: %d deliveries of %d messages x %d" %
              (j["received_total"], j["published"], n))
        check(j["msgs"] > 0 and j["lat_n"] == j["msgs"] and j["msgs_out"] > 0, "window counts: %r" % j)
        check(0 < j["lat_p50_us"] <= j["lat_p99_us"] <= j["lat_max_us"] < 5e6, "latency implausible: %r" % j)
        m = metrics(s.port)
        check(m['duplex_publishes_total{result="accepted"}'] == j["published"],
              "server accepted %s publishes, bench says %d" % (m['duplex_publishes_total{result="accepted"}'],
                                                               j["published"]))
        check(m["duplex_deliveries_total"] == j["received_total"],
              "server delivered %s, bench received %d" % (m["duplex_deliveries_total"], j["received_total"]))
    finally:
        s.stop()


def test_gateway_summary_text_procs():
    s = Serve("--workers", "2", "--api-key", KEY)
    try:
        r = bench("--subscribe", "bench.txt", "--text", "--size", "64", "--rate", "300", "-c", "12", "--procs", "2",
                  "-t", "1", "--warmup", "0.3", s.url("/ws"))
        out = r.out.decode()
        say(out)
        check(r.rc == 0, "bench failed: %r" % r)
        check(re.search(r'subscribe topic "bench.txt", publishing 300 msgs/s, 64 B text, 12 connections, 2 processes',
                        out), "header: %s" % out)
        m = re.search(r"published\s+(\d+), acknowledged (\d+), refused or lost 0", out)
        check(m and m.group(1) == m.group(2) and int(m.group(1)) > 0, "published line: %s" % out)
        pub = int(m.group(1))
        m = re.search(r"order\s+(\d+) deliveries checked: 0 out of order, 0 missing", out)
        check(m and int(m.group(1)) == pub * 12, "order line (want %d deliveries): %s" % (pub * 12, out))
        check(re.search(r"latency\s+p50 [\d.]+ us, p90 [\d.]+ us, p99 [\d.]+ us", out), "latency line: %s" % out)
        check(re.search(r"messages\s+out \d+ \(\d+/s\) published, in \d+ \(\d+/s\) delivered", out),
              "messages line: %s" % out)
        check(re.search(r"errors\s+0 \(.*order 0, missing 0, publish 0\)", out), "errors line: %s" % out)
    finally:
        s.stop()


class FaultyGateway:
    """Acks the bench's publishes and forwards each payload to the raw
    subscribers, but skips message 5 for subscriber 0, sends message 7 twice
    to subscriber 1 and a message of its own to subscriber 2."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.subs = []
        self.offset = 0
        self.started = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        check(self.started.wait(10), "stand-in did not start")

    async def _handler(self, ws, path=None):
        if ws.subprotocol == "duplex.v1":
            async for frame in ws:
                req = json.loads(frame)
                self.offset += 1
                await ws.send(json.dumps({"op": "ack", "id": req["id"], "offset": self.offset, "epoch": "E"}))
                payload = base64.b64decode(req["b64"])
                seq = int.from_bytes(payload[:8], "little")
                for i, sub in enumerate(list(self.subs)):
                    if i == 0 and seq == 5:
                        continue
                    try:
                        await sub.send(payload)
                        if i == 1 and seq == 7:
                            await sub.send(payload)
                        if i == 2 and seq == 3:
                            await sub.send(b"not from the bench")
                    except Exception:
                        pass
            return
        self.subs.append(ws)
        await ws.wait_closed()

    def _run(self):
        import websockets.server
        asyncio.set_event_loop(self.loop)

        async def go():
            srv = await websockets.server.serve(self._handler, "127.0.0.1", 0, subprotocols=["duplex.v1"],
                                                compression=None)
            self.port = srv.sockets[0].getsockname()[1]
            self.stop_ev = asyncio.Event()
            self.started.set()
            await self.stop_ev.wait()
            srv.close()
            await srv.wait_closed()

        self.loop.run_until_complete(go())

    def stop(self):
        self.loop.call_soon_threadsafe(self.stop_ev.set)
        self.t.join(10)


def test_faults_caught():
    try:
        import websockets.server  # noqa: F401
    except ImportError:
        raise Fail("python3-websockets missing (run scripts/deps.sh test)")
    g = FaultyGateway()
    try:
        r = bench("--json", "--subscribe", "t", "--rate", "100", "-c", "5", "-t", "0.5", "--warmup", "0.2",
                  "ws://127.0.0.1:%d/ws" % g.port)
    finally:
        g.stop()
    lines = [l for l in r.out.decode().splitlines() if l.strip()]
    check(len(lines) == 1, "--json printed %r" % r)
    j = json.loads(lines[0])
    check(r.rc == 1 and j["errors"] >= 3, "a faulty gateway must fail the run: %r" % r)
    check(j["missing"] == 1 and j["out_of_order"] == 1 and j["err_verify"] == 1, "counts: %r" % j)
    errs = r.errs
    check("messages 5 to 5 missing" in errs and "message 7 after 7: out of order or twice" in errs and
          "did not publish" in errs, "stderr names each fault: %s" % errs)


def test_not_a_gateway_and_usage():
    s = Serve()
    try:
        r = bench("--subscribe", "t", "-c", "2", "-t", "0.5", s.url("/echo"))
        check(r.rc == 1 and "duplex.v1" in r.errs, "bench --subscribe on /echo: %r" % r)
    finally:
        s.stop()
    for args in (("--subscribe", "a.*"), ("--subscribe", "a.>"), ("--subscribe", "bad topic"),
                 ("--subscribe", "t", "--size", "8"), ("--subscribe", "t", "--text", "--size", "20")):
        r = bench(*(args + ("ws://127.0.0.1:1/ws",)))
        check(r.rc == 2, "usage %s: %r" % (args, r))


if __name__ == "__main__":
    main([test_gateway_json, test_gateway_summary_text_procs, test_faults_caught, test_not_a_gateway_and_usage])
