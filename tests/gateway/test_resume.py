"""
tests/gateway/test_resume.py: resume (`since`) as GATEWAY.md's "Delivery
guarantees" state it, against a real `duplex serve`:
  - since with the current epoch and N+1 retained: recovered true, the ack
    has the current offset and epoch, exactly N+1..current in order, then
    live messages with no gap and no duplicate; N = current: recovered true,
    live only; a server restart changes the epoch (offsets from 1 again);
  - another epoch, N ahead of the current offset, N+1 trimmed by
    --history (count) or --history-age (age): recovered false with the
    current offset and epoch, and only live messages;
  - randomized (seeded, the seed printed; DX_GW_SEED=n replays): a publisher
    publishes 3,000 messages while 12 JSON-dialect, 4 raw-dialect and 4 SSE
    subscribers disconnect at random points (clean close, abort, stop
    reading) and resubscribe with since (SSE: Last-Event-ID); every
    subscriber ends with 1..N exactly once, in order. With --workers 2 and hundreds of connections, which SO_REUSEPORT
    spreads over both workers.
"""
import asyncio
import json
import os
import random
import time

from gwtest import (Fail, check, check_msg, check_sub_ack, expect_eq, history, jconnect, main, publish,
                    rconnect, recv_timeout, say, shared, topic, wait_for)


def srv():
    return shared()


def fill(s, t, n):
    p = None
    for i in range(1, n + 1):
        p = publish(s, t, "m%d" % i)
    return p


async def test_since_current_epoch_recovers():
    s = srv()
    t = topic("rc")
    e = fill(s, t, 10)["epoch"]
    c = await jconnect(s)
    a = await c.sub(t, since={"offset": 5, "epoch": e})
    check_sub_ack(a, t, offset=10, epoch=e, recovered=True)
    for i in range(6, 11):
        check_msg(await c.msg(what="missed message %d" % i), t, offset=i, epoch=e, data="m%d" % i)
    publish(s, t, "m11")
    check_msg(await c.msg(what="live after the missed ones"), t, offset=11, data="m11")
    await c.quiet()
    # since 0: everything retained
    c2 = await jconnect(s)
    a = await c2.sub(t, since={"offset": 0, "epoch": e})
    check_sub_ack(a, t, offset=11, epoch=e, recovered=True)
    got = await c2.msgs(11)
    expect_eq([m["offset"] for m in got], list(range(1, 12)), "since 0: offsets")
    await c.close()
    await c2.close()


async def test_since_current_offset():
    s = srv()
    t = topic("rcur")
    e = fill(s, t, 4)["epoch"]
    c = await jconnect(s)
    a = await c.sub(t, since={"offset": 4, "epoch": e})
    check_sub_ack(a, t, offset=4, epoch=e, recovered=True)
    publish(s, t, "m5")
    check_msg(await c.msg(), t, offset=5, data="m5", what="N = current: only live")
    await c.quiet()
    await c.close()


async def test_wrong_epoch_live_only():
    s = srv()
    t = topic("rwe")
    e = fill(s, t, 6)["epoch"]
    c = await jconnect(s)
    for bad in ("bogus", "", e + "0", e.upper() if e.upper() != e else e + "x"):
        a = await c.sub(t, since={"offset": 3, "epoch": bad})
        check_sub_ack(a, t, offset=6, epoch=e, recovered=False)
        await c.ack("unsub", topic=t)
    a = await c.sub(t, since={"offset": 3, "epoch": "other"})
    publish(s, t, "m7")
    check_msg(await c.msg(), t, offset=7, data="m7", what="wrong epoch: only live messages")
    await c.quiet()
    await c.close()


async def test_ahead_live_only():
    s = srv()
    t = topic("rah")
    e = fill(s, t, 3)["epoch"]
    c = await jconnect(s)
    a = await c.sub(t, since={"offset": 4, "epoch": e})
    check_sub_ack(a, t, offset=3, epoch=e, recovered=False)
    await c.ack("unsub", topic=t)
    a = await c.sub(t, since={"offset": 2 ** 53 - 1, "epoch": e})
    check_sub_ack(a, t, offset=3, epoch=e, recovered=False)
    publish(s, t, "m4")
    check_msg(await c.msg(), t, offset=4, data="m4", what="N ahead: only live")
    await c.quiet()
    await c.close()


