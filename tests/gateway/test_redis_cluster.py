"""
tests/gateway/test_redis_cluster.py: the Redis bus on a Redis Cluster
(`duplex serve --redis SEED --redis-cluster`; docs/gateway.md "Redis
Cluster"). The script makes a 3-master cluster (three `redis-server
--cluster-enabled yes` on free ports, each in its own temp dir, joined by
`redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`) and
starts two `duplex serve` nodes (--workers 2), A seeded with the first
master, B with the other two.

  - topics of every master (checked with CLUSTER KEYSLOT / COUNTKEYSINSLOT
    on each master): publish through either node, subscribers on both
    receive every message in order; the topic's shard channel dx:m:{T} is
    SSUBSCRIBEd on its master only (PUBSUB SHARDNUMSUB), with no classic
    subscription (PUBSUB NUMSUB 0); resume on the other node and history
    agree;
  - the last subscriber leaving ends the shard subscription (SHARDNUMSUB
    0), subscribing again works, a subscribe closed at once leaves nothing;
  - a pattern subscription receives topics of every master, once each;
  - /api/disconnect is answered by every worker of both nodes;
  - every master kills the nodes' pub/sub connections: kept subscribers
    get every message once, in order (resubscribed, gap read back);
  - a topic's slot migrated to another master (CLUSTER SETSLOT
    IMPORTING/MIGRATING, MIGRATE of its keys, a publish answered ASK in
    between (ASKING seen on the target), SETSLOT NODE on every master): publishes through both nodes follow (MOVED), offsets and epoch
    continue, the kept subscriber gets every message once (its shard
    channel unsubscribed by Redis, subscribed again on the new master, the
    gap read back), and a resumer gets everything since its offset;
  - the relay with a --workers 4 node C: one shard subscription per node
    (SHARDNUMSUB 1) and its metrics, a slot migrated and the owners'
    connections killed under subscribers on every worker, the resume
    stress, subscribe churn, resumes across two migrations: every offset
    once, in order.

A missing redis-server or redis-cli fails the test (nothing is skipped).
"""
import asyncio
import os
import shutil
import subprocess
import threading
import time

import gwtest
from gwtest import (Fail, Serve, check, check_sub_ack, expect_eq, free_port, history, http, jconnect, main, metric_sum,
                    metrics, publish, say, topic, wait_for)
from test_redis import REDIS_BIN, Redis, pattern_active, resume_stress

CLI_BIN = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def port_pair_free(p):
    """p and its cluster bus port p+10000 both free (a fresh port each try)."""
    import socket
    for q in (p, p + 10000):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", q))
        except OSError:
            return False
        finally:
            s.close()
    return True


