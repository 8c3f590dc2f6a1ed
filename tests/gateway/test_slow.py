"""
tests/gateway/test_slow.py: slow consumers (GATEWAY.md "Nothing lost
silently", the raw dialect's and SSE's "always disconnected") against a real
`duplex serve`:
  - default policy (disconnect): a raw subscriber that never reads (small
    receive buffer), a JSON-dialect one and an SSE one, while a publisher
    floods: each slow one is closed with 1013 (or its TCP connection ends)
    without getting everything, while a normal JSON and a normal raw
    subscriber get every message in order and the publisher's acks keep
    coming; the drops are counted in /metrics;
  - --slow-policy drop-oldest: a JSON subscriber that stops reading and then
    reads again gets msgs, a `gap` {topic, from, to} announcing exactly what
    it missed (from = last offset + 1, next offset = to + 1), then later
    messages up to the last; a raw subscriber on that server is still
    disconnected (1013); drops counted in /metrics.
"""
import asyncio
import json
import time

from gwtest import (SSE, Fail, RawWS, check, check_sub_ack, close_code, expect_eq, http, jconnect, main,
                    metric_sum, metrics, publish, rconnect, recv_timeout, say, shared, topic, wait_for)

N = 6000
SIZE = 2048


async def flood(s, t, n=N, size=SIZE, window=64):
    """Publishes n messages of `size` bytes on t through one JSON-dialect
    connection, `window` in flight; checks every ack (offsets consecutive)."""
    c = await jconnect(s)
    pad = "x" * (size - 16)
    sent = acked = 0
    first = None
    while acked < n:
        while sent < n and sent - acked < window:
            sent += 1
            await c.send({"op": "pub", "id": sent, "topic": t, "data": "%08d%s" % (sent, pad)})
        r = await c.reply(timeout=20, what="the ack of publish %d (the publisher must not be slowed)" % (acked + 1))
        acked += 1
        if r.get("op") != "ack" or r.get("id") != acked:
            raise Fail("publish %d: expected an ack, got %r" % (acked, r))
        if first is None:
            first = r["offset"]
        if r["offset"] != first + acked - 1:
            raise Fail("publish %d: offset %r, expected %d" % (acked, r.get("offset"), first + acked - 1))
    await c.close()
    return first


async def reader_json(c, t, n, first_box):
    """A normal JSON subscriber: every message in order."""
    prev = None
    for i in range(n):
        m = await c.msg(timeout=30, what="normal JSON subscriber, message %d of %d" % (i + 1, n))
        if m.get("op") != "msg":
            raise Fail("normal JSON subscriber got %r" % m)
        if prev is not None and m["offset"] != prev + 1:
            raise Fail("normal JSON subscriber: offset %d after %d" % (m["offset"], prev))
        prev = m["offset"]
    return prev


async def reader_raw(ws, n):
    prev = None
    for i in range(n):
        f = await recv_timeout(ws, 30, "normal raw subscriber, message %d of %d" % (i + 1, n))
        k = int(f[:8])
        if prev is not None and k != prev + 1:
            raise Fail("normal raw subscriber: message %d after %d" % (k, prev))
        prev = k
    return prev


def drain_raw(rw, timeout=30):
    """Reads a stalled raw-socket client to its end: (messages, close code or None)."""
    n = 0
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        check(left > 0, "the slow subscriber was not disconnected within %d s of reading again (got %d messages)"
              % (timeout, n))
        op, payload = rw.recv(left)
        if op == "eof":
            return n, None
        if op == 8:
            return n, close_code(payload)
        if op in (1, 2):
            n += 1