async def test_trimmed_by_count():
    s = shared("--history", "5")
    t = topic("rtc")
    e = fill(s, t, 20)["epoch"]
    h = history(s, t)
    expect_eq([m["offset"] for m in h["messages"]], [16, 17, 18, 19, 20], "--history 5: retained offsets")
    h = history(s, t, since=3)
    expect_eq([m["offset"] for m in h["messages"]], [16, 17, 18, 19, 20], "--history 5, since=3: from the oldest")
    c = await jconnect(s)
    a = await c.sub(t, since={"offset": 14, "epoch": e})  # 15 was trimmed
    check_sub_ack(a, t, offset=20, epoch=e, recovered=False)
    await c.ack("unsub", topic=t)
    a = await c.sub(t, since={"offset": 3, "epoch": e})
    check_sub_ack(a, t, offset=20, epoch=e, recovered=False)
    publish(s, t, "m21")
    check_msg(await c.msg(), t, offset=21, data="m21", what="trimmed: only live")
    await c.quiet()
    c2 = await jconnect(s)
    a = await c2.sub(t, since={"offset": 16, "epoch": e})  # 17 is the oldest retained
    check_sub_ack(a, t, offset=21, epoch=e, recovered=True)
    got = await c2.msgs(5)
    expect_eq([m["offset"] for m in got], [17, 18, 19, 20, 21], "since 16 with 17..21 retained")
    await c.close()
    await c2.close()


async def test_trimmed_by_age():
    s = shared("--history-age", "1s")
    t = topic("rta")
    e = fill(s, t, 3)["epoch"]
    t0 = time.monotonic()
    wait_for(lambda: time.monotonic() - t0 > 1.0 and not history(s, t)["messages"], 10,
             "--history-age 1s to empty the history")
    h = history(s, t)
    expect_eq((h["offset"], h["epoch"]), (3, e), "history after the age trim: current offset and epoch stay")
    c = await jconnect(s)
    a = await c.sub(t, since={"offset": 1, "epoch": e})
    check_sub_ack(a, t, offset=3, epoch=e, recovered=False)
    await c.ack("unsub", topic=t)
    a = await c.sub(t, since={"offset": 3, "epoch": e})
    check_sub_ack(a, t, offset=3, epoch=e, recovered=True)
    publish(s, t, "m4")
    check_msg(await c.msg(), t, offset=4, data="m4")
    await c.quiet()
    await c.close()


async def test_since_in_sub_of_already_subscribed():
    """A resubscribe with since acks again and changes nothing: no replay
    of already-delivered messages (one delivery per message)."""
    s = srv()
    t = topic("rre")
    e = fill(s, t, 2)["epoch"]
    c = await jconnect(s)
    await c.sub(t)
    publish(s, t, "m3")
    check_msg(await c.msg(), t, offset=3)
    a = await c.sub(t, since={"offset": 0, "epoch": e})
    check(a["op"] == "ack", "resubscribe with since: %r" % a)
    publish(s, t, "m4")
    # whatever the ack says, m3 may come again only if announced: the
    # contract says a resubscribe changes nothing, so the next msg is m4
    check_msg(await c.msg(), t, offset=4, data="m4", what="after a resubscribe with since")
    await c.quiet()
    await c.close()


async def test_restart_changes_epoch():
    """The in-memory store restarted: the epoch changes and offsets start
    again at 1; a resume with the old epoch is not recovered."""
    from gwtest import Serve
    s1 = Serve()
    t = topic("restart")
    e1 = fill(s1, t, 3)["epoch"]
    s1.stop()
    s2 = Serve()
    try:
        c = await jconnect(s2)
        a = await c.sub(t, since={"offset": 3, "epoch": e1})
        check(a.get("recovered") is False and a.get("epoch") != e1,
              "resume with the epoch of a server that restarted: expected recovered false and a new epoch, got %r" % a)
        p = publish(s2, t, "fresh")
        expect_eq(p["offset"], 1, "first offset after a restart")
        check(p["epoch"] != e1, "the epoch did not change across a restart (%s)" % e1)
        check_msg(await c.msg(), t, offset=1, epoch=p["epoch"], data="fresh", what="live after the restart")
        await c.close()
    finally:
        s2.stop()


# ---------------------------------------------------------------- randomized


class Sub:
    def __init__(self, idx, kind):
        self.idx, self.kind = idx, kind
        self.last = 0
        self.conns = 0
        self.modes = {}


