"""
tests/hostile/test_gateway_floods.py: floods against the gateway's limits
(issue 10; docs/security.md), each against its own `duplex serve`:

- connections per address: past --conns-per-ip, /ws (JSON and raw) and /sse
  answer 429 + Retry-After, while other addresses (127.0.0.2, 127.0.0.3)
  keep connecting; a slot freed is usable again;
- handshakes per second per address: past the burst, 429 + Retry-After,
  other addresses unaffected, the address admitted again once the server's
  own Retry-After has passed;
- messages per second per connection under each --rate-policy: pause (the
  flooder is slowed to the rate, every message still handled, another
  client's round trip stays within max(10 x its baseline, 2 s)), refuse
  (err 4429, the connection stays), close (1008);
- subscriptions per connection: err 4413 past --max-subs;
- drain (SIGTERM): queued messages reach a subscriber that reads late,
  before its close 1012 "retry=MS"; an SSE stream gets "retry: MS" and ends;
  /healthz answers 503 "draining"
  meanwhile; idle clients get their 1012 at once; serve exits 0.

Per-user connection counting needs authentication (another branch): its
table is tested in tests/unit/test_limits.c.
"""
import asyncio
import json
import os
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gateway"))
from gwtest import (SSE, Fail, RawWS, Serve, check, expect_closed, expect_eq, http, jconnect, main,  # noqa: E402
                    metric_sum, metrics, publish, q, read_head, topic, wait_for, ws_head)


