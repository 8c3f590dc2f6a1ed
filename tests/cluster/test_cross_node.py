"""
tests/cluster/test_cross_node.py (ctest cluster_cross_node): three
`duplex serve --redis` nodes on one redis-server act as one gateway
(issue 11, scenario 1, docs/deploy.md), directly and behind each load
balancer configuration of tests/cluster:

- a JSON, a raw and an SSE subscriber on node 1 and node 2 receive, in
  order and with the publisher's offsets, what is published through node 3's
  API (every kind) and through a JSON client's `pub` on node 2; history and
  presence answer the same through any node; a client that read on node 1
  resumes on node 2 with node 1's `since` (recovered, exactly the missed
  messages);
- nginx round robin (tests/cluster/nginx.conf) spreads connections over the
  three nodes and every subscriber gets every message published through
  nginx's API; nginx ip_hash (nginx-sticky.conf) keeps one client address on
  one node; HAProxy (haproxy.cfg) health-checks /healthz and spreads;
- docs/deploy.md quotes those three files verbatim.

Run: /usr/bin/python3 tests/cluster/test_cross_node.py build/duplex [CASE]
"""
import asyncio
import base64
import json

import cluster as C
from cluster import check, expect_eq, say

NODES = []
REDIS = []


def nodes():
    """One Redis and three nodes for the script, started on first use."""
    if not NODES:
        REDIS.append(C.Redis().start())
        NODES.extend(C.cluster(REDIS[0], 3))
    for n in NODES:
        check(n.alive(), "%s died:\n%s" % (n.name, n.log()[-3000:]))
    return NODES


async def publish_node3_to_subscribers_on_1_and_2():
    n1, n2, n3 = nodes()
    t = C.topic("x")
    j1 = await C.jconnect(n1.url())
    a1 = await j1.sub(t)
    j2 = await C.jconnect(n2.url())
    await j2.sub(t)
    raw1 = await C.websockets.connect(n1.url("/ws?subscribe=" + C.q(t)), open_timeout=10, ping_interval=None,
                                      max_size=None)
    sse2 = C.gwtest.SSE(n2, "subscribe=" + C.q(t))  # SSE uses srv.port on 127.0.0.1
    expect_eq(sse2.status, 200, "GET /sse on node 2")
    # every kind through node 3's API
    bodies = [("text/plain", b"hello from node 3"), ("application/json", b'{"a":[1,2,3]}'),
              ("application/octet-stream", bytes(range(256)))]
    acks = []
    for ct, b in bodies * 4:
        r = n3.publish(t, b, ct)
        expect_eq(r.status, 200, "POST /api/publish on node 3 (%s)" % ct)
        acks.append(r.json())
    offs = [a["offset"] for a in acks]
    expect_eq(offs, list(range(a1["offset"] + 1, a1["offset"] + 13)), "node 3's offsets (after node 1's ack)")
    epoch = acks[0]["epoch"]
    check(all(a["epoch"] == epoch for a in acks), "one epoch for every publish: %r" % acks)
    # a JSON client publishing on node 2
    jp = await C.jconnect(n2.url())
    pa = await jp.ack("pub", topic=t, data="from node 2")
    expect_eq(pa["offset"], offs[-1] + 1, "offset of the pub through node 2")
    want = len(acks) + 1
    for name, j in (("node 1 json", j1), ("node 2 json", j2)):
        ms = await j.msgs(want, timeout=15, what="%s: msgs published through node 3 and node 2" % name)
        expect_eq([m["offset"] for m in ms], offs + [pa["offset"]], "%s: offsets in order" % name)
        for m, (ct, b) in zip(ms, bodies * 4):
            if ct == "text/plain":
                expect_eq(m.get("data"), b.decode(), "%s: text" % name)
            elif ct == "application/json":
                expect_eq(m.get("data"), json.loads(b), "%s: json" % name)
            else:
                expect_eq(m.get("b64"), base64.b64encode(b).decode(), "%s: binary" % name)
            expect_eq(m["epoch"], epoch, "%s: epoch" % name)
        expect_eq(ms[-1].get("data"), "from node 2", "%s: the JSON pub" % name)
    for i, (ct, b) in enumerate(bodies * 4):
        got = await asyncio.wait_for(raw1.recv(), 15)
        want_b = b if ct == "application/octet-stream" else b.decode()
        if ct == "application/json":
            expect_eq(json.loads(got), json.loads(b), "raw on node 1: json message %d" % i)
        else:
            expect_eq(got, want_b, "raw on node 1: message %d" % i)
    expect_eq(await asyncio.wait_for(raw1.recv(), 15), "from node 2", "raw on node 1: the JSON pub")
    got = [sse2.msg(15)[0]["offset"] for _ in range(want)]
    expect_eq(got, offs + [pa["offset"]], "SSE on node 2: offsets")
    # history and presence through any node
    for n in (n1, n2, n3):
        r = n.http("GET", "/api/history?topic=%s&since=%d" % (C.q(t), a1["offset"]))
        expect_eq(r.status, 200, "%s /api/history" % n.name)
        h = r.json()
        expect_eq([m["offset"] for m in h["messages"]], offs + [pa["offset"]], "%s history offsets" % n.name)
        expect_eq((h["offset"], h["epoch"]), (pa["offset"], epoch), "%s history current offset/epoch" % n.name)

    def presence_is(n, want):
        r = n.http("GET", "/api/presence?topic=" + C.q(t))
        return r.status == 200 and r.json().get("count") == want
    # j1, raw1 on node 1; j2, sse2 on node 2
    for n in (n1, n2, n3):
        await C.await_for(lambda: presence_is(n, 4), 15, "%s /api/presence count 4 (subscribers on nodes 1, 2)"
                          % n.name)
    # resume on node 2 with what node 1's client last saw
    last = (offs[5], epoch)
    jr = await C.jconnect(n2.url())
    a = await jr.sub(t, since={"offset": last[0], "epoch": last[1]})
    C.gwtest.check_sub_ack(a, t, offset=pa["offset"], epoch=epoch, recovered=True)
    ms = await jr.msgs(want - 6, timeout=15, what="resumed msgs on node 2")
    expect_eq([m["offset"] for m in ms], offs[6:] + [pa["offset"]], "resume on node 2: exactly the missed offsets")
    r = n1.publish(t, b"sentinel")
    expect_eq(r.status, 200, "publish through node 1")
    m = await jr.msg(15, "the sentinel")
    expect_eq(m["offset"], pa["offset"] + 1, "live after the resume: next offset")
    await jr.quiet()
    for c in (j1, j2, jp, jr):
        await c.close()
    await raw1.close()
    sse2.close()


