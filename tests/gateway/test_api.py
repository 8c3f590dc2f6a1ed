"""
tests/gateway/test_api.py: the HTTP API of GATEWAY.md against a real
`duplex serve --api-key K`, with http.client:
  - /api/publish: the kind from Content-Type (application/json -> json,
    valid JSON only; text/* -> text, UTF-8 only; else binary), each
    delivered right to a JSON-dialect subscriber; 200 {topic,offset,epoch};
    a pattern / too long / bad / missing topic -> 400; over the body limit
    (1 MiB by default) -> 413, exactly 1 MiB accepted; wrong method -> 405;
  - the key: missing or wrong -> 401 on every /api/* path before any other
    check (unknown path, wrong method, bad topic); with no key configured
    -> 403 saying how to set one; DUPLEX_API_KEY sets it too;
  - keep-alive: 2000 publishes on one connection, offsets 1..2000;
  - /api/history: shape, since, limit (default 100, cap 1000), kinds,
    an unknown topic (offset 0, no messages), bad topic -> 400;
  - /api/presence: counts JSON, raw and SSE subscribers (anonymous), users
    empty without auth; /api/disconnect?user=U: the reply (no users without
    auth, so nobody is disconnected); /healthz 200; /metrics in Prometheus
    text format with counters that move (publishes, deliveries, connections
    by dialect).
"""
import http.client as httpclient
import json
import socket

from gwtest import (KEY, Fail, Serve, check, check_msg, expect_eq, expect_error, expect_status, http, jconnect,
                    main, metric_sum, metrics, publish, publish_many, q, rconnect, recv_timeout, say, shared, topic, await_for)


def srv():
    return shared()


async def test_publish_kinds():
    s = srv()
    t = topic("ak")
    c = await jconnect(s)
    await c.sub(t)
    cases = [
        ("application/json", b'{"a":[1,2.5,"x"],"b":{"c":null}}', {"data": {"a": [1, 2.5, "x"], "b": {"c": None}}}),
        ("application/json; charset=utf-8", b'"str"', {"data": "str"}),
        ("application/json", b" 7 ", {"data": 7}),
        ("text/plain", "héllo ✓".encode(), {"data": "héllo ✓"}),
        ("text/plain; charset=utf-8", b"", {"data": ""}),
        ("text/csv", b"a,b\n1,2", {"data": "a,b\n1,2"}),
        ("application/octet-stream", bytes(range(256)), {"b64": bytes(range(256))}),
        ("image/png", b"\x89PNG", {"b64": b"\x89PNG"}),
        (None, b"\xff\xfe no type", {"b64": b"\xff\xfe no type"}),
        ("application/x-www-form-urlencoded", b"a=1", {"b64": b"a=1"}),
        ("Application/JSON", b"[1]", {"data": [1]}),  # media types are case-insensitive (RFC 9110 8.3.1)
        ("Text/Plain", b"hi", {"data": "hi"}),
    ]
    for ctype, body, want in cases:
        p = publish(s, t, body, ctype)
        m = await c.msg(what="delivery of a publish with Content-Type %r" % ctype)
        if "b64" in want:
            check_msg(m, t, offset=p["offset"], epoch=p["epoch"], b64=want["b64"], what="Content-Type %r" % ctype)
        else:
            check_msg(m, t, offset=p["offset"], epoch=p["epoch"], what="Content-Type %r" % ctype)
            expect_eq(m.get("data"), want["data"], "Content-Type %r body %r: data delivered" % (ctype, body))
            expect_eq(type(m.get("data")), type(want["data"]), "Content-Type %r: JSON type" % ctype)
    # a JSON string from application/json is kind json: the raw dialect gets its JSON text
    ws = await rconnect(s, "subscribe=" + t)
    publish(s, t, b'"q"', "application/json")
    expect_eq(await recv_timeout(ws, 10, "raw"), '"q"', "application/json string to a raw subscriber")
    publish(s, t, b"q", "text/plain")
    expect_eq(await recv_timeout(ws, 10, "raw"), "q", "text/plain to a raw subscriber")
    await ws.close()
    await c.close()


