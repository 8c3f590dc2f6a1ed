"""
tests/gateway/test_json.py: the JSON dialect (subprotocol duplex.v1) of
GATEWAY.md against a real `duplex serve --api-key K`, with Python
websockets clients:
  - sub/unsub/pub/presence/refresh replies and their fields; ids echoed
    (0 and 2^53-1 too) and absent when not sent; resubscribe acks again and
    changes nothing; unsub of a topic not subscribed acks; sub without since
    delivers only what is published after the ack;
  - kinds: data string -> text, other JSON -> json, b64 -> binary, each
    delivered as published (through the JSON and the raw dialect);
  - patterns `*` (one segment) and `>` (one or more), the pattern ack
    (topic = pattern, offset 0, epoch "", recovered false), `since` on a
    pattern -> 4400, `pattern` in msgs only through a pattern subscription,
    at most once with overlapping exact + pattern subscriptions, patterns
    never match user: topics;
  - errors, each answered with err and the connection surviving: bad JSON,
    not an object, missing/bad fields, bad id, unknown op (4404), a binary
    frame (4400), bad and oversize topics, publish to a pattern (4400),
    user:bob anonymously (4403), over --max-subs (4413);
  - no configuration: Origin must match Host, the startup line says the
    gateway runs open; --demo's ticker; a frame over 1 MiB closes 1009; a
    graceful stop closes gateway connections 1012 and /echo ones 1001;
  - the fan-out cases again on --workers 2 (NAME_2workers).
"""
import base64
import json

from gwtest import (check, check_msg, check_sub_ack, expect_eq, http, jconnect, main, publish, q,
                    rconnect, recv_timeout, shared, topic)


W = 1  # workers of the shared server the cases use


def srv():
    return shared(workers=W)


def on_two_workers(f):
    """The same case against a `--workers 2` server (connections spread over
    both by SO_REUSEPORT: fan-out, patterns and presence across workers)."""
    async def g():
        global W
        W = 2
        try:
            await f()
        finally:
            W = 1
    g.__name__ = f.__name__ + "_2workers"
    return g


async def test_subprotocol_and_sub_ack_fields():
    s = srv()
    c = await jconnect(s)
    t = topic("ack")
    a = await c.sub(t)
    # a topic never published to: offset 0, recovered false, an epoch string
    check_sub_ack(a, t, offset=0, recovered=False)
    p = publish(s, t, "one")
    expect_eq(p["offset"], 1, "first publish on a new topic: offset")
    m = await c.msg(what="the publish after the ack")
    check_msg(m, t, offset=1, epoch=p["epoch"], data="one")
    # a second connection subscribing now acks with the current offset and epoch
    c2 = await jconnect(s)
    a2 = await c2.sub(t)
    check_sub_ack(a2, t, offset=1, epoch=p["epoch"], recovered=False)
    p2 = publish(s, t, "two")
    # only messages published after the ack: the first msg c2 sees is offset 2
    m2 = await c2.msg(what="c2's first msg")
    check_msg(m2, t, offset=2, epoch=p["epoch"], data="two")
    check_msg(await c.msg(), t, offset=2, data="two")
    expect_eq(p2["offset"], 2, "second publish offset")
    await c.close()
    await c2.close()


async def test_ids_echoed_and_absent():
    s = srv()
    c = await jconnect(s)
    t = topic("ids")
    for i in (0, 1, 77, 2 ** 53 - 1):
        r = await c.ack("sub", _id=i, topic=t)
        check_sub_ack(r, t, recovered=False)
        await c.ack("unsub", _id=i, topic=t)
        r = await c.ack("pub", _id=i, topic=t, data="x")
        await c.ack("presence", _id=i, topic=t)
    # no id: no id in any reply (req() checks the absence)
    r = await c.ack("sub", _id=None, topic=t)
    check_sub_ack(r, t, recovered=False)
    r = await c.ack("pub", _id=None, topic=t, data="y")
    check(isinstance(r.get("offset"), int) and isinstance(r.get("epoch"), str), "pub ack fields: %r" % r)
    await c.msg()  # our own publish
    r = await c.ack("presence", _id=None, topic=t)
    await c.ack("unsub", _id=None, topic=t)
    e = await c.err("nope", 4404, _id=None)
    check("id" not in e, "err to a request without id has an id: %r" % e)
    await c.close()


