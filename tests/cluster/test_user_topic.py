"""
tests/cluster/test_user_topic.py (ctest cluster_user_topic): a user's
personal topic reaches every one of its connections, whichever node each
is on (issue 11, scenario 2; GATEWAY.md "Topics": `user:<id>` is subscribed
on connect, on every node).

Needs authentication (`duplex serve --jwt-secret S --anonymous on`, issue
10): the tokens are HS256 JWTs minted here with PyJWT (Debian python3-jwt,
/usr/bin/python3). A binary without `--jwt-secret` fails the test saying
so. (Passed against this branch merged with gw-auth, in a scratch clone.)

- alice connects once to each of the three nodes (JSON dialect, the token
  in `?token=`), bob to node 1, and an anonymous client to node 2;
- three messages published on `user:alice` through node 3's API reach each
  of alice's three connections, in order, with the publisher's offsets;
  bob and the anonymous client receive nothing (checked after a sentinel on
  a topic they hold);
- presence of `user:alice` through any node counts her 3 connections and
  lists `alice`; `/api/disconnect?user=alice` through node 2 closes all
  three with 4000.

Run: /usr/bin/python3 tests/cluster/test_user_topic.py build/duplex
"""
import subprocess
import time

import cluster as C
from cluster import check, expect_eq, say

import jwt  # Debian python3-jwt; a missing one fails the import

SECRET = "cluster-test-secret-0123456789abcdef"


def token(user):
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


async def user_topic_across_nodes():
    help_text = subprocess.run([C.gwtest.BIN, "serve", "--help"], stdout=subprocess.PIPE, text=True).stdout
    check("--jwt-secret" in help_text, "this duplex has no `serve --jwt-secret` (authentication, issue 10): "
          "scenario 2 needs it")
    redis = C.Redis().start()
    ns = C.cluster(redis, 3, "--jwt-secret", SECRET, "--anonymous", "on")
    n1, n2, n3 = ns
    alice = [await C.jconnect(n.url("/ws?token=" + token("alice"))) for n in ns]
    bob = await C.jconnect(n1.url("/ws?token=" + token("bob")))
    anon = await C.jconnect(n2.url())
    side = C.topic("side")
    for j in (bob, anon):
        await j.sub(side)
    # the user topic is joined at connect, on every node: wait for presence
    await C.await_for(lambda: n3.http("GET", "/api/presence?topic=user:alice").json().get("count") == 3, 15,
                      "presence of user:alice = 3 through node 3")
    offs = []
    for i in range(3):
        r = n3.publish("user:alice", "hello alice %d" % i)
        expect_eq(r.status, 200, "POST /api/publish?topic=user:alice on node 3")
        offs.append(r.json()["offset"])
    for k, j in enumerate(alice):
        ms = await j.msgs(3, timeout=15, what="alice's messages on node %d" % (k + 1))
        expect_eq([(m["topic"], m["offset"], m.get("data")) for m in ms],
                  [("user:alice", o, "hello alice %d" % i) for i, o in enumerate(offs)],
                  "alice's connection on node %d" % (k + 1))
    r = n1.publish(side, "sentinel")
    expect_eq(r.status, 200, "publish the sentinel")
    for name, j in (("bob", bob), ("anonymous", anon)):
        m = await j.msg(15, "%s: the sentinel" % name)
        expect_eq((m["topic"], m.get("data")), (side, "sentinel"), "%s receives only the sentinel" % name)
        await j.quiet()
    for n in ns:
        p = n.http("GET", "/api/presence?topic=user:alice").json()
        expect_eq((p.get("count"), p.get("users")), (3, ["alice"]), "%s presence of user:alice" % n.name)
    r = n2.http("POST", "/api/disconnect?user=alice")
    expect_eq(r.status, 200, "POST /api/disconnect?user=alice on node 2")
    say("disconnect: %s" % r.body)
    for k, j in enumerate(alice):
        await C.gwtest.expect_closed(j.ws, 4000, 15, "alice's connection on node %d after /api/disconnect" % (k + 1))
    await bob.alive()
    await anon.alive()
    for j in (bob, anon):
        await j.close()
    for n in ns:
        expect_eq(n.stop(), 0, "%s exit status" % n.name)
    redis.stop()


if __name__ == "__main__":
    C.run([user_topic_across_nodes])