async def test_publish_400s():
    s = srv()
    t = topic("a400")
    c = await jconnect(s)
    await c.sub(t)
    for ctype, body in (("application/json", b"{bad"), ("application/json", b""), ("application/json", b"[1,"),
                        ("application/json", b"{} {}"), ("application/json", b"\xff"),
                        ("text/plain", b"\xff\xfe"), ("text/plain", b"a\xc0\xafb"), ("text/html", b"\xed\xa0\x80")):
        r = http(s, "POST", "/api/publish?topic=" + t, body=body, headers={"Content-Type": ctype})
        expect_error(r, 400, "Content-Type %s body %r" % (ctype, body))
    for bad in ("a.*", "a.>", "*", ">", "a..b", "a b", "é", "y" * 201, ""):
        r = http(s, "POST", "/api/publish?topic=" + q(bad), body="x", headers={"Content-Type": "text/plain"})
        expect_error(r, 400, "publish to %r" % bad[:30])
    r = http(s, "POST", "/api/publish", body="x", headers={"Content-Type": "text/plain"})
    expect_error(r, 400, "publish without topic")
    # nothing of that was published
    p = publish(s, t, "ok")
    expect_eq(p["offset"], 1, "offset after refused publishes")
    check_msg(await c.msg(), t, offset=1, data="ok", what="the only delivery")
    await c.quiet()
    t200 = t + "." + "x" * (200 - len(t) - 1)
    publish(s, t200, "long")
    await c.close()


async def test_publish_chunked_body():
    """A body sent with Transfer-Encoding: chunked (what a backend streaming
    stdin sends) is published like any other."""
    s = srv()
    t = topic("chunk")
    c = await jconnect(s)
    await c.sub(t)
    conn = httpclient.HTTPConnection("127.0.0.1", s.port, timeout=20)
    conn.request("POST", "/api/publish?topic=" + t, body=iter([b'{"a":', b'[1,2]', b"}"]),
                 headers={"Authorization": "Bearer " + KEY, "Content-Type": "application/json"},
                 encode_chunked=True)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    check(r.status == 200, "POST /api/publish with a chunked body: %d %r" % (r.status, body[:200]))
    check_msg(await c.msg(), t, offset=1, data={"a": [1, 2]}, what="chunked publish")
    await c.close()


def test_publish_size_limit():
    s = srv()
    t = topic("a413")
    p = publish(s, t, b"\x00" * (1 << 20), "application/octet-stream")
    expect_eq(p["offset"], 1, "a 1 MiB body is accepted")
    r = http(s, "POST", "/api/publish?topic=" + t, body=b"\x00" * ((1 << 20) + 1),
             headers={"Content-Type": "application/octet-stream"})
    expect_error(r, 413, "a body of 1 MiB + 1")
    h = http(s, "GET", "/api/history?topic=" + t)
    expect_eq(h.json()["offset"], 1, "nothing published by the 413")


def test_api_key_401_first():
    s = srv()
    t = topic("a401")
    for auth in (None, "Bearer wrong", "Bearer " + KEY + "x", "bearer-less " + KEY, "Basic " + KEY, "Bearer"):
        hdr = {"Authorization": auth} if auth else {}
        for method, path in (("POST", "/api/publish?topic=" + t), ("GET", "/api/history?topic=" + t),
                             ("GET", "/api/presence?topic=" + t), ("POST", "/api/disconnect?user=bob"),
                             ("GET", "/api/nonexistent"), ("GET", "/api/"), ("GET", "/api/publish?topic=" + t),
                             ("POST", "/api/publish?topic=a.*"), ("DELETE", "/api/history")):
            r = http(s, method, path, body="x" if method == "POST" else None, key=None, headers=hdr)
            expect_error(r, 401, "Authorization %r" % auth)
    h = http(s, "GET", "/api/history?topic=" + t)
    expect_eq(h.json()["offset"], 0, "nothing was published without the key")


def test_401_before_413():
    """GATEWAY.md: a missing or wrong key gives 401 on every /api/* path,
    before any other check: an oversize body too."""
    s = srv()
    for hdr in ({}, {"Authorization": "Bearer wrong"}):
        r = http(s, "POST", "/api/publish?topic=" + topic("k413"), body=b"\x00" * ((1 << 20) + 1), key=None,
                 headers=dict(hdr, **{"Content-Type": "application/octet-stream"}))
        expect_error(r, 401, "a body of 1 MiB + 1 with Authorization %r" % hdr.get("Authorization"))


