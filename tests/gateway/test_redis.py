"""
tests/gateway/test_redis.py: several `duplex serve --redis URL` nodes act as
one gateway (issue 11; docs/gateway.md "The Redis bus"), against a real
redis-server this script starts on a free port in a temp dir (stopped by
PID). Nodes run --workers 2 on their own free ports (no load balancer).

  - publish on node A, JSON and raw subscribers on node B (and A) receive
    every message in order, offsets 1..N with one epoch; patterns too, once
    per message even with an overlapping exact subscription;
  - resume on node B with a since from node A: recovered, no gap, no
    duplicate, then live (JSON, raw `since=`, SSE Last-Event-ID); history
    is the same through every node;
  - presence counts connections across nodes; a SIGKILLed node drops out
    within --presence-ttl (plus a wide margin);
  - /api/disconnect is answered once every node's workers answered;
  - the pub/sub connections are killed (CLIENT KILL TYPE pubsub) while a
    publisher runs: subscribers (exact and pattern) stay connected and
    still get every message, in order, exactly once (read back from the
    stream);
  - the pub/sub connection back before the command connection (node C
    reaches Redis through a proxy in this script that tells the two apart
    and refuses one kind at will): entries published while C's pub/sub
    connection was away, then live entries that skip them while its
    command connection is still away: C's subscriber gets every offset, in
    order, once the command connection is back (none straight after the
    hole, no gap); with --history 4 (the most held per topic) and more
    entries than that, the same;
  - Redis stopped (SIGSTOP within the bound, then SIGCONT): a publish is
    answered only once Redis answered; past --redis-pending-max, 503 at
    once; stopped past the bound: the publish out answers 503 within
    about 3 s, /healthz 503, the node serves meanwhile, then recovers;
  - Redis killed: /healthz 503 and publish 503 on every node (JSON err
    4503, a raw publisher closed 1013, a raw subscribe handshake 503),
    subscribers stay connected; Redis restarted on the same data (AOF): nodes recover,
    offsets and epoch continue, a resumer gets what Redis kept, live
    delivery resumes; Redis flushed: a new epoch, a resumer gets
    recovered:false;
  - bad --redis URLs are refused at startup with a clear message;
  - the in-node relay (--workers 4: one Redis subscription per channel per
    node, held by its owner worker): 40 JSON subscribers spread over the
    workers cost one subscription (PUBSUB NUMSUB 1; 2 with a second node),
    each message reaches each worker once and every subscriber in order;
    subscribe/unsubscribe churn from every worker at once (topics and
    patterns) while stable subscribers receive everything ends with no
    subscription; the resume stress across two 4-worker nodes; Redis
    restarted with subscribers (exact and pattern) on every worker: they
    keep their connections and get every message, a resumer too.

A missing redis-server fails the test (nothing is skipped).
"""
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import gwtest
import websockets
from gwtest import (Fail, Serve, check, check_msg, check_sub_ack, expect_eq, free_port, handshake_status, history,
                    http, jconnect, main, metric_sum, metrics, publish, rconnect, recv_timeout, say, topic, wait_for)

REDIS_BIN = shutil.which("redis-server") or "/usr/bin/redis-server"


