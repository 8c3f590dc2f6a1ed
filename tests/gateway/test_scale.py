"""
tests/gateway/test_scale.py: scale and multi-worker order against a real
`duplex serve --workers 2`:
  - 10,000 raw-dialect subscribers on one topic (light asyncio connections
    from 20 loopback source addresses, 500 each), counted by
    /api/presence, each receiving every one of a few messages, in order;
  - multi-worker order: 40 JSON-dialect and 10 raw subscribers spread over
    both workers by SO_REUSEPORT, and 3 publishers on separate connections
    publishing concurrently on one topic: every subscriber receives the same
    sequence (offsets 1..N, the same payload at each offset) as the
    publishers' acks say.
"""
import asyncio
import os
import resource
import time

from gwtest import (Fail, FrameParser, check, expect_eq, http, jconnect, main, metric_sum, metrics, publish,
                    rconnect, recv_timeout, say, shared, topic, wait_for, ws_head, await_for)

NSUBS = int(os.environ.get("DX_GW_SUBS", "10000"))
NMSG = 3


class LightSub(asyncio.Protocol):
    """A raw-dialect subscriber with no library: the handshake, then frames."""

    def __init__(self, port, path, hs_fut):
        self.port, self.path = port, path
        self.buf = b""
        self.hs = False
        self._hs_fut = hs_fut
        self.status_line = b""
        self.p = FrameParser()
        self.got = []
        self.closed = None
        self.waiter = None

    def connection_made(self, tr):
        self.tr = tr
        tr.write(ws_head(self.port, self.path))

    def data_received(self, data):
        if not self.hs:
            self.buf += data
            if b"\r\n\r\n" not in self.buf:
                return
            head, rest = self.buf.split(b"\r\n\r\n", 1)
            self.hs = True
            self.status_line = head.split(b"\r\n")[0]
            if not self._hs_fut.done():
                self._hs_fut.set_result(head.startswith(b"HTTP/1.1 101"))
            data = rest
        self.p.feed(data)
        while True:
            m = self.p.pop()
            if m is None:
                break
            op, payload = m
            if op == 8:
                self.closed = payload
            elif op in (1, 2):
                self.got.append(payload)
                if self.waiter and len(self.got) >= self.waiter[0] and not self.waiter[1].done():
                    self.waiter[1].set_result(True)

    def connection_lost(self, exc):
        if self.closed is None:
            self.closed = b"eof"
        if not self._hs_fut.done():
            self._hs_fut.set_result(False)
        if self.waiter and not self.waiter[1].done():
            self.waiter[1].set_result(False)


async def open_light(loop, port, path, src, sem):
    async with sem:
        fut = loop.create_future()
        proto = LightSub(port, path, fut)
        await asyncio.wait_for(loop.create_connection(lambda: proto, "127.0.0.1", port, local_addr=(src, 0)), 20)
        ok = await asyncio.wait_for(fut, 20)
        if not ok:
            raise Fail("a subscriber's handshake from %s failed: %r" % (src, proto.status_line))
        return proto