def test_api_404_405_with_key():
    s = srv()
    t = topic("a405")
    expect_error(http(s, "GET", "/api/nonexistent"), 404)
    for method, path in (("GET", "/api/publish?topic=" + t), ("PUT", "/api/publish?topic=" + t),
                         ("POST", "/api/history?topic=" + t), ("POST", "/api/presence?topic=" + t),
                         ("GET", "/api/disconnect?user=bob")):
        r = http(s, method, path, body="x" if method in ("POST", "PUT") else None)
        expect_error(r, 405)


def test_no_key_configured_403():
    s = Serve(api_key=None)
    try:
        for auth in (None, "Bearer " + KEY, "Bearer anything"):
            hdr = {"Authorization": auth} if auth else {}
            for method, path in (("POST", "/api/publish?topic=a"), ("GET", "/api/history?topic=a"),
                                 ("GET", "/api/presence?topic=a"), ("POST", "/api/disconnect?user=bob")):
                r = http(s, method, path, body="x" if method == "POST" else None, key=None, headers=hdr)
                j = expect_error(r, 403, "no --api-key configured, Authorization %r" % auth)
                check("api-key" in j["error"] or "DUPLEX_API_KEY" in j["error"],
                      "the 403 does not say how to set a key: %r" % j)
        expect_status(http(s, "GET", "/healthz", key=None), 200)
    finally:
        s.stop()


def test_env_api_key():
    s = Serve(api_key=None, env={"DUPLEX_API_KEY": "envkey123"})
    try:
        p = publish(s, topic("env"), "x", key="envkey123")
        expect_eq(p["offset"], 1, "publish with the key from DUPLEX_API_KEY")
        expect_error(http(s, "POST", "/api/publish?topic=a", body="x", key=KEY), 401)
    finally:
        s.stop()


def test_keepalive_2000_publishes():
    s = srv()
    t = topic("ka")
    c = httpclient.HTTPConnection("127.0.0.1", s.port, timeout=20)
    c.connect()
    local = c.sock.getsockname()
    hdr = {"Authorization": "Bearer " + KEY, "Content-Type": "application/json"}
    for i in range(1, 2001):
        c.request("POST", "/api/publish?topic=" + t, body='{"i":%d}' % i, headers=hdr)
        check(c.sock is not None and c.sock.getsockname() == local,
              "publish %d: the client had to reconnect (the server closed the keep-alive connection)" % i)
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            raise Fail("keep-alive publish %d: %d %r" % (i, r.status, body))
        j = json.loads(body)
        if j.get("offset") != i:
            raise Fail("keep-alive publish %d: offset %r" % (i, j))
        conn_hdr = (r.getheader("Connection") or "").lower()
        if i < 2000 and "close" in conn_hdr:
            raise Fail("publish %d answered with Connection: close (keep-alive ended early)" % i)
    c.close()
    h = http(s, "GET", "/api/history?topic=%s&since=1990" % t)
    expect_eq([m["data"]["i"] for m in h.json()["messages"]], list(range(1991, 2001)), "the last ten in history")


