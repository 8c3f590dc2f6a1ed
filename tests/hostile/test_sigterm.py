"""
Case 10: SIGTERM under traffic. 50 clients (python3-websockets) echo in a
loop on a 2-worker server with --close-timeout 2s; SIGTERM is sent while
they run. Every client must receive close 1001 from the server, and the
server must exit 0 within close-timeout + 3 s.
"""
import asyncio
import os
import signal
import time


from hostile import (need_websockets, Server, check, run, say)

websockets = need_websockets()

N = 50
CLOSE_TIMEOUT = 2.0


async def client(port, i, started, counts, codes):
    async with websockets.connect("ws://127.0.0.1:%d/echo" % port, ping_interval=None, compression=None,
                                  close_timeout=10) as ws:
        started.append(i)
        n = 0
        try:
            while True:
                msg = "client %d message %d" % (i, n)
                await ws.send(msg)
                got = await ws.recv()
                if got != msg:
                    codes[i] = "echo mismatch"
                    return
                n += 1
                counts[i] = n
        except websockets.ConnectionClosed as e:
            codes[i] = e.rcvd.code if e.rcvd else "no close frame (%s)" % e


async def attack(srv):
    started, counts, codes = [], {}, {}
    tasks = [asyncio.create_task(client(srv.port, i, started, counts, codes)) for i in range(N)]
    while len(started) < N or sum(1 for v in counts.values() if v >= 10) < N:
        await asyncio.sleep(0.05)
        for t in tasks:
            if t.done() and t.exception():
                raise t.exception()
    before = sum(counts.values())
    t0 = time.monotonic()
    os.kill(srv.pid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    try:
        rc = await asyncio.wait_for(loop.run_in_executor(None, srv.proc.wait), CLOSE_TIMEOUT + 3)
    except asyncio.TimeoutError:
        srv.kill()
        raise AssertionError("server did not exit within close-timeout + 3 s of SIGTERM")
    took = time.monotonic() - t0
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    return rc, took, before, sum(counts.values()), codes


def main(binary):
    srv = Server(binary, "--close-timeout", "2s", workers=2)
    try:
        rc, took, before, total, codes = asyncio.run(attack(srv))
        srv.stopped = True
        say("%d clients, %d echoes before SIGTERM, %d in total; server exited %d after %.2f s"
            % (N, before, total, rc, took))
        bad = {i: c for i, c in codes.items() if c != 1001}
        got = {}
        for c in codes.values():
            got[c] = got.get(c, 0) + 1
        say("close codes received: %r" % got)
        check(len(codes) == N, "only %d of %d clients saw the connection end" % (len(codes), N))
        check(not bad, "clients without close 1001: %r" % bad)
        check(rc == 0, "server exited %d after SIGTERM" % rc)
        check(took < CLOSE_TIMEOUT + 3, "server took %.1f s to exit" % took)
        log = srv.log()
        check("closing connections with 1012 (gateway) and 1001" in log and "serve: stopped" in log, "shutdown lines missing in the log")
        n1001 = len(srv.lines(r"close remote=.* code=1001 "))
        say("log: %d close lines with code=1001" % n1001)
        check(n1001 == N, "expected %d close lines with code=1001, got %d" % (N, n1001))
    finally:
        srv.cleanup()


if __name__ == "__main__":
    run(main)
