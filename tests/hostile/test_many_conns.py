"""
Case 11: 2,000 concurrent connections (python3-websockets on asyncio, one
process; the test raises its own descriptor soft limit if needed) each
echo one message and stay open; then all close. The server's RSS is read
at the baseline (after one echo), at the peak (all 2,000 open) and after
they left; after must be < baseline + 8 MiB. The numbers are printed.
"""
import asyncio
import resource
import time


from hostile import (check_rss, need_websockets, Server, check, echo_roundtrip, run, say)

websockets = need_websockets()

N = 2000
BATCH = 200
MARGIN_KIB = 8 * 1024


async def one(port, i):
    ws = await websockets.connect("ws://127.0.0.1:%d/echo" % port, ping_interval=None, compression=None,
                                  open_timeout=30, close_timeout=10)
    msg = "hello from %d" % i
    await ws.send(msg)
    got = await asyncio.wait_for(ws.recv(), 30)
    check(got == msg, "connection %d: echo mismatch %r" % (i, got))
    return ws


async def attack(srv):
    conns = []
    t0 = time.monotonic()
    for b in range(0, N, BATCH):
        conns += await asyncio.gather(*[one(srv.port, i) for i in range(b, min(N, b + BATCH))])
    took = time.monotonic() - t0
    deadline = time.monotonic() + 10
    while srv.fds() < N and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    peak = srv.rss_kib()
    fds = srv.fds()
    # a well-behaved client served while 2,000 are open
    await asyncio.get_running_loop().run_in_executor(None, echo_roundtrip, srv.port)
    t1 = time.monotonic()
    await asyncio.gather(*[ws.close() for ws in conns])
    return took, peak, fds, time.monotonic() - t1


def main(binary):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < N + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, N + 1000), hard))
    srv = Server(binary, "--close-timeout", "2s", workers=2)
    try:
        echo_roundtrip(srv.port)
        base_fds = srv.fds()
        rss0 = srv.rss_kib()
        took, peak, fds, closing = asyncio.run(attack(srv))
        deadline = time.monotonic() + 15
        while srv.fds() > base_fds and time.monotonic() < deadline:
            time.sleep(0.1)
        check(srv.fds() <= base_fds, "server still holds %d descriptors after all closed (baseline %d)"
              % (srv.fds(), base_fds))
        time.sleep(0.5)
        rss1 = srv.rss_kib()
        closes = len(srv.lines(r"close remote=.* code=1000 "))
        say("%d connections opened and echoed in %.1f s, closed in %.1f s; server fds at peak %d"
            % (N, took, closing, fds))
        say("server RSS: baseline %d KiB, peak %d KiB (%.1f KiB per connection), after %d KiB (+%d KiB)"
            % (rss0, peak, (peak - rss0) / N, rss1, rss1 - rss0))
        say("log: %d close lines with code=1000" % closes)
        check(closes >= N, "expected >= %d clean close lines, got %d" % (N, closes))
        check_rss(rss1 < rss0 + MARGIN_KIB, "RSS after the connections left is %d KiB over the baseline" % (rss1 - rss0))
        echo_roundtrip(srv.port)
        srv.stop()
    finally:
        srv.cleanup()


if __name__ == "__main__":
    run(main)