async def test_slow_disconnected_default_policy():
    s = shared(workers=1)
    t = topic("slow")
    slow_raw = RawWS(s, "/ws?subscribe=" + t, rcvbuf=4096)
    expect_eq(slow_raw.status, 101, "slow raw subscriber handshake")
    slow_json = RawWS(s, "/ws", protocol="duplex.v1", rcvbuf=4096)
    expect_eq(slow_json.status, 101, "slow JSON subscriber handshake")
    slow_json.send_json({"op": "sub", "id": 1, "topic": t})
    op, payload = slow_json.recv()
    a = json.loads(payload)
    check_sub_ack(a, t, recovered=False)
    wait_for(lambda: http(s, "GET", "/api/presence?topic=" + t).json().get("count") == 2, 10,
             "the two slow subscribers in presence")
    d0, _ = metric_sum(metrics(s), "drop")
    good_j = await jconnect(s)
    await good_j.sub(t)
    good_r = await rconnect(s, "subscribe=" + t)
    t0 = time.monotonic()
    res = await asyncio.gather(flood(s, t), reader_json(good_j, t, N, None), reader_raw(good_r, N))
    say("# %d x %d B published and delivered to the normal subscribers in %.1f s" % (N, SIZE, time.monotonic() - t0))
    first = res[0]
    expect_eq(res[1], first + N - 1, "the normal JSON subscriber's last offset")
    expect_eq(res[2], N, "the normal raw subscriber's last message")
    for name, rw in (("raw", slow_raw), ("JSON", slow_json)):
        n, code = drain_raw(rw)
        say("# slow %s subscriber: %d messages then %s" % (name, n, "close %s" % code if code else "EOF/reset"))
        check(n < N, "the slow %s subscriber got all %d messages: it was never slow (buffers too large?)" % (name, N))
        check(code in (None, 1013), "the slow %s subscriber was closed with %s, expected 1013 (or a dropped TCP)"
              % (name, code))
    d1, nd = metric_sum(metrics(s), "drop")
    check(nd, "no *drop* metric in /metrics")
    check(d1 >= d0 + 2, "/metrics drops went %s -> %s for 2 slow subscribers disconnected" % (d0, d1))
    await good_j.close()
    await good_r.close()


async def test_slow_sse_disconnected():
    s = shared(workers=1)
    t = topic("slowsse")
    slow_sse = SSE(s, "subscribe=" + t, rcvbuf=4096)
    expect_eq(slow_sse.status, 200, "slow SSE subscriber: GET /sse?subscribe=" + t)
    wait_for(lambda: http(s, "GET", "/api/presence?topic=" + t).json().get("count") == 1, 10,
             "the slow SSE subscriber in presence")
    good_r = await rconnect(s, "subscribe=" + t)
    res = await asyncio.gather(flood(s, t), reader_raw(good_r, N))
    expect_eq(res[1], N, "the normal raw subscriber's last message")
    nev = 0
    while True:
        ev = slow_sse.event(timeout=30, what="the slow SSE stream to end")
        if ev is None:
            break
        nev += 1
    say("# slow SSE subscriber: %d events then the end of the stream" % nev)
    check(nev < N, "the slow SSE subscriber got all %d events: never disconnected" % N)
    await good_r.close()


