"""
tests/gateway/test_redis_shard.py: client-side sharding of the Redis bus
(`duplex serve --redis URL1,URL2,URL3`; docs/gateway.md "Sharding over
several Redis servers"). Three redis-servers this script starts on free
ports (AOF, fsync always), two `duplex serve` nodes (--workers 2) listing
them in the same order.

  - topics land on every server, each topic's keys (offset, epoch, stream,
    presence) on exactly one of them, checked on each server; its channel
    is subscribed on that server only;
  - publish/subscribe/resume/history/presence across the nodes for topics
    of every server; a pattern subscription gets the topics of every
    server, each message once;
  - /api/disconnect for users owned by each server is answered by every
    worker of both nodes (well within its 2 s collection timeout);
  - one server killed: topics on the others keep working (publish,
    delivery), topics on it answer 503 (publish, history, subscribe),
    /healthz answers 200 "degraded: ... server N ..." and /metrics
    duplex_bus_shard_up{shard="N"} 0; subscribers stay connected. The
    server restarted on its data: the nodes recover, the topic's offsets
    and epoch continue, the kept subscriber gets the new messages and a
    resumer everything since its offset (no loss, no duplicate);
  - every server killed: /healthz 503;
  - the relay on 2 servers (a third node, --workers 4, listing 2 of them):
    a topic held by subscribers on every worker is subscribed once, on its
    own server (PUBSUB NUMSUB 1 there, 0 on the other), a pattern once on
    each server (duplex_bus_subscriptions 4 for 2 topics and a pattern);
    every subscriber gets every message in order while one server's pub/sub
    connections are killed twice (CLIENT KILL TYPE pubsub): nothing lost,
    nothing twice, the topic subscribed again on its server only; all gone
    from Redis once the subscribers leave;
  - bad lists are refused at startup.

A missing redis-server fails the test (nothing is skipped).
"""
import os
import subprocess
import threading
import time

import gwtest
from gwtest import (Fail, Serve, check, check_sub_ack, expect_eq, free_port, history, http, jconnect, main,
                    metric_sum, metrics, publish, say, topic, wait_for)
from test_redis import Redis, expect_msgs, pattern_active, presence_count

RS = []
A = None
B = None


def node(*args):
    return Serve("--redis", ",".join(r.url() for r in RS), *args, workers=2)


def health(s):
    try:
        r = http(s, "GET", "/healthz", key=None, timeout=5)
        return r.status, r.body.decode(errors="replace")
    except OSError:
        return None, ""


def cluster():
    global A, B
    while len(RS) < 3:
        RS.append(Redis())
    for r in RS:
        if r.proc.poll() is not None:
            r.start()
    if A is None or not A.alive():
        A = node()
    if B is None or not B.alive():
        B = node()
    for s in (A, B):
        wait_for(lambda: health(s) == (200, "ok\n"), 30, "node :%d /healthz 200 ok" % s.port, step=0.05)
    return A, B


def owners(t, suffixes=("o", "e", "s")):
    """Indexes of the servers holding any of t's keys."""
    out = []
    for i, r in enumerate(RS):
        if any(r.cmd("EXISTS", "dx:{%s}:%s" % (t, x)) == 1 for x in suffixes):
            out.append(i)
    return out


def owner(t):
    """Publishes once on t through A; the one server holding its keys."""
    publish(A, t, "probe")
    o = owners(t)
    expect_eq(len(o), 1, "servers holding the keys of %s (%r)" % (t, o))
    for x in ("o", "e", "s"):
        check(RS[o[0]].cmd("EXISTS", "dx:{%s}:%s" % (t, x)) == 1, "dx:{%s}:%s on server %d" % (t, x, o[0] + 1))
    return o[0]


