"""
tests/gateway/test_sse.py: Server-Sent Events (GATEWAY.md "SSE") against a
real `duplex serve`, with a plain-socket SSE client:
  - GET /sse?subscribe=a,b answers 200 text/event-stream; each message is
    one event: `event: msg`, one `data:` line holding the JSON dialect's
    msg object (kinds json/text/binary), and `id:` the stream's position in
    its topics, `a:17:<epoch>,b:3:<epoch>`;
  - reconnecting with that id in Last-Event-ID resumes exactly (the missed
    messages of each topic in order, then live; no duplicate), as does
    ?since=a:17,b:3; another epoch in Last-Event-ID: live only;
  - a comment line at least every --sse-heartbeat (1s here) when idle;
  - a bad topic -> 400, user:bob -> 403; a pattern subscription carries
    `pattern`.
"""
import time

from gwtest import (SSE, check, check_msg, expect_eq, main, parse_sse_id, publish, q, say, shared, topic,
                    wait_for)


def srv():
    return shared()


def open_sse(s, query, headers=None):
    c = SSE(s, query, headers)
    expect_eq(c.status, 200, "GET /sse?%s: status (head %r)" % (query, c.head[:300]))
    ct = c.headers.get("content-type", "")
    check(ct.startswith("text/event-stream"), "GET /sse?%s: Content-Type %r" % (query, ct))
    return c


def presence(s, t):
    from gwtest import http
    return http(s, "GET", "/api/presence?topic=" + t).json().get("count")


def test_sse_event_format():
    s = srv()
    a, b = topic("sa"), topic("sb")
    c = open_sse(s, "subscribe=%s,%s" % (a, b))
    # (GATEWAY.md promises active subscriptions at the 101 for the raw
    # dialect only: wait until presence counts this stream)
    wait_for(lambda: presence(s, a) == 1 and presence(s, b) == 1, 10, "the SSE subscriptions in presence")
    pa = publish(s, a, "hello", "text/plain")
    m, i = c.msg(what="the first event")
    check_msg(m, a, offset=1, epoch=pa["epoch"], data="hello", what="SSE data (text)")
    ids = parse_sse_id(i)
    expect_eq(ids.get(a), (1, pa["epoch"]), "SSE id %r: position of %s" % (i, a))
    pb = publish(s, b, '{"k":[1,2]}', "application/json")
    m, i = c.msg()
    check_msg(m, b, offset=1, epoch=pb["epoch"], data={"k": [1, 2]}, what="SSE data (json)")
    ids = parse_sse_id(i)
    expect_eq(ids, {a: (1, pa["epoch"]), b: (1, pb["epoch"])}, "SSE id %r after a message on each topic" % i)
    publish(s, a, b"\x00\x01\xff", "application/octet-stream")
    m, i = c.msg()
    check_msg(m, a, offset=2, b64=b"\x00\x01\xff", what="SSE data (binary)")
    expect_eq(parse_sse_id(i), {a: (2, pa["epoch"]), b: (1, pb["epoch"])}, "SSE id %r" % i)
    # a json payload with newlines inside strings stays on one data line
    publish(s, b, '{\n"x": "a\\nb"\n}', "application/json")
    m, i = c.msg()
    check_msg(m, b, offset=2, data={"x": "a\nb"}, what="SSE data (json with newlines)")
    publish(s, a, "line1\nline2\r\nline3", "text/plain")
    m, i = c.msg()
    check_msg(m, a, offset=3, data="line1\nline2\r\nline3", what="SSE data (text with newlines)")
    c.close()


def test_sse_last_event_id_resume():
    s = srv()
    a, b = topic("sla"), topic("slb")
    c = open_sse(s, "subscribe=%s,%s" % (a, b))
    publish(s, a, "a1")
    publish(s, b, "b1")
    publish(s, a, "a2")
    last = None
    for _ in range(3):
        m, last = c.msg()
    c.close()
    # missed while away
    for x in ("a3", "a4"):
        publish(s, a, x)
    publish(s, b, "b2")
    c = open_sse(s, "subscribe=%s,%s" % (a, b), {"Last-Event-ID": last})
    got = {a: [], b: []}
    for _ in range(3):
        m, i = c.msg(what="the missed events")
        got[m["topic"]].append(m["data"])
    expect_eq(got, {a: ["a3", "a4"], b: ["b2"]}, "Last-Event-ID %r: the missed messages per topic" % last)
    publish(s, a, "a5")
    m, i = c.msg(what="live after the resume")
    check_msg(m, a, offset=5, data="a5", what="live after the resume (no duplicate before it)")
    c.close()


