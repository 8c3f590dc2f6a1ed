"""
tests/cluster/test_gap.py (ctest cluster_gap): offsets the Redis bus lost
while a node's subscription was down are announced, never lost silently
(issue 11; GATEWAY.md "Delivery guarantees", `gap`; docs/gateway.md "The
Redis bus", "Faults").

Two nodes with `--history 5` on one redis-server. Node 1 holds a JSON
subscriber and a raw subscriber of topic T (and, in the first case, a JSON
subscriber of a pattern matching T and an SSE subscriber). Node 1 is frozen (SIGSTOP)
and its pub/sub connection killed in Redis (`CLIENT KILL TYPE pubsub`), so
what is published meanwhile never reaches it; node 2 publishes more than
history holds; node 1 resumes (SIGCONT), reconnects and catches up:

- history_trimmed: offsets 1-2 delivered before; 3-12 published while cut
  off, history keeps 8-12: each JSON subscriber (exact and pattern) gets
  `gap` {T, 3, 7}, then 8-12, then live 13; the raw subscriber is closed
  1013 and the SSE stream ends (they cannot be told), neither having had
  anything after 2; `duplex_dropped_total{reason="history_gap"}` counts 5
  per subscriber (20);
- epoch_changed: as above, but Redis is restarted without its data while
  node 1 is frozen, and node 2 publishes 8 messages in the new epoch
  (history keeps 4-8): the JSON subscriber gets `gap` {T, 1, 3}, then 4-8
  carrying the new epoch, then live 9; `duplex_bus_epoch_changes_total`
  counts it.

Run: /usr/bin/python3 tests/cluster/test_gap.py build/duplex
"""
import os
import shutil
import signal

import cluster as C
from cluster import check, expect_eq, say


def nodes(redis):
    return C.cluster(redis, 2, "--history", "5")


def cut_off(redis, node):
    """node frozen, its pub/sub connection gone in Redis (node 2's too: it
    subscribes to nothing here, and reconnects)."""
    os.kill(node.pid, signal.SIGSTOP)
    n = redis.cmd("CLIENT", "KILL", "TYPE", "pubsub")
    check(n >= 1, "CLIENT KILL TYPE pubsub killed %r connections" % n)


def drops(node):
    return node.metrics().get(("duplex_dropped_total", frozenset({("reason", "history_gap")})), 0)


async def setup(n1, n2, t):
    j = await C.jconnect(n1.url())
    a = await j.sub(t)
    raw = await C.websockets.connect(n1.url("/ws?subscribe=" + C.q(t)), open_timeout=10, ping_interval=None,
                                     close_timeout=2)
    offs = []
    for i in range(2):
        r = n2.publish(t, "before %d" % i)
        expect_eq(r.status, 200, "publish before the cut")
        offs.append(r.json()["offset"])
    ms = await j.msgs(2, 15, "the two messages before the cut")
    expect_eq([m["offset"] for m in ms], offs, "offsets before the cut")
    for i in range(2):
        got = await C.asyncio.wait_for(raw.recv(), 15)
        expect_eq(got, "before %d" % i, "raw subscriber before the cut")
    return j, raw, a


async def expect_gap_then(j, t, frm, to, offs, epoch=None):
    g = await j.msg(20, "the gap notice")
    expect_eq((g.get("op"), g.get("topic"), g.get("from"), g.get("to")), ("gap", t, frm, to), "the gap notice")
    ms = await j.msgs(len(offs), 20, "the messages history still held")
    expect_eq([(m["op"], m["offset"]) for m in ms], [("msg", o) for o in offs], "after the gap")
    if epoch is not None:
        expect_eq(set(m["epoch"] for m in ms), {epoch}, "the new epoch on the messages after it")


