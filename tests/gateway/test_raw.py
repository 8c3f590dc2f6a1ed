"""
tests/gateway/test_raw.py: the raw dialect of GATEWAY.md
(`/ws?subscribe=a,b&publish=c`, no duplex subprotocol) against a real
`duplex serve`, with Python websockets clients:
  - text and binary payloads arrive exactly as published, in a text or
    binary frame; json payloads (API, JSON dialect) as their JSON text in a
    text frame; a pattern in subscribe works; at most once per message;
  - text frames the client sends are published as text, binary frames as
    binary (seen by a JSON-dialect subscriber and by the sender itself);
  - no publish topic: the first frame closes the connection with 1008;
  - a bad topic in the query, or a pattern in publish -> 400; user:bob -> 403;
  - the subscriptions are active at the 101: a message published right after
    the handshake completes (from another client, via another worker) arrives;
  - since=t:17 (and t:19,u:0 on two topics) resumes with the current epoch;
    since = current or ahead: live only.
"""
import asyncio
import json

from gwtest import (Fail, check, check_msg, expect_closed, expect_eq, handshake_status, jconnect, main, publish,
                    q, rconnect, recv_timeout, shared, topic)


def srv():
    return shared()


async def recv_n(ws, n, what):
    return [await recv_timeout(ws, 10, "%s (%d of %d)" % (what, i + 1, n)) for i in range(n)]


async def quiet(ws, seconds=0.3):
    try:
        f = await asyncio.wait_for(ws.recv(), seconds)
    except asyncio.TimeoutError:
        return
    raise Fail("unexpected frame %r" % (f[:200],))


async def test_raw_receives_kinds():
    s = srv()
    t, u = topic("rk"), topic("rk2")
    ws = await rconnect(s, "subscribe=%s,%s" % (t, u))
    allbytes = bytes(range(256)) * 4
    publish(s, t, "plain text ✓", "text/plain; charset=utf-8")
    publish(s, u, allbytes, "application/octet-stream")
    publish(s, t, b"\x01\x02", None)  # no Content-Type: binary
    publish(s, u, '{"a":[1,2,{"b":null}],"c":"d"}', "application/json")
    publish(s, t, '"just a string"', "application/json")
    got = await recv_n(ws, 5, "raw deliveries")
    expect_eq(got[0], "plain text ✓", "text payload in a text frame")
    expect_eq(got[1], allbytes, "binary payload in a binary frame")
    expect_eq(got[2], b"\x01\x02", "no Content-Type: binary frame")
    check(isinstance(got[3], str), "json payload arrived in a binary frame: %r" % got[3][:100])
    expect_eq(json.loads(got[3]), {"a": [1, 2, {"b": None}], "c": "d"}, "json payload as its JSON text")
    check(isinstance(got[4], str), "json string payload in a binary frame")
    expect_eq(got[4], '"just a string"', "a json string payload is its JSON text (quotes included)")
    # json published through the JSON dialect arrives as JSON text too
    j = await jconnect(s)
    await j.ack("pub", topic=t, data={"k": [True]})
    f = await recv_timeout(ws, 10, "raw delivery of a JSON-dialect json publish")
    check(isinstance(f, str) and json.loads(f) == {"k": [True]}, "got %r" % (f,))
    await ws.close()
    await j.close()


async def test_raw_publishes_frames():
    s = srv()
    t = topic("rp")
    obs = await jconnect(s)
    await obs.sub(t)
    ws = await rconnect(s, "subscribe=%s&publish=%s" % (t, t))
    sends = ["hello", b"\x00\xffbin", "", b"", "ünï"]
    for x in sends:
        await ws.send(x)
    for x in sends:
        m = await obs.msg(what="observer's delivery of %r" % (x,))
        if isinstance(x, bytes):
            check_msg(m, t, b64=x, what="raw binary frame published")
        else:
            check_msg(m, t, data=x, what="raw text frame published")
        back = await recv_timeout(ws, 10, "the sender's own delivery of %r" % (x,))
        expect_eq(back, x, "the raw sender receives its own publish (same opcode)")
    # a burst keeps order with consecutive offsets
    for i in range(200):
        await ws.send("b%d" % i)
    got = await obs.msgs(200)
    expect_eq([m["data"] for m in got], ["b%d" % i for i in range(200)], "order of 200 raw publishes")
    offs = [m["offset"] for m in got]
    expect_eq(offs, list(range(offs[0], offs[0] + 200)), "offsets consecutive")
    await ws.close()
    await obs.close()


async def test_raw_publish_only():
    s = srv()
    t = topic("rpo")
    obs = await jconnect(s)
    await obs.sub(t)
    ws = await rconnect(s, "publish=" + t)
    await ws.send("x1")
    check_msg(await obs.msg(), t, data="x1")
    await ws.close()
    await obs.close()


async def test_no_publish_topic_1008():
    s = srv()
    for query in ("subscribe=" + topic("np"), ""):
        ws = await rconnect(s, query)
        await ws.send("hi")
        await expect_closed(ws, 1008, 10, "raw ?%s, a text frame without a publish topic" % query)
    ws = await rconnect(s, "subscribe=" + topic("np"))
    await ws.send(b"bin")
    await expect_closed(ws, 1008, 10, "raw, a binary frame without a publish topic")