def test_history():
    s = srv()
    t = topic("ah")
    pubs = [publish(s, t, '{"n":1}', "application/json"), publish(s, t, "two", "text/plain"),
            publish(s, t, b"\x03", "application/octet-stream")]
    for i in range(4, 251):
        publish(s, t, "m%d" % i)
    e = pubs[0]["epoch"]
    r = http(s, "GET", "/api/history?topic=" + t)
    expect_status(r, 200)
    check((r.header("Content-Type") or "").startswith("application/json"), "history Content-Type %r" % r.header("Content-Type"))
    h = r.json()
    expect_eq((h.get("topic"), h.get("epoch"), h.get("offset")), (t, e, 250), "history topic/epoch/offset")
    ms = h.get("messages")
    check(isinstance(ms, list), "history messages: %r" % h)
    expect_eq(len(ms), 100, "default limit")
    expect_eq([m["offset"] for m in ms], list(range(1, 101)), "history offsets (ascending, from since+1)")
    check_msg(ms[0], t, offset=1, epoch=e, data={"n": 1}, what="history json")
    check_msg(ms[1], t, offset=2, epoch=e, data="two", what="history text")
    check_msg(ms[2], t, offset=3, epoch=e, b64=b"\x03", what="history binary")
    for m in ms:
        check("pattern" not in m, "history msg with pattern: %r" % m)
    h = http(s, "GET", "/api/history?topic=%s&since=245" % t).json()
    expect_eq([m["offset"] for m in h["messages"]], [246, 247, 248, 249, 250], "since=245")
    h = http(s, "GET", "/api/history?topic=%s&since=10&limit=3" % t).json()
    expect_eq([m["offset"] for m in h["messages"]], [11, 12, 13], "since=10&limit=3")
    h = http(s, "GET", "/api/history?topic=%s&since=250" % t).json()
    expect_eq((h["offset"], h["messages"]), (250, []), "since = current")
    h = http(s, "GET", "/api/history?topic=%s&since=999" % t).json()
    expect_eq(h["messages"], [], "since ahead")
    u = topic("unknown")
    h = http(s, "GET", "/api/history?topic=" + u).json()
    check(h.get("topic") == u and h.get("offset") == 0 and h.get("messages") == [] and isinstance(h.get("epoch"), str),
          "unknown topic: expected {topic, epoch, offset 0, messages []}, got %r" % h)
    for bad in ("a.*", ">", "a..b", "y" * 201):
        expect_error(http(s, "GET", "/api/history?topic=" + q(bad)), 400, "history of %r" % bad[:20])
    expect_error(http(s, "GET", "/api/history"), 400, "history without topic")
    for bad in ("since=abc", "since=-1", "limit=abc", "limit=-1", "since=1e3"):
        expect_error(http(s, "GET", "/api/history?topic=%s&%s" % (t, bad)), 400, "history with %s" % bad)


def test_history_default_retention():
    """No configuration: a topic keeps its last 1,000 messages; a since
    below the oldest retained starts at the oldest."""
    s = srv()
    t = topic("ret")
    offs = publish_many(s, t, ["m%d" % i for i in range(1, 1006)])
    expect_eq(offs, list(range(1, 1006)), "offsets of 1005 publishes")
    h = http(s, "GET", "/api/history?topic=%s&limit=1000" % t).json()
    expect_eq([m["offset"] for m in h["messages"]], list(range(6, 1006)), "default history: the last 1000")
    h = http(s, "GET", "/api/history?topic=%s&since=3&limit=2" % t).json()
    expect_eq([m["offset"] for m in h["messages"]], [6, 7], "since below the oldest retained: from the oldest")


async def test_echo_endpoint():
    import websockets as _w
    s = srv()
    e = await _w.connect(s.url("/echo"), open_timeout=10, ping_interval=None, max_size=None)
    e2 = await _w.connect(s.url("/echo"), open_timeout=10, ping_interval=None)
    for x in ("text ✓", b"\x00bin", "", b"x" * 70000):
        await e.send(x)
        expect_eq(await recv_timeout(e, 10, "the echo of %r" % (x[:10],)), x, "/echo")
    # an /echo connection keeps no gateway record, but is counted while open
    expect_eq(metric_sum(metrics(s), "duplex_connections", dialect="echo")[0], 2.0, "echo connections open")
    await e.close()
    await e2.close()
    await await_for(lambda: metric_sum(metrics(s), "duplex_connections", dialect="echo")[0] == 0.0, 10,
                    "the echo gauge back to 0 after both closed")


def test_history_limit_cap():
    s = shared("--history", "2000")
    t = topic("acap")
    c = httpclient.HTTPConnection("127.0.0.1", s.port, timeout=20)
    for i in range(1, 1201):
        c.request("POST", "/api/publish?topic=" + t, body="m%d" % i,
                  headers={"Authorization": "Bearer " + KEY, "Content-Type": "text/plain"})
        r = c.getresponse()
        r.read()
        check(r.status == 200, "publish %d: %d" % (i, r.status))
    c.close()
    h = http(s, "GET", "/api/history?topic=%s&limit=5000" % t).json()
    expect_eq(len(h["messages"]), 1000, "limit=5000 is capped at 1000")
    expect_eq((h["messages"][0]["offset"], h["messages"][-1]["offset"]), (1, 1000), "capped page")
    h = http(s, "GET", "/api/history?topic=%s&since=1000&limit=1000" % t).json()
    expect_eq([m["offset"] for m in h["messages"]], list(range(1001, 1201)), "second page")