class ClusterNode(Redis):
    def __init__(self):
        for _ in range(50):  # a port whose bus port (+10000) is free too
            p = free_port()
            if p < 55535 and port_pair_free(p):
                break
        self.fixed_port = p
        Redis.__init__(self)

    def start(self):
        self.port = self.fixed_port
        self.logf = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen(
            [REDIS_BIN, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no", "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf)
        gwtest._procs.append(self.proc)
        wait_for(lambda: self.ping() or self.proc.poll() is not None, 20, "redis-server to answer PING")
        check(self.proc.poll() is None, "redis-server exited at start")

    def id(self):
        return self.cmd("CLUSTER", "MYID").decode()


RS = []
A = None
B = None


def cluster():
    global A, B
    if not RS:
        check(os.path.exists(CLI_BIN), "redis-cli not found (Debian: redis-tools; scripts/deps.sh test)")
        nodes = [ClusterNode() for _ in range(3)]
        RS.extend(nodes)
        p = subprocess.run([CLI_BIN, "--cluster", "create"] + ["127.0.0.1:%d" % r.port for r in RS] +
                           ["--cluster-replicas", "0", "--cluster-yes"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        check(p.returncode == 0, "redis-cli --cluster create failed:\n%s" % (p.stdout + p.stderr).decode()[-800:])
        for r in RS:
            wait_for(lambda: b"cluster_state:ok" in r.cmd("CLUSTER", "INFO"), 30, "cluster_state:ok on :%d" % r.port,
                     step=0.1)
    if A is None or not A.alive():
        A = Serve("--redis", "redis://127.0.0.1:%d" % RS[0].port, "--redis-cluster", workers=2)
    if B is None or not B.alive():
        B = Serve("--redis", "redis://127.0.0.1:%d,redis://127.0.0.1:%d" % (RS[1].port, RS[2].port),
                  "--redis-cluster", workers=2)
    for s in (A, B):
        wait_for(lambda: health(s) == (200, "ok\n"), 30, "node :%d /healthz ok" % s.port, step=0.05)
    return A, B


def health(s):
    try:
        r = http(s, "GET", "/healthz", key=None, timeout=5)
        return r.status, r.body.decode(errors="replace")
    except OSError:
        return None, ""


def slot_of(t):
    return RS[0].cmd("CLUSTER", "KEYSLOT", "dx:{%s}:o" % t)


def owner(t):
    """The master holding t's keys (after a publish), by COUNTKEYSINSLOT."""
    sl = slot_of(t)
    own = [i for i, r in enumerate(RS) if r.cmd("CLUSTER", "COUNTKEYSINSLOT", sl) > 0]
    expect_eq(len(own), 1, "masters holding slot %d of %s" % (sl, t))
    return own[0]


def slot_master(t):
    """The master serving t's slot, from CLUSTER SLOTS (no key needed)."""
    sl = slot_of(t)
    for rng in RS[0].cmd("CLUSTER", "SLOTS"):
        if rng[0] <= sl <= rng[1]:
            port = rng[2][1]
            return [r.port for r in RS].index(port)
    raise Fail("slot %d of %s not in CLUSTER SLOTS" % (sl, t))


def topics_per_master(prefix):
    got = {}
    for _ in range(100):
        if len(got) == 3:
            return [got[i] for i in range(3)]
        t = topic(prefix)
        publish(A, t, "probe")
        got.setdefault(owner(t), t)
    raise Fail("100 topics did not cover the 3 masters")


def shardnumsub(r, ch):
    rep = r.cmd("PUBSUB", "SHARDNUMSUB", ch)
    return int(rep[1])


# ---------------------------------------------------------------- cases


async def test_cross_node_every_master():
    a, b = cluster()
    ts = topics_per_master("cl")
    jb = await jconnect(b)
    ja = await jconnect(a)
    eps = {}
    for i, t in enumerate(ts):
        ack = await jb.sub(t)
        check_sub_ack(ack, t, offset=1, recovered=False)
        eps[t] = ack["epoch"]
        await ja.sub(t)
        for k, r in enumerate(RS):
            n = shardnumsub(r, "dx:m:{%s}" % t)
            if k == i:
                expect_eq(n, 2, "master %d: shard subscribers of dx:m:{%s} (one per node)" % (k + 1, t))
            else:
                expect_eq(n, 0, "master %d: shard subscribers of dx:m:{%s} (on master %d)" % (k + 1, t, i + 1))
            # no classic subscription next to the shard one
            expect_eq(int(r.cmd("PUBSUB", "NUMSUB", "dx:m:{%s}" % t)[1]), 0,
                      "master %d: classic subscribers of dx:m:{%s}" % (k + 1, t))
    for n in range(2, 10):
        for t in ts:
            p = publish(a if n % 2 else b, t, "%s-%d" % (t, n))
            expect_eq((p["offset"], p["epoch"]), (n, eps[t]), "publish %d on %s" % (n, t))
    for j, who in ((jb, "B"), (ja, "A")):
        got = {t: [] for t in ts}
        for _ in range(24):
            m = await j.msg(timeout=15, what="subscriber on %s" % who)
            got[m["topic"]].append((m["offset"], m["data"]))
        for t in ts:
            expect_eq(got[t], [(n, "%s-%d" % (t, n)) for n in range(2, 10)], "subscriber on %s: %s" % (who, t))
    await ja.quiet(0.3)
    await jb.quiet(0.1)
    await ja.close()
    await jb.close()
    for t in ts:
        jc = await jconnect(a)
        ack = await jc.sub(t, since={"offset": 3, "epoch": eps[t]})
        check_sub_ack(ack, t, offset=9, epoch=eps[t], recovered=True)
        offs = [(await jc.msg(timeout=15, what="resumer of " + t))["offset"] for _ in range(6)]
        expect_eq(offs, list(range(4, 10)), "resumer of %s on A" % t)
        await jc.quiet(0.2)
        await jc.close()
        expect_eq([m["offset"] for m in history(b, t)["messages"]], list(range(1, 10)), "history of %s via B" % t)


async def test_pattern_every_master():
    a, b = cluster()
    base = topic("cpat")
    # a probe topic under the pattern on each master, found from the slot
    # map without publishing: a publish made before the pattern exists
    # also goes out classic (PUBLISH, for patterns), which the cluster bus
    # carries to the other masters at its own pace, so it could still reach
    # one after the PSUBSCRIBE there (an unexpected message)
    probes = {}
    for i in range(200):
        if len(probes) == 3:
            break
        t = "%s.probe%d" % (base, i)
        probes.setdefault(slot_master(t), t)
    check(len(probes) == 3, "probe topics cover the 3 masters: %r" % probes)
    jb = await jconnect(b)
    await jb.ack("sub", topic=base + ".*")
    # acked at once, active on a master once it confirmed the PSUBSCRIBE
    # (docs/gateway.md "Known limits"): wait for a probe from each master
    for k in sorted(probes):
        await pattern_active(jb, probes[k], a)
    names, seen = [], set()
    for i in range(40):
        t = "%s.x%d" % (base, i)
        publish(a, t, "m%d" % i)
        names.append(t)
        seen.add(owner(t))
        if len(seen) == 3 and i >= 8:
            break
    check(len(seen) == 3, "pattern topics on the 3 masters: %r" % seen)
    got = await jb.msgs(len(names), timeout=15, what="pattern deliveries")
    expect_eq(sorted(m["topic"] for m in got), sorted(names), "pattern deliveries: each topic once")
    await jb.quiet(0.5)
    await jb.close()


async def test_unsubscribed_and_again():
    """The last subscriber of a topic leaves: the shard channel is
    SUNSUBSCRIBEd (SHARDNUMSUB 0 on its master, the bookkeeping keyed on
    Redis's `sunsubscribe`); subscribed again, it receives again, and
    leaving while the SSUBSCRIBE is still out ends with nothing held."""
    a, b = cluster()
    ts = topics_per_master("us")
    # and a second topic on each master, in another slot: channels of several
    # slots cannot share one SUNSUBSCRIBE (CROSSSLOT)
    more = {}
    for i in range(300):
        if len(more) == 3:
            break
        t = topic("us2")
        k = slot_master(t)
        if k not in more and slot_of(t) != slot_of(ts[k]):
            more[k] = t
    check(len(more) == 3, "second topics cover the 3 masters")
    ts = ts + [more[k] for k in range(3)]
    for rnd in range(3):
        js = [await jconnect(a) for _ in range(4)]
        for j in js:
            for t in ts:
                await j.sub(t)
        for i, t in enumerate(ts):
            i %= 3
            wait_for(lambda: shardnumsub(RS[i], "dx:m:{%s}" % t) >= 1, 10, "dx:m:{%s} subscribed" % t, step=0.05)
            p = publish(b, t, "r%d" % rnd)
            for j in js:
                m = await j.msg(timeout=15, what="round %d on %s" % (rnd, t))
                expect_eq((m["topic"], m["offset"], m["data"]), (t, p["offset"], "r%d" % rnd), "round %d" % rnd)
        for j in js:
            await j.close()
        for i, t in enumerate(ts):
            i %= 3
            wait_for(lambda: shardnumsub(RS[i], "dx:m:{%s}" % t) == 0, 10,
                     "dx:m:{%s} unsubscribed on master %d after round %d" % (t, i + 1, rnd), step=0.05)
    # subscribe and leave at once, many times: nothing stays subscribed
    for _ in range(5):
        j = await jconnect(a)
        for t in ts:
            await j.send({"op": "sub", "topic": t})
        await j.close()
    for i, t in enumerate(ts):
        i %= 3
        wait_for(lambda: shardnumsub(RS[i], "dx:m:{%s}" % t) == 0, 10,
                 "dx:m:{%s} unsubscribed on master %d after sub+close" % (t, i + 1), step=0.05)


def test_disconnect_answered_by_every_worker():
    a, b = cluster()
    for i in range(4):
        t0 = time.monotonic()
        resp = http(b if i % 2 else a, "POST", "/api/disconnect?user=cu%d-%d" % (i, os.getpid()))
        dt = time.monotonic() - t0
        expect_eq(resp.status, 200, "disconnect: status (%s)" % resp.body[:200])
        expect_eq(resp.json().get("disconnected"), 0, "disconnect of a user with no connection")
        check(dt < 1.5, "disconnect took %.2f s: a worker did not answer" % dt)


def migrate_slot(sl, src, dst, between=None):
    """Moves slot sl from master src to dst with its keys (what
    `redis-cli --cluster reshard` does for one slot); between() runs once
    the keys moved and before the slot is handed over (the source then
    answers ASK for them)."""
    sid, did = src.id(), dst.id()
    expect_eq(dst.cmd("CLUSTER", "SETSLOT", sl, "IMPORTING", sid), "OK", "SETSLOT IMPORTING")
    expect_eq(src.cmd("CLUSTER", "SETSLOT", sl, "MIGRATING", did), "OK", "SETSLOT MIGRATING")
    keys = src.cmd("CLUSTER", "GETKEYSINSLOT", sl, 1000)
    check(keys, "keys in slot %d" % sl)
    rep = src.cmd("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *keys)
    expect_eq(rep, "OK", "MIGRATE of %d keys" % len(keys))
    if between:
        between()
    for r in (dst, src) + tuple(x for x in RS if x is not src and x is not dst):
        expect_eq(r.cmd("CLUSTER", "SETSLOT", sl, "NODE", did), "OK", "SETSLOT NODE on :%d" % r.port)
    return len(keys)


async def test_slot_migration_no_loss():
    a, b = cluster()
    t = topic("mig")
    ep = publish(a, t, "m1")["epoch"]
    src = owner(t)
    dst = (src + 1) % 3
    sl = slot_of(t)
    jb = await jconnect(b)
    ack = await jb.sub(t, since={"offset": 0, "epoch": ep})
    check_sub_ack(ack, t, offset=1, epoch=ep, recovered=True)
    for n in range(2, 6):
        publish(a if n % 2 else b, t, "m%d" % n)
    offs = [(await jb.msg(timeout=15, what="before the migration"))["offset"] for _ in range(5)]
    expect_eq(offs, [1, 2, 3, 4, 5], "kept subscriber before the migration")
    def during():  # keys on the target, slot still the source's: ASK, then ASKING on the target
        p = publish(a, t, "m6")
        expect_eq((p["offset"], p["epoch"]), (6, ep), "publish during the migration (ASK)")
        stats = RS[dst].cmd("INFO", "commandstats").decode()
        check("cmdstat_asking:calls=" in stats, "the publish during the migration came with ASKING to the target")
    nkeys = migrate_slot(sl, RS[src], RS[dst], between=during)
    expect_eq(owner(t), dst, "owner of %s after the migration" % t)
    # both nodes' maps are stale: MOVED is followed
    for n in range(7, 12):
        p = publish(a if n % 2 else b, t, "m%d" % n)
        expect_eq((p["offset"], p["epoch"]), (n, ep), "publish %d after the migration" % n)
    got = []
    for _ in range(6):  # m6 was published on the target before the subscriber moved: read back
        m = await jb.msg(timeout=20, what="kept subscriber after the migration")
        got.append((m["offset"], m["data"]))
    expect_eq(got, [(n, "m%d" % n) for n in range(6, 12)], "kept subscriber after the migration")
    await jb.quiet(0.3)
    wait_for(lambda: shardnumsub(RS[dst], "dx:m:{%s}" % t) >= 1, 10, "the shard channel subscribed on the new master",
             step=0.05)
    expect_eq(shardnumsub(RS[src], "dx:m:{%s}" % t), 0, "shard subscribers left on the old master")
    jc = await jconnect(a)
    ack = await jc.sub(t, since={"offset": 2, "epoch": ep})
    check_sub_ack(ack, t, offset=11, epoch=ep, recovered=True)
    offs = [(await jc.msg(timeout=15, what="resumer after the migration"))["offset"] for _ in range(9)]
    expect_eq(offs, list(range(3, 12)), "resumer after the migration")
    await jc.quiet(0.3)
    say("  slot %d (%d keys) moved from master %d to %d (one publish answered ASK): published 11, kept "
        "subscriber got 11, resumer 3..11, lost 0, duplicated 0" % (sl, nkeys, src + 1, dst + 1))
    await jb.close()
    await jc.close()


async def test_pubsub_connections_killed_resubscribed():
    """Every master drops the nodes' pub/sub connections (CLIENT KILL TYPE
    pubsub) between publishes: the kept subscribers get every message once,
    in order (resubscribed, the gap read back)."""
    a, b = cluster()
    ts = topics_per_master("ck")
    jb = await jconnect(b)
    for t in ts:
        await jb.sub(t)
    for n in range(2, 5):
        for t in ts:
            publish(a, t, "%s-%d" % (t, n))
    for r in RS:
        check(r.cmd("CLIENT", "KILL", "TYPE", "pubsub") >= 1, "CLIENT KILL TYPE pubsub on :%d" % r.port)
    for n in range(5, 8):
        for t in ts:
            publish(a if n % 2 else b, t, "%s-%d" % (t, n))
    got = {t: [] for t in ts}
    for _ in range(18):
        m = await jb.msg(timeout=20, what="subscriber across the kills")
        got[m["topic"]].append(m["offset"])
    for t in ts:
        expect_eq(got[t], list(range(2, 8)), "subscriber of %s across the kills" % t)
    await jb.quiet(0.3)
    await jb.close()


def no_bus_warnings(*nodes):
    """No bus warning that would mean a relay item went astray: a barrier
    taken for a live entry, a subscription Redis refused."""
    for s in nodes:
        for bad in ("malformed", "refused a subscription", "out of memory"):
            check(bad not in s.log(), "node :%d log: %r:\n%s" % (s.port, bad, s.log()[-3000:]))


def node4():
    """Node C: --workers 4, seeded with the first master."""
    c = Serve("--redis", "redis://127.0.0.1:%d" % RS[0].port, "--redis-cluster", workers=4)
    wait_for(lambda: health(c) == (200, "ok\n"), 30, "node :%d /healthz ok" % c.port, step=0.05)
    return c


async def subscribers(s, ts, n):
    """n JSON connections to s (spread over its workers), each subscribed to every topic of ts."""
    js = []
    for _ in range(n):
        j = await jconnect(s)
        for t in ts:
            await j.sub(t)
        js.append(j)
    return js


async def expect_exact(js, ts, first, last, what):
    """Each connection of js gets offsets first..last of every topic of ts,
    in order per topic, nothing else (no loss, no duplicate)."""
    for k, j in enumerate(js):
        got = {t: [] for t in ts}
        for _ in range(len(ts) * (last - first + 1)):
            m = await j.msg(timeout=20, what="%s: subscriber %d" % (what, k))
            check(m["topic"] in got, "%s: subscriber %d: unexpected %r" % (what, k, m))
            got[m["topic"]].append(m["offset"])
        for t in ts:
            expect_eq(got[t], list(range(first, last + 1)), "%s: subscriber %d of %s" % (what, k, t))


async def relay_closed(clients, ts, node, nodes):
    """Closes the clients, then checks that node's relay let go of every
    topic (topic ts[i] on master RS[i]): no shard subscription left in
    Redis, the subscriptions gauge back to 0, no bus warning logged."""
    for j in clients:
        await j.close()
    for i, t in enumerate(ts):
        wait_for(lambda: shardnumsub(RS[i], "dx:m:{%s}" % t) == 0, 10, "no shard subscription of %s left" % t)
    wait_for(lambda: metric_sum(metrics(node), "duplex_bus_subscriptions")[0] == 0, 10,
             "the node's bus subscriptions gauge back to 0")
    no_bus_warnings(*nodes)


async def test_relay_one_shard_subscription_per_node():
    """--workers 4: 40 subscribers of a topic per master spread over the
    workers: one shard subscription per node (SHARDNUMSUB 1 on the topic's
    master, 2 once node B subscribes too), every subscriber gets every
    message in order, each message reaches each worker holding the topic
    once through its owner (duplex_bus_relayed_total), the gauge
    duplex_bus_subscriptions counts the node's 3; none left after."""
    a, b = cluster()
    c = node4()
    try:
        ts = topics_per_master("rl")
        js = await subscribers(c, ts, 40)
        figs = []
        for i, t in enumerate(ts):
            n = shardnumsub(RS[i], "dx:m:{%s}" % t)
            figs.append(n)
            expect_eq(n, 1, "master %d: SHARDNUMSUB dx:m:{%s} with 40 subscribers on node C's 4 workers" % (i + 1, t))
        expect_eq(metric_sum(metrics(c), "duplex_bus_subscriptions")[0], 3, "node C's bus subscriptions")
        jb = await subscribers(b, ts, 6)
        for i, t in enumerate(ts):
            expect_eq(shardnumsub(RS[i], "dx:m:{%s}" % t), 2, "master %d: SHARDNUMSUB with node B too" % (i + 1))
        m0 = metrics(c)
        n = 12
        for k in range(2, n + 1):
            for t in ts:
                publish(a if k % 2 else b, t, "m%d" % k)
        await expect_exact(js + jb, ts, 2, n, "relayed")
        m1 = metrics(c)
        hand = metric_sum(m1, "duplex_handoffs_total")[0] - metric_sum(m0, "duplex_handoffs_total")[0]
        rel = metric_sum(m1, "duplex_bus_relayed_total")[0] - metric_sum(m0, "duplex_bus_relayed_total")[0]
        per = (n - 1) * len(ts)
        check(hand % per == 0 and 2 <= hand // per <= 4,
              "node C: %d messages received %d times by its workers: expected once per worker" % (per, hand))
        expect_eq(rel, hand, "node C: messages forwarded by the owners (one per worker per message)")
        say("  node C: 40 subscribers per topic on %d workers: SHARDNUMSUB %r, %d forwards for %d messages" % (
            hand // per, figs, rel, per))
        await relay_closed(js + jb, ts, c, (a, b, c))
    finally:
        c.stop()


async def test_relay_slot_migration_four_workers():
    """A topic held on every worker of node C (--workers 4) and on node B
    moves to another master while publishes go on (one answered ASK): every
    subscriber gets every offset once, in order; afterwards one shard
    subscription per node on the new master, none on the old one."""
    a, b = cluster()
    c = node4()
    try:
        t = topic("rmig")
        ep = publish(a, t, "m1")["epoch"]
        src = owner(t)
        dst = (src + 2) % 3
        js = await subscribers(c, [t], 16) + await subscribers(b, [t], 4)
        expect_eq(shardnumsub(RS[src], "dx:m:{%s}" % t), 2, "SHARDNUMSUB before (nodes B and C)")
        for k in range(2, 6):
            publish(a if k % 2 else c, t, "m%d" % k)
        nxt = [6]

        def during():
            p = publish(c, t, "m%d" % nxt[0])
            expect_eq((p["offset"], p["epoch"]), (nxt[0], ep), "publish during the migration")
            nxt[0] += 1
        migrate_slot(slot_of(t), RS[src], RS[dst], between=during)
        for k in range(nxt[0], nxt[0] + 8):
            p = publish((a, b, c)[k % 3], t, "m%d" % k)
            expect_eq(p["offset"], k, "publish %d after the migration" % k)
        last = nxt[0] + 7
        await expect_exact(js, [t], 2, last, "across the migration")
        wait_for(lambda: shardnumsub(RS[dst], "dx:m:{%s}" % t) == 2, 10,
                 "one shard subscription per node on the new master", step=0.05)
        expect_eq(shardnumsub(RS[src], "dx:m:{%s}" % t), 0, "shard subscribers left on the old master")
        publish(a, t, "m%d" % (last + 1))
        await expect_exact(js, [t], last + 1, last + 1, "after the migration")
        for j in js:
            await j.quiet(0.1)
            await j.close()
        say("  slot of %s moved from master %d to %d under 20 subscribers (16 on 4 workers): %d messages each, "
            "lost 0, duplicated 0; SHARDNUMSUB 2 on the new master (one per node)" % (t, src + 1, dst + 1, last))
        no_bus_warnings(a, b, c)
    finally:
        c.stop()


async def test_relay_resume_stress_four_workers():
    """Subscribers hopping between node C (--workers 4) and node B, each
    resuming where it left while publishes alternate nodes: every offset
    once, in order (a subscribe's barrier travels on the topic's shard
    channel to its owner, which forwards it after the topic's messages)."""
    a, b = cluster()
    c = node4()
    try:
        await resume_stress(c, b, "clstress")
        no_bus_warnings(a, b, c)
    finally:
        c.stop()


async def test_relay_churn_four_workers():
    """Subscribe/unsubscribe churn from 30 connections over node C's 4
    workers on a topic of each master, while 8 stable subscribers receive
    every message in order and a publisher runs: once everyone left, no
    shard subscription is left on any master, and the gauge is back to 0."""
    a, b = cluster()
    c = node4()
    try:
        ts = topics_per_master("rchurn")
        stable = await subscribers(c, ts, 8)
        n = 60
        done = threading.Event()

        def publisher():
            try:
                for k in range(2, n + 1):
                    for t in ts:
                        publish(a if k % 2 else b, t, "m%d" % k)
            finally:
                done.set()

        async def churner(k):
            j = await jconnect(c)
            for i in range(8):
                t = ts[(k + i) % 3]
                await j.ack("sub", topic=t)
                await j.ack("unsub", topic=t)
            return j

        th = threading.Thread(target=publisher)
        th.start()
        churners = await asyncio.gather(*[churner(k) for k in range(30)])
        th.join()
        check(done.is_set(), "publisher finished")
        await expect_exact(stable, ts, 2, n, "stable subscribers through the churn")
        for i, t in enumerate(ts):
            expect_eq(shardnumsub(RS[i], "dx:m:{%s}" % t), 1, "SHARDNUMSUB of %s with the stable subscribers" % t)
        await relay_closed(churners + stable, ts, c, (a, b, c))
    finally:
        c.stop()


async def test_relay_resume_across_migration():
    """Subscribers hopping between node C (--workers 4) and node B, each
    resuming from its last offset, while a publisher runs and the topic's
    slot migrates (twice: away and back): a subscribe may answer 4503 when
    its read was out as the slot moved (it resumes again), but every offset
    reaches every subscriber once, in order."""
    a, b = cluster()
    c = node4()
    try:
        t = topic("rrmig")
        n = 240
        ep = publish(a, t, "m1")["epoch"]
        src = owner(t)
        dst = (src + 1) % 3
        sl = slot_of(t)
        pubbed = [1]
        stop = threading.Event()

        def publisher():
            try:
                for k in range(2, n + 1):
                    p = publish((a, b, c)[k % 3], t, "m%d" % k)
                    expect_eq(p["offset"], k, "publish %d" % k)
                    pubbed[0] = k
                    time.sleep(0.004)
            finally:
                stop.set()

        errs = [0]

        async def subscriber(k):
            got, since, i = [], 0, k
            while len(got) < n:
                j = await jconnect((c, b, c)[i % 3])
                i += 1
                r = await j.req("sub", topic=t, since={"offset": since, "epoch": ep})
                if r["op"] == "err":
                    expect_eq(r.get("code"), 4503, "subscriber %d: err %r" % (k, r))
                    errs[0] += 1
                    await j.close()
                    await asyncio.sleep(0.05)
                    continue
                expect_eq(r.get("recovered"), True, "subscriber %d: resume from %d recovered (%r)" % (k, since, r))
                for _ in range(10 + (k * 7 + i * 13) % 30):
                    if len(got) >= n:
                        break
                    m = await j.msg(timeout=20, what="subscriber %d after %d" % (k, len(got)))
                    check(m["op"] == "msg", "subscriber %d: %r" % (k, m))
                    got.append(m["offset"])
                    since = m["offset"]
                await j.close()
            expect_eq(got, list(range(1, n + 1)), "subscriber %d: offsets" % k)

        def migrations():
            wait_for(lambda: pubbed[0] >= n // 3, 30, "a third published", step=0.01)
            migrate_slot(sl, RS[src], RS[dst])
            wait_for(lambda: pubbed[0] >= 2 * n // 3, 30, "two thirds published", step=0.01)
            migrate_slot(sl, RS[dst], RS[src])

        th = threading.Thread(target=publisher)
        th.start()
        mig = asyncio.get_running_loop().run_in_executor(None, migrations)
        await asyncio.gather(*[subscriber(k) for k in range(8)])
        await mig
        th.join()
        expect_eq(owner(t), src, "the slot back on its first master")
        wait_for(lambda: shardnumsub(RS[src], "dx:m:{%s}" % t) == 0, 10, "nothing left subscribed", step=0.05)
        say("  8 subscribers hopping between nodes across 2 slot migrations: %d messages each, lost 0, "
            "duplicated 0 (%d subscribes answered 4503 and resumed)" % (n, errs[0]))
        no_bus_warnings(a, b, c)
    finally:
        c.stop()


def ssub_clients(r):
    """ids of r's clients holding shard subscriptions (CLIENT LIST ssub=N)."""
    out = []
    for line in r.cmd("CLIENT", "LIST").decode().splitlines():
        f = dict(kv.split("=", 1) for kv in line.split(" ") if "=" in kv)
        if int(f.get("ssub", "0")) > 0:
            out.append(f["id"])
    return out


async def test_relay_owner_connection_killed():
    """The connections holding the shard subscriptions (the owners', one per
    node) are killed on every master, the other workers' pub/sub connections
    stay: every subscriber on the 4 workers of node C (and on B) gets every
    offset once, in order (the owner tells the others, which read back what
    they missed once it subscribed again); one shard subscription per node again."""
    a, b = cluster()
    c = node4()
    try:
        ts = topics_per_master("rkill")
        js = await subscribers(c, ts, 16) + await subscribers(b, ts, 4)
        for k in range(2, 5):
            for t in ts:
                publish(a, t, "%s-%d" % (t, k))
        for rnd in range(3):
            for i, t in enumerate(ts):  # subscribed again (both nodes) since the last round
                wait_for(lambda: shardnumsub(RS[i], "dx:m:{%s}" % t) >= 2, 10, "%s subscribed on both nodes" % t,
                         step=0.02)
            for r in RS:
                ids = ssub_clients(r)
                check(ids, "clients with shard subscriptions on :%d" % r.port)
                for i in ids:
                    r.cmd("CLIENT", "KILL", "ID", i)
            for k in range(5 + 3 * rnd, 8 + 3 * rnd):
                for t in ts:
                    publish((a, b, c)[k % 3], t, "%s-%d" % (t, k))
        await expect_exact(js, ts, 2, 13, "across the owners' connections killed")
        for i, t in enumerate(ts):
            wait_for(lambda: shardnumsub(RS[i], "dx:m:{%s}" % t) == 2, 10,
                     "one shard subscription per node again for %s" % t, step=0.05)
        for j in js:
            await j.quiet(0.1)
            await j.close()
        no_bus_warnings(a, b, c)
    finally:
        c.stop()


def teardown():
    for r in RS:
        r.stop()


if __name__ == "__main__":
    import atexit
    atexit.register(teardown)
    main([
        test_cross_node_every_master,
        test_pattern_every_master,
        test_unsubscribed_and_again,
        test_disconnect_answered_by_every_worker,
        test_slot_migration_no_loss,
        test_pubsub_connections_killed_resubscribed,
        test_relay_one_shard_subscription_per_node,
        test_relay_slot_migration_four_workers,
        test_relay_owner_connection_killed,
        test_relay_resume_stress_four_workers,
        test_relay_churn_four_workers,
        test_relay_resume_across_migration,
    ])