async def test_bad_ids_4400_without_id():
    c = await jconnect(srv())
    for bad in ('1.0', '1e0', '"1"', '-1', str(2 ** 53), 'null', 'true'):
        frame = '{"op":"presence","id":%s,"topic":"a"}' % bad
        await c.err_raw(frame, 4400, want_id=None)
    await c.alive()
    await c.close()


async def test_pub_ack_and_offsets():
    s = srv()
    c = await jconnect(s)
    t = topic("pub")
    first = None
    for i in range(5):
        r = await c.ack("pub", topic=t, data="m%d" % i)
        check(set(("op", "id", "offset", "epoch")) <= set(r), "pub ack fields: %r" % r)
        if first is None:
            first = r
        expect_eq(r["offset"], first["offset"] + i, "pub ack offsets go up by one")
        expect_eq(r["epoch"], first["epoch"], "pub ack epoch stays")
    expect_eq(first["offset"], 1, "first offset of a new topic")
    # the API agrees on the current offset and epoch
    p = publish(s, t, "api")
    expect_eq((p["offset"], p["epoch"]), (6, first["epoch"]), "API publish after 5 ws publishes")
    await c.close()


async def test_kinds_delivered():
    s = srv()
    t = topic("kinds")
    c = await jconnect(s)
    await c.sub(t)
    raw = await rconnect(s, "subscribe=" + t)
    pub = await jconnect(s)
    allbytes = bytes(range(256))
    cases = [
        ({"data": "héllo ✓ 𝄞"}, {"data": "héllo ✓ 𝄞"}, "héllo ✓ 𝄞"),
        ({"data": ""}, {"data": ""}, ""),
        ({"data": {"a": [1, 2, {"b": None}], "c": "d"}}, {"data": {"a": [1, 2, {"b": None}], "c": "d"}},
         ("json", {"a": [1, 2, {"b": None}], "c": "d"})),
        ({"data": 42}, {"data": 42}, ("json", 42)),
        ({"data": None}, {"data": None}, ("json", None)),
        ({"data": [True, False]}, {"data": [True, False]}, ("json", [True, False])),
        ({"b64": base64.b64encode(allbytes).decode()}, {"b64": allbytes}, allbytes),
        ({"b64": ""}, {"b64": b""}, b""),
    ]
    for body, want, rawwant in cases:
        a = await pub.ack("pub", topic=t, **body)
        m = await c.msg(what="delivery of %r" % body)
        if "b64" in want:
            check_msg(m, t, offset=a["offset"], b64=want["b64"], what="pub %r" % body)
        else:
            check("data" in m and "b64" not in m, "pub %r: delivered as %r" % (body, m))
            expect_eq(m["data"], want["data"], "pub %r: data delivered" % body)
            expect_eq(type(m["data"]), type(want["data"]), "pub %r: JSON type of data" % body)
        f = await recv_timeout(raw, 10, "raw delivery of %r" % body)
        if isinstance(rawwant, tuple):  # json: its JSON text in a text frame
            check(isinstance(f, str), "raw: json payload %r arrived in a binary frame" % body)
            expect_eq(json.loads(f), rawwant[1], "raw: json payload text")
        elif isinstance(rawwant, bytes):
            check(isinstance(f, bytes), "raw: binary payload %r arrived as text %r" % (body, f))
            expect_eq(f, rawwant, "raw: binary payload")
        else:
            check(isinstance(f, str), "raw: text payload arrived in a binary frame")
            expect_eq(f, rawwant, "raw: text payload")
    # a string that is valid JSON text stays text (kind from the JSON type)
    await pub.ack("pub", topic=t, data='{"x":1}')
    m = await c.msg()
    expect_eq(m["data"], '{"x":1}', "data string that looks like JSON: delivered as the string")
    f = await recv_timeout(raw, 10, "raw delivery")
    expect_eq(f, '{"x":1}', "raw: text")
    for x in (c, pub):
        await x.close()
    await raw.close()


async def test_resubscribe_acks_again_no_duplicate():
    s = srv()
    c = await jconnect(s)
    t = topic("resub")
    a1 = await c.sub(t)
    publish(s, t, "x")
    a2 = await c.sub(t)
    check_sub_ack(a2, t, recovered=False)
    # the first ack's offset was 0; the second acks again (with the current offset)
    expect_eq(a1["offset"], 0, "first ack")
    p = publish(s, t, "y")
    p2 = publish(s, t, "z")
    got = await c.msgs(3)
    expect_eq([m["offset"] for m in got], [1, p["offset"], p2["offset"]], "one delivery per message after resubscribing")
    await c.quiet()
    await c.close()