def handshake(srv, src="127.0.0.1", path="/ws", protocol="duplex.v1"):
    """A handshake from source address src: (status, head, socket or None)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    s.bind((src, 0))
    s.connect(("127.0.0.1", srv.port))
    s.sendall(ws_head(srv.port, path, protocol))
    status, head, _ = read_head(s.recv)
    if status != 101:
        s.close()
        return status, head, None
    return status, head, s


def retry_after(head):
    for ln in head.split("\r\n"):
        k, _, v = ln.partition(":")
        if k.strip().lower() == "retry-after":
            return int(v.strip())
    return None


def test_conns_per_ip():
    srv = Serve("--conns-per-ip", "20", "--handshakes-per-ip", "off", workers=2)  # one count for both workers
    held = []
    try:
        for i in range(20):
            path = "/ws" if i % 2 else "/ws?subscribe=" + topic("ip")
            st, head, s = handshake(srv, path=path, protocol="duplex.v1" if i % 2 else None)
            expect_eq(st, 101, "connection %d from 127.0.0.1" % (i + 1))
            held.append(s)
        for path, proto in (("/ws", "duplex.v1"), ("/ws?subscribe=" + topic("ip"), None)):
            st, head, _ = handshake(srv, path=path, protocol=proto)
            expect_eq(st, 429, "connection 21 from 127.0.0.1 (%s)" % path)
            check(retry_after(head) is not None and retry_after(head) >= 1, "429 without Retry-After:\n" + head)
        sse = SSE(srv, "subscribe=" + topic("ip"))
        expect_eq(sse.status, 429, "SSE past --conns-per-ip")
        sse.close()
        # other addresses are not affected
        for src in ("127.0.0.2", "127.0.0.3"):
            for i in range(5):
                st, _, s = handshake(srv, src=src)
                expect_eq(st, 101, "connection from %s while 127.0.0.1 is at its limit" % src)
                held.append(s)
        # a slot freed is usable again (the count follows the close)
        held.pop(0).close()
        wait_for(lambda: handshake_ok(srv, held), 10, "a handshake once a connection from 127.0.0.1 closed")
        ms = metrics(srv)
        n, _ = metric_sum(ms, "duplex_limit_refused_total", limit="conns_per_ip")
        check(n >= 3, "duplex_limit_refused_total{limit=conns_per_ip} = %r" % n)
        check("connections from this address already" in srv.log(), "no log line for the per-address refusal")
    finally:
        for s in held:
            s.close()
        srv.stop()


def handshake_ok(srv, held):
    st, _, s = handshake(srv)
    if s:
        held.append(s)
    return st == 101


def test_handshake_rate():
    srv = Serve("--handshakes-per-ip", "2", "--handshake-burst", "10", workers=2)
    try:
        for i in range(10):
            st, _, s = handshake(srv)
            expect_eq(st, 101, "handshake %d of the burst" % (i + 1))
            s.close()
        st, head, _ = handshake(srv)
        expect_eq(st, 429, "handshake past the burst")
        ra = retry_after(head)
        check(ra is not None and 1 <= ra <= 5, "Retry-After of the 429: %r\n%s" % (ra, head))
        # SSE shares the bucket
        sse = SSE(srv, "subscribe=" + topic("hs"))
        expect_eq(sse.status, 429, "SSE past the handshake burst")
        sse.close()
        # another address has its own bucket
        for i in range(10):
            st, _, s = handshake(srv, src="127.0.0.2")
            expect_eq(st, 101, "handshake %d from 127.0.0.2" % (i + 1))
            s.close()
        # admitted again once the server's Retry-After has passed
        t0 = time.monotonic()

        def again():
            st, _, s = handshake(srv)
            if s:
                s.close()
            return st == 101
        wait_for(again, ra + 10, "a handshake after Retry-After", step=0.25)
        check(time.monotonic() - t0 < ra + 10, "not admitted again")
        ms = metrics(srv)
        n, _ = metric_sum(ms, "duplex_limit_refused_total", limit="handshake_rate")
        check(n >= 2, "duplex_limit_refused_total{limit=handshake_rate} = %r" % n)
        check("handshakes per second from this address" in srv.log(), "no log line for the rate refusal")
    finally:
        srv.stop()


async def round_trip(j, t):
    t0 = time.monotonic()
    await j.ack("pub", topic=t, data="ping")
    return time.monotonic() - t0


async def test_rate_pause():
    rate, n = 200, 700
    srv = Serve("--msg-rate", str(rate), "--msg-burst", str(rate), "--rate-policy", "pause")
    try:
        other = await jconnect(srv)
        ot = topic("other")
        base = max([await round_trip(other, ot) for _ in range(5)])
        flood = await jconnect(srv)
        ft = topic("flood")
        t0 = time.monotonic()
        for i in range(n):  # as fast as the socket takes them
            await flood.send({"op": "pub", "id": i + 1, "topic": ft, "data": str(i)})
        worst = 0.0
        acks = 0

        async def drain_flood():
            nonlocal acks
            while acks < n:
                r = await flood.reply(timeout=60, what="the flooder's acks")
                check(r["op"] == "ack", "flooder under pause: %r" % r)
                acks += 1
        task = asyncio.create_task(drain_flood())
        while not task.done():
            worst = max(worst, await round_trip(other, ot))
            await asyncio.sleep(0.05)
        await task
        took = time.monotonic() - t0
        # every message handled, at no more than the rate (after the burst)
        check(took >= (n - rate) / rate * 0.8, "%d messages at %d/s handled in %.2f s: not slowed" % (n, rate, took))
        bound = max(10 * base, 2.0)
        check(worst <= bound, "another client's round trip reached %.3f s during the flood (bound %.3f s)" %
              (worst, bound))
        ms = metrics(srv)
        p, _ = metric_sum(ms, "duplex_limit_rate_total", action="paused")
        check(p >= 1, "duplex_limit_rate_total{action=paused} = %r" % p)
        await flood.alive()
        await other.close()
        await flood.close()
    finally:
        srv.stop()


async def test_rate_refuse():
    rate, n = 50, 400
    srv = Serve("--msg-rate", str(rate), "--rate-policy", "refuse")
    try:
        flood = await jconnect(srv)
        ft = topic("flood")
        t0 = time.monotonic()
        for i in range(n):
            await flood.send({"op": "pub", "id": i + 1, "topic": ft, "data": str(i)})
        acks = errs = 0
        for _ in range(n):
            r = await flood.reply(timeout=30, what="replies to the flood")
            if r["op"] == "ack":
                acks += 1
            else:
                expect_eq(r.get("code"), 4429, "err code of a refused message: %r" % r)
                errs += 1
        took = time.monotonic() - t0
        check(errs > 0, "no err 4429 for %d messages at %d/s" % (n, rate))
        check(acks <= rate + rate * took + 2, "%d accepted in %.2f s at %d/s" % (acks, took, rate))
        # refused, not closed: answered again once the bucket has a token
        deadline = time.monotonic() + 10
        while True:
            r = await flood.req("unsub", topic="alive.check")
            if r["op"] == "ack":
                break
            expect_eq(r.get("code"), 4429, "after the flood: %r" % r)
            check(time.monotonic() < deadline, "still refused 10 s after the flood")
            await asyncio.sleep(0.1)
        # malformed requests count too (each would cost an err reply)
        for i in range(n):
            await flood.send("{not json %d" % i)
        codes = [(await flood.reply(timeout=30, what="replies to malformed frames")).get("code") for _ in range(n)]
        check(codes.count(4429) > 0 and set(codes) <= {4400, 4429},
              "malformed flood: %d x 4429, codes %r" % (codes.count(4429), sorted(set(codes))))
        ms = metrics(srv)
        r, _ = metric_sum(ms, "duplex_limit_rate_total", action="refused")
        check(r >= errs, "duplex_limit_rate_total{action=refused} = %r, errs %d" % (r, errs))
        # raw clients under refuse: dropped and closed 1008
        raw = RawWS(srv, "/ws?publish=" + q(ft))
        expect_eq(raw.status, 101, "raw handshake")
        for i in range(n):
            try:
                raw.send(1, "r%d" % i)
            except OSError:
                break
        code = None
        while True:
            op, payload = raw.recv(timeout=30)
            if op == "eof":
                break
            if op == 8:
                code = int.from_bytes(payload[:2], "big")
                break
        raw.close()
        expect_eq(code, 1008, "raw flooder under refuse")
        await flood.close()
    finally:
        srv.stop()


async def test_rate_close():
    srv = Serve("--msg-rate", "20", "--rate-policy", "close")
    try:
        other = await jconnect(srv)
        flood = await jconnect(srv)
        ft = topic("flood")
        for i in range(200):
            try:
                await flood.send({"op": "pub", "id": i + 1, "topic": ft, "data": str(i)})
            except Exception:  # noqa: BLE001 - closed under us: expected
                break
        await expect_closed(flood.ws, 1008, 30, "flooder under --rate-policy close")
        await other.alive()
        ms = metrics(srv)
        c, _ = metric_sum(ms, "duplex_limit_rate_total", action="closed")
        check(c >= 1, "duplex_limit_rate_total{action=closed} = %r" % c)
        await other.close()
    finally:
        srv.stop()


async def test_namespace_rate():
    """A namespace's own rate: publishes into it are refused past 10/s while
    other topics on the same connection are not."""
    srv = Serve("--namespace", "slow.,rate=10,burst=10,rate-policy=refuse")
    try:
        j = await jconnect(srv)
        t, u = topic("slow"), topic("fast")
        for i in range(40):
            await j.send({"op": "pub", "id": i + 1, "topic": t, "data": str(i)})
        replies = [await j.reply(timeout=30) for _ in range(40)]
        errs = [r for r in replies if r["op"] == "err"]
        check(errs and all(r.get("code") == 4429 for r in errs), "namespace rate: %r" % replies[-3:])
        for i in range(40):
            await j.ack("pub", topic=u, data=str(i))
        await j.close()
    finally:
        srv.stop()


async def test_subscription_flood():
    srv = Serve("--max-subs", "10")
    try:
        j = await jconnect(srv)
        for i in range(10):
            await j.sub(topic("s%d" % i))
        for i in range(20):
            await j.err("sub", 4413, topic=topic("over"))
        await j.alive()
        await j.close()
    finally:
        srv.stop()


def test_drain():
    hint = 1500
    # the close timeout is short: a connection closed at SIGTERM (no drain)
    # would be dropped after 1 s with most of its queue unsent
    srv = Serve("--drain", "60s", "--reconnect-hint", "%dms" % hint, "--sub-queue", "32M", "--close-timeout", "1s")
    t = topic("drain")
    # a subscriber that does not read: its messages stay queued at the server
    slow = RawWS(srv, "/ws", protocol="duplex.v1", rcvbuf=4096)
    expect_eq(slow.status, 101, "slow subscriber")
    slow.send_json({"op": "sub", "id": 1, "topic": t})
    op, payload = slow.recv()
    check(b'"ack"' in payload, "sub ack: %r" % payload)
    idle = RawWS(srv, "/ws", protocol="duplex.v1")
    expect_eq(idle.status, 101, "idle client")
    sse = SSE(srv, "subscribe=" + topic("drain-sse"))
    expect_eq(sse.status, 200, "SSE client")
    n, body = 1000, "d" * 10000  # 10 MB: more than the kernel's socket buffers hold
    for i in range(n):
        r = http(srv, "POST", "/api/publish?topic=" + q(t), body="%05d" % i + body,
                 headers={"Content-Type": "text/plain"})
        expect_eq(r.status, 200, "publish %d" % i)
    t_term = time.monotonic()
    os.kill(srv.proc.pid, signal.SIGTERM)
    # the idle client gets its 1012 at once
    op, payload = idle.recv(timeout=10)
    expect_eq(op, 8, "idle client: a close frame")
    expect_eq(int.from_bytes(payload[:2], "big"), 1012, "idle client's close code")
    expect_eq(payload[2:].decode(), "retry=%d" % hint, "idle client's close reason")
    idle.close()
    # the SSE stream gets the hint as its reconnection delay, then ends
    lines = []
    deadline = time.monotonic() + 10
    while True:
        ln = sse._line(deadline, "the end of the SSE stream")
        if ln is None:
            break
        lines.append(ln)
    sse.close()
    check("retry: %d" % hint in lines, "SSE stream during the drain: no 'retry: %d' line in %r" % (hint, lines[-5:]))
    # draining: /healthz says so while the slow one's queue is out; new handshakes 503

    def health():
        try:
            return http(srv, "GET", "/healthz", key=None, timeout=5)
        except OSError:
            return None
    r = wait_for(lambda: (lambda x: x if x is not None and x.status == 503 else None)(health()), 10,
                 "/healthz 503 during the drain")
    expect_eq(r.body, b"draining\n", "/healthz body during the drain")
    st, _, s = handshake(srv)
    expect_eq(st, 503, "a handshake during the drain")
    # past the close timeout (1 s) with a wide margin: the slow subscriber
    # is still there only because it is draining, not closing
    while time.monotonic() - t_term < 3:
        check(srv.alive(), "serve exited during the drain")
        time.sleep(0.1)
    expect_eq(health().status, 503, "/healthz still 503 while the slow subscriber drains")
    # now read: every message, in order, then the 1012
    got = 0
    while True:
        op, payload = slow.recv(timeout=30)
        if op == "eof":
            raise Fail("slow subscriber: EOF after %d of %d messages, no close frame" % (got, n))
        if op == 8:
            expect_eq(int.from_bytes(payload[:2], "big"), 1012, "slow subscriber's close code")
            expect_eq(payload[2:].decode(), "retry=%d" % hint, "slow subscriber's close reason")
            break
        f = json.loads(payload)
        if f.get("op") != "msg":
            continue
        expect_eq(f["data"][:5], "%05d" % got, "message order during the drain")
        got += 1
    expect_eq(got, n, "messages received before the 1012")
    slow.close()
    rc = srv.proc.wait(30)
    expect_eq(rc, 0, "serve's exit status after the drain")
    check("draining" in srv.log(), "no drain line in the log")
    srv.stop()  # already exited: checks the log for sanitizer reports


if __name__ == "__main__":
    main([test_conns_per_ip, test_handshake_rate, test_rate_pause, test_rate_refuse, test_rate_close,
          test_namespace_rate, test_subscription_flood, test_drain])
