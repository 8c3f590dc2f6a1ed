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
    SSUBSCRIBEd on its master only (PUBSUB SHARDNUMSUB); resume on the
    other node and history agree;
  - a pattern subscription receives topics of every master, once each;
  - /api/disconnect is answered by every worker of both nodes;
  - every master kills the nodes' pub/sub connections: kept subscribers
    get every message once, in order (resubscribed, gap read back);
  - a topic's slot migrated to another master (CLUSTER SETSLOT
    IMPORTING/MIGRATING, MIGRATE of its keys, a publish answered ASK in
    between (ASKING seen on the target), SETSLOT NODE on every master): publishes through both nodes follow (MOVED), offsets and epoch
    continue, the kept subscriber gets every message once (its shard
    channel unsubscribed by Redis, subscribed again on the new master, the
    gap read back), and a resumer gets everything since its offset.

A missing redis-server or redis-cli fails the test (nothing is skipped).
"""
import os
import shutil
import subprocess
import time

import gwtest
from gwtest import (Fail, Serve, check, check_sub_ack, expect_eq, free_port, history, http, jconnect, main, publish,
                    say, topic, wait_for)
from test_redis import REDIS_BIN, Redis, pattern_active

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


def master_of_slot(sl):
    """The master serving slot sl, from CLUSTER SLOTS (no key needed)."""
    ports = [r.port for r in RS]
    for rng in RS[0].cmd("CLUSTER", "SLOTS"):
        if rng[0] <= sl <= rng[1] and rng[2][1] in ports:
            return ports.index(rng[2][1])
    raise Fail("no master serves slot %d" % sl)


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
                check(n >= 2, "master %d: dx:m:{%s} shard subscribers %d, expected both nodes" % (k + 1, t, n))
            else:
                expect_eq(n, 0, "master %d: shard subscribers of dx:m:{%s} (on master %d)" % (k + 1, t, i + 1))
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
    # map: nothing is published under the pattern before the subscription.
    # In a cluster a PUBLISH reaches the subscribers of the other masters
    # through the cluster bus, later: one published just before the
    # subscription could still reach it through another master (a copy the
    # node has no offset of that topic to drop it by), e.g. after every
    # message counted below.
    probes = {}
    for i in range(200):
        if len(probes) == 3:
            break
        t = "%s.probe%d" % (base, i)
        probes.setdefault(master_of_slot(slot_of(t)), t)
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


def teardown():
    for r in RS:
        r.stop()


if __name__ == "__main__":
    import atexit
    atexit.register(teardown)
    main([
        test_cross_node_every_master,
        test_pattern_every_master,
        test_disconnect_answered_by_every_worker,
        test_slot_migration_no_loss,
        test_pubsub_connections_killed_resubscribed,
    ])
