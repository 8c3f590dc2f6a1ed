"""
tests/cluster/test_user_limit.py (ctest cluster_user_limit): `--conns-per-user`
counted across nodes (issue 11; GATEWAY.md "Authentication and policy":
per node and, with a bus, cluster-wide; docs/gateway.md "Limits").

Two `duplex serve --redis` nodes on one redis-server, `--conns-per-user 2`,
HS256 tokens minted here with PyJWT (Debian python3-jwt):

- limit_across_nodes: two JSON connections of a user on node 1; a third on
  node 2 is refused 429 (JSON, raw and SSE), logged as cluster-wide and
  counted; one closed on node 1 → node 2 admits; node 1 killed with SIGKILL
  → within the presence TTL (2 s here) its connection no longer counts and
  node 2 admits another, and no more;
- race_for_last_slot: two workers per node; one slot left, a handshake on
  each node at the same moment: exactly one is admitted (8 rounds);
- redis_faults: Redis stopped with SIGSTOP → a handshake of a user is
  refused 503 within the count's timeout (3 s) plus the margin (fail
  closed), and once Redis answers again the slot that late answer may have
  taken is given back (the limit still admits exactly up to 2); Redis
  killed and restarted without its data → the node re-states its counts
  (dx:uc:{U} back to the connections it holds) and the limit holds.

Run: /usr/bin/python3 tests/cluster/test_user_limit.py build/duplex
"""
import asyncio
import os
import signal
import time

import cluster as C
from cluster import check, expect_eq, say

import jwt  # Debian python3-jwt; a missing one fails the import
import websockets

SECRET = "cluster-test-secret-0123456789abcdef"
TTL_S = 2.0


def token(user):
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


def nodes(redis, n=2, workers=1):
    return C.cluster(redis, n, "--jwt-secret", SECRET, "--anonymous", "on", "--conns-per-user", "2",
                     "--presence-ttl", "%ds" % TTL_S, workers=workers)


async def attempt(node, user, dialect="json"):
    """A handshake of `user` on node: (ws, 101) or (None, HTTP status)."""
    if dialect == "sse":
        c = C.gwtest.SSE(node, "subscribe=x&token=" + C.q(token(user)), timeout=20)
        st = c.status
        c.close()
        return None, st
    path = ("/ws?subscribe=x&token=" if dialect == "raw" else "/ws?token=") + C.q(token(user))
    try:
        ws = await websockets.connect(node.url(path), subprotocols=None if dialect == "raw" else [C.PROTO],
                                      open_timeout=20, ping_interval=None, close_timeout=2, max_size=None)
    except websockets.exceptions.InvalidStatusCode as e:
        return None, e.status_code
    return ws, 101


async def admitted(node, user, what):
    ws, st = await attempt(node, user)
    check(ws is not None, "%s: refused %s" % (what, st))
    return ws


async def refused(node, user, status, what, dialect="json"):
    ws, st = await attempt(node, user, dialect)
    if ws is not None:
        await ws.close()
    expect_eq(st, status, what)


def counted(redis, user):
    """What Redis holds for the user: the counts of every worker listed."""
    vals = redis.cmd("HVALS", "dx:uc:{%s}" % user) or []
    return sum(int(v) for v in vals)


def refusals(node, limit):
    return node.metrics().get(("duplex_limit_refused_total", frozenset({("limit", limit)})), 0)


async def limit_across_nodes():
    redis = C.Redis().start()
    n1, n2 = nodes(redis)
    mine = [await admitted(n1, "una", "una's connection %d on node 1" % i) for i in (1, 2)]
    expect_eq(counted(redis, "una"), 2, "dx:uc:{una} after two connections")
    other = await admitted(n2, "vic", "another user on node 2")
    for d in ("json", "raw", "sse"):
        await refused(n2, "una", 429, "una's third connection on node 2 (%s)" % d, d)
    await refused(n1, "una", 429, "una's third connection on node 1")
    check("cluster-wide" in n2.log(), "node 2's log names the refusal cluster-wide:\n" + n2.log()[-1500:])
    check(refusals(n2, "conns_per_user") >= 3, "node 2 counts its refusals: %s" % refusals(n2, "conns_per_user"))
    await mine[0].close()
    await C.await_for(lambda: counted(redis, "una") == 1, 10, "dx:uc:{una} = 1 after a close on node 1")
    b = await admitted(n2, "una", "una on node 2 once one closed on node 1")
    await refused(n2, "una", 429, "una's third again")
    n1.kill9()
    t0 = time.monotonic()

    async def try_in():
        ws, st = await attempt(n2, "una")
        return ws

    c = await C.await_for(try_in, TTL_S + 10, "node 2 admits una once node 1 (SIGKILL) drops out", 0.2)
    took = time.monotonic() - t0
    say("node 1's connection stopped counting %.2f s after its SIGKILL (presence TTL %.1f s)" % (took, TTL_S))
    await refused(n2, "una", 429, "una's third after node 1 died (node 2 holds 2)")
    expect_eq(counted(redis, "una"), 2, "dx:uc:{una}: node 2's two (node 1's entry dropped)")
    for w in (b, c, other):
        await w.close()
    await C.await_for(lambda: counted(redis, "una") == 0, 10, "dx:uc:{una} = 0 once every connection closed")
    expect_eq(n2.stop(), 0, "node 2 exit status")
    redis.stop()