async def test_10k_subscribers():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = NSUBS + 200
    if soft < need:
        check(hard >= need, "this test needs %d file descriptors, the hard limit is %d (ulimit -Hn)" % (need, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    s = shared(workers=2)
    t = topic("tenk")
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(200)
    t0 = time.monotonic()
    srcs = ["127.0.0.%d" % (2 + i % 20) for i in range(NSUBS)]
    subs = await asyncio.gather(*(open_light(loop, s.port, "/ws?subscribe=" + t, srcs[i], sem) for i in range(NSUBS)))
    say("# %d subscribers connected in %.1f s" % (NSUBS, time.monotonic() - t0))
    p = http(s, "GET", "/api/presence?topic=" + t).json()
    expect_eq(p.get("count"), NSUBS, "/api/presence count with %d raw subscribers" % NSUBS)
    for sb in subs:
        sb.waiter = (NMSG, loop.create_future())
        if len(sb.got) >= NMSG:
            sb.waiter[1].set_result(True)
    t1 = time.monotonic()
    for i in range(NMSG):
        publish(s, t, "tick %d" % i)
    done = await asyncio.wait_for(asyncio.gather(*(sb.waiter[1] for sb in subs)), 60)
    say("# %d messages x %d subscribers delivered in %.2f s" % (NMSG, NSUBS, time.monotonic() - t1))
    bad = [i for i, sb in enumerate(subs) if not done[i] or sb.got != [b"tick %d" % k for k in range(NMSG)]]
    if bad:
        sb = subs[bad[0]]
        raise Fail("%d of %d subscribers did not get the %d messages in order; e.g. #%d got %r (closed %r)"
                   % (len(bad), NSUBS, NMSG, bad[0], sb.got[:5], sb.closed))
    ms = metrics(s)
    rc, _ = metric_sum(ms, "connection", dialect="raw")
    say("# /metrics raw connections: %s" % rc)
    for sb in subs:
        sb.tr.close()
    await await_for(lambda: http(s, "GET", "/api/presence?topic=" + t).json().get("count") == 0, 30,
                    "presence to drop to 0 after the %d subscribers left" % NSUBS)


async def test_multiworker_same_order():
    s = shared(workers=2)
    t = topic("order")
    per_pub = 300
    npub = 3
    jsubs = [await jconnect(s) for _ in range(40)]
    for c in jsubs:
        await c.sub(t)
    rsubs = [await rconnect(s, "subscribe=" + t) for _ in range(10)]
    wait_for(lambda: http(s, "GET", "/api/presence?topic=" + t).json().get("count") == 50, 10, "50 subscribers")
    acks = {}
    m0 = metrics(s)

    async def pubber(k):
        c = await jconnect(s)
        for i in range(per_pub):
            await c.send({"op": "pub", "id": i, "topic": t, "data": "p%d-%d" % (k, i)})
        for i in range(per_pub):
            r = await c.reply(timeout=20, what="publisher %d ack %d" % (k, i))
            if r.get("op") != "ack" or r.get("id") != i:
                raise Fail("publisher %d: pub %d answered %r" % (k, i, r))
            acks[r["offset"]] = "p%d-%d" % (k, i)
        await c.close()

    async def jread(c):
        return [(m["offset"], m["data"]) for m in await c.msgs(npub * per_pub, timeout=30)]

    async def rread(ws):
        return [await recv_timeout(ws, 30, "raw subscriber") for _ in range(npub * per_pub)]

    res = await asyncio.gather(*[pubber(k) for k in range(npub)], *[jread(c) for c in jsubs],
                               *[rread(w) for w in rsubs])
    total = npub * per_pub
    expect_eq(sorted(acks), list(range(1, total + 1)), "the publishers' ack offsets: 1..%d, each once" % total)
    want = [(o, acks[o]) for o in range(1, total + 1)]
    for i, got in enumerate(res[npub:npub + len(jsubs)]):
        if got != want:
            k = next(j for j in range(total) if got[j] != want[j])
            raise Fail("JSON subscriber %d: at position %d expected %r, got %r" % (i, k, want[k], got[k]))
    wantraw = [d for _, d in want]
    for i, got in enumerate(res[npub + len(jsubs):]):
        if got != wantraw:
            k = next(j for j in range(total) if got[j] != wantraw[j])
            raise Fail("raw subscriber %d: at position %d expected %r, got %r" % (i, k, wantraw[k], got[k]))
    # (informational) how the connections spread: the log's conn ids are
    # numbered per worker (id % workers), and the hand-offs count one per
    # worker that has subscribers, per publish
    import re
    ids = [int(x) for x in re.findall(r"conn=(\d+) open remote=\S+ path=/ws", s.log())]
    m1 = metrics(s)
    h = metric_sum(m1, "handoffs_total")[0] - metric_sum(m0, "handoffs_total")[0]
    say("# /ws connections by conn id %% 2: %d even, %d odd; hand-offs per publish: %.2f"
        % (sum(1 for i in ids if i % 2 == 0), sum(1 for i in ids if i % 2), h / total))
    for c in jsubs:
        await c.close()
    for w in rsubs:
        await w.close()


async def test_one_ip_1000_connections():
    """No configuration: per-IP limits allow local testing, at least 1,000
    connections and 200 handshakes per second from one address."""
    s = shared(workers=2)
    t = topic("oneip")
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(250)
    t0 = time.monotonic()
    subs = await asyncio.gather(*(open_light(loop, s.port, "/ws?subscribe=" + t, "127.0.0.1", sem)
                                  for _ in range(1000)))
    dt = time.monotonic() - t0
    say("# 1000 connections from 127.0.0.1 in %.2f s (%.0f handshakes/s)" % (dt, 1000 / dt))
    expect_eq(http(s, "GET", "/api/presence?topic=" + t).json().get("count"), 1000, "presence of 1000 subscribers")
    for sb in subs:
        sb.tr.close()
    await await_for(lambda: http(s, "GET", "/api/presence?topic=" + t).json().get("count") == 0, 30,
                    "the 1000 subscribers to leave")


if __name__ == "__main__":
    main([
        test_multiworker_same_order,
        test_one_ip_1000_connections,
        test_10k_subscribers,
    ], timeout_each=110)