async def test_unsub():
    s = srv()
    c = await jconnect(s)
    t, u = topic("unsub"), topic("unsub2")
    r = await c.ack("unsub", topic=topic("never"))
    check(set(r) <= {"op", "id"}, "unsub ack has only op and id: %r" % r)
    await c.sub(t)
    await c.sub(u)
    publish(s, t, "before")
    check_msg(await c.msg(), t, data="before")
    await c.ack("unsub", topic=t)
    publish(s, t, "after")
    publish(s, u, "sentinel")
    check_msg(await c.msg(), u, data="sentinel", what="only the sentinel after unsub")
    await c.quiet()
    # unsub twice acks too
    await c.ack("unsub", topic=t)
    await c.close()


async def test_presence_ack():
    s = srv()
    t = topic("pres")
    cs = [await jconnect(s) for _ in range(3)]
    r = await cs[0].ack("presence", topic=t)
    expect_eq((r.get("count"), r.get("users")), (0, []), "presence of a topic nobody holds")
    for c in cs:
        await c.sub(t)
    raw = await rconnect(s, "subscribe=" + t)
    r = await cs[0].ack("presence", topic=t)
    expect_eq((r.get("count"), r.get("users")), (4, []),
              "presence: 3 JSON + 1 raw anonymous subscribers (users empty without auth)")
    await cs[1].ack("unsub", topic=t)
    r = await cs[0].ack("presence", topic=t)
    expect_eq(r.get("count"), 3, "presence after one unsub")
    await raw.close()
    await cs[2].close()

    async def count_is_1():
        return (await cs[0].ack("presence", topic=t)).get("count") == 1
    from gwtest import await_for
    await await_for(count_is_1, 10, "presence to drop to 1 after two connections closed")
    await cs[0].err("presence", 4400, topic="a.*")
    for c in cs[:2]:
        await c.close()


async def test_refresh():
    c = await jconnect(srv())
    # no auth configured: a refresh is answered (ack, or an err saying why),
    # with the id echoed; a missing token is malformed (4400)
    r = await c.req("refresh", token="eyJhbGciOiJIUzI1NiJ9.e30.x")
    check(r["op"] == "ack" or (r["op"] == "err" and r.get("code") in (4400, 4401)),
          "refresh with a token: expected ack (or err 4401/4400), got %r" % r)
    print("# refresh without auth configured answers %r" % r)
    if r["op"] == "ack":
        check(set(r) <= {"op", "id"}, "refresh ack has only op and id: %r" % r)
    await c.err("refresh", 4400)
    await c.err("refresh", 4400, token=5)
    await c.alive()
    await c.close()


async def test_patterns_star_and_gt():
    s = srv()
    base = topic("pat")
    c = await jconnect(s)
    a = await c.sub(base + ".*")
    check_sub_ack(a, base + ".*", offset=0, epoch="", recovered=False)
    a = await c.ack("sub", topic=base + ".x.>")
    check_sub_ack(a, base + ".x.>", offset=0, epoch="", recovered=False)
    # base.a: * ; base.a.b: nothing (* is one segment; > needs base.x);
    # base.x: * (not >: it needs one or more after x); base.x.y, base.x.y.z: >
    sends = [base + ".a", base + ".a.b", base, base + ".x", base + ".x.y", base + ".x.y.z", base + "x.y"]
    want = {base + ".a": base + ".*", base + ".x": base + ".*", base + ".x.y": base + ".x.>",
            base + ".x.y.z": base + ".x.>"}
    for t in sends:
        publish(s, t, t)
    sentinel = base + ".end"
    publish(s, sentinel, "end")
    got = []
    while True:
        m = await c.msg(what="pattern deliveries up to the sentinel")
        if m["topic"] == sentinel:
            break
        got.append(m)
    expect_eq(sorted(m["topic"] for m in got), sorted(want), "topics delivered through %s.* and %s.x.>" % (base, base))
    for m in got:
        check_msg(m, m["topic"], data=m["topic"], pattern=want[m["topic"]])
    await c.quiet()
    # a bare ">" matches every topic but user: ones
    c2 = await jconnect(s)
    await c2.sub(">")
    c3 = await jconnect(s)
    await c3.sub("*")
    publish(s, "user:bob", "private")
    publish(s, "user:bob.x", "private")
    t = topic("any")
    publish(s, t, "public")
    m = await c2.msg()
    check_msg(m, t, data="public", pattern=">", what="'>' subscriber (a user: message must not come first)")
    t1 = topic("one").replace(".", "_")  # one segment, like user:bob
    publish(s, t1, "single")
    m = await c3.msg()
    check_msg(m, t1, data="single", pattern="*", what="'*' subscriber (user:bob is one segment: it must not come first)")
    await c3.close()
    await c.close()
    await c2.close()