async def test_presence():
    s = srv()
    t = topic("apr")
    r = http(s, "GET", "/api/presence?topic=" + t)
    expect_status(r, 200)
    expect_eq(r.json(), {"count": 0, "users": []}, "presence of an unheld topic")
    j1, j2 = await jconnect(s), await jconnect(s)
    await j1.sub(t)
    await j2.sub(t)
    raw = await rconnect(s, "subscribe=" + t)
    sse = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    sse.sendall(("GET /sse?subscribe=%s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n" % t).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sse.recv(4096)
    check(b" 200 " in head.split(b"\r\n")[0], "SSE subscribe: %r" % head[:200])

    def pres():
        return http(s, "GET", "/api/presence?topic=" + t).json()
    p = await await_for(lambda: pres().get("count") == 4 and pres(), 10,
                        "presence count 4 (2 JSON + raw + SSE), last %r" % pres())
    expect_eq(p, {"count": 4, "users": []}, "presence: anonymous subscribers counted, no users without auth")
    await j2.close()
    sse.close()
    await await_for(lambda: pres().get("count") == 2, 10, "presence to drop to 2 after two closed, last %r" % pres())
    for bad in ("a.*", "", "a..b"):
        expect_error(http(s, "GET", "/api/presence?topic=" + q(bad)), 400, "presence of %r" % bad)
    await j1.close()
    await raw.close()


async def test_disconnect_user():
    s = srv()
    t = topic("adc")
    c = await jconnect(s)
    await c.sub(t)
    r = http(s, "POST", "/api/disconnect?user=bob")
    expect_status(r, 200, "disconnect a user that has no connection")
    j = r.json()
    check(isinstance(j, dict), "disconnect reply: %r" % j)
    say("# POST /api/disconnect?user=bob answers %r" % j)
    expect_error(http(s, "POST", "/api/disconnect"), 400, "disconnect without user")
    # the anonymous connection is untouched
    await c.alive()
    publish(s, t, "still here")
    check_msg(await c.msg(), t, data="still here")
    await c.close()


def test_healthz():
    s = srv()
    r = http(s, "GET", "/healthz", key=None)
    expect_status(r, 200)


async def test_metrics_move():
    s = srv()
    m0 = metrics(s)
    names = sorted({n for n, _ in m0})
    say("# metrics: %s" % " ".join(names))
    pub0, npub = metric_sum(m0, "publishes_total", result="accepted")
    check(npub, "no metric named *publish* in /metrics: %s" % names)
    del0, ndel = metric_sum(m0, "deliver")
    check(ndel, "no metric named *deliver* in /metrics: %s" % names)
    t = topic("am")
    c = await jconnect(s)
    await c.sub(t)
    raw = await rconnect(s, "subscribe=" + t)
    for i in range(5):
        publish(s, t, "m%d" % i)
    for i in range(5):
        await c.msg()
        await recv_timeout(raw, 10, "raw delivery")
    m1 = metrics(s)
    pub1, _ = metric_sum(m1, "publishes_total", result="accepted")
    del1, _ = metric_sum(m1, "deliver")
    check(pub1 >= pub0 + 5, "*publish* metrics did not move by 5: %s -> %s" % (pub0, pub1))
    check(del1 >= del0 + 10, "*deliver* metrics did not move by 10 (5 msgs x 2 subscribers): %s -> %s" % (del0, del1))
    jc, nj = metric_sum(m1, "connection", dialect="json")
    rc, nr = metric_sum(m1, "connection", dialect="raw")
    check(nj and nr, "no connection metrics with dialect=\"json\" and dialect=\"raw\" labels: %s"
          % sorted(k for k in m1 if "connection" in k[0]))
    check(jc >= 1 and rc >= 1, "connections by dialect: json %s raw %s (expected >= 1 each)" % (jc, rc))
    await c.close()
    await raw.close()


if __name__ == "__main__":
    main([
        test_publish_kinds,
        test_publish_400s,
        test_publish_chunked_body,
        test_publish_size_limit,
        test_api_key_401_first,
        test_401_before_413,
        test_api_404_405_with_key,
        test_no_key_configured_403,
        test_env_api_key,
        test_keepalive_2000_publishes,
        test_history,
        test_history_default_retention,
        test_history_limit_cap,
        test_presence,
        test_disconnect_user,
        test_healthz,
        test_echo_endpoint,
        test_metrics_move,
    ], timeout_each=90)