def topics_per_server(prefix, n_each=1):
    """{server: [topics]} with at least n_each fresh topics on each server
    (each published once, offset 1)."""
    got = {0: [], 1: [], 2: []}
    for _ in range(200):
        if all(len(v) >= n_each for v in got.values()):
            return got
        t = topic(prefix)
        got[owner(t)].append(t)
    raise Fail("200 topics did not cover the 3 servers: %r" % {k: len(v) for k, v in got.items()})


def numsub(r, ch):
    rep = r.cmd("PUBSUB", "NUMSUB", ch)
    return int(rep[1])


# ---------------------------------------------------------------- cases


def test_topics_spread_keys_on_one_server():
    a, b = cluster()
    count = [0, 0, 0]
    for _ in range(30):
        count[owner(topic("spread"))] += 1
    say("  30 topics over the servers: %r" % count)
    check(all(c > 0 for c in count), "every server holds some of 30 topics: %r" % count)


async def test_pubsub_resume_history_presence_every_server():
    a, b = cluster()
    per = topics_per_server("every")
    ts = [per[i][0] for i in range(3)]
    jb = await jconnect(b)
    ja = await jconnect(a)
    eps = {}
    for i, t in enumerate(ts):
        ack = await jb.sub(t)
        check_sub_ack(ack, t, offset=1, recovered=False)
        eps[t] = ack["epoch"]
        await ja.sub(t)
        # the channel is subscribed on the topic's server only (both nodes)
        for k, r in enumerate(RS):
            n = numsub(r, "dx:m:" + t)
            if k == i:
                check(n >= 2, "server %d: dx:m:%s subscribers %d, expected both nodes" % (k + 1, t, n))
            else:
                expect_eq(n, 0, "server %d: subscribers of dx:m:%s (owned by server %d)" % (k + 1, t, i + 1))
        # presence: on the owner only, counted across nodes
        wait_for(lambda: presence_count(a, t) == 2, 10, "presence 2 of %s through A" % t, step=0.05)
        expect_eq(presence_count(b, t), 2, "presence of %s through B" % t)
        expect_eq(owners(t, ("p",)), [i], "servers holding dx:{%s}:p" % t)
    for n in range(2, 12):
        for t in ts:
            p = publish(a if n % 2 else b, t, "%s-%d" % (t, n))
            expect_eq((p["offset"], p["epoch"]), (n, eps[t]), "publish %d on %s" % (n, t))
    # messages of the three topics interleave: collect per topic
    for j, who in ((jb, "B"), (ja, "A")):
        got = {t: [] for t in ts}
        for _ in range(30):
            m = await j.msg(timeout=15, what="subscriber on %s" % who)
            got[m["topic"]].append((m["offset"], m["data"]))
        for t in ts:
            expect_eq(got[t], [(n, "%s-%d" % (t, n)) for n in range(2, 12)], "subscriber on %s: %s" % (who, t))
    await ja.close()
    await jb.close()
    # resume on the other node, and history through both
    for t in ts:
        jc = await jconnect(a)
        ack = await jc.sub(t, since={"offset": 4, "epoch": eps[t]})
        check_sub_ack(ack, t, offset=11, epoch=eps[t], recovered=True)
        for n in range(5, 12):
            m = await jc.msg(timeout=15, what="resumer of %s" % t)
            expect_eq((m["topic"], m["offset"], m["data"]), (t, n, "%s-%d" % (t, n)), "resumer of %s" % t)
        await jc.quiet(0.2)
        await jc.close()
        ha, hb = history(a, t), history(b, t, since=8)
        expect_eq([m["offset"] for m in ha["messages"]], list(range(1, 12)), "history of %s through A" % t)
        expect_eq([m["offset"] for m in hb["messages"]], [9, 10, 11], "history of %s through B since 8" % t)


