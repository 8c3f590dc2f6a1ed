"""
tests/gateway/test_policy.py: the gateway's Origin rules, SSE CORS,
namespaces and topic length (issue 10; docs/security.md,
docs/gateway.md "Limits" and "Namespaces"), against real `duplex serve`
processes with --origin, --allow-no-origin, --namespace and --max-topic.

Peers: plain sockets for exact handshakes (the Origin header as an
attacker spells it), python3-websockets for JSON and raw clients,
http.client for the API and the CORS preflight.
"""
import asyncio
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gwtest import (KEY, SSE, Fail, Serve, check, expect_closed, expect_eq, expect_error, expect_status, http,  # noqa: E402
                    jconnect, main, metric_sum, metrics, publish, q, rconnect, read_head, shared, topic, wait_for,
                    ws_head, history, handshake_status)

ALLOWED = ("https://example.com", "https://*.example.org", "http://localhost:3000")


def origin_server():
    args = []
    for o in ALLOWED:
        args += ["--origin", o]
    return shared(*args, "--allow-no-origin", "off")


def ws_status(srv, origin, path="/ws", protocol="duplex.v1", src=None):
    """The status of a handshake carrying `Origin: origin` (None: no Origin header)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    if src:
        s.bind((src, 0))
    s.connect(("127.0.0.1", srv.port))
    try:
        extra = "Origin: %s\r\n" % origin if origin is not None else ""
        s.sendall(ws_head(srv.port, path, protocol, extra))
        status, head, _ = read_head(s.recv)
        return status, head
    finally:
        s.close()


def test_origin_allow_list():
    srv = origin_server()
    good = ["https://example.com", "https://EXAMPLE.COM", "https://example.com:443", "https://a.example.org",
            "https://a.b.example.org", "http://localhost:3000"]
    bad = [
        "https://example.com.evil.org",   # suffix trick
        "https://evilexample.com",        # no dot boundary
        "https://example.com@evil.org",   # userinfo
        "https://evil.org@example.com",
        "https://example.org",            # a wildcard never matches the bare domain
        "https://aexample.org",
        "https://a.example.org.evil.com",
        "http://example.com",             # scheme
        "https://example.com:8443",       # port
        "http://localhost:3001",
        "http://localhost",
        "null",                           # sandboxed frames, file:
        "https://example.com/path",
        "http://127.0.0.1:%d" % srv.port,  # the allow-list replaces the same-host rule
    ]
    for o in good:
        st, head = ws_status(srv, o)
        expect_eq(st, 101, "handshake with Origin %r" % o)
    for o in bad:
        st, head = ws_status(srv, o)
        expect_eq(st, 403, "handshake with Origin %r" % o)
    # no Origin: refused too (--allow-no-origin off), with a log line
    st, _ = ws_status(srv, None)
    expect_eq(st, 403, "handshake without Origin under --allow-no-origin off")
    st, _ = ws_status(srv, None, protocol=None)
    expect_eq(st, 403, "raw handshake without Origin under --allow-no-origin off")
    wait_for(lambda: "Origin 'https://example.com.evil.org' is not allowed" in srv.log(), 10,
             "the log line of a refused Origin")
    wait_for(lambda: "no Origin header" in srv.log(), 10, "the log line of a missing Origin")
    ms = metrics(srv)
    n, _ = metric_sum(ms, "duplex_limit_refused_total", limit="origin")
    check(n >= len(bad), "duplex_limit_refused_total{limit=origin} = %r, expected >= %d" % (n, len(bad)))
    n, _ = metric_sum(ms, "duplex_limit_refused_total", limit="no_origin")
    check(n >= 2, "duplex_limit_refused_total{limit=no_origin} = %r" % n)


def test_origin_default_same_host():
    srv = shared()
    expect_eq(ws_status(srv, "http://127.0.0.1:%d" % srv.port)[0], 101, "same-host Origin")
    expect_eq(ws_status(srv, "http://127.0.0.1:%d" % (srv.port + 1))[0], 403, "another port")
    expect_eq(ws_status(srv, "http://127.0.0.1.evil.org:%d" % srv.port)[0], 403, "suffix trick on Host")
    expect_eq(ws_status(srv, None)[0], 101, "no Origin (non-browser client) allowed by default")


def test_sse_cors():
    srv = origin_server()
    t = topic("cors")
    # preflight from an allowed origin
    r = http(srv, "OPTIONS", "/sse?subscribe=" + t, key=None,
             headers={"Origin": "https://a.example.org", "Access-Control-Request-Method": "GET",
                      "Access-Control-Request-Headers": "last-event-id"})
    expect_status(r, 204, "CORS preflight from an allowed origin")
    expect_eq(r.header("Access-Control-Allow-Origin"), "https://a.example.org", "Access-Control-Allow-Origin")
    check("Origin" in (r.header("Vary") or ""), "Vary: Origin missing: %r" % r.headers)
    check("last-event-id" in (r.header("Access-Control-Allow-Headers") or "").lower(),
          "Last-Event-ID not allowed: %r" % r.headers)
    check(int(r.header("Access-Control-Max-Age") or 0) > 0, "no Access-Control-Max-Age: %r" % r.headers)
    check("GET" in (r.header("Access-Control-Allow-Methods") or ""), "GET not allowed: %r" % r.headers)
    # preflight from others
    for o in ("https://evil.org", "https://example.com.evil.org", "null"):
        r = http(srv, "OPTIONS", "/sse?subscribe=" + t, key=None,
                 headers={"Origin": o, "Access-Control-Request-Method": "GET"})
        expect_status(r, 403, "CORS preflight from %r" % o)
        check(r.header("Access-Control-Allow-Origin") is None, "ACAO on a refused preflight: %r" % r.headers)
    # a preflight for another method is refused
    r = http(srv, "OPTIONS", "/sse?subscribe=" + t, key=None,
             headers={"Origin": "https://example.com", "Access-Control-Request-Method": "POST"})
    expect_status(r, 403, "CORS preflight for POST")
    # the stream itself: ACAO for an allowed origin, 403 for others
    s = SSE(srv, "subscribe=" + t, headers={"Origin": "https://example.com"})
    try:
        expect_eq(s.status, 200, "GET /sse from an allowed origin")
        expect_eq(s.headers.get("access-control-allow-origin"), "https://example.com", "ACAO on GET /sse")
        check("origin" in s.headers.get("vary", "").lower(), "Vary: Origin on GET /sse: %r" % s.headers)
    finally:
        s.close()
    s = SSE(srv, "subscribe=" + t, headers={"Origin": "https://evilexample.com"})
    expect_eq(s.status, 403, "GET /sse from another origin")
    s.close()
    s = SSE(srv, "subscribe=" + t)
    expect_eq(s.status, 403, "GET /sse without Origin under --allow-no-origin off")
    s.close()


NS_ARGS = ("--namespace", "news.,publish=off,presence=off,history=2",
           "--namespace", "small.,max-message=100",
           "--namespace", "news.open.,publish=on",
           "--namespace", "nohist.,history=off")


async def test_namespace_publish_off():
    srv = shared(*NS_ARGS)
    j = await jconnect(srv)
    t = topic("news")
    await j.err("pub", 4403, topic=t, data="x")
    await j.err("presence", 4403, topic=t)
    await j.sub(t)  # reading is allowed
    # the longest prefix wins: news.open. allows publishing
    a = await j.ack("pub", topic=topic("news.open"), data="y")
    check("offset" in a, "publish into news.open.: %r" % a)
    # raw: refused at the handshake
    st = await handshake_status(srv, "/ws?publish=" + q(t))
    expect_eq(st, 403, "raw handshake publishing into a read-only namespace")
    # the API key holder may publish there; history keeps 2 per topic
    for i in range(5):
        publish(srv, t, "m%d" % i)
    got = [m["data"] for m in (await j.msgs(5))]
    expect_eq(got, ["m%d" % i for i in range(5)], "live messages into news.")
    h = history(srv, t)
    expect_eq([m["data"] for m in h["messages"]], ["m3", "m4"], "history of a news. topic (history=2)")
    r = http(srv, "GET", "/api/presence?topic=" + q(t))
    expect_error(r, 403, "API presence in a namespace without presence")
    # outside the namespaces: the gateway's history (1000)
    t2 = topic("other")
    for i in range(5):
        publish(srv, t2, "m%d" % i)
    expect_eq(len(history(srv, t2)["messages"]), 5, "history outside the namespaces")
    t3 = topic("nohist")
    publish(srv, t3, "gone")
    expect_eq(len(history(srv, t3)["messages"]), 0, "history=off namespace")
    await j.close()
    wait_for(lambda: "namespace 'news.' is read-only" in srv.log(), 10, "the log line of a refused publish")
    ms = metrics(srv)
    n, _ = metric_sum(ms, "duplex_limit_refused_total", limit="namespace_publish")
    check(n >= 2, "duplex_limit_refused_total{limit=namespace_publish} = %r" % n)


async def test_namespace_max_message():
    srv = shared(*NS_ARGS)
    j = await jconnect(srv)
    t = topic("small")
    await j.ack("pub", topic=t, data="a" * 100)
    await j.err("pub", 4413, topic=t, data="a" * 101)
    await j.alive()
    # raw: 1009 past it
    ws = await rconnect(srv, "publish=" + q(t))
    await ws.send("b" * 100)
    await ws.send("b" * 101)
    await expect_closed(ws, 1009, 10, "raw publish of 101 bytes into small.")
    # API: 413
    r = http(srv, "POST", "/api/publish?topic=" + q(t), body="c" * 101, headers={"Content-Type": "text/plain"})
    expect_error(r, 413, "API publish of 101 bytes into small.")
    publish(srv, t, "c" * 100)
    ms = metrics(srv)
    n, _ = metric_sum(ms, "duplex_limit_refused_total", limit="message_size")
    check(n >= 3, "duplex_limit_refused_total{limit=message_size} = %r" % n)
    await j.close()


async def test_max_topic():
    srv = shared("--max-topic", "20")
    at = "m." + "x" * 18   # 20 bytes
    past = at + "y"        # 21
    j = await jconnect(srv)
    await j.sub(at)
    await j.ack("pub", topic=at, data="ok")
    await j.err("sub", 4400, topic=past)
    await j.err("pub", 4400, topic=past, data="no")
    await j.err("sub", 4400, topic="m." + "x" * 17 + ".*")  # a pattern too
    expect_eq(await handshake_status(srv, "/ws?subscribe=" + past), 400, "raw subscribe past max_topic")
    expect_eq(await handshake_status(srv, "/ws?publish=" + past), 400, "raw publish past max_topic")
    expect_eq(await handshake_status(srv, "/ws?subscribe=" + at), 101, "raw subscribe at max_topic")
    s = SSE(srv, "subscribe=" + past)
    expect_eq(s.status, 400, "SSE subscribe past max_topic")
    s.close()
    r = http(srv, "POST", "/api/publish?topic=" + past, body="x", headers={"Content-Type": "text/plain"})
    expect_error(r, 400, "API publish past max_topic")
    publish(srv, at, "x")
    ms = metrics(srv)
    n, _ = metric_sum(ms, "duplex_limit_refused_total", limit="topic_length")
    check(n >= 5, "duplex_limit_refused_total{limit=topic_length} = %r" % n)
    await j.close()


def test_max_api_body():
    srv = shared("--max-api-body", "1000")
    t = topic("api")
    publish(srv, t, "x" * 1000)
    r = http(srv, "POST", "/api/publish?topic=" + q(t), body="x" * 1001, headers={"Content-Type": "text/plain"})
    expect_error(r, 413, "API body one past --max-api-body")
    ms = metrics(srv)
    n, _ = metric_sum(ms, "duplex_limit_refused_total", limit="api_body")
    check(n >= 1, "duplex_limit_refused_total{limit=api_body} = %r" % n)


async def test_namespace_slow_policy():
    """drop-oldest in lossy.: a JSON subscriber that stops reading gets a
    gap notice there, while under the gateway's default (disconnect) the
    same subscriber on another topic is closed 1013."""
    srv = shared("--sub-queue", "64K", "--namespace", "lossy.,slow-policy=drop-oldest")
    from gwtest import RawWS
    for prefix, want in (("lossy", "gap"), ("strict", 1013)):
        t = topic(prefix)
        sub = RawWS(srv, "/ws", protocol="duplex.v1", rcvbuf=4096)
        expect_eq(sub.status, 101, "JSON subscriber handshake")
        sub.send_json({"op": "sub", "id": 1, "topic": t})
        op, payload = sub.recv()
        check(b'"ack"' in payload, "sub ack: %r" % payload)
        body = "z" * 8000
        # publish until the subscriber is slow: 4 MB into a 64 KiB budget
        for i in range(500):
            r = http(srv, "POST", "/api/publish?topic=" + q(t), body=body, headers={"Content-Type": "text/plain"})
            expect_status(r, 200, "publish %d" % i)
        got_gap = got_close = False
        while True:
            op, payload = sub.recv(timeout=30)
            if op == "eof":
                break
            if op == 8:
                got_close = int.from_bytes(payload[:2], "big")
                break
            if b'"op":"gap"' in payload:
                got_gap = True
                break
        sub.close()
        if want == "gap":
            check(got_gap and not got_close, "lossy.: expected a gap notice, got close %r" % got_close)
        else:
            expect_eq(got_close, 1013, "strict: close code of a slow subscriber")


if __name__ == "__main__":
    main([test_origin_allow_list, test_origin_default_same_host, test_sse_cors, test_namespace_publish_off,
          test_namespace_max_message, test_max_topic, test_max_api_body, test_namespace_slow_policy])