class Redis:
    """redis-server on 127.0.0.1:<free port>, data in a temp dir (AOF,
    fsync always, so a SIGKILL loses nothing acknowledged)."""

    def __init__(self):
        check(os.path.exists(REDIS_BIN), "redis-server not found (Debian: redis-server; scripts/deps.sh test)")
        self.dir = tempfile.mkdtemp(prefix="dx-redis-")
        self.port = free_port()
        self.proc = None
        self.start()

    def start(self):
        self.logf = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen(
            [REDIS_BIN, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf)
        gwtest._procs.append(self.proc)
        wait_for(lambda: self.ping() or self.proc.poll() is not None, 20, "redis-server to answer PING")
        check(self.proc.poll() is None, "redis-server exited at start")

    def url(self):
        return "redis://127.0.0.1:%d" % self.port

    def cmd(self, *args, timeout=5):
        """One command over RESP; returns the decoded reply."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        try:
            out = b"*%d\r\n" % len(args)
            for a in args:
                a = a if isinstance(a, bytes) else str(a).encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(out)
            f = s.makefile("rb")
            return self._read(f)
        finally:
            s.close()

    def _read(self, f):
        line = f.readline()
        if not line:
            raise Fail("redis closed the connection")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            return Exception(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            d = f.read(n + 2)
            return d[:-2]
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._read(f) for _ in range(n)]
        raise Fail("bad RESP line %r" % line)

    def ping(self):
        try:
            return self.cmd("PING", timeout=1) == "PONG"
        except OSError:
            return False

    def kill(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            if self.proc.returncode is None:
                try:
                    os.kill(self.proc.pid, signal.SIGCONT)
                except OSError:
                    pass
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Proxy:
    """A TCP proxy to Redis for one node: each connection is classified by
    its first command (SUBSCRIBE/PSUBSCRIBE: the pub/sub connection, else
    the command connection); `refuse` holds the kinds closed as soon as
    classified; cut() closes the open ones of the given kinds."""

    def __init__(self, port):
        self.port = port
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.refuse = set()
        self.open = []          # (kind, client socket, redis socket)
        self.accepted = {"cmd": 0, "sub": 0}
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self):
        return "redis://127.0.0.1:%d" % self.lsock.getsockname()[1]

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        first = b""
        try:
            while first.count(b"\r\n") < 3:  # "*N", "$L", the command's name
                d = c.recv(65536)
                if not d:
                    c.close()
                    return
                first += d
        except OSError:
            c.close()
            return
        kind = "sub" if b"SUBSCRIBE" in first.upper() else "cmd"
        with self.lock:
            if kind in self.refuse:
                c.close()
                return
            try:
                r = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError:
                c.close()
                return
            r.settimeout(None)
            self.open.append((kind, c, r))
            self.accepted[kind] += 1
        r.sendall(first)
        threading.Thread(target=self._pump, args=(r, c), daemon=True).start()
        self._pump(c, r)

    def _pump(self, src, dst):
        try:
            while True:
                d = src.recv(65536)
                if not d:
                    break
                dst.sendall(d)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self, *kinds):
        with self.lock:
            keep = []
            for k, c, r in self.open:
                if k in kinds:
                    for s in (c, r):
                        try:
                            s.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                        s.close()
                else:
                    keep.append((k, c, r))
            self.open = keep

    def close(self):
        self.lsock.close()
        self.cut("cmd", "sub")


def node(r, *args, workers=2):
    return Serve("--redis", r.url(), *args, workers=workers)


def kill_node(s):
    """SIGKILL, as a crash: nothing is cleaned up in Redis."""
    os.kill(s.proc.pid, signal.SIGKILL)
    s.proc.wait()
    if s in gwtest._servers:
        gwtest._servers.remove(s)


def healthy(s):
    try:
        return http(s, "GET", "/healthz", key=None, timeout=5).status == 200
    except OSError:
        return False


def wait_healthy(*nodes, timeout=20):
    for s in nodes:
        wait_for(lambda: healthy(s), timeout, "node :%d /healthz 200" % s.port, step=0.05)


def presence_count(s, t):
    r = http(s, "GET", "/api/presence?topic=" + t)
    expect_eq(r.status, 200, "presence %s on :%d" % (t, s.port))
    return r.json()["count"]


async def expect_msgs(j, t, first, last, epoch, what, pattern=None):
    for n in range(first, last + 1):
        m = await j.msg(timeout=15, what="%s: offset %d" % (what, n))
        check(m["op"] == "msg", "%s: expected msg %d, got %r" % (what, n, m))
        check_msg(m, t, offset=n, epoch=epoch, pattern=pattern, what=what)


# ---------------------------------------------------------------- cases

R = None
A = None
B = None


def cluster():
    global R, A, B
    if R is None:
        R = Redis()
    if A is None or not A.alive():
        A = node(R)
    if B is None or not B.alive():
        B = node(R)
    wait_healthy(A, B)
    return R, A, B


async def test_publish_on_a_delivered_on_b():
    r, a, b = cluster()
    t = topic("room")
    jb = await jconnect(b)
    ja = await jconnect(a)
    ack = await jb.sub(t)
    check_sub_ack(ack, t, offset=0, recovered=False)
    await ja.sub(t)
    raw = await rconnect(b, "subscribe=" + t)
    n = 60
    ep = None
    for i in range(1, n + 1):
        ctype = ("application/json", "text/plain", "application/octet-stream")[i % 3]
        body = json.dumps({"i": i}) if i % 3 == 0 else "m%d" % i
        p = publish(a if i % 2 else b, t, body, ctype=ctype)
        expect_eq(p["offset"], i, "publish %d: offset" % i)
        ep = ep or p["epoch"]
        expect_eq(p["epoch"], ep, "publish %d: epoch" % i)
    await expect_msgs(jb, t, 1, n, ep, "JSON subscriber on B")
    await expect_msgs(ja, t, 1, n, ep, "JSON subscriber on A")
    for i in range(1, n + 1):
        m = await recv_timeout(raw, 15, "raw subscriber on B: message %d" % i)
        want = json.dumps({"i": i}) if i % 3 == 0 else "m%d" % i
        got = m.decode() if isinstance(m, bytes) else m
        expect_eq(got, want, "raw subscriber on B: message %d" % i)
    await jb.close()
    await ja.close()
    await raw.close()


async def test_pattern_across_nodes_once():
    r, a, b = cluster()
    base = topic("pat")
    jb = await jconnect(b)
    await jb.ack("sub", topic=base + ".*")
    await jb.sub(base + ".x")  # overlapping exact subscription: still once per message
    p1 = publish(a, base + ".x", "one")
    p2 = publish(a, base + ".y", "two")
    p3 = publish(a, base + ".x.deep", "not matched by *")
    p4 = publish(a, base + ".x", "three")
    got = await jb.msgs(3, what="pattern deliveries")
    check_msg(got[0], base + ".x", offset=1, epoch=p1["epoch"], data="one")
    check_msg(got[1], base + ".y", offset=1, epoch=p2["epoch"], data="two", pattern=base + ".*")
    check_msg(got[2], base + ".x", offset=2, epoch=p4["epoch"], data="three")
    await jb.quiet(0.5)
    check(p3["offset"] == 1, "publish on the deep topic: %r" % p3)
    await jb.close()


async def test_resume_on_b_with_since_from_a():
    r, a, b = cluster()
    t = topic("resume")
    ja = await jconnect(a)
    ack = await ja.sub(t)
    ep0 = None
    for i in range(1, 6):
        ep0 = publish(a, t, "m%d" % i)["epoch"]
    await expect_msgs(ja, t, 1, 5, ep0, "subscriber on A")
    await ja.close()
    for i in range(6, 11):
        publish(b if i % 2 else a, t, "m%d" % i)
    jb = await jconnect(b)
    ack = await jb.sub(t, since={"offset": 5, "epoch": ep0})
    check_sub_ack(ack, t, offset=10, epoch=ep0, recovered=True)
    await expect_msgs(jb, t, 6, 10, ep0, "resumer on B (history)")
    publish(a, t, "m11")
    await expect_msgs(jb, t, 11, 11, ep0, "resumer on B (live)")
    await jb.quiet(0.3)
    # another epoch: not recovered, live only
    jc = await jconnect(b)
    ack = await jc.sub(t, since={"offset": 3, "epoch": "0000000000000000"})
    check_sub_ack(ack, t, offset=11, epoch=ep0, recovered=False)
    publish(a, t, "m12")
    await expect_msgs(jc, t, 12, 12, ep0, "non-recovered subscriber")
    for bad_ep in ("", "x" * 40):  # an empty or overlong epoch is not the current one
        jx = await jconnect(a)
        ack = await jx.sub(t, since={"offset": 11, "epoch": bad_ep})
        check_sub_ack(ack, t, offset=12, epoch=ep0, recovered=False)
        await jx.close()
    raw = await rconnect(b, "subscribe=%s&since=%s:10" % (t, t))  # raw since: the current epoch
    for i in (11, 12):
        m = await recv_timeout(raw, 15, "raw resumer on B: message %d" % i)
        expect_eq(m, "m%d" % i, "raw resumer on B")
    await raw.close()
    # history: the same through both nodes
    ha, hb = history(a, t), history(b, t, since=4, limit=3)
    expect_eq([m["offset"] for m in ha["messages"]], list(range(1, 13)), "history through A")
    expect_eq([m["offset"] for m in hb["messages"]], [5, 6, 7], "history through B since 4 limit 3")
    expect_eq(ha["offset"], 12, "history offset")
    hn = history(b, topic("never"))
    expect_eq((hn["offset"], hn["messages"]), (0, []), "history of an unknown topic")
    await jb.close()
    await jc.close()


def test_sse_resume_on_another_node():
    """An SSE stream on node B, then Last-Event-ID on node A: the missed
    messages, in order, once."""
    r, a, b = cluster()
    t = topic("sse")
    s1 = gwtest.SSE(b, "subscribe=" + t)
    expect_eq(s1.status, 200, "SSE on B")
    ep = None
    for i in range(1, 4):
        ep = publish(a, t, "s%d" % i)["epoch"]
    last = None
    for i in range(1, 4):
        m, last = s1.msg(what="SSE on B: message %d" % i)
        check_msg(m, t, offset=i, epoch=ep, data="s%d" % i, what="SSE on B")
    s1.close()
    for i in range(4, 7):
        publish(b, t, "s%d" % i)
    s2 = gwtest.SSE(a, "subscribe=" + t, headers={"Last-Event-ID": last})
    expect_eq(s2.status, 200, "SSE on A with Last-Event-ID")
    for i in range(4, 7):
        m, _ = s2.msg(what="SSE resumed on A: message %d" % i)
        check_msg(m, t, offset=i, epoch=ep, data="s%d" % i, what="SSE resumed on A")
    publish(b, t, "s7")
    m, _ = s2.msg(what="SSE on A: live")
    check_msg(m, t, offset=7, epoch=ep, data="s7", what="SSE on A live")
    s2.close()


async def test_resume_stress_across_nodes():
    """Subscribers that drop at random and resume on the other node end
    with every offset exactly once, in order, while a publisher alternates
    nodes."""
    r, a, b = cluster()
    await resume_stress(a, b, "stress")


async def resume_stress(a, b, tag):
    t = topic(tag)
    n = 400
    ep = publish(a, t, "m1")["epoch"]
    stop = threading.Event()

    def publisher():
        for i in range(2, n + 1):
            publish(a if i % 2 else b, t, "m%d" % i)
        stop.set()

    th = threading.Thread(target=publisher)
    th.start()

    async def subscriber(k):
        got = []
        nodes = [a, b]
        i = k
        since = None
        while len(got) < n:
            j = await jconnect(nodes[i % 2])
            i += 1
            if since is None:
                ack = await j.sub(t, since={"offset": 0, "epoch": ep})
            else:
                ack = await j.sub(t, since={"offset": since, "epoch": ep})
            expect_eq(ack["recovered"], True, "subscriber %d: resume from %s recovered" % (k, since))
            take = 20 + (k * 7 + i * 13) % 60
            for _ in range(take):
                if len(got) >= n:
                    break
                m = await j.msg(timeout=20, what="subscriber %d after %d" % (k, len(got)))
                check(m["op"] == "msg", "subscriber %d: %r" % (k, m))
                got.append(m["offset"])
                since = m["offset"]
            await j.close()
        expect_eq(got, list(range(1, n + 1)), "subscriber %d: offsets" % k)

    await asyncio.gather(*[subscriber(k) for k in range(6)])
    th.join()


async def test_presence_across_nodes_and_dead_node():
    r, a, b = cluster()
    c = node(r, "--presence-ttl", "1s")
    wait_healthy(c)
    t = topic("pres")
    conns = []
    for s in (a, a, b, c, c, c):
        j = await jconnect(s)
        await j.sub(t)
        conns.append(j)
    for s in (a, b, c):
        wait_for(lambda: presence_count(s, t) == 6, 10, "presence 6 through :%d" % s.port, step=0.05)
    await conns[2].close()  # the one on B leaves
    wait_for(lambda: presence_count(a, t) == 5, 10, "presence 5 after a leave", step=0.05)
    kill_node(c)
    t0 = time.monotonic()
    wait_for(lambda: presence_count(a, t) == 2, 15, "the killed node's 3 connections to expire", step=0.1)
    dt = time.monotonic() - t0
    say("  killed node dropped out of presence after %.1f s (ttl 1 s)" % dt)
    check(dt < 10, "presence of a dead node lasted %.1f s with --presence-ttl 1s" % dt)
    for j in conns[:2]:
        await j.close()


def test_disconnect_answered_by_every_node():
    r, a, b = cluster()
    t0 = time.monotonic()
    resp = http(a, "POST", "/api/disconnect?user=nobody-%d" % os.getpid())
    dt = time.monotonic() - t0
    expect_eq(resp.status, 200, "disconnect: status (%s)" % resp.body[:200])
    expect_eq(resp.json().get("disconnected"), 0, "disconnect of a user with no connection")
    # every worker of every node answers: well under the 2 s collection timeout
    check(dt < 1.5, "disconnect took %.2f s: a node did not answer" % dt)


async def pattern_active(j, probe, via):
    """Publishes on topic `probe` (matched by j's pattern) until j receives
    one: a pattern subscription is acked at once and receives only once
    Redis (through the pattern's owner worker) confirmed it (docs/gateway.md
    "Known limits"). Every probe published after the first received one
    arrives too: read up to the last."""
    deadline = time.monotonic() + 10
    last = 0
    while True:
        last = publish(via, probe, "probe")["offset"]
        try:
            m = await j.msg(timeout=0.2, what="a probe")
            break
        except Fail:
            check(time.monotonic() < deadline, "the pattern subscription never received a probe in 10 s")
    while m["offset"] < last:
        m = await j.msg(timeout=10, what="the probes after the first")
    check(m["topic"] == probe, "probe: %r" % m)


async def patterns_active(js, probe, via):
    """pattern_active for several subscribers of one pattern, then one more
    probe read by all: none has a probe left in its stream."""
    for j in js:
        await pattern_active(j, probe, via)
    last = publish(via, probe, "probe")["offset"]
    for j in js:
        m = await j.msg(timeout=10, what="the last probe")
        while m["offset"] < last:
            m = await j.msg(timeout=10, what="the last probe")


async def test_pubsub_connections_killed_nothing_lost():
    r, a, b = cluster()
    t = topic("kill")
    pt = t + ".p"  # reached through a pattern subscription only
    jb = await jconnect(b)
    await jb.sub(t)
    jp = await jconnect(b)
    await jp.ack("sub", topic=t + ".*")
    await pattern_active(jp, t + ".probe", a)
    ep = publish(a, t, "m1")["epoch"]
    pep = publish(a, pt, "p1")["epoch"]
    n = 300
    killed = []

    def publisher():
        for i in range(2, n + 1):
            publish(a, t, "m%d" % i)
            if i % 3 == 0:
                publish(a, pt, "p%d" % (i // 3 + 1))
            if i in (60, 180):
                wait_healthy(a, b)  # every worker subscribed again since the last kill
                killed.append(r.cmd("CLIENT", "KILL", "TYPE", "pubsub"))
        publish(a, pt, "p-last")  # the pattern's last message

    th = threading.Thread(target=publisher)
    th.start()
    await expect_msgs(jb, t, 1, n, ep, "subscriber on B through pub/sub losses")
    await expect_msgs(jp, pt, 1, n // 3 + 2, pep, "pattern subscriber on B through pub/sub losses",
                      pattern=t + ".*")
    th.join()
    check(all(isinstance(k, int) and k >= 1 for k in killed), "CLIENT KILL answers: %r" % killed)
    await jb.alive()
    await jb.quiet(0.3)
    wait_healthy(a, b)
    ms = metrics(b)
    rec = metric_sum(ms, "duplex_bus_recovered_total")[0]
    say("  recovered from the stream on B: %s" % rec)


def numsub(r, t):
    rep = r.cmd("PUBSUB", "NUMSUB", "dx:m:" + t)
    return rep[1]


async def pubsub_back_before_cmd(history):
    """Node C (one worker, through a Proxy): its pub/sub connection comes
    back while its command connection is still refused, and receives live
    entries that skip what it missed; nothing may reach the subscriber out
    of order, nothing may be lost once the command connection is back."""
    r, a, b = cluster()
    px = Proxy(r.port)
    args = ["--history", str(history)] if history else []
    c = Serve("--redis", px.url(), *args, workers=1)
    try:
        wait_healthy(c)
        t = topic("early")
        jc = await jconnect(c)
        await jc.sub(t)
        wait_for(lambda: numsub(r, t) == 1, 10, "C subscribed to %s in Redis" % t)
        ep = publish(b, t, "m1")["epoch"]
        for i in range(2, 4):
            publish(b, t, "m%d" % i)
        await expect_msgs(jc, t, 1, 3, ep, "C before the outage")
        base = metrics(c)
        got0 = metric_sum(base, "duplex_handoffs_total")[0]
        # both connections away; only the pub/sub one may come back
        px.refuse = {"cmd", "sub"}
        px.cut("cmd", "sub")
        wait_for(lambda: not healthy(c), 10, "C's /healthz 503 with its connections cut", step=0.05)
        wait_for(lambda: numsub(r, t) == 0, 10, "C's subscription gone from Redis")
        n_missed = 6 if history else 3
        for i in range(4, 4 + n_missed):  # missed by C
            publish(b, t, "m%d" % i)
        px.refuse = {"cmd"}
        wait_for(lambda: numsub(r, t) == 1, 15, "C's pub/sub connection back and subscribed again")
        first_live = 4 + n_missed
        n_live = 6 if history else 3
        last = first_live + n_live - 1
        for i in range(first_live, last + 1):  # live, skipping the missed ones
            publish(b, t, "m%d" % i)
        # C received them (its command connection still refused)
        wait_for(lambda: metric_sum(metrics(c), "duplex_handoffs_total")[0] >= got0 + n_live, 15,
                 "C to receive the live entries after the hole")
        check(not healthy(c), "C healthy with its command connection refused")
        check(px.accepted["cmd"] == 1, "C's command connection got through the proxy")
        # nothing may go out past the hole: the next frame must be offset 4
        px.refuse = set()
        wait_healthy(c)
        await expect_msgs(jc, t, 4, last, ep, "C after its connections came back (pub/sub first)")
        publish(b, t, "after")
        await expect_msgs(jc, t, last + 1, last + 1, ep, "C live again")
        await jc.quiet(0.3)
        ms = metrics(c)
        lost = metric_sum(ms, "duplex_handoffs_lost_total")[0] - metric_sum(base, "duplex_handoffs_lost_total")[0]
        rec = metric_sum(ms, "duplex_bus_recovered_total")[0] - metric_sum(base, "duplex_bus_recovered_total")[0]
        expect_eq(lost, 0, "messages C counted lost")
        check(rec >= n_missed, "C recovered %d from the stream, expected at least %d" % (rec, n_missed))
        say("  history %s: %d missed, %d live after the hole: recovered %d, lost %d" % (
            history or "default", n_missed, n_live, rec, lost))
        await jc.close()
    finally:
        px.close()
        c.stop()


async def test_pubsub_back_before_command_connection():
    await pubsub_back_before_cmd(None)


async def test_pubsub_back_before_command_connection_bound():
    await pubsub_back_before_cmd(4)


def test_pending_bound_and_answer_on_reply():
    r, a, b = cluster()
    s = node(r, "--redis-pending-max", "1024", workers=1)
    wait_healthy(s)
    t = topic("pend")
    expect_eq(publish(s, t, "x" * 1024)["offset"], 1, "a body of exactly the limit")
    resp = http(s, "POST", "/api/publish?topic=" + t, body=b"x" * 1025, headers={"Content-Type": "text/plain"})
    expect_eq(resp.status, 503, "a body one byte past --redis-pending-max")
    # Redis paused: a publish waits for Redis's answer (never 200 before)
    os.kill(r.proc.pid, signal.SIGSTOP)
    try:
        res = {}

        def first():
            res["r"] = http(s, "POST", "/api/publish?topic=" + t, body=b"y" * 600,
                            headers={"Content-Type": "text/plain"})
            res["t"] = time.monotonic()

        th = threading.Thread(target=first)
        th.start()
        wait_for(lambda: metric_sum(metrics(s), "duplex_bus_pending_bytes")[0] == 600, 2,
                 "600 bytes pending while Redis is stopped", step=0.02)
        check("r" not in res, "a publish was answered while Redis was stopped: %r" % res.get("r"))
        second = http(s, "POST", "/api/publish?topic=" + t, body=b"z" * 600, headers={"Content-Type": "text/plain"})
        expect_eq(second.status, 503, "a publish past the pending bound while Redis is stopped")
        t_cont = time.monotonic()
    finally:
        os.kill(r.proc.pid, signal.SIGCONT)
    th.join(20)
    check("r" in res, "the pending publish was never answered")
    expect_eq(res["r"].status, 200, "the pending publish after Redis came back (%s)" % res["r"].body[:200])
    check(res["t"] >= t_cont, "answered before Redis was resumed")
    expect_eq(res["r"].json()["offset"], 2, "offset of the pending publish")
    check(metric_sum(metrics(s), "duplex_bus_refused_total")[0] >= 2, "refusals counted in /metrics")
    s.stop()


def test_redis_frozen():
    """Redis stops answering (SIGSTOP): within the PING bound (3 s) the
    publish out is answered 503, /healthz says 503, other requests are
    served meanwhile (no loop blocks); SIGCONT: healthy again."""
    r, a, b = cluster()
    t = topic("frozen")
    publish(a, t, "before")
    os.kill(r.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        res = {}

        def out():
            res["r"] = http(a, "POST", "/api/publish?topic=" + t, body=b"while frozen",
                            headers={"Content-Type": "text/plain"})

        th = threading.Thread(target=out)
        th.start()
        # the node keeps serving while its publish waits on Redis
        expect_eq(http(a, "GET", "/metrics", key=None, timeout=5).status, 200, "/metrics while Redis is frozen")
        th.join(20)
        check("r" in res, "the publish was never answered while Redis was frozen")
        expect_eq(res["r"].status, 503, "a publish Redis never answered")
        dt = time.monotonic() - t0
        check(dt < 12, "answered after %.1f s: the bound is 3 s (PING) + a tick" % dt)
        wait_for(lambda: not healthy(a), 10, "/healthz 503 with Redis frozen", step=0.05)
    finally:
        os.kill(r.proc.pid, signal.SIGCONT)
    wait_healthy(a, b, timeout=30)
    expect_eq(publish(b, t, "after")["offset"], 2, "offset after Redis came back")


async def test_redis_killed_then_restarted_same_data():
    r, a, b = cluster()
    t = topic("crash")
    jb = await jconnect(b)
    await jb.sub(t)
    ep = None
    for i in range(1, 6):
        ep = publish(a, t, "m%d" % i)["epoch"]
    await expect_msgs(jb, t, 1, 5, ep, "before the crash")
    r.kill()
    for s in (a, b):
        wait_for(lambda: not healthy(s), 15, "node :%d /healthz 503 with Redis down" % s.port, step=0.05)
    resp = http(a, "POST", "/api/publish?topic=" + t, body=b"lost", headers={"Content-Type": "text/plain"})
    expect_eq(resp.status, 503, "publish with Redis down")
    resp = http(b, "GET", "/api/history?topic=" + t)
    expect_eq(resp.status, 503, "history with Redis down")
    e = await jb.req("pub", topic=t, data="lost too")
    check(e["op"] == "err" and e["code"] == 4503, "JSON pub with Redis down: %r" % e)
    raw = await rconnect(b, "publish=" + t)  # a raw publisher: closed 1013 (try again later)
    await raw.send("lost as well")
    try:
        await asyncio.wait_for(raw.recv(), 10)
        raise Fail("raw publisher with Redis down: a message arrived instead of a close")
    except websockets.exceptions.ConnectionClosed as ex:
        expect_eq(ex.rcvd.code if ex.rcvd else None, 1013, "raw publisher with Redis down: close code")
    expect_eq(await handshake_status(b, "/ws?subscribe=" + t), 503, "raw subscribe handshake with Redis down")
    e = await jb.req("sub", topic=topic("new"))
    check(e["op"] == "err" and e["code"] == 4503, "JSON sub with Redis down: %r" % e)
    await jb.alive()  # the subscriber stays connected
    r.start()
    wait_healthy(a, b, timeout=30)
    for i in range(6, 9):
        p = publish(a, t, "m%d" % i)
        expect_eq((p["offset"], p["epoch"]), (i, ep), "publish %d after the restart: offset and epoch" % i)
    await expect_msgs(jb, t, 6, 8, ep, "live after the restart (connection kept)")
    jc = await jconnect(a)
    ack = await jc.sub(t, since={"offset": 2, "epoch": ep})
    check_sub_ack(ack, t, offset=8, epoch=ep, recovered=True)
    await expect_msgs(jc, t, 3, 8, ep, "resumer after the restart")
    m = metrics(b)
    check(metric_sum(m, "duplex_bus_reconnects_total")[0] >= 2, "reconnects counted")
    # flushed: continuity lost → a new epoch, resume not recovered
    expect_eq(r.cmd("FLUSHALL"), "OK", "FLUSHALL")
    p = publish(a, t, "after flush")
    expect_eq(p["offset"], 1, "offset after FLUSHALL")
    check(p["epoch"] != ep, "epoch after FLUSHALL must change: %r" % p)
    jd = await jconnect(b)
    ack = await jd.sub(t, since={"offset": 8, "epoch": ep})
    check_sub_ack(ack, t, offset=1, epoch=p["epoch"], recovered=False)
    # the kept subscriber gets the new epoch's messages
    m = await jb.msg(timeout=15, what="first message of the new epoch")
    check_msg(m, t, offset=1, epoch=p["epoch"], data="after flush")
    for j in (jb, jc, jd):
        await j.close()


def test_bad_urls_refused():
    for url, what in (("http://127.0.0.1:1", "must start with"), ("redis://127.0.0.1:99999", "bad port"),
                      ("redis://h/x", "database number"),
                      ("unix://relative", "absolute path")):
        port = free_port()
        p = subprocess.run([gwtest.BIN, "serve", "--host", "127.0.0.1", "--port", str(port), "--redis", url],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
        out = (p.stdout + p.stderr).decode(errors="replace")
        check(p.returncode != 0, "--redis %s: serve started (%s)" % (url, out[-300:]))
        check(what in out, "--redis %s: expected %r in the message, got:\n%s" % (url, what, out[-500:]))


def numpat(r):
    return r.cmd("PUBSUB", "NUMPAT")


async def test_relay_one_subscription_per_node():
    """--workers 4: 40 JSON subscribers of one topic spread over the
    workers (SO_REUSEPORT): one Redis subscription per node (NUMSUB 1; 2
    with a second node), every subscriber gets every message in order, each
    message reaches each worker holding the topic once (handoffs) through
    its owner (relayed)."""
    r, a, b = cluster()
    n1 = node(r, workers=4)
    n2 = node(r, workers=4)
    try:
        wait_healthy(n1, n2)
        t = topic("relay")
        subs1 = []
        for _ in range(40):
            j = await jconnect(n1)
            await j.sub(t)
            subs1.append(j)
        expect_eq(numsub(r, t), 1, "PUBSUB NUMSUB with 40 subscribers on node 1's 4 workers")
        expect_eq(metric_sum(metrics(n1), "duplex_bus_subscriptions")[0], 1, "node 1's bus subscriptions")
        subs2 = []
        for _ in range(12):
            j = await jconnect(n2)
            await j.sub(t)
            subs2.append(j)
        expect_eq(numsub(r, t), 2, "PUBSUB NUMSUB with a second node")
        m0 = metrics(n1)
        n = 30
        ep = None
        for i in range(1, n + 1):
            p = publish(a if i % 2 else n2, t, "m%d" % i)
            ep = ep or p["epoch"]
        for k, j in enumerate(subs1 + subs2):
            await expect_msgs(j, t, 1, n, ep, "subscriber %d" % k)
        m1 = metrics(n1)
        hand = metric_sum(m1, "duplex_handoffs_total")[0] - metric_sum(m0, "duplex_handoffs_total")[0]
        rel = metric_sum(m1, "duplex_bus_relayed_total")[0] - metric_sum(m0, "duplex_bus_relayed_total")[0]
        check(hand % n == 0 and 2 <= hand // n <= 4,
              "node 1: %d messages received %d times by its workers: expected once per worker holding it" % (n, hand))
        expect_eq(rel, hand, "node 1: messages forwarded by the owner (one per worker per message)")
        say("  node 1: %d subscribers on %d workers, 1 Redis subscription, %d forwards for %d messages" % (
            len(subs1), hand // n, rel, n))
        for j in subs1 + subs2:
            await j.close()
        wait_for(lambda: numsub(r, t) == 0, 10, "no subscription left once every subscriber left")
        wait_for(lambda: metric_sum(metrics(n1), "duplex_bus_subscriptions")[0] == 0, 10,
                 "node 1's bus subscriptions gauge back to 0")
    finally:
        n1.stop()
        n2.stop()


async def test_relay_churn_flood():
    """Subscribe/unsubscribe churn from 40 connections over 4 workers at
    once (a topic and a pattern), while 8 stable subscribers receive every
    message in order: once everyone left, no subscription is left in
    Redis."""
    r, a, b = cluster()
    s = node(r, workers=4)
    try:
        wait_healthy(s)
        t = topic("churn")
        pat = t + ".*"
        pats0 = numpat(r)
        stable = []
        for _ in range(8):
            j = await jconnect(s)
            await j.sub(t)
            stable.append(j)
        n = 150
        ep = publish(a, t, "m1")["epoch"]
        done = threading.Event()

        def publisher():
            try:
                for i in range(2, n + 1):
                    publish(a if i % 2 else b, t, "m%d" % i)
            finally:
                done.set()

        async def churner(k):
            j = await jconnect(s)
            for i in range(10):
                what = t if (k + i) % 3 else pat
                await j.ack("sub", topic=what)
                await j.ack("unsub", topic=what)
            return j

        th = threading.Thread(target=publisher)
        th.start()
        churners = await asyncio.gather(*[churner(k) for k in range(40)])
        th.join()
        check(done.is_set(), "publisher finished")
        for k, j in enumerate(stable):
            await expect_msgs(j, t, 1, n, ep, "stable subscriber %d through the churn" % k)
        expect_eq(numsub(r, t), 1, "NUMSUB with the stable subscribers after the churn")
        for j in churners + stable:
            await j.close()
        wait_for(lambda: numsub(r, t) == 0, 10, "no subscription of %s left after the churn" % t)
        wait_for(lambda: numpat(r) <= pats0, 10, "no pattern subscription left after the churn")
    finally:
        s.stop()


async def test_relay_resume_stress_four_workers():
    """The resume stress across two 4-worker nodes: a subscriber's topic is
    held by its owner worker, which is usually another worker."""
    r, a, b = cluster()
    n1 = node(r, workers=4)
    n2 = node(r, workers=4)
    try:
        wait_healthy(n1, n2)
        await resume_stress(n1, n2, "relaystress")
    finally:
        n1.stop()
        n2.stop()


async def test_relay_redis_restart_every_worker():
    """Redis killed and restarted (same data) with exact and pattern
    subscribers on every worker of a 4-worker node: connections kept, every
    message after the restart arrives in order (the owners subscribe again
    and confirm to the other workers, which read back what they missed),
    one subscription per node again; a resumer gets what Redis kept."""
    r, a, b = cluster()
    s = node(r, workers=4)
    try:
        wait_healthy(s)
        t = topic("rrestart")
        pt = t + ".p"
        subs, psubs = [], []
        for _ in range(16):
            j = await jconnect(s)
            await j.sub(t)
            subs.append(j)
        for _ in range(6):
            j = await jconnect(s)
            await j.ack("sub", topic=t + ".*")
            psubs.append(j)
        await patterns_active(psubs, t + ".probe", a)
        ep = None
        for i in range(1, 6):
            ep = publish(a, t, "m%d" % i)["epoch"]
        pep = publish(a, pt, "p1")["epoch"]
        for j in subs:
            await expect_msgs(j, t, 1, 5, ep, "before the restart")
        for j in psubs:
            await expect_msgs(j, pt, 1, 1, pep, "pattern subscriber before the restart", pattern=t + ".*")
        r.kill()
        wait_for(lambda: not healthy(s), 15, "/healthz 503 with Redis down", step=0.05)
        r.start()
        wait_healthy(a, b, s, timeout=30)
        for i in range(6, 11):
            expect_eq(publish(a, t, "m%d" % i)["offset"], i, "publish %d after the restart" % i)
        for i in range(2, 4):
            publish(b, pt, "p%d" % i)
        for k, j in enumerate(subs):
            await expect_msgs(j, t, 6, 10, ep, "subscriber %d after the restart" % k)
        for k, j in enumerate(psubs):
            await expect_msgs(j, pt, 2, 3, pep, "pattern subscriber %d after the restart" % k, pattern=t + ".*")
        wait_for(lambda: numsub(r, t) == 1, 10, "one subscription for the node after the restart")
        jr = await jconnect(s)
        ack = await jr.sub(t, since={"offset": 3, "epoch": ep})
        check_sub_ack(ack, t, offset=10, epoch=ep, recovered=True)
        await expect_msgs(jr, t, 4, 10, ep, "resumer after the restart")
        publish(a, t, "m11")
        for j in subs + [jr]:
            await expect_msgs(j, t, 11, 11, ep, "live after the restart")
            await j.close()
        for j in psubs:
            await j.close()
    finally:
        s.stop()


def teardown():
    if R is not None:
        R.stop()


if __name__ == "__main__":
    import atexit
    atexit.register(teardown)
    main([
        test_bad_urls_refused,
        test_publish_on_a_delivered_on_b,
        test_pattern_across_nodes_once,
        test_resume_on_b_with_since_from_a,
        test_sse_resume_on_another_node,
        test_resume_stress_across_nodes,
        test_presence_across_nodes_and_dead_node,
        test_disconnect_answered_by_every_node,
        test_pubsub_connections_killed_nothing_lost,
        test_pubsub_back_before_command_connection,
        test_pubsub_back_before_command_connection_bound,
        test_pending_bound_and_answer_on_reply,
        test_redis_frozen,
        test_redis_killed_then_restarted_same_data,
        test_relay_one_subscription_per_node,
        test_relay_churn_flood,
        test_relay_resume_stress_four_workers,
        test_relay_redis_restart_every_worker,
    ])