async def test_pattern_over_every_server():
    a, b = cluster()
    base = topic("pat")
    # a probe topic under the pattern on each server (found before the
    # pattern exists: owner() publishes once)
    probes = {}
    for i in range(200):
        if len(probes) == 3:
            break
        t = "%s.probe%d" % (base, i)
        probes.setdefault(owner(t), t)
    check(len(probes) == 3, "probe topics cover the 3 servers: %r" % probes)
    jb = await jconnect(b)
    await jb.ack("sub", topic=base + ".*")
    # acked at once, active on a server once Redis confirmed it there
    # (docs/gateway.md "Known limits"): wait for a probe from each server
    for k in sorted(probes):
        await pattern_active(jb, probes[k], a)
    seen = set()
    names = []
    for i in range(40):
        t = "%s.x%d" % (base, i)
        p = publish(a, t, "m%d" % i)
        expect_eq(p["offset"], 1, "publish on " + t)
        names.append(t)
        seen.update(owners(t))
        if len(seen) == 3 and i >= 8:
            break
    check(len(seen) == 3, "pattern topics cover the 3 servers: %r" % seen)
    got = await jb.msgs(len(names), timeout=15, what="pattern deliveries")
    expect_eq(sorted(m["topic"] for m in got), sorted(names), "pattern deliveries: topics, once each")
    await jb.quiet(0.5)
    await jb.close()


def test_disconnect_every_user_server():
    a, b = cluster()
    for i in range(8):  # users hashed over the servers
        t0 = time.monotonic()
        resp = http(b if i % 2 else a, "POST", "/api/disconnect?user=u%d-%d" % (i, os.getpid()))
        dt = time.monotonic() - t0
        expect_eq(resp.status, 200, "disconnect: status (%s)" % resp.body[:200])
        expect_eq(resp.json().get("disconnected"), 0, "disconnect of a user with no connection")
        check(dt < 1.5, "disconnect took %.2f s: a worker did not answer" % dt)


async def test_one_server_down_others_work_then_recover():
    a, b = cluster()
    per = topics_per_server("down", n_each=2)
    k = 1  # the server killed
    tk, tk2 = per[k][0], per[k][1]
    to = per[(k + 1) % 3][0]
    jb = await jconnect(b)
    ackk = await jb.sub(tk)
    acko = await jb.sub(to)
    epk, epo = ackk["epoch"], acko["epoch"]
    for n in range(2, 6):
        publish(a, tk, "k%d" % n)
        publish(a, to, "o%d" % n)
    got = {tk: [], to: []}
    for _ in range(8):
        m = await jb.msg(timeout=15, what="before the kill")
        got[m["topic"]].append(m["offset"])
    expect_eq(got, {tk: [2, 3, 4, 5], to: [2, 3, 4, 5]}, "deliveries before the kill")
    RS[k].kill()
    for s in (a, b):
        wait_for(lambda: health(s)[0] == 200 and "degraded" in health(s)[1], 15,
                 "node :%d /healthz degraded" % s.port, step=0.05)
        st, body = health(s)
        check("server %d" % (k + 1) in body and "1 of 3" in body, "/healthz body names the server: %r" % body)
        ms = metrics(s)
        expect_eq(metric_sum(ms, "duplex_bus_shard_up", shard=str(k + 1))[0], 0, "shard_up of the killed server")
        expect_eq(metric_sum(ms, "duplex_bus_shard_up")[0], 2, "shard_up summed")
    # the other servers' topics keep working
    for n in range(6, 9):
        p = publish(b if n % 2 else a, to, "o%d" % n)
        expect_eq((p["offset"], p["epoch"]), (n, epo), "publish on %s with another server down" % to)
    for n in range(6, 9):
        m = await jb.msg(timeout=15, what="live on a working server")
        expect_eq((m["topic"], m["offset"]), (to, n), "live on a working server")
    # the killed server's topics answer 503
    for s in (a, b):
        r = http(s, "POST", "/api/publish?topic=" + tk, body=b"lost", headers={"Content-Type": "text/plain"})
        expect_eq(r.status, 503, "publish on a topic of the killed server")
        expect_eq(http(s, "GET", "/api/history?topic=" + tk2).status, 503, "history on the killed server")
    jc = await jconnect(a)
    e = await jc.req("sub", topic=tk2)
    check(e["op"] == "err" and e["code"] == 4503, "JSON sub on the killed server: %r" % e)
    await jb.alive()
    # restarted on its data
    RS[k].start()
    for s in (a, b):
        wait_for(lambda: health(s) == (200, "ok\n"), 30, "node :%d /healthz ok again" % s.port, step=0.05)
    for n in range(6, 9):
        p = publish(a, tk, "k%d" % n)
        expect_eq((p["offset"], p["epoch"]), (n, epk), "publish %d on %s after the restart" % (n, tk))
    for n in range(6, 9):
        m = await jb.msg(timeout=15, what="kept subscriber after the restart")
        expect_eq((m["topic"], m["offset"], m["data"]), (tk, n, "k%d" % n), "kept subscriber after the restart")
    ack = await jc.sub(tk, since={"offset": 2, "epoch": epk})
    check_sub_ack(ack, tk, offset=8, epoch=epk, recovered=True)
    offs = []
    for _ in range(6):
        m = await jc.msg(timeout=15, what="resumer after the restart")
        offs.append(m["offset"])
    expect_eq(offs, list(range(3, 9)), "resumer after the restart: offsets")
    await jc.quiet(0.3)
    await jb.quiet(0.3)
    say("  server %d down: %s published 3 (delivered 3), %s refused 503; after restart resumer got 3..8, "
        "lost 0, duplicated 0" % (k + 1, to, tk))
    await jb.close()
    await jc.close()


