"""
tests/cli/test_bench_verify.py: `duplex bench` must not let a broken server
look fast (issue 4).

    test_bench_verify.py PATH/TO/duplex

A tiny Python `websockets` echo server (Debian's python3-websockets, run on
a thread of this process) misbehaves in one way per case; the bench must
count the error (err_verify), say so, and exit 1:
  - flip:    the 40th echo of each connection has one byte flipped;
  - short:   the 40th echo of each connection loses its last byte;
  - swap:    the 40th and 41st echoes change places;
  - opcode:  every echo of a binary message comes back as text.
A well-behaved server of the same kind gives 0 errors (the control).
"""
import asyncio
import json
import socket
import subprocess
import sys
import threading

DUPLEX = None


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def say(*a):
    print(*a, flush=True)


def need_websockets():
    try:
        import websockets  # noqa: F401
        import websockets.server  # noqa: F401
    except ImportError:
        say("FAIL test_bench_verify: python3-websockets is not installed for %s (run scripts/deps.sh test)"
            % sys.executable)
        sys.exit(1)
    return websockets


class PyServer:
    """An echo server with a defect, on its own asyncio loop and thread."""

    def __init__(self, defect):
        self.defect = defect
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.port = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        check(self.started.wait(10), "python server did not start")

    async def _handler(self, ws, path=None):
        n = 0
        held = None
        try:
            async for msg in ws:
                n += 1
                if n == 40 and self.defect == "flip":
                    b = bytearray(msg if isinstance(msg, bytes) else msg.encode())
                    b[len(b) // 2] ^= 0x01
                    msg = bytes(b) if isinstance(msg, bytes) else b.decode("utf-8", "replace")
                elif n == 40 and self.defect == "short":
                    msg = msg[:-1]
                elif n == 40 and self.defect == "swap":
                    held = msg
                    continue
                elif self.defect == "opcode" and isinstance(msg, bytes):
                    msg = msg.decode("latin-1")
                await ws.send(msg)
                if held is not None:
                    await ws.send(held)
                    held = None
        except Exception:
            pass

    def _run(self):
        import websockets.server
        asyncio.set_event_loop(self.loop)

        async def main():
            srv = await websockets.server.serve(self._handler, "127.0.0.1", 0, max_size=None, compression=None)
            self.port = srv.sockets[0].getsockname()[1]
            self.started.set()
            self.stop_ev = asyncio.Event()
            await self.stop_ev.wait()
            srv.close()
            await srv.wait_closed()

        self.loop.run_until_complete(main())

    def stop(self):
        self.loop.call_soon_threadsafe(self.stop_ev.set)
        self.t.join(10)


def run_bench(port, *extra):
    cmd = [DUPLEX, "bench", "--json", "-c", "4", "-d", "4", "--size", "64", "-t", "1", "--warmup", "0.2", "--timeout", "10"]
    cmd += [str(a) for a in extra] + ["ws://127.0.0.1:%d/echo" % port]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    lines = [l for l in r.stdout.decode().splitlines() if l.strip()]
    check(len(lines) == 1, "--json printed %r (stderr %r)" % (r.stdout, r.stderr[-500:]))
    return r.returncode, json.loads(lines[0]), r.stderr.decode()


def case(defect, *extra):
    s = PyServer(defect)
    try:
        rc, j, err = run_bench(s.port, *extra)
    finally:
        s.stop()
    say("  %s: exit %d, errors %d, err_verify %d, received_total %d" % (defect, rc, j["errors"], j["err_verify"],
                                                                      j["received_total"]))
    if defect == "none":
        check(rc == 0 and j["errors"] == 0, "a correct server gave errors: %r %s" % (j, err[-500:]))
        check(j["received_total"] > 40 * 4, "too few echoes to reach the defect: %r" % j)
        return
    check(rc == 1, "exit %d with a %s server, want 1" % (rc, defect))
    check(j["err_verify"] >= 1, "%s echo not detected: %r" % (defect, j))
    check("differs" in err or "wrong" in err or "never sent" in err, "no message on stderr: %r" % err[-500:])


def main():
    global DUPLEX
    if len(sys.argv) != 2:
        print("usage: test_bench_verify.py PATH/TO/duplex", file=sys.stderr)
        return 2
    DUPLEX = sys.argv[1]
    need_websockets()
    cases = [("none",), ("flip",), ("flip", "--text"), ("short",), ("swap",), ("opcode",)]
    failed = 0
    for c in cases:
        name = " ".join(c)
        say("== " + name)
        try:
            case(*c)
            say("ok   " + name)
        except (Fail, subprocess.TimeoutExpired, ValueError) as e:
            failed += 1
            say("FAIL %s: %s" % (name, e))
    say("%d of %d cases passed" % (len(cases) - failed, len(cases)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