async def run_json_sub(s, t, epoch, n, sub, rnd, deadline):
    while sub.last < n:
        check(time.monotonic() < deadline, "subscriber %d (json) stuck at %d of %d" % (sub.idx, sub.last, n))
        c = await jconnect(s)
        sub.conns += 1
        a = await c.sub(t, since={"offset": sub.last, "epoch": epoch})
        if not (a.get("recovered") is True and a.get("epoch") == epoch):
            raise Fail("subscriber %d (json): resume since %d: expected recovered true with epoch %s, got %r"
                       % (sub.idx, sub.last, epoch, a))
        quota = rnd.choice([0, 1, 5, 20, 50, 100, 300])
        got = 0
        while sub.last < n and got < quota:
            m = await c.msg(timeout=20, what="subscriber %d (json) message %d" % (sub.idx, sub.last + 1))
            if m["op"] == "gap":
                raise Fail("subscriber %d (json): gap %r after %d" % (sub.idx, m, sub.last))
            if m.get("offset") != sub.last + 1 or m.get("data") != {"n": sub.last + 1}:
                raise Fail("subscriber %d (json): after %d expected offset %d, got %r"
                           % (sub.idx, sub.last, sub.last + 1, m))
            sub.last += 1
            got += 1
        mode = rnd.choice(["close", "abort", "abort", "unread"])
        sub.modes[mode] = sub.modes.get(mode, 0) + 1
        if sub.last >= n:
            mode = "close"
        if mode == "close":
            await c.ws.close()
        elif mode == "abort":
            c.ws.transport.abort()
        else:  # stop reading for a while, then drop the connection
            await asyncio.sleep(rnd.random() * 0.05)
            c.ws.transport.abort()
        await asyncio.wait_for(c.ws.wait_closed(), 10)
        if rnd.random() < 0.3:
            await asyncio.sleep(rnd.random() * 0.05)


async def run_raw_sub(s, t, n, sub, rnd, deadline):
    while sub.last < n:
        check(time.monotonic() < deadline, "subscriber %d (raw) stuck at %d of %d" % (sub.idx, sub.last, n))
        ws = await rconnect(s, "subscribe=%s&since=%s:%d" % (t, t, sub.last))
        sub.conns += 1
        quota = rnd.choice([0, 1, 5, 20, 50, 100, 300])
        got = 0
        while sub.last < n and got < quota:
            f = await recv_timeout(ws, 20, "subscriber %d (raw) message %d" % (sub.idx, sub.last + 1))
            try:
                v = json.loads(f)
            except (ValueError, TypeError):
                raise Fail("subscriber %d (raw): not a json text frame: %r" % (sub.idx, f[:100]))
            if v != {"n": sub.last + 1}:
                raise Fail("subscriber %d (raw): after %d expected {\"n\": %d}, got %r"
                           % (sub.idx, sub.last, sub.last + 1, v))
            sub.last += 1
            got += 1
        if rnd.random() < 0.5 or sub.last >= n:
            await ws.close()
        else:
            ws.transport.abort()
        await asyncio.wait_for(ws.wait_closed(), 10)


async def sse_events(reader):
    """Yields (event dict) from a chunked text/event-stream on an asyncio reader."""
    text = b""
    while True:
        size_line = await reader.readline()
        if not size_line:
            return
        n = int(size_line.split(b";")[0], 16)
        if n == 0:
            return
        text += await reader.readexactly(n)
        await reader.readexactly(2)
        while b"\n\n" in text:
            block, text = text.split(b"\n\n", 1)
            ev = {"data": []}
            for ln in block.decode().split("\n"):
                if ln.startswith(":") or not ln:
                    continue
                k, _, v = ln.partition(":")
                v = v[1:] if v.startswith(" ") else v
                if k == "data":
                    ev["data"].append(v)
                else:
                    ev[k] = v
            yield ev