def test_every_server_down_unhealthy():
    a, b = cluster()
    for r in RS:
        r.kill()
    for s in (a, b):
        wait_for(lambda: health(s)[0] == 503, 15, "node :%d /healthz 503 with every server down" % s.port,
                 step=0.05)
    for r in RS:
        r.start()
    for s in (a, b):
        wait_for(lambda: health(s) == (200, "ok\n"), 30, "node :%d /healthz ok again" % s.port, step=0.05)


async def test_relay_two_servers_one_subscription_per_node():
    cluster()
    rs = RS[:2]
    s = Serve("--redis", ",".join(r.url() for r in rs), workers=4)
    try:
        wait_for(lambda: health(s) == (200, "ok\n"), 30, "relay node /healthz 200 ok", step=0.05)
        base = topic("relay2")
        ts = [None, None]  # a topic on each server
        for i in range(200):
            if all(ts):
                break
            t = "%s.x%d" % (base, i)
            publish(s, t, "first")
            o = [k for k, r in enumerate(rs) if r.cmd("EXISTS", "dx:{%s}:o" % t) == 1]
            expect_eq(len(o), 1, "servers holding the keys of " + t)
            ts[o[0]] = ts[o[0]] or t
        check(all(ts), "topics on both servers: %r" % ts)
        jp = await jconnect(s)  # a pattern over both servers' topics
        await jp.ack("sub", topic=base + ".*")
        for t in ts:  # confirmed on each server (its owner's PSUBSCRIBE there)
            await pattern_active(jp, t, s)
        subs = {t: [] for t in ts}
        for t in ts:
            for _ in range(16):  # spread over the 4 workers (SO_REUSEPORT)
                j = await jconnect(s)
                await j.sub(t)
                subs[t].append(j)
        for k, t in enumerate(ts):
            expect_eq(numsub(rs[k], "dx:m:" + t), 1, "NUMSUB of %s on its server %d" % (t, k + 1))
            expect_eq(numsub(rs[1 - k], "dx:m:" + t), 0, "NUMSUB of %s on the other server" % t)
        wait_for(lambda: metric_sum(metrics(s), "duplex_bus_subscriptions")[0] == 4, 10,
                 "duplex_bus_subscriptions 4: the 2 topics, the pattern on each server")
        m0 = metrics(s)
        first = {}
        for t in ts:
            p = publish(s, t, "m1")
            first[t] = (p["offset"], p["epoch"])
        n = 150
        killed = []

        def publisher():
            for i in range(2, n + 1):
                for t in ts:
                    publish(s, t, "m%d" % i)
                if i in (50, 110):
                    wait_for(lambda: health(s) == (200, "ok\n"), 30, "relay node back to ok", step=0.05)
                    killed.append(rs[0].cmd("CLIENT", "KILL", "TYPE", "pubsub"))

        th = threading.Thread(target=publisher)
        th.start()
        try:
            for t in ts:
                off, ep = first[t]
                for k, j in enumerate(subs[t]):
                    await expect_msgs(j, t, off, off + n - 1, ep, "%s subscriber %d" % (t, k))
            got = {t: [] for t in ts}
            for _ in range(2 * n):
                m = await jp.msg(timeout=15, what="pattern delivery")
                got[m["topic"]].append(m["offset"])
            for t in ts:
                expect_eq(got[t], list(range(first[t][0], first[t][0] + n)), "pattern deliveries of " + t)
        finally:
            th.join()
        check(all(isinstance(k, int) and k >= 1 for k in killed), "CLIENT KILL answers: %r" % killed)
        for k, t in enumerate(ts):
            wait_for(lambda: numsub(rs[k], "dx:m:" + t) == 1, 15, "%s subscribed again on its server" % t)
            expect_eq(numsub(rs[1 - k], "dx:m:" + t), 0, "NUMSUB of %s on the other server after the kills" % t)
        m1 = metrics(s)
        rel = metric_sum(m1, "duplex_bus_relayed_total")[0] - metric_sum(m0, "duplex_bus_relayed_total")[0]
        check(rel >= 2 * n, "messages forwarded by the owners: %d for %d messages" % (rel, 2 * n))
        say("  2 servers, 4 workers: 1 subscription per topic on its server, %d forwards, recovered %d" % (
            rel, metric_sum(m1, "duplex_bus_recovered_total")[0]))
        for js in subs.values():
            for j in js:
                await j.quiet(0.05)
                await j.close()
        await jp.close()
        for k, t in enumerate(ts):
            wait_for(lambda: numsub(rs[k], "dx:m:" + t) == 0, 10, "no subscription of %s left" % t)
        wait_for(lambda: metric_sum(metrics(s), "duplex_bus_subscriptions")[0] == 0, 10,
                 "duplex_bus_subscriptions back to 0")
    finally:
        s.stop()