def test_sse_since_query():
    s = srv()
    a, b = topic("ssa"), topic("ssb")
    for x in ("a1", "a2", "a3"):
        publish(s, a, x)
    publish(s, b, "b1")
    c = open_sse(s, "subscribe=%s,%s&since=%s:1,%s:0" % (a, b, a, b))
    got = {a: [], b: []}
    for _ in range(3):
        m, i = c.msg(what="events since a:1,b:0")
        got[m["topic"]].append(m["offset"])
    expect_eq(got, {a: [2, 3], b: [1]}, "?since=a:1,b:0")
    publish(s, b, "b2")
    m, i = c.msg()
    check_msg(m, b, offset=2, data="b2")
    c.close()


def test_sse_last_event_id_query():
    """Extension: ?last-event-id= carries the header's value (with epochs)."""
    s = srv()
    a = topic("sle")
    epoch = None
    for x in ("a1", "a2", "a3"):
        epoch = publish(s, a, x)["epoch"]
    c = open_sse(s, "subscribe=%s&last-event-id=%s:1:%s" % (a, a, epoch))
    got = [c.msg(what="events after a:1 in the current epoch")[0]["offset"] for _ in range(2)]
    expect_eq(got, [2, 3], "?last-event-id=a:1:<current epoch>")
    c.close()
    # another epoch: nothing is recovered, only live messages follow
    c = open_sse(s, "subscribe=%s&last-event-id=%s:1:%s" % (a, a, "0" * 16))
    wait_for(lambda: presence(s, a) == 1, 10, "the SSE subscription")
    publish(s, a, "a4")
    m, i = c.msg(what="the live message only")
    check_msg(m, a, offset=4, data="a4")
    c.close()


def test_sse_wrong_epoch_live_only():
    s = srv()
    a = topic("swe")
    for x in ("a1", "a2"):
        publish(s, a, x)
    c = open_sse(s, "subscribe=" + a, {"Last-Event-ID": "%s:1:notthecurrentepoch" % a})
    wait_for(lambda: presence(s, a) == 1, 10, "the SSE subscription")
    publish(s, a, "a3")
    m, i = c.msg()
    check_msg(m, a, offset=3, data="a3", what="another epoch in Last-Event-ID: live only")
    c.close()


def test_sse_heartbeat():
    s = shared("--sse-heartbeat", "1s")
    c = open_sse(s, "subscribe=" + topic("shb"))
    t0 = time.monotonic()
    c.wait_comment(3, 8)
    times = [t for t, _ in c.comments]
    say("# heartbeat comments after %s s: %r" % (["%.2f" % (t - t0) for t in times], [x for _, x in c.comments]))
    check(times[2] - t0 < 4.5, "3 heartbeat comments took %.1f s with --sse-heartbeat 1s" % (times[2] - t0))
    c.close()


def test_sse_bad_topics():
    s = srv()
    for query, want in (("subscribe=a..b", 400), ("subscribe=" + q("a b"), 400), ("subscribe=" + "y" * 201, 400),
                        ("subscribe=user:bob", 403), ("subscribe=ok,user:bob", 403)):
        c = SSE(s, query)
        expect_eq(c.status, want, "GET /sse?%s: status" % query)
        c.close()


def test_sse_pattern():
    s = srv()
    base = topic("spat")
    c = open_sse(s, "subscribe=%s.*,%s" % (base, base + "sync.x"))
    wait_for(lambda: presence(s, base + "sync.x") == 1, 10, "the SSE subscriptions in presence")
    publish(s, base + ".x", "via pattern")
    m, i = c.msg()
    check_msg(m, base + ".x", data="via pattern", pattern=base + ".*", what="SSE through a pattern")
    c.close()


if __name__ == "__main__":
    main([
        test_sse_event_format,
        test_sse_last_event_id_resume,
        test_sse_since_query,
        test_sse_last_event_id_query,
        test_sse_wrong_epoch_live_only,
        test_sse_heartbeat,
        test_sse_bad_topics,
        test_sse_pattern,
    ], timeout_each=60)