async def test_drop_oldest_gap():
    s = shared("--slow-policy", "drop-oldest", "--sub-queue", "256K", workers=1)
    t = topic("drop")
    slow = RawWS(s, "/ws", protocol="duplex.v1", rcvbuf=4096)
    expect_eq(slow.status, 101, "slow JSON subscriber handshake")
    slow.send_json({"op": "sub", "id": 1, "topic": t})
    op, payload = slow.recv()
    a = json.loads(payload)
    check_sub_ack(a, t, recovered=False)
    slow_raw = RawWS(s, "/ws?subscribe=" + t, rcvbuf=4096)
    d0, _ = metric_sum(metrics(s), "drop")
    first = await flood(s, t)
    last = publish(s, t, "the end")["offset"]
    expect_eq(last, first + N, "offset of the final message")
    # read again: msgs in order, each hole announced by a gap, up to the end
    prev = a["offset"]
    gaps = []
    n = 0
    deadline = time.monotonic() + 30
    while prev != last:
        check(time.monotonic() < deadline, "the resumed subscriber did not reach the final message (at %d of %d)"
              % (prev, last))
        op, payload = slow.recv(30)
        if op == "eof" or op == 8:
            raise Fail("drop-oldest: the slow JSON subscriber was disconnected (%s) after offset %d"
                       % (op if op == "eof" else "close %s" % close_code(payload), prev))
        if op != 1:
            continue
        f = json.loads(payload)
        if f["op"] == "gap":
            expect_eq(f.get("topic"), t, "gap topic")
            expect_eq(f.get("from"), prev + 1, "gap %r after offset %d: from" % (f, prev))
            check(isinstance(f.get("to"), int) and f["to"] >= f["from"], "gap %r: to" % f)
            gaps.append(f)
            prev = f["to"]
            continue
        expect_eq(f.get("op"), "msg", "frame after resuming")
        if f["offset"] != prev + 1:
            raise Fail("drop-oldest: offset %d after %d with no gap announcing %d..%d"
                       % (f["offset"], prev, prev + 1, f["offset"] - 1))
        prev = f["offset"]
        n += 1
    say("# drop-oldest: %d messages and %d gaps (%d messages announced missing)"
        % (n, len(gaps), sum(g["to"] - g["from"] + 1 for g in gaps)))
    check(gaps, "drop-oldest: the slow subscriber got every message (%d): it was never slow" % n)
    nr, code = drain_raw(slow_raw)
    check(nr < N + 1, "drop-oldest server: the stalled raw subscriber got everything")
    check(code in (None, 1013), "drop-oldest server: the stalled raw subscriber closed with %s, expected 1013" % code)
    d1, nd = metric_sum(metrics(s), "drop")
    dropped = sum(g["to"] - g["from"] + 1 for g in gaps)
    check(d1 - d0 >= 1, "/metrics drops did not move (%s -> %s) after %d messages dropped" % (d0, d1, dropped))
    slow.close()


async def read_with_gaps(c, t, start, last, what):
    """Reads msgs and gaps until offset `last`: every offset after `start`
    either delivered or announced by a gap, in order. Returns (msgs, gaps)."""
    prev, n, gaps = start, 0, []
    while prev < last:
        f = await c.msg(timeout=15, what="%s: offset %d or a gap (last is %d)" % (what, prev + 1, last))
        if f["op"] == "gap":
            expect_eq((f.get("topic"), f.get("from")), (t, prev + 1), "%s: gap %r after %d" % (what, f, prev))
            check(isinstance(f.get("to"), int) and f["to"] >= f["from"], "%s: gap %r" % (what, f))
            gaps.append(f)
            prev = f["to"]
        else:
            if f["offset"] != prev + 1:
                raise Fail("%s: offset %d after %d with no gap" % (what, f["offset"], prev))
            prev = f["offset"]
            n += 1
    return n, gaps


async def test_drop_oldest_reading_subscriber():
    """A subscriber that reads all the time, on a small --sub-queue: what it
    cannot keep up with is announced by gaps, and it reaches the last
    message (nothing lost silently, never stuck)."""
    s = shared("--slow-policy", "drop-oldest", "--sub-queue", "64K", workers=1)
    t = topic("dropr")
    c = await jconnect(s)
    a = await c.sub(t)
    reader = asyncio.ensure_future(read_with_gaps(c, t, a["offset"], a["offset"] + N + 1, "reading subscriber"))
    await flood(s, t)
    publish(s, t, "the end")
    n, gaps = await reader
    say("# drop-oldest, a reading subscriber: %d messages and %d gaps" % (n, len(gaps)))
    await c.close()


if __name__ == "__main__":
    main([
        test_slow_disconnected_default_policy,
        test_slow_sse_disconnected,
        test_drop_oldest_gap,
        test_drop_oldest_reading_subscriber,
    ], timeout_each=110)
