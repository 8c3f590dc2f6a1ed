"""
tests/cli/test_bench_subscribe.py: `duplex bench --subscribe TOPIC` (issue 4).

    test_bench_subscribe.py PATH/TO/duplex

The gateway does not exist yet, so a Python `websockets` stand-in plays it:
it expects {"type":"subscribe","topic":T} as the first message of each
connection (anything else: close 1008, which the bench counts as an error),
then publishes {"type":"message","topic":T,"seq":N,"ts":MICROS} every 10 ms
to every subscriber of T, MICROS being time.time() in microseconds. Checks:
every connection subscribed to the right topic, the bench counted messages,
took latencies from "ts", and counted the messages without "ts".
"""
import asyncio
import json
import subprocess
import sys
import threading
import time

DUPLEX = None


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def say(*a):
    print(*a, flush=True)


class Publisher:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.subs = {}
        self.subscribed = []
        self.started = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        check(self.started.wait(10), "python publisher did not start")

    async def _handler(self, ws, path=None):
        try:
            first = await asyncio.wait_for(ws.recv(), 5)
            m = json.loads(first)
            if not isinstance(m, dict) or m.get("type") != "subscribe" or not isinstance(m.get("topic"), str):
                await ws.close(1008, "want a subscribe message")
                return
        except Exception:
            await ws.close(1008, "want a subscribe message")
            return
        topic = m["topic"]
        self.subscribed.append(topic)
        await ws.send(json.dumps({"type": "subscribed", "topic": topic}))  # no ts: counted as such
        self.subs.setdefault(topic, set()).add(ws)
        try:
            await ws.wait_closed()
        finally:
            self.subs[topic].discard(ws)

    async def _publish(self):
        seq = 0
        while True:
            await asyncio.sleep(0.01)
            for topic, conns in list(self.subs.items()):
                seq += 1
                msg = json.dumps({"type": "message", "topic": topic, "seq": seq, "ts": int(time.time() * 1e6),
                                  "data": "x" * 32})
                for ws in list(conns):
                    try:
                        await ws.send(msg)
                    except Exception:
                        pass

    def _run(self):
        import websockets.server
        asyncio.set_event_loop(self.loop)

        async def main():
            srv = await websockets.server.serve(self._handler, "127.0.0.1", 0, compression=None)
            self.port = srv.sockets[0].getsockname()[1]
            pub = asyncio.ensure_future(self._publish())
            self.stop_ev = asyncio.Event()
            self.started.set()
            await self.stop_ev.wait()
            pub.cancel()
            srv.close()
            await srv.wait_closed()

        self.loop.run_until_complete(main())

    def stop(self):
        self.loop.call_soon_threadsafe(self.stop_ev.set)
        self.t.join(10)


def main():
    global DUPLEX
    if len(sys.argv) != 2:
        print("usage: test_bench_subscribe.py PATH/TO/duplex", file=sys.stderr)
        return 2
    DUPLEX = sys.argv[1]
    try:
        import websockets.server  # noqa: F401
    except ImportError:
        say("FAIL test_bench_subscribe: python3-websockets missing (run scripts/deps.sh test)")
        return 1
    p = Publisher()
    try:
        cmd = [DUPLEX, "bench", "--json", "--subscribe", "news", "-c", "5", "-t", "1", "--warmup", "0.3",
               "ws://127.0.0.1:%d/topics" % p.port]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    finally:
        p.stop()
    try:
        lines = [l for l in r.stdout.decode().splitlines() if l.strip()]
        check(len(lines) == 1, "--json printed %r (stderr %r)" % (r.stdout, r.stderr[-500:]))
        j = json.loads(lines[0])
        say("  subscribe: %s msgs in the window, %s/s, latency p50 %s us p99 %s us, no_ts %s" %
            (j["msgs"], j["msgs_per_s"], j["lat_p50_us"], j["lat_p99_us"], j["no_ts"]))
        check(r.returncode == 0 and j["errors"] == 0, "errors: %r %s" % (j, r.stderr[-500:]))
        check(p.subscribed == ["news"] * 5, "subscriptions seen by the server: %r" % p.subscribed)
        check(j["mode"] == "subscribe" and j["open"] == 5, "fields: %r" % j)
        # ~100 messages/s per connection for ~1 s: at least a few each, whatever the machine
        check(j["msgs"] >= 5 * 10, "too few messages counted: %r" % j)
        check(j["lat_n"] == j["msgs"] - j["no_ts"], "latency count %d != msgs with ts" % j["lat_n"])
        check(0 < j["lat_p50_us"] < 1e6, "latency from ts implausible: %r" % j)
        check(j["received_total"] >= j["msgs"] + 5 - j["no_ts"], "whole-run count below the window's: %r" % j)
    except (Fail, ValueError) as e:
        say("FAIL test_bench_subscribe: %s" % e)
        return 1
    say("ok   test_bench_subscribe")
    return 0


if __name__ == "__main__":
    sys.exit(main())