async def spread_behind(lb, n_clients, what, sticky=False):
    """n_clients Resumers through lb; checks how they spread over the nodes,
    then that each gets every message published through lb's API."""
    ns = nodes()
    t = C.topic("lb")
    await C.await_for(lambda: sum(n.connections() for n in ns) == 0, 15, "no connection left from the last case")
    before = [0, 0, 0]
    subs = [C.Resumer("c%d" % i, lb.url(), t).start() for i in range(n_clients)]
    await C.await_for(lambda: all(s.connected.is_set() for s in subs), 30, "%d clients to subscribe through %s"
                      % (n_clients, what))
    per = [n.connections() - b for n, b in zip(ns, before)]
    say("%s: %d clients spread over the nodes as %s" % (what, n_clients, per))
    expect_eq(sum(per), n_clients, "%s: connections counted by the nodes" % what)
    if sticky:
        check(max(per) == n_clients, "%s: every client (one address) on one node, got %s" % (what, per))
    else:
        check(min(per) >= 1, "%s: every node got clients, got %s" % (what, per))
    pub = C.Publisher([lb], t, rate=100)
    for _ in range(30):
        await asyncio.get_running_loop().run_in_executor(None, pub._one, lb)
    expect_eq(pub.count(), 30, "%s: publishes through the balancer answered 200 (refused: %s)" % (what, pub.refused))
    await C.wait_delivered(pub, subs, 20)
    for s in subs:
        await s.stop()
    C.Tally(what, pub, subs).check_clean()


async def nginx_round_robin():
    ng = C.Nginx(nodes(), "nginx.conf").start()
    await spread_behind(ng, 9, "nginx round robin")
    ng.stop()


async def nginx_ip_hash():
    ng = C.Nginx(nodes(), "nginx-sticky.conf").start()
    await spread_behind(ng, 6, "nginx ip_hash", sticky=True)
    ng.stop()


async def haproxy_round_robin():
    hp = C.HAProxy(nodes()).start()
    await C.await_for(lambda: sorted(hp.server_states().values()) == ["UP"] * 3, 15, "HAProxy to see 3 nodes UP")
    await spread_behind(hp, 9, "haproxy round robin")
    hp.stop()


def deploy_doc_quotes_the_configs():
    """docs/deploy.md shows the files the tests run, verbatim."""
    import os
    with open(os.path.join(C.HERE, "..", "..", "docs", "deploy.md")) as f:
        doc = f.read()
    for name in ("nginx.conf", "nginx-sticky.conf", "haproxy.cfg"):
        with open(os.path.join(C.HERE, name)) as f:
            check(f.read() in doc, "docs/deploy.md does not quote tests/cluster/%s verbatim" % name)


if __name__ == "__main__":
    C.run([publish_node3_to_subscribers_on_1_and_2, nginx_round_robin, nginx_ip_hash, haproxy_round_robin,
           deploy_doc_quotes_the_configs])