async def test_bad_query_400_403():
    s = srv()
    cases = [
        ("subscribe=a..b", 400), ("subscribe=" + q("a b"), 400), ("subscribe=" + "y" * 201, 400),
        ("subscribe=a*", 400), ("subscribe=ok,a.>.b", 400), ("publish=a.*", 400), ("publish=a.>", 400),
        ("publish=" + q("a b"), 400), ("publish=" + "y" * 201, 400), ("subscribe=ok&publish=*", 400),
        ("subscribe=user:bob", 403), ("subscribe=ok,user:bob", 403),
    ]
    for query, want in cases:
        got = await handshake_status(s, "/ws?" + query)
        expect_eq(got, want, "GET /ws?%s (raw dialect): handshake status" % query)
    # 200 bytes is fine
    t = topic("ok")
    t200 = t + "." + "x" * (200 - len(t) - 1)
    ws = await rconnect(s, "subscribe=%s&publish=%s" % (t200, t200))
    await ws.send("long")
    expect_eq(await recv_timeout(ws, 10, "200-byte topic"), "long", "200-byte topic round trip")
    await ws.close()


async def test_raw_pattern_subscribe_at_most_once():
    s = srv()
    base = topic("rpat")
    ws = await rconnect(s, "subscribe=%s.a,%s.*,%s.>" % (base, base, base))
    publish(s, base + ".a", "A")
    publish(s, base + ".b", "B")
    publish(s, base + ".b.c", "C")
    publish(s, base + ".end", "END")
    got = await recv_n(ws, 4, "raw with overlapping subscriptions")
    expect_eq(got, ["A", "B", "C", "END"], "each message once")
    await quiet(ws)
    await ws.close()


async def active_at_101(s, rounds, what):
    pub = await jconnect(s)
    for i in range(rounds):
        t = topic("r101")
        ws = await rconnect(s, "subscribe=" + t)
        # right after the 101: from another client (another connection,
        # maybe another worker), then through the API
        await pub.ack("pub", topic=t, data="first%d" % i)
        publish(s, t, "second%d" % i)
        got = await recv_n(ws, 2, "%s round %d" % (what, i))
        expect_eq(got, ["first%d" % i, "second%d" % i], "%s round %d: messages published right after the 101" % (what, i))
        await ws.close()
    await pub.close()


async def test_active_at_101_one_worker():
    await active_at_101(srv(), 30, "1 worker")


async def test_active_at_101_two_workers():
    await active_at_101(shared(workers=2), 60, "2 workers")


async def test_raw_since():
    s = srv()
    t, u = topic("rs"), topic("rs2")
    for i in range(1, 21):
        publish(s, t, "m%d" % i)
    publish(s, u, "u1")
    ws = await rconnect(s, "subscribe=%s,%s&since=%s:17" % (t, u, t))
    got = await recv_n(ws, 3, "since=%s:17" % t)
    expect_eq(got, ["m18", "m19", "m20"], "since=t:17: the missed messages in order")
    publish(s, t, "m21")
    publish(s, u, "u2")  # u had no since: live only
    got = await recv_n(ws, 2, "live after the resume")
    expect_eq(sorted(got), ["m21", "u2"], "then live messages")
    await ws.close()
    ws = await rconnect(s, "subscribe=%s&since=%s:0" % (t, t))
    got = await recv_n(ws, 21, "since=t:0")
    expect_eq(got, ["m%d" % i for i in range(1, 22)], "since=t:0: everything retained")
    await ws.close()
    ws = await rconnect(s, "subscribe=%s,%s&since=%s:19,%s:0" % (t, u, t, u))
    got = await recv_n(ws, 4, "since=t:19,u:0")
    expect_eq(sorted(got), ["m20", "m21", "u1", "u2"], "since on two topics")
    expect_eq([g for g in got if g.startswith("m")], ["m20", "m21"], "order within t")
    expect_eq([g for g in got if g.startswith("u")], ["u1", "u2"], "order within u")
    await ws.close()
    ws = await rconnect(s, "subscribe=%s&since=%s:21" % (t, t))
    ws2 = await rconnect(s, "subscribe=%s&since=%s:500" % (t, t))
    publish(s, t, "m22")
    expect_eq(await recv_timeout(ws, 10, "since=current"), "m22", "since = the current offset: live only")
    expect_eq(await recv_timeout(ws2, 10, "since ahead"), "m22", "since ahead of the current offset: live only")
    await ws.close()
    await ws2.close()


if __name__ == "__main__":
    main([
        test_raw_receives_kinds,
        test_raw_publishes_frames,
        test_raw_publish_only,
        test_no_publish_topic_1008,
        test_bad_query_400_403,
        test_raw_pattern_subscribe_at_most_once,
        test_active_at_101_one_worker,
        test_active_at_101_two_workers,
        test_raw_since,
    ], timeout_each=60)