async def test_pattern_since_and_pub_4400():
    c = await jconnect(srv())
    await c.err("sub", 4400, topic="ps.*", since={"offset": 0, "epoch": ""})
    await c.err("sub", 4400, topic="ps.>", since={"offset": 3, "epoch": "abc"})
    for p in ("ps.*", "ps.>", "*", ">", "a.*.b"):
        await c.err("pub", 4400, topic=p, data="x")
    await c.alive()
    await c.close()


async def test_at_most_once_overlapping():
    s = srv()
    base = topic("ov")
    t = base + ".a.b"
    exact = await jconnect(s)
    for sub in (t, base + ".*.b", base + ".>", base + ".a.*", ">"):
        await exact.sub(sub)
    pats = await jconnect(s)
    pset = (base + ".*.b", base + ".>", base + ".a.*")
    for sub in pset:
        await pats.sub(sub)
    offs = []
    for i in range(5):
        offs.append(publish(s, t, "m%d" % i)["offset"])
    publish(s, base + ".z", "sentinel")  # matches base.> for both
    for i, o in enumerate(offs):
        check_msg(await exact.msg(), t, offset=o, data="m%d" % i, what="exact + patterns subscriber")
        m = await pats.msg()
        check_msg(m, t, offset=o, data="m%d" % i, pattern=m.get("pattern"), what="patterns-only subscriber")
        check(m.get("pattern") in pset, "pattern %r is not one of the matching subscriptions %r" % (m.get("pattern"), pset))
    m = await exact.msg()
    check(m["topic"] == base + ".z" and m.get("pattern") in (base + ".>", ">"), "sentinel via a pattern: %r" % m)
    m = await pats.msg()
    check_msg(m, base + ".z", data="sentinel", pattern=base + ".>")
    await exact.quiet()
    await pats.quiet()
    await exact.close()
    await pats.close()


async def test_exact_wins_then_pattern():
    """The `pattern` field follows the subscriptions held at the time:
    exact + pattern -> no pattern; exact dropped -> pattern; both dropped ->
    nothing."""
    s = srv()
    base = topic("ew")
    t = base + ".x"
    c = await jconnect(s)
    await c.sub(t)
    await c.sub(base + ".*")
    publish(s, t, "1")
    check_msg(await c.msg(), t, data="1", what="exact + pattern")
    await c.ack("unsub", topic=t)
    publish(s, t, "2")
    check_msg(await c.msg(), t, data="2", pattern=base + ".*", what="pattern only, after unsub of the exact topic")
    await c.ack("unsub", topic=base + ".*")
    publish(s, t, "3")
    u = topic("ewend")
    await c.sub(u)
    publish(s, u, "end")
    check_msg(await c.msg(), u, data="end", what="nothing from the unsubscribed pattern before the sentinel")
    await c.quiet()
    await c.close()


async def test_topic_charset():
    """Every byte of [A-Za-z0-9_.:@/-] is allowed in a topic."""
    s = srv()
    t = topic("cs") + ".AZaz09_:@/-.x-y/z@w:v"
    c = await jconnect(s)
    check_sub_ack(await c.sub(t), t, offset=0, recovered=False)
    await c.ack("pub", topic=t, data="ws")
    check_msg(await c.msg(), t, offset=1, data="ws")
    publish(s, t, "api")
    check_msg(await c.msg(), t, offset=2, data="api", what="API publish to %s (percent-encoded)" % t)
    raw = await rconnect(s, "subscribe=" + q(t))
    publish(s, t, "raw")
    check_msg(await c.msg(), t, offset=3, data="raw")
    expect_eq(await recv_timeout(raw, 10, "raw"), "raw", "raw subscriber with a percent-encoded topic")
    await raw.close()
    await c.close()


async def test_user_topic_forbidden():
    c = await jconnect(srv())
    await c.err("sub", 4403, topic="user:bob")
    await c.err("sub", 4403, topic="user:bob", since={"offset": 0, "epoch": "x"})
    # a user: pattern could match nothing: refused as malformed
    r = await c.req("sub", topic="user:*")
    check(r["op"] == "err" and r.get("code") in (4400, 4403), "sub user:*: expected err 4400/4403, got %r" % r)
    await c.alive()
    await c.close()