def test_bad_lists_refused():
    p1, p2 = free_port(), free_port()
    for url, what in (("redis://127.0.0.1:%d,,redis://127.0.0.1:%d" % (p1, p2), "URL 2 of the list is empty"),
                      ("redis://127.0.0.1:%d,http://x" % p1, "URL 2 of the list"),
                      ("redis://127.0.0.1:%d,redis://127.0.0.1:%d" % (p1, p1), "same server")):
        port = free_port()
        p = subprocess.run([gwtest.BIN, "serve", "--host", "127.0.0.1", "--port", str(port), "--redis", url],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
        out = (p.stdout + p.stderr).decode(errors="replace")
        check(p.returncode != 0, "--redis %s: serve started (%s)" % (url, out[-300:]))
        check(what in out, "--redis %s: expected %r in the message, got:\n%s" % (url, what, out[-500:]))


def teardown():
    for r in RS:
        r.stop()


if __name__ == "__main__":
    import atexit
    atexit.register(teardown)
    main([
        test_bad_lists_refused,
        test_topics_spread_keys_on_one_server,
        test_pubsub_resume_history_presence_every_server,
        test_pattern_over_every_server,
        test_disconnect_every_user_server,
        test_relay_two_servers_one_subscription_per_node,
        test_one_server_down_others_work_then_recover,
        test_every_server_down_unhealthy,
    ])
