"""
tests/cluster/test_redis_restart.py (ctest cluster_redis_restart): Redis
goes away under traffic and comes back with its data (issue 11, scenario
4, docs/deploy.md). Three `duplex serve --redis` nodes, subscribers on each
node (JSON clients that resume with `since` if their connection ends), a
publisher through every node's API in turn:

- redis_killed: SIGKILL of redis-server (appendonly, fsync always: what
  was acknowledged is on disk); every node's /healthz turns 503 and its
  publishes answer 503 (never 200 while Redis is away: those are not
  counted as published); redis-server restarted on the same port and data:
  /healthz 200 again, publishes 200 with the same epoch and the next
  offsets; every subscriber ends with every acknowledged offset exactly
  once, in order;
- redis_restarted: the same with a clean stop (SIGTERM) and restart;
- in both, three more clients lose their connection while Redis is away,
  try to resume (refused while the bus is down) and resume on another node
  once it is back: they too miss nothing.

Prints, per case, published / delivered / lost / duplicated and how many
publishes were refused while Redis was away, and whether subscribers kept
their connections. Run: /usr/bin/python3 tests/cluster/test_redis_restart.py build/duplex [CASE]
"""
import asyncio
import time

import cluster as C
from cluster import check, expect_eq, say

PER_NODE = 3
RATE = 40


async def redis_goes_away(name, kill):
    redis = C.Redis(name="redis-" + name).start()
    ns = C.cluster(redis, 3)
    t = C.topic(name)
    subs = [C.Resumer("%s-c%d" % (n.name, i), n.url(), t).start() for n in ns for i in range(PER_NODE)]
    # clients that lose their connection while Redis is away and come back
    # on the next node each time (resuming with `since`)
    movers = [C.Resumer("mover%d" % i, [n.url() for n in ns[i:] + ns[:i]], t).start() for i in range(3)]
    subs += movers
    await C.await_for(lambda: all(s.connected.is_set() for s in subs), 30, "the subscribers to subscribe")
    pub = C.Publisher(ns, t, rate=RATE).start()
    await C.await_for(lambda: pub.count() >= RATE, 30, "a second of publishes")
    before = pub.count()
    t0 = time.monotonic()
    if kill:
        redis.kill9()
    else:
        redis.stop()
    say("%s: redis-server %s after %d publishes" % (name, "killed (SIGKILL)" if kill else "stopped (SIGTERM)",
                                                    before))
    for n in ns:
        await C.await_for(lambda: n.healthz() == 503, 20, "%s /healthz 503 with Redis away" % n.name, 0.05)
    say("%s: every node's /healthz 503 within %.2f s" % (name, time.monotonic() - t0))
    refused0 = sum(pub.refused.values())
    acked0 = pub.count()
    for n in ns:
        r = n.publish(t, "while Redis is away")
        C.gwtest.expect_error(r, 503, "%s: POST /api/publish with Redis away" % n.name)
    # the publisher keeps trying: every try refused
    await C.await_for(lambda: sum(pub.refused.values()) >= refused0 + 5, 30, "5 publishes refused with Redis away")
    expect_eq(pub.count(), acked0, "publishes acknowledged while Redis was away")
    for m in movers:
        m.drop()
    await C.await_for(lambda: all(m.connects >= 2 or m.failed_connects + len(m.sub_errors) >= 1 for m in movers),
                      30, "the movers to try to resume with Redis away")
    say("%s: movers with Redis away: subscribe errors %s, failed handshakes %s" % (
        name, [[a.get("code") for a in m.sub_errors] for m in movers], [m.failed_connects for m in movers]))
    say("%s: %d of %d subscribers connected while Redis is away" % (name, sum(1 for s in subs if
                                                                          s.connected.is_set()), len(subs)))
    redis.start()
    t1 = time.monotonic()
    for n in ns:
        await C.await_for(lambda: n.healthz() == 200, 30, "%s /healthz 200 after Redis is back" % n.name, 0.05)
    say("%s: every node healthy %.2f s after Redis restarted" % (name, time.monotonic() - t1))
    mark = pub.count()
    await C.await_for(lambda: pub.count() >= mark + RATE, 30, "a second of publishes after Redis is back")
    await pub.stop()
    refused = sum(pub.refused.values()) - refused0
    check(refused > 0, "the publisher saw no refusal while Redis was away")
    expect_eq(len(pub.epochs), 1, "epochs of the acknowledged publishes (Redis kept its data)")
    offs = sorted(pub.acked)
    holes = sorted(set(range(offs[0], offs[-1] + 1)) - set(offs))
    say("%s: offsets %d..%d, not acknowledged in between: %s" % (name, offs[0], offs[-1], holes or "none"))
    # a publish Redis stored just before SIGKILL, whose reply died with it,
    # was answered 503 (its outcome unknown to the node): at most one
    check(len(holes) <= (1 if kill else 0), "holes in the acknowledged offsets: %s" % holes)
    await C.wait_delivered(pub, subs, 30)
    check(all(m.connects >= 2 for m in movers), "every mover resumed: %s" % [m.connects for m in movers])
    kept = sum(1 for s in subs if s.connects == 1)
    say("%s: %d of %d subscribers kept their connection through the outage; closes seen %s" % (
        name, kept, len(subs), sorted(set(c for s in subs for c in s.closes), key=str)))
    for s in subs:
        await s.stop()
    C.Tally(name, pub, subs).check_clean()
    for n in ns:
        check(n.alive(), "%s died" % n.name)
        expect_eq(n.stop(), 0, "%s exit status" % n.name)
    redis.stop()


async def redis_killed():
    await redis_goes_away("redis_killed", True)


async def redis_restarted():
    await redis_goes_away("redis_restarted", False)


if __name__ == "__main__":
    C.run([redis_killed, redis_restarted])