async def history_trimmed():
    redis = C.Redis().start()
    n1, n2 = nodes(redis)
    base = C.topic("gap")
    t = base + ".t"
    jp = await C.jconnect(n1.url())
    await jp.sub(base + ".*")
    sse = C.gwtest.SSE(n1, "subscribe=" + C.q(t), timeout=20)
    expect_eq(sse.status, 200, "GET /sse on node 1")
    j, raw, _ = await setup(n1, n2, t)
    expect_eq([m["offset"] for m in await jp.msgs(2, 15, "the pattern subscriber before the cut")], [1, 2],
              "the pattern subscriber before the cut")
    expect_eq([sse.msg(15)[0]["offset"] for _ in range(2)], [1, 2], "the SSE subscriber before the cut")
    cut_off(redis, n1)
    try:
        for i in range(10):
            expect_eq(n2.publish(t, "cut %d" % i).status, 200, "publish while node 1 is cut off")
    finally:
        os.kill(n1.pid, signal.SIGCONT)
    await expect_gap_then(j, t, 3, 7, list(range(8, 13)))
    await expect_gap_then(jp, t, 3, 7, list(range(8, 13)))
    await C.gwtest.expect_closed(raw, 1013, 20, "the raw subscriber (cannot be told of the gap)")
    evs = []
    while True:
        ev = sse.event(20, "the end of the SSE stream")
        if ev is None:
            break
        evs.append(ev)
    check(not any(e.get("event") == "msg" for e in evs), "the SSE stream ended with nothing after 2: %r" % evs)
    r = n2.publish(t, "live")
    expect_eq(r.json()["offset"], 13, "the live publish's offset")
    for who in (j, jp):
        m = await who.msg(15, "the live message after the gap")
        expect_eq((m["op"], m["offset"], m.get("data")), ("msg", 13, "live"), "live after the gap")
        await who.quiet()
    expect_eq(drops(n1), 20, "node 1 duplex_dropped_total{reason=history_gap} (5 offsets x 4 subscribers)")
    check("offsets 3-7 lost by the bus" in n1.log(), "node 1 logs the gap:\n" + n1.log()[-1500:])
    await j.close()
    await jp.close()
    for n in (n1, n2):
        expect_eq(n.stop(), 0, "%s exit status" % n.name)
    redis.stop()


async def epoch_changed():
    redis = C.Redis().start()
    n1, n2 = nodes(redis)
    t = C.topic("epoch")
    j, raw, ack = await setup(n1, n2, t)
    old = ack["epoch"]
    os.kill(n1.pid, signal.SIGSTOP)
    try:
        redis.stop()
        for f in os.listdir(redis.dir):
            p = os.path.join(redis.dir, f)
            shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)
        redis.start()
        await C.await_for(lambda: n2.healthz() == 200, 30, "node 2 healthy after the Redis restart", 0.1)
        offs = []
        for i in range(8):
            r = n2.publish(t, "new %d" % i)
            expect_eq(r.status, 200, "publish in the new epoch")
            offs.append((r.json()["offset"], r.json()["epoch"]))
    finally:
        os.kill(n1.pid, signal.SIGCONT)
    expect_eq([o for o, e in offs], list(range(1, 9)), "the new epoch's offsets")
    new = offs[0][1]
    check(new != old, "the epoch changed (%s)" % new)
    await expect_gap_then(j, t, 1, 3, list(range(4, 9)), epoch=new)
    await C.gwtest.expect_closed(raw, 1013, 20, "the raw subscriber (cannot be told of the gap)")
    r = n2.publish(t, "live")
    m = await j.msg(15, "the live message after the gap")
    expect_eq((m["op"], m["offset"], m["epoch"]), ("msg", 9, new), "live after the gap, new epoch")
    await j.quiet()
    ms = n1.metrics()
    expect_eq(ms.get(("duplex_bus_epoch_changes_total", frozenset())), 1, "node 1 duplex_bus_epoch_changes_total")
    await j.close()
    for n in (n1, n2):
        expect_eq(n.stop(), 0, "%s exit status" % n.name)
    redis.stop()
    say("epoch %s -> %s: gap 1-3 announced, 4-8 read back, 9 live" % (old, new))


if __name__ == "__main__":
    C.run([history_trimmed, epoch_changed])