async def test_malformed_requests_survive():
    c = await jconnect(srv())
    await c.err_raw("{not json", 4400)
    await c.err_raw("", 4400)
    await c.err_raw("[1,2]", 4400)
    await c.err_raw('"sub"', 4400)
    await c.err_raw('{"op":"sub","topic":"a"} x', 4400)
    await c.err_raw('{"op":"sub","topic":"a","topic":"b"}', 4400)
    await c.err_raw('{"topic":"a"}', 4400)
    await c.err_raw('{"op":5,"id":9}', 4400, want_id=9)
    await c.err_raw('{"op":"nope","id":3}', 4404, want_id=3)
    await c.err_raw('{"op":"SUB","id":4,"topic":"a"}', 4404, want_id=4)
    await c.err_raw(b'{"op":"sub","topic":"a"}', 4400)  # a binary frame
    await c.err_raw(b"\x00\x01", 4400)
    await c.err("sub", 4400)
    await c.err("sub", 4400, topic=5)
    await c.err("unsub", 4400)
    await c.err("presence", 4400)
    await c.err("pub", 4400, topic="a")
    await c.err("pub", 4400, topic="a", data="x", b64="eA==")
    await c.err("pub", 4400, topic="a", b64="not base64!")
    await c.err("pub", 4400, topic="a", b64="AB==")
    await c.err("pub", 4400, data="x")
    await c.err("sub", 4400, topic="a", since={"offset": "1", "epoch": "e"})
    await c.err("sub", 4400, topic="a", since={"offset": 1, "epoch": 5})
    await c.err("sub", 4400, topic="a", since={"offset": -1, "epoch": "e"})
    await c.err("sub", 4400, topic="a", since={"offset": 2 ** 53, "epoch": "e"})
    await c.err("sub", 4400, topic="a", since=5)
    for bad in ("", "a b", "a..b", ".a", "a.", "a*", "é", "a,b", "a\u0000b"):
        await c.err("sub", 4400, topic=bad)
        await c.err("pub", 4400, topic=bad, data="x")
    await c.alive()
    await c.close()


async def test_topic_length():
    s = srv()
    c = await jconnect(s)
    t = topic("L")
    t200 = t + "." + "x" * (200 - len(t) - 1)
    expect_eq(len(t200), 200, "test topic length")
    a = await c.sub(t200)
    check_sub_ack(a, t200, recovered=False)
    r = await c.ack("pub", topic=t200, data="long")
    check_msg(await c.msg(), t200, offset=r["offset"], data="long", what="200-byte topic")
    for op in ("sub", "pub", "presence"):
        kw = {"data": "x"} if op == "pub" else {}
        await c.err(op, 4400, topic="y" * 201, **kw)
    await c.err("sub", 4400, topic="z" * 100000)
    await c.alive()
    await c.close()


async def test_unsub_bad_topic_4400():
    """GATEWAY.md: a bad topic is 4400 (unsub of a valid topic not
    subscribed acks; a name that is no topic is malformed)."""
    c = await jconnect(srv())
    for bad in ("y" * 201, "a..b", "a b", ""):
        await c.err("unsub", 4400, topic=bad)
    await c.alive()
    await c.close()


async def test_max_subs_4413():
    c = await jconnect(srv())
    base = topic("cap")
    for i in range(100):
        await c.sub("%s.%d" % (base, i))
    await c.err("sub", 4413, topic=base + ".over")
    await c.err("sub", 4413, topic=base + ".*")
    # a resubscribe changes nothing and still acks
    await c.sub(base + ".0")
    await c.ack("unsub", topic=base + ".0")
    await c.sub(base + ".new")
    await c.alive()
    await c.close()


async def test_api_key_not_needed_on_ws():
    """(The API key guards /api/* only: /ws needs no Authorization.)"""
    s = srv()
    r = http(s, "GET", "/healthz", key=None)
    expect_eq(r.status, 200, "GET /healthz")
    c = await jconnect(s)
    await c.alive()
    await c.close()


