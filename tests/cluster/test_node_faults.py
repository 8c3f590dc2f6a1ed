"""
tests/cluster/test_node_faults.py (ctest cluster_node_faults): a node of
three goes away under traffic, behind nginx round robin (tests/cluster/
nginx.conf), while a publisher keeps publishing through a node that stays
(issue 11, scenarios 3 and 5, docs/deploy.md):

- kill_node: SIGKILL of node 1. Its clients' connections end (nginx closes
  them when the node's sockets go); they reconnect through nginx, which
  sends them to nodes 2 and 3, and resume with `since`: every one ends with
  every published offset exactly once, in order, each resume `recovered`;
  SSE streams through the same nginx resume with `Last-Event-ID`;
- drain_node: SIGTERM of node 1. Its clients get close 1012, reconnect
  through nginx to the others and resume the same way; node 1 exits 0;
- rolling_kill: each node in turn SIGKILLed and started again, the
  publisher going through nginx as well (a publish whose node died before
  answering is not counted; if Redis stored it, it shows as
  delivered-unacked): no loss, no duplicate.

Each prints `SCENARIO: published N, subscribers S, delivered D of E, lost L,
duplicated U`. Run: /usr/bin/python3 tests/cluster/test_node_faults.py build/duplex [CASE]
"""
import asyncio
import signal
import time

import cluster as C
from cluster import check, expect_eq, say

CLIENTS = 12  # JSON dialect
SSE_CLIENTS = 3  # SSE streams (Last-Event-ID), through the same nginx
RATE = 40  # publishes per second through node 3's API


async def lose_a_node(name, how):
    redis = C.Redis(name="redis-" + name).start()
    n1, n2, n3 = C.cluster(redis, 3)
    ng = C.Nginx([n1, n2, n3], "nginx.conf").start()
    t = C.topic(name)
    subs = [C.Resumer("c%d" % i, ng.url(), t).start() for i in range(CLIENTS)]
    subs += [C.SSEResumer("sse%d" % i, "127.0.0.1", ng.port, t).start() for i in range(SSE_CLIENTS)]
    await C.await_for(lambda: all(s.connected.is_set() for s in subs), 30, "%d clients to subscribe" % len(subs))
    on1 = n1.connections()
    say("%s: clients per node %s" % (name, [n.connections() for n in (n1, n2, n3)]))
    check(on1 >= 1, "nginx round robin gave node 1 no client")
    pub = C.Publisher([n3], t, rate=RATE).start()
    await C.await_for(lambda: pub.count() >= RATE, 30, "a second of publishes")
    if how == "kill":
        n1.kill9()
        say("%s: node 1 killed (SIGKILL) after %d publishes" % (name, pub.count()))
    else:
        n1.p.send_signal(signal.SIGTERM)
        say("%s: node 1 sent SIGTERM after %d publishes" % (name, pub.count()))
    # node 1's clients come back through nginx on the others
    await C.await_for(lambda: sum(1 for s in subs if s.connects >= 2 and s.connected.is_set()) >= on1, 30,
                      "node 1's %d clients to reconnect and resubscribe" % on1)
    if how == "drain":
        rc = await asyncio.get_running_loop().run_in_executor(None, n1.p.proc.wait, 15)
        expect_eq(rc, 0, "node 1's exit status after SIGTERM")
    mark = pub.count()
    await C.await_for(lambda: pub.count() >= mark + RATE, 30, "a second more of publishes after the fault")
    await pub.stop()
    await C.wait_delivered(pub, subs, 30)
    moved = [s for s in subs if s.connects >= 2]
    expect_eq(len(moved), on1, "clients that reconnected (node 1 held %d)" % on1)
    codes = sorted(set(c for s in moved for c in s.closes[:1]), key=str)
    say("%s: %d clients moved; their first close codes %s; failed reconnect attempts %d" % (
        name, len(moved), codes, sum(s.failed_connects for s in subs)))
    say("%s: of them %d SSE streams" % (name, sum(1 for s in moved if isinstance(s, C.SSEResumer))))
    if how == "drain":
        ws_moved = [s for s in moved if isinstance(s, C.Resumer)]
        check(all(s.closes[:1] == [1012] for s in ws_moved), "drained WebSocket clients get close 1012: %s" %
              [s.closes for s in ws_moved])
    now = [n.connections() for n in (n2, n3)]
    expect_eq(sum(now), len(subs), "connections on nodes 2 and 3 after the fault")
    for s in subs:
        await s.stop()
    C.Tally(name, pub, subs).check_clean()
    for n in (n2, n3):
        check(n.alive(), "%s died" % n.name)
    ng.stop()
    for n in (n2, n3):
        expect_eq(n.stop(), 0, "%s exit status" % n.name)
    redis.stop()


async def rolling_kill():
    """Each node in turn SIGKILLed and started again (same port), the
    publisher going through nginx too: clients move twice or more; a
    publish whose node died before answering is not counted as published
    (if it was stored it shows as delivered-unacked), none is lost."""
    name = "rolling_kill"
    redis = C.Redis(name="redis-" + name).start()
    ns = C.cluster(redis, 3)
    ng = C.Nginx(ns, "nginx.conf").start()
    t = C.topic(name)
    subs = [C.Resumer("c%d" % i, ng.url(), t).start() for i in range(9)]
    subs += [C.SSEResumer("sse%d" % i, "127.0.0.1", ng.port, t).start() for i in range(3)]
    await C.await_for(lambda: all(s.connected.is_set() for s in subs), 30, "the clients to subscribe")
    pub = C.Publisher([ng], t, rate=RATE).start()
    for n in ns:
        mark = pub.count()
        await C.await_for(lambda: pub.count() >= mark + RATE // 2, 30, "publishes before killing %s" % n.name)
        held = n.connections()
        before = sum(s.connects for s in subs)
        n.kill9()
        await C.await_for(lambda: sum(s.connects for s in subs) >= before + held and
                          all(s.connected.is_set() for s in subs), 30,
                          "%s's %d clients to reconnect" % (n.name, held))
        say("%s: %s killed with %d clients; they reconnected" % (name, n.name, held))
        n.start()
        # a rolling restart waits until the balancer sends the node traffic
        # again (nginx retries a failed server after fail_timeout) before
        # taking down the next one: else every server can be out at once
        # ("no live upstreams", 502)
        t0 = time.monotonic()
        probes = []
        while n.connections() == 0:
            check(time.monotonic() - t0 < 30, "nginx sent no connection to the restarted %s in 30 s" % n.name)
            probes.append(await C.jconnect(ng.url()))
            await asyncio.sleep(0.2)
        say("%s: nginx sends clients to %s again after %.1f s" % (name, n.name, time.monotonic() - t0))
        for j in probes:
            await j.close()
    mark = pub.count()
    await C.await_for(lambda: pub.count() >= mark + RATE // 2, 30, "publishes after the last restart")
    await pub.stop()
    await C.wait_delivered(pub, subs, 30)
    for s in subs:
        await s.stop()
    C.Tally(name, pub, subs).check_clean()
    ng.stop()
    for n in ns:
        expect_eq(n.stop(), 0, "%s exit status" % n.name)
    redis.stop()


async def kill_node():
    await lose_a_node("kill_node", "kill")


async def drain_node():
    await lose_a_node("drain_node", "drain")


if __name__ == "__main__":
    C.run([kill_node, drain_node, rolling_kill])
