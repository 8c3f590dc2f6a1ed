"""
tests/cluster/test_netns.py (ctest cluster_netns): a network fault between
one node and Redis (issue 11, scenario 6, docs/deploy.md).

The test makes a network namespace (`ip netns add`) joined to the host by
two veth pairs (cluster.Netns): node 3 runs inside it (`ip netns exec`),
its clients reach it over one pair and it reaches Redis over the other.
Nodes 1 and 2 run on the host; HAProxy (tests/cluster/haproxy.cfg) health-
checks all three on /healthz. A publisher publishes through node 1; JSON
subscribers sit on node 3 and on node 1.

- the Redis link is cut (`ip link set down` on the host end: packets
  vanish, no RST): node 3's /healthz answers 503, HAProxy marks it DOWN,
  a publish through node 3 answers 503, node 3's subscribers stay
  connected (their TCP connections are on the other pair), publishing
  through node 1 goes on;
- the link is set up again: node 3's /healthz 200, HAProxy marks it UP, a
  publish through node 3 answers 200, and every subscriber, node 3's
  included, ends with every acknowledged offset exactly once, in order.

Prints published / delivered / lost / duplicated and how long each step
took. Run as root (namespaces, links): /usr/bin/python3 tests/cluster/test_netns.py build/duplex
"""
import time

import cluster as C
from cluster import check, expect_eq, say

PER_NODE = 3
RATE = 40
DETECT = 45  # seconds node 3 may take to see a silent link loss (its Redis health check)


async def redis_link_cut():
    ns = C.Netns()
    redis = C.Redis(extra_bind=[ns.host_redis]).start()
    n1 = C.Node("node1", redis.url()).start()
    n2 = C.Node("node2", redis.url()).start()
    n3 = C.Node("node3", redis.url(ns.host_redis), host=ns.ns_client, netns=ns).start()
    hp = C.HAProxy([n1, n2, n3]).start()
    await C.await_for(lambda: sorted(hp.server_states().values()) == ["UP"] * 3, 15, "HAProxy to see 3 nodes UP")
    t = C.topic("netns")
    subs3 = [C.Resumer("node3-c%d" % i, n3.url(), t).start() for i in range(PER_NODE)]
    subs1 = [C.Resumer("node1-c%d" % i, n1.url(), t).start() for i in range(PER_NODE)]
    subs = subs3 + subs1
    await C.await_for(lambda: all(s.connected.is_set() for s in subs), 30, "the subscribers to subscribe")
    pub = C.Publisher([n1], t, rate=RATE).start()
    await C.await_for(lambda: pub.count() >= RATE, 30, "a second of publishes")
    await C.wait_delivered(pub, subs, 20, "node 3's subscribers to receive node 1's publishes before the fault")
    ns.cut()
    t0 = time.monotonic()
    say("redis link of node 3 cut after %d publishes" % pub.count())
    await C.await_for(lambda: n3.healthz() == 503, DETECT, "node 3 /healthz 503 with its Redis link down", 0.1)
    say("node 3 /healthz 503 after %.1f s" % (time.monotonic() - t0))
    await C.await_for(lambda: hp.server_states().get("node3") == "DOWN", 15, "HAProxy to mark node 3 DOWN")
    say("HAProxy: %s" % hp.server_states())
    r = n3.publish(t, "through the cut node")
    C.gwtest.expect_error(r, 503, "POST /api/publish on node 3 with its Redis link down")
    # new connections through HAProxy go to nodes 1 and 2 only
    before = n3.connections()
    js = [await C.jconnect(hp.url()) for _ in range(4)]
    expect_eq(n3.connections(), before, "connections on node 3 after 4 more through HAProxy")
    for j in js:
        await j.close()
    mark = pub.count()
    await C.await_for(lambda: pub.count() >= mark + RATE, 30, "publishes through node 1 during the fault")
    kept = [s.name for s in subs3 if s.connects == 1 and s.connected.is_set()]
    expect_eq(len(kept), PER_NODE, "node 3's subscribers still connected during the fault (%s)" % kept)
    ns.heal()
    t1 = time.monotonic()
    await C.await_for(lambda: n3.healthz() == 200, 60, "node 3 /healthz 200 after the link is back", 0.1)
    say("node 3 /healthz 200 %.1f s after the link is back" % (time.monotonic() - t1))
    await C.await_for(lambda: hp.server_states().get("node3") == "UP", 15, "HAProxy to mark node 3 UP")
    r = n3.publish(t, "through node 3 again")
    expect_eq(r.status, 200, "POST /api/publish on node 3 after the link is back: %r" % r)
    pub.acked[r.json()["offset"]] = -1
    mark = pub.count()
    await C.await_for(lambda: pub.count() >= mark + RATE, 30, "publishes after the fault")
    await pub.stop()
    await C.wait_delivered(pub, subs, 60, "every subscriber (node 3's too) to catch up")
    say("node 3's subscribers: connects %s, closes %s" % ([s.connects for s in subs3], [s.closes for s in subs3]))
    for s in subs:
        await s.stop()
    C.Tally("redis_link_cut", pub, subs).check_clean()
    for n in (n1, n2, n3):
        check(n.alive(), "%s died" % n.name)
    hp.stop()
    for n in (n1, n2, n3):
        expect_eq(n.stop(), 0, "%s exit status" % n.name)
    redis.stop()


if __name__ == "__main__":
    C.run([redis_link_cut])