async def test_origin():
    """No configuration: requests without Origin are accepted (all the
    tests above), a browser's Origin must match Host."""
    s = srv()
    host = "127.0.0.1:%d" % s.port
    c = await jconnect(s, origin="http://" + host)
    await c.alive()
    await c.close()
    for bad in ("http://evil.example", "http://127.0.0.1:1", "null"):
        from gwtest import handshake_status_origin
        got = await handshake_status_origin(s, "/ws", bad, ["duplex.v1"])
        expect_eq(got, 403, "GET /ws (JSON dialect) with Origin %s and Host %s" % (bad, host))
        got = await handshake_status_origin(s, "/ws?subscribe=a", bad, None)
        expect_eq(got, 403, "GET /ws?subscribe=a (raw) with Origin %s and Host %s" % (bad, host))


async def test_startup_line_and_demo():
    """`duplex serve` with no auth says it runs open; --demo publishes
    {"n","t","price"} on demo.ticker every --demo-interval."""
    import time as _t
    s = shared("--demo", "--demo-interval", "100ms")
    check("development" in s.log(), "no startup line saying the gateway runs open for development:\n" + s.log()[:2000])
    c = await jconnect(s)
    a = await c.sub("demo.ticker")
    check_sub_ack(a, "demo.ticker", recovered=False)
    got = await c.msgs(3, timeout=5, what="demo.ticker messages")
    now = _t.time() * 1000
    for i, m in enumerate(got):
        check_msg(m, "demo.ticker", offset=a["offset"] + 1 + i, what="demo ticker")
        d = m.get("data")
        check(isinstance(d, dict) and isinstance(d.get("n"), int) and isinstance(d.get("t"), int)
              and isinstance(d.get("price"), (int, float)) and not isinstance(d.get("price"), bool),
              "demo.ticker data: expected {n:int, t:unix ms, price:number}, got %r" % d)
        check(abs(d["t"] - now) < 60000, "demo.ticker t=%r is not the current unix time in ms (%d)" % (d["t"], now))
    expect_eq([m["data"]["n"] for m in got], [got[0]["data"]["n"] + i for i in range(3)], "demo.ticker n counts up")
    await c.close()


async def test_graceful_stop_1012():
    """A graceful stop closes gateway connections with 1012 (service
    restart) and /echo ones with 1001."""
    import websockets as _w
    from gwtest import Serve, expect_closed, rconnect
    s = Serve()
    j = await jconnect(s)
    await j.sub(topic("stop"))
    r = await rconnect(s, "subscribe=" + topic("stop"))
    e = await _w.connect(s.url("/echo"), open_timeout=10, ping_interval=None)
    import os as _os
    import signal as _sig
    _os.kill(s.proc.pid, _sig.SIGTERM)
    await expect_closed(j.ws, 1012, 10, "a JSON-dialect connection when the server stops gracefully")
    await expect_closed(r, 1012, 10, "a raw-dialect connection when the server stops gracefully")
    await expect_closed(e, 1001, 10, "an /echo connection when the server stops gracefully")
    s.stop()


async def test_message_too_big_1009():
    s = srv()
    c = await jconnect(s)
    await c.send('{"op":"pub","topic":"big","data":"%s"}' % ("x" * (1 << 20)))
    from gwtest import expect_closed
    await expect_closed(c.ws, 1009, 10, "a JSON frame over --max-message (1 MiB)")


if __name__ == "__main__":
    main([
        test_subprotocol_and_sub_ack_fields,
        test_ids_echoed_and_absent,
        test_bad_ids_4400_without_id,
        test_pub_ack_and_offsets,
        test_kinds_delivered,
        test_resubscribe_acks_again_no_duplicate,
        test_unsub,
        test_presence_ack,
        test_refresh,
        test_patterns_star_and_gt,
        test_pattern_since_and_pub_4400,
        test_at_most_once_overlapping,
        test_exact_wins_then_pattern,
        test_topic_charset,
        test_user_topic_forbidden,
        test_malformed_requests_survive,
        test_topic_length,
        test_unsub_bad_topic_4400,
        test_max_subs_4413,
        test_api_key_not_needed_on_ws,
        test_origin,
        test_startup_line_and_demo,
        test_message_too_big_1009,
        test_graceful_stop_1012,
    ] + [on_two_workers(f) for f in (
        test_subprotocol_and_sub_ack_fields,
        test_kinds_delivered,
        test_resubscribe_acks_again_no_duplicate,
        test_unsub,
        test_presence_ack,
        test_patterns_star_and_gt,
        test_at_most_once_overlapping,
        test_max_subs_4413,
    )], timeout_each=60)