async def run_sse_sub(s, t, n, sub, rnd, deadline):
    """An SSE subscriber resuming with Last-Event-ID (the first time with
    ?since=t:0)."""
    last_id = None
    while sub.last < n:
        check(time.monotonic() < deadline, "subscriber %d (SSE) stuck at %d of %d" % (sub.idx, sub.last, n))
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        sub.conns += 1
        q = "subscribe=%s" % t + ("" if last_id else "&since=%s:0" % t)
        hdr = ("Last-Event-ID: %s\r\n" % last_id) if last_id else ""
        writer.write(("GET /sse?%s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n%s\r\n" % (q, hdr)).encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        check(b" 200 " in head.split(b"\r\n")[0] and b"chunked" in head.lower(),
              "subscriber %d (SSE): GET /sse?%s with Last-Event-ID %r: %r" % (sub.idx, q, last_id, head[:200]))
        quota = rnd.choice([0, 1, 5, 20, 50, 100, 300])
        got = 0
        it = sse_events(reader).__aiter__()
        while sub.last < n and got < quota:
            try:
                ev = await asyncio.wait_for(it.__anext__(), 20)
            except StopAsyncIteration:
                raise Fail("subscriber %d (SSE): the stream ended after %d" % (sub.idx, sub.last))
            if ev.get("event") != "msg":
                continue
            m = json.loads(ev["data"][0])
            if m.get("offset") != sub.last + 1 or m.get("data") != {"n": sub.last + 1}:
                raise Fail("subscriber %d (SSE, Last-Event-ID %r): after %d expected offset %d, got %r"
                           % (sub.idx, last_id, sub.last, sub.last + 1, m))
            sub.last += 1
            last_id = ev.get("id")
            got += 1
        if rnd.random() < 0.5:
            writer.close()
        else:
            writer.transport.abort()
        try:
            await asyncio.wait_for(writer.wait_closed(), 10)
        except (ConnectionError, OSError):
            pass


async def publisher(s, t, n, start, rnd):
    c = await jconnect(s)
    i = start
    while i <= n:
        k = min(rnd.choice([1, 5, 10, 20]), n - i + 1)
        for j in range(k):
            await c.send({"op": "pub", "id": i + j, "topic": t, "data": {"n": i + j}})
        for j in range(k):
            r = await c.reply(timeout=20, what="pub ack %d" % (i + j))
            if r.get("op") != "ack" or r.get("id") != i + j or r.get("offset") != i + j:
                raise Fail("publisher: pub %d expected ack with offset %d, got %r" % (i + j, i + j, r))
        i += k
        await asyncio.sleep(rnd.random() * 0.05)
    await c.close()


async def test_random_disconnect_resume():
    seed = int(os.environ.get("DX_GW_SEED", random.randrange(1 << 30)))
    say("# DX_GW_SEED=%d" % seed)
    rnd = random.Random(seed)
    s = shared("--history", "100000", workers=2)
    t = topic("rnd")
    n = 3000
    first = publish(s, t, '{"n":1}', "application/json")
    expect_eq(first["offset"], 1, "first publish")
    epoch = first["epoch"]
    subs = [Sub(i, "json" if i < 12 else "raw" if i < 16 else "sse") for i in range(20)]
    deadline = time.monotonic() + 90
    tasks = [publisher(s, t, n, 2, random.Random(rnd.random()))]
    for sb in subs:
        r2 = random.Random(rnd.random())
        if sb.kind == "json":
            tasks.append(run_json_sub(s, t, epoch, n, sb, r2, deadline))
        elif sb.kind == "raw":
            tasks.append(run_raw_sub(s, t, n, sb, r2, deadline))
        else:
            tasks.append(run_sse_sub(s, t, n, sb, r2, deadline))
    res = await asyncio.gather(*tasks, return_exceptions=True)
    for r in res:
        if isinstance(r, BaseException):
            raise r if isinstance(r, Fail) else Fail("%s: %r" % (type(r).__name__, r))
    conns = sum(sb.conns for sb in subs)
    say("# %d subscribers, %d connections in all, every one got 1..%d in order" % (len(subs), conns, n))
    for sb in subs:
        expect_eq(sb.last, n, "subscriber %d (%s) last offset" % (sb.idx, sb.kind))
    check(conns >= 10 * len(subs), "the test reconnected too little (%d connections)" % conns)


if __name__ == "__main__":
    main([
        test_since_current_epoch_recovers,
        test_since_current_offset,
        test_wrong_epoch_live_only,
        test_ahead_live_only,
        test_trimmed_by_count,
        test_trimmed_by_age,
        test_since_in_sub_of_already_subscribed,
        test_restart_changes_epoch,
        test_random_disconnect_resume,
    ], timeout_each=110)