async def race_for_last_slot():
    redis = C.Redis().start()
    n1, n2 = nodes(redis, workers=2)  # four counting workers
    holder = await admitted(n1, "wes", "wes's first connection")
    for rnd in range(8):
        dialects = ("json", "raw") if rnd % 2 else ("raw", "json")
        got = await asyncio.gather(attempt(n1, "wes", dialects[0]), attempt(n2, "wes", dialects[1]))
        ok = [ws for ws, st in got if ws is not None]
        sts = sorted(st for ws, st in got)
        expect_eq((len(ok), sts), (1, [101, 429]), "round %d: the last slot raced from both nodes" % rnd)
        expect_eq(counted(redis, "wes"), 2, "round %d: dx:uc:{wes}" % rnd)
        await ok[0].close()
        await C.await_for(lambda: counted(redis, "wes") == 1, 10, "round %d: the winner's slot back" % rnd)
    await holder.close()
    for n in (n1, n2):
        expect_eq(n.stop(), 0, "%s exit status" % n.name)
    redis.stop()


async def redis_faults():
    redis = C.Redis().start()
    (n1,) = nodes(redis, 1)
    first = await admitted(n1, "xia", "xia's first connection")
    # Redis frozen: the count never answers; the handshake is refused 503
    # by the timeout (or by the bus giving up on Redis first)
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        await refused(n1, "xia", 503, "xia's handshake while Redis is frozen")
        took = time.monotonic() - t0
        say("refused 503 after %.2f s with Redis frozen" % took)
        check(took < 3 + 5, "the refusal took %.2f s (timeout 3 s)" % took)
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    check("refused 503" in n1.log() and "cluster-wide connection count" in n1.log(),
          "the 503 is logged:\n" + n1.log()[-1500:])
    check(refusals(n1, "conns_per_user_unavailable") >= 1, "counted under conns_per_user_unavailable")
    await C.await_for(lambda: n1.healthz() == 200, 20, "node 1 healthy once Redis answers again", 0.1)
    # whatever the late answer did, the limit admits exactly one more
    second = await admitted(n1, "xia", "xia's second connection once Redis is back")
    await refused(n1, "xia", 429, "xia's third (the late answer's slot was given back)")
    expect_eq(counted(redis, "xia"), 2, "dx:uc:{xia}")
    # Redis down: refused at once (503); restarted without its data: the
    # node re-states its counts
    redis.stop()
    await C.await_for(lambda: n1.healthz() == 503, 20, "node 1 /healthz 503 with Redis down", 0.1)
    await refused(n1, "yan", 503, "another user's handshake with Redis down (xia is at the limit on this node)")
    for f in os.listdir(redis.dir):
        p = os.path.join(redis.dir, f)
        if os.path.isdir(p):
            import shutil
            shutil.rmtree(p)
        else:
            os.unlink(p)
    redis.start()
    await C.await_for(lambda: n1.healthz() == 200, 30, "node 1 healthy after the Redis restart", 0.1)
    await C.await_for(lambda: counted(redis, "xia") == 2, 10, "dx:uc:{xia} re-stated after Redis lost its data")
    await refused(n1, "xia", 429, "xia's third after the restart")
    for w in (first, second):
        await w.close()
    await C.await_for(lambda: counted(redis, "xia") == 0, 10, "dx:uc:{xia} = 0 once both closed")
    expect_eq(n1.stop(), 0, "node 1 exit status")
    redis.stop()


if __name__ == "__main__":
    C.run([limit_across_nodes, race_for_last_slot, redis_faults])
