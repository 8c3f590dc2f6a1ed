"""
tests/cluster/cluster.py: the multi-node deployment harness (issue 11,
docs/deploy.md, docs/testing.md "Cluster tests").

Every process a test needs is a real one from a Debian package, started by
the test in its own temp dir on free ports and stopped by PID:

- Redis: `redis-server` (appendonly, fsync always, in the temp dir; can be
  stopped, killed with SIGKILL and restarted on the same port and data);
- nodes: `duplex serve --redis redis://... --api-key KEY` (Node), optionally
  inside a network namespace the test made (Netns: `ip netns add`, two veth
  pairs: one carries the clients, the other the Redis traffic, so the Redis
  link can be cut with `ip link set down` while the clients stay connected);
- load balancers: nginx (`nginx -p DIR -c FILE -e FILE`, `daemon off;`, its
  pid file and logs in the temp dir) from tests/cluster/nginx.conf or
  nginx-sticky.conf, and HAProxy (`haproxy -db -f FILE`) from
  tests/cluster/haproxy.cfg. The files in this folder are the configurations
  docs/deploy.md shows; `@NAME@` placeholders are filled here.

Clients are Debian's python3-websockets (run by /usr/bin/python3) and
http.client, through gwtest.py (tests/gateway). Resumer is a JSON-dialect
subscriber that reconnects (through the load balancer) whenever its
connection ends and resumes with `since`, counting what it received; Tally
turns the publisher's acks and the subscribers' receipts into the line each
fault scenario prints: published, delivered, lost, duplicated.

A missing program (redis-server, nginx, haproxy, ip) fails the test with the
install command: nothing is skipped.
"""
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import http.client as httpclient
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "gateway"))

import gwtest  # noqa: E402
from gwtest import Fail, check, expect_eq, say, wait_for, await_for, free_port, topic  # noqa: E402,F401

import websockets  # noqa: E402  Debian python3-websockets; a missing one fails the import

KEY = gwtest.KEY
PROTO = gwtest.PROTO
_procs = []  # every Proc started, stopped at exit
_cleanups = []  # callables run at exit (namespaces, links)
TMP = None


def tmpdir():
    """One temp dir per script (kept and printed when a case failed)."""
    global TMP
    if TMP is None:
        TMP = tempfile.mkdtemp(prefix="dx-cluster-")
        os.chmod(TMP, 0o755)  # nginx workers may run as another user (root starts them as nobody)
    return TMP


def _die_with_parent():
    """preexec_fn: the child gets SIGKILL when this script dies (a ctest
    timeout), so no server outlives the test (`ip netns exec` execs its
    command, which keeps the setting)."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def need(prog, package):
    path = shutil.which(prog) or next((p for p in ("/usr/sbin/" + prog, "/sbin/" + prog) if os.path.exists(p)),
                                      None)
    if not path:
        raise Fail("%s not found: install it (apt-get install %s, or scripts/deps.sh test)" % (prog, package))
    return path


def expect_close_to(x, lo, hi, what):
    check(lo <= x <= hi, "%s: %r not in [%r, %r]" % (what, x, lo, hi))


# ---------------------------------------------------------------- processes


class Proc:
    """A child process with its log in the temp dir, stopped by PID."""

    def __init__(self, name, cmd, env=None):
        self.name = name
        self.cmd = cmd
        self.env = env
        self.logname = os.path.join(tmpdir(), "%s.log" % name)
        self.proc = None
        _procs.append(self)

    def start(self):
        say("start %s: %s" % (self.name, " ".join(self.cmd)))
        logf = open(self.logname, "ab")
        e = dict(os.environ)
        e.pop("DUPLEX_API_KEY", None)
        if self.env:
            e.update(self.env)
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=e,
                                     preexec_fn=_die_with_parent)
        logf.close()

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        try:
            with open(self.logname, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def send_signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        """Signals the process (by PID) and waits; SIGKILL after timeout (a failure)."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Fail("%s did not stop within %d s of signal %d:\n%s" % (self.name, timeout, sig, self.log()[-2000:]))

    def kill9(self):
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def cpu_seconds(pid):
    """User + system CPU time of a process (all threads), from /proc."""
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- Redis


def resp_encode(args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        if not isinstance(a, bytes):
            a = str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


class _Reader:
    def __init__(self, sock):
        self.s, self.buf = sock, b""

    def line(self):
        while b"\r\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise Fail("redis closed the connection")
            self.buf += d
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln

    def exact(self, n):
        while len(self.buf) < n + 2:
            d = self.s.recv(65536)
            if not d:
                raise Fail("redis closed the connection")
            self.buf += d
        v, self.buf = self.buf[:n], self.buf[n + 2:]
        return v

    def reply(self):
        ln = self.line()
        t, rest = ln[:1], ln[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            return RedisError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self.exact(n)
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise Fail("bad RESP reply %r" % ln)


class RedisError(Exception):
    pass


class Redis:
    """redis-server on 127.0.0.1 (and `extra_bind` addresses) on a free port,
    its data in the temp dir: appendonly with fsync always, so a reply means
    the write is on disk and SIGKILL loses nothing acknowledged."""

    def __init__(self, name="redis", extra_bind=(), port=None):
        self.exe = need("redis-server", "redis-server")
        self.name = name
        self.port = port or free_port()
        self.dir = os.path.join(tmpdir(), name)
        os.makedirs(self.dir, exist_ok=True)
        self.bind = ["127.0.0.1"] + list(extra_bind)
        self.p = None
        self.starts = 0

    def url(self, host="127.0.0.1"):
        return "redis://%s:%d/0" % (host, self.port)

    def start(self):
        cmd = [self.exe, "--port", str(self.port), "--bind", " ".join(self.bind), "--dir", self.dir,
               "--daemonize", "no", "--protected-mode", "no", "--appendonly", "yes", "--appendfsync", "always",
               "--save", "", "--logfile", "", "--databases", "4"]
        self.starts += 1
        self.p = Proc("%s-%d" % (self.name, self.starts), cmd)
        self.p.start()
        wait_for(lambda: self.ping() or not self.p.alive(), 20, "%s to answer PING" % self.name, 0.05)
        check(self.p.alive(), "%s exited at start:\n%s" % (self.name, self.p.log()[-2000:]))
        return self

    def ping(self):
        try:
            return self.cmd("PING") == "PONG"
        except (OSError, Fail, RedisError):
            return False

    def cmd(self, *args, timeout=5):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        try:
            s.sendall(resp_encode(args))
            r = _Reader(s).reply()
        finally:
            s.close()
        if isinstance(r, RedisError):
            raise r
        return r

    def commandstats(self):
        """INFO commandstats as {command: calls}."""
        info = self.cmd("INFO", "commandstats").decode()
        out = {}
        for ln in info.splitlines():
            if ln.startswith("cmdstat_"):
                name, _, rest = ln[8:].partition(":")
                kv = dict(x.split("=", 1) for x in rest.split(","))
                out[name] = int(kv["calls"])
        return out

    def stop(self):
        return self.p.stop() if self.p else None

    def kill9(self):
        self.p.kill9()

    @property
    def pid(self):
        return self.p.pid


# ---------------------------------------------------------------- network namespaces


def ip(*args, check_rc=True):
    exe = need("ip", "iproute2")
    r = subprocess.run([exe] + list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check_rc and r.returncode != 0:
        raise Fail("ip %s: exit %d: %s" % (" ".join(args), r.returncode, r.stdout.strip()))
    return r


class Netns:
    """A network namespace made by the test, with two veth pairs to the host:
    `client` (host 10.A.B.1 <-> ns 10.A.B.2) for the clients and the load
    balancer, `redis` (host 10.A.B.5 <-> ns 10.A.B.6) for the node's Redis
    traffic. cut() sets the host end of the Redis pair down (the node's
    packets to Redis go nowhere; no RST, no FIN: a silent network fault);
    heal() sets it up again. Names and addresses are random per run, so
    parallel tests do not collide; removed at exit."""

    @staticmethod
    def sweep():
        """Removes namespaces an earlier run left behind (its script was
        killed before its cleanup): `dxc-TAG-PID` whose PID is gone. Their
        veth pairs go with them."""
        for ln in ip("netns", "list", check_rc=False).stdout.splitlines():
            name = ln.split()[0] if ln.split() else ""
            parts = name.split("-")
            if len(parts) == 3 and parts[0] == "dxc" and parts[2].isdigit() and \
                    not os.path.exists("/proc/%s" % parts[2]):
                say("removing namespace %s left by an earlier run" % name)
                ip("netns", "del", name, check_rc=False)
                for end in "cr":  # the host ends (the namespace may outlive its name a while)
                    ip("link", "del", "dxc%s%s" % (parts[1], end), check_rc=False)

    def __init__(self):
        self.sweep()
        tag = "%04x" % random.getrandbits(16)
        self.name = "dxc-%s-%d" % (tag, os.getpid())
        a, b = random.randint(64, 250), random.randint(1, 250)
        self.net = "10.%d.%d" % (a, b)
        self.host_client, self.ns_client = self.net + ".1", self.net + ".2"
        self.host_redis, self.ns_redis = self.net + ".5", self.net + ".6"
        self.veth_c, self.veth_cp = "dxc%sc" % tag, "dxc%scp" % tag
        self.veth_r, self.veth_rp = "dxc%sr" % tag, "dxc%srp" % tag
        r = ip("netns", "add", self.name, check_rc=False)
        if r.returncode != 0:
            raise Fail("network namespaces are not permitted here: `ip netns add %s`: %s" % (self.name,
                                                                                            r.stdout.strip()))
        _cleanups.append(self.remove)
        ip("-n", self.name, "link", "set", "lo", "up")
        for host_if, ns_if, host_addr, ns_addr in ((self.veth_c, self.veth_cp, self.host_client, self.ns_client),
                                                    (self.veth_r, self.veth_rp, self.host_redis, self.ns_redis)):
            ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            ip("link", "set", ns_if, "netns", self.name)
            ip("addr", "add", host_addr + "/30", "dev", host_if)
            ip("-n", self.name, "addr", "add", ns_addr + "/30", "dev", ns_if)
            ip("link", "set", host_if, "up")
            ip("-n", self.name, "link", "set", ns_if, "up")
        say("netns %s: clients via %s <-> %s, Redis via %s <-> %s" % (self.name, self.host_client, self.ns_client,
                                                                       self.host_redis, self.ns_redis))

    def prefix(self):
        return [need("ip", "iproute2"), "netns", "exec", self.name]

    def cut(self):
        ip("link", "set", self.veth_r, "down")

    def heal(self):
        ip("link", "set", self.veth_r, "up")
        # the ns end comes back with the carrier; wait until the route works again
        wait_for(lambda: "state UP" in ip("-n", self.name, "link", "show", self.veth_rp).stdout, 10,
                 "the ns end of the Redis link to be up")

    def remove(self):
        ip("link", "del", self.veth_c, check_rc=False)
        ip("link", "del", self.veth_r, check_rc=False)
        ip("netns", "del", self.name, check_rc=False)


# ---------------------------------------------------------------- duplex nodes


class Node:
    """`duplex serve --redis URL` on HOST:<free port> (inside `netns` if given)."""

    def __init__(self, name, redis_url=None, *args, workers=1, host="127.0.0.1", netns=None, port=None):
        self.name = name
        self.host = host
        self.port = port or free_port()
        self.redis_url = redis_url
        self.netns = netns
        cmd = [gwtest.BIN, "serve", "--host", host, "--port", str(self.port), "--workers", str(workers),
               "--api-key", KEY]
        if redis_url:
            cmd += ["--redis", redis_url]
        cmd += list(args)
        if netns is not None:
            cmd = netns.prefix() + cmd
        self.p = Proc(name, cmd)
        self.starts = 0

    def start(self, wait_healthy=True):
        self.starts += 1
        self.p.start()
        line = "duplex: serving http://%s:%d/" % (self.host, self.port)
        wait_for(lambda: line in self.log() or not self.p.alive(), 20, "%s to print %r" % (self.name, line))
        check(self.p.alive(), "%s exited at start:\n%s" % (self.name, self.log()[-3000:]))
        if wait_healthy:
            wait_for(lambda: self.healthz() == 200, 20, "%s /healthz 200" % self.name, 0.05)
        return self

    def log(self):
        return self.p.log()

    def alive(self):
        return self.p.alive()

    @property
    def pid(self):
        return self.p.pid

    def url(self, path="/ws", scheme="ws"):
        return "%s://%s:%d%s" % (scheme, self.host, self.port, path)

    def http(self, method, path, body=None, headers=None, key=KEY, timeout=10):
        return http_to(self.host, self.port, method, path, body, headers, key, timeout)

    def healthz(self):
        try:
            return self.http("GET", "/healthz", key=None, timeout=3).status
        except OSError:
            return None

    def publish(self, t, body, ctype="text/plain"):
        return self.http("POST", "/api/publish?topic=" + q(t), body, {"Content-Type": ctype})

    def metrics(self):
        r = self.http("GET", "/metrics", key=None)
        expect_eq(r.status, 200, "%s GET /metrics" % self.name)
        return parse_metrics(r.body.decode())

    def connections(self):
        ms = self.metrics()
        return sum(v for (n, _), v in ms.items() if n == "duplex_connections")

    def stop(self, sig=signal.SIGTERM):
        rc = self.p.stop(sig)
        for m in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "WARNING: ThreadSanitizer"):
            check(m not in self.log(), "%s: sanitizer report in the log:\n%s" % (self.name, self.log()[-4000:]))
        return rc

    def kill9(self):
        self.p.kill9()


def q(s):
    return urllib.parse.quote(s, safe="")


def http_to(host, port, method, path, body=None, headers=None, key=KEY, timeout=10):
    h = {}
    if key is not None:
        h["Authorization"] = "Bearer " + key
    if headers:
        h.update(headers)
    if isinstance(body, str):
        body = body.encode()
    c = httpclient.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        return gwtest.Resp(r.status, r.getheaders(), r.read(), "%s %s:%d%s" % (method, host, port, path))
    finally:
        c.close()


def parse_metrics(text):
    import re
    out = {}
    line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)(\s+\d+)?$')
    lab_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for ln in text.splitlines():
        if not ln or ln.startswith("#"):
            continue
        m = line_re.match(ln)
        if m:
            out[(m.group(1), frozenset(lab_re.findall(m.group(2) or "")))] = float(m.group(3))
    return out


def cluster(redis, n=3, *args, **kw):
    """n nodes on one Redis, started and healthy."""
    return [Node("node%d" % (i + 1), redis.url(), *args, **kw).start() for i in range(n)]


# ---------------------------------------------------------------- load balancers


def render(template, out_name, **values):
    """tests/cluster/TEMPLATE with @KEY@ replaced, written to the temp dir."""
    with open(os.path.join(HERE, template)) as f:
        text = f.read()
    lines = []
    for ln in text.splitlines(True):
        if not ln.lstrip().startswith("#"):  # comments name the placeholders
            for k, v in values.items():
                ln = ln.replace("@%s@" % k, str(v))
        lines.append(ln)
    text = "".join(lines)
    check("@" not in "".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")),
          "%s: a placeholder was left unfilled" % template)
    path = os.path.join(tmpdir(), out_name)
    with open(path, "w") as f:
        f.write(text)
    return path


class Nginx:
    """nginx in front of `nodes`: conf = "nginx.conf" (round robin, not
    sticky) or "nginx-sticky.conf" (ip_hash). Its own prefix in the temp
    dir, `daemon off;`, pid file and logs there, stopped by PID."""

    def __init__(self, nodes, conf="nginx.conf"):
        exe = need("nginx", "nginx")
        self.port = free_port()
        self.host = "127.0.0.1"
        name = "nginx-%s" % conf.replace(".conf", "")
        self.prefix = os.path.join(tmpdir(), name)
        os.makedirs(os.path.join(self.prefix, "logs"), exist_ok=True)
        os.chmod(self.prefix, 0o755)
        servers = "".join("        server %s:%d max_fails=1 fail_timeout=3s;\n" % (n.host, n.port) for n in nodes)
        self.conf = render(conf, name + ".conf", PORT=self.port, PREFIX=self.prefix, UPSTREAMS=servers.rstrip()
                           .lstrip())
        # `-g "master_process off;"`: one process, so it dies with the test
        # like the others (its workers would outlive a killed master); the
        # file itself stays the one docs/deploy.md shows
        self.p = Proc(name, [exe, "-p", self.prefix + "/", "-c", self.conf, "-e", os.path.join(self.prefix,
                                                                                              "logs/error.log"),
                             "-g", "master_process off;"])

    def start(self):
        self.p.start()
        wait_for(lambda: self._up() or not self.p.alive(), 20, "nginx to listen on %d" % self.port, 0.05)
        check(self.p.alive(), "nginx exited at start:\n%s\n%s" % (self.p.log(), self.error_log()))
        return self

    def _up(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def error_log(self):
        try:
            with open(os.path.join(self.prefix, "logs/error.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def url(self, path="/ws", scheme="ws"):
        return "%s://127.0.0.1:%d%s" % (scheme, self.port, path)

    def http(self, method, path, body=None, headers=None, key=KEY, timeout=10):
        return http_to("127.0.0.1", self.port, method, path, body, headers, key, timeout)

    def stop(self):
        # SIGQUIT is nginx's graceful stop; it waits for open connections
        # (WebSocket tunnels) only as long as they last, SIGTERM does not
        return self.p.stop(signal.SIGTERM)

    @property
    def pid(self):
        return self.p.pid


class HAProxy:
    """HAProxy in front of `nodes` (tests/cluster/haproxy.cfg: round robin,
    health checks on /healthz every 500 ms), foreground (-db), stopped by PID."""

    def __init__(self, nodes, cfg="haproxy.cfg"):
        exe = need("haproxy", "haproxy")
        self.port = free_port()
        self.stats_port = free_port()
        self.host = "127.0.0.1"
        servers = "".join("    server %s %s:%d check inter 500ms fall 2 rise 2\n" % (n.name, n.host, n.port)
                          for n in nodes)
        self.cfg = render(cfg, "haproxy.cfg", PORT=self.port, SERVERS=servers.strip(), STATS_PORT=self.stats_port)
        self.p = Proc("haproxy", [exe, "-db", "-f", self.cfg])

    def start(self):
        self.p.start()
        wait_for(lambda: self._up() or not self.p.alive(), 20, "haproxy to listen on %d" % self.port, 0.05)
        check(self.p.alive(), "haproxy exited at start:\n%s" % self.p.log())
        return self

    def _up(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def url(self, path="/ws", scheme="ws"):
        return "%s://127.0.0.1:%d%s" % (scheme, self.port, path)

    def http(self, method, path, body=None, headers=None, key=KEY, timeout=10):
        return http_to("127.0.0.1", self.port, method, path, body, headers, key, timeout)

    def server_states(self):
        """{server name: status} from the stats CSV (UP, DOWN, ...)."""
        r = http_to("127.0.0.1", self.stats_port, "GET", "/stats;csv", key=None)
        out = {}
        for ln in r.body.decode().splitlines():
            f = ln.split(",")
            if len(f) > 17 and f[0] == "duplex" and f[1] not in ("FRONTEND", "BACKEND"):
                out[f[1]] = f[17]
        return out

    def stop(self):
        return self.p.stop(signal.SIGTERM)


# ---------------------------------------------------------------- clients


async def jconnect(url, timeout=10):
    ws = await websockets.connect(url, subprotocols=[PROTO], open_timeout=timeout, max_size=None,
                                  ping_interval=None, close_timeout=2, max_queue=None)
    check(ws.subprotocol == PROTO, "%s: the server chose subprotocol %r" % (url, ws.subprotocol))
    return gwtest.J(ws)


class _Retry(Exception):
    pass


class Resumer:
    """A JSON-dialect subscriber of `topic` that survives its node: it
    connects to `url` (a load balancer), subscribes with `since` its last
    offset and epoch, and whenever the connection ends (a close frame or a
    dead TCP connection) reconnects after 50-250 ms and resumes. Every
    received offset is kept (duplicates counted), each ack's `recovered`
    and each close code are recorded. `url` may be a list: each connection
    attempt takes the next one (a client moving from node to node)."""

    def __init__(self, name, url, t, start_since=None):
        self.name, self.topic = name, t
        self.urls = url if isinstance(url, list) else [url]
        self.attempt = 0
        self.got = []  # offsets in arrival order
        self.epoch = None
        self.last = 0
        self.since = start_since  # (offset, epoch) to resume from at the first connect
        self.closes = []  # close codes (None: no close frame)
        self.acks = []  # (offset, epoch, recovered) per subscribe
        self.gaps = []
        self.sub_errors = []  # err replies to sub
        self.connects = 0
        self.failed_connects = 0
        self.stopping = False
        self.connected = asyncio.Event()
        self.task = None
        self.errors = []
        self.j = None

    def start(self):
        self.task = asyncio.create_task(self.run())
        return self

    async def run(self):
        while not self.stopping:
            url = self.urls[self.attempt % len(self.urls)]
            self.attempt += 1
            try:
                j = await jconnect(url)
            except (OSError, asyncio.TimeoutError, websockets.exceptions.InvalidHandshake,
                    websockets.exceptions.ConnectionClosed) as e:
                self.failed_connects += 1
                if self.failed_connects > 400:
                    self.errors.append("could not reconnect: %r" % e)
                    return
                await asyncio.sleep(random.uniform(0.05, 0.25))
                continue
            self.j = j
            self.connects += 1
            try:
                req = {"topic": self.topic}
                if self.since is not None:
                    req["since"] = {"offset": self.since[0], "epoch": self.since[1]}
                a = await j.req("sub", **req)
                if a.get("op") != "ack":
                    # e.g. 4503 while the node's bus is down: try again later
                    self.sub_errors.append(a)
                    raise _Retry()
                self.acks.append((a.get("offset"), a.get("epoch"), a.get("recovered")))
                if self.epoch is None:
                    self.epoch = a.get("epoch")
                self.connected.set()
                while not self.stopping:
                    f = await j.msg(timeout=3600, what="a msg")
                    if f["op"] == "gap":
                        # what a careful client does: resume from what it has
                        # (a new connection with `since`); the count is reported
                        self.gaps.append((f.get("from"), f.get("to")))
                        raise _Retry()
                    if f.get("topic") != self.topic:
                        continue
                    off = f["offset"]
                    if self.epoch is not None and f["epoch"] != self.epoch:
                        self.errors.append("epoch changed %s -> %s at offset %d" % (self.epoch, f["epoch"], off))
                        self.epoch = f["epoch"]
                    self.got.append(off)
                    if off > self.last:
                        self.last = off
                    self.since = (self.last, f["epoch"])
            except Fail as e:
                # the connection ended: gwtest raises Fail with the close code in the text
                msg = str(e)
                code = None
                if "close " in msg:
                    try:
                        code = int(msg.split("close ", 1)[1].split()[0])
                    except ValueError:
                        code = None
                self.closes.append(code)
                if "connection closed" not in msg:
                    self.errors.append(msg)
            except _Retry:
                pass
            except websockets.exceptions.ConnectionClosed as e:
                self.closes.append(e.rcvd.code if e.rcvd else None)
            except (OSError, asyncio.TimeoutError) as e:
                self.closes.append(None)
                self.errors.append("%r" % e)
            finally:
                self.connected.clear()
                try:
                    await j.ws.close()
                except Exception:  # noqa: BLE001 - already gone
                    pass
            if not self.stopping:
                await asyncio.sleep(random.uniform(0.05, 0.25))

    def drop(self):
        """Ends the TCP connection abruptly (no close frame): the client
        reconnects and resumes."""
        if self.j is not None and self.connected.is_set():
            self.j.ws.transport.abort()

    async def stop(self):
        self.stopping = True
        if self.j is not None:
            try:
                await self.j.ws.close()
            except Exception:  # noqa: BLE001
                pass
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 10)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                self.task.cancel()


class SSEResumer:
    """An SSE subscriber of `topic` through host:port (a load balancer)
    that reconnects whenever its stream ends and resumes with the last
    `id:` it saw in `Last-Event-ID`, as a browser's EventSource does. HTTP/1.0
    (the stream ends at close, no chunking). The same counters as Resumer;
    the `ack` events (an extension) give `recovered`."""

    def __init__(self, name, host, port, t):
        self.name, self.host, self.port, self.topic = name, host, port, t
        self.got, self.epoch, self.last = [], None, 0
        self.last_id = None
        self.closes, self.acks, self.gaps, self.sub_errors, self.errors = [], [], [], [], []
        self.connects = self.failed_connects = 0
        self.stopping = False
        self.connected = asyncio.Event()
        self.task = None
        self.writer = None

    def start(self):
        self.task = asyncio.create_task(self.run())
        return self

    async def _once(self):
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 10)
        self.writer = writer
        try:
            head = "GET /sse?subscribe=%s HTTP/1.0\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n" % (
                q(self.topic), self.host, self.port)
            if self.last_id:
                head += "Last-Event-ID: %s\r\n" % self.last_id
            writer.write((head + "\r\n").encode())
            status = await asyncio.wait_for(reader.readline(), 10)
            if b" 200 " not in status:
                self.failed_connects += 1
                return
            while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
                pass
            self.connects += 1
            ev = {}
            while not self.stopping:
                ln = await reader.readline()
                if not ln:
                    self.closes.append(None)
                    return
                ln = ln.decode().rstrip("\r\n")
                if ln.startswith(":"):
                    continue
                if ln:
                    k, _, v = ln.partition(":")
                    ev[k] = v[1:] if v.startswith(" ") else v
                    continue
                kind, data = ev.get("event"), ev.get("data")
                if kind == "ack" and data:
                    a = json.loads(data)
                    self.acks.append((a.get("offset"), a.get("epoch"), a.get("recovered")))
                    if self.epoch is None:
                        self.epoch = a.get("epoch")
                    self.connected.set()
                elif kind == "msg" and data:
                    m = json.loads(data)
                    if m.get("topic") == self.topic:
                        off = m["offset"]
                        self.got.append(off)
                        self.last = max(self.last, off)
                        if self.epoch is not None and m["epoch"] != self.epoch:
                            self.errors.append("epoch changed %s -> %s" % (self.epoch, m["epoch"]))
                    if "id" in ev:
                        self.last_id = ev["id"]
                ev = {}
        finally:
            self.connected.clear()
            writer.close()

    async def run(self):
        while not self.stopping:
            try:
                await self._once()
            except (OSError, asyncio.TimeoutError, ValueError) as e:
                self.failed_connects += 1
                if self.failed_connects > 400:
                    self.errors.append("could not reconnect: %r" % e)
                    return
            if not self.stopping:
                await asyncio.sleep(random.uniform(0.05, 0.25))

    async def stop(self):
        self.stopping = True
        if self.writer is not None:
            self.writer.close()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 10)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                self.task.cancel()


class Publisher:
    """Publishes `topic` through `targets` (objects with .http) at about
    `rate` messages/s: body `{"seq":N}`. A 200 counts as published (its
    offset kept); anything else (503 while the bus is down, a connection
    error) is retried later with the next seq: it was not published."""

    def __init__(self, targets, t, rate=50.0):
        self.targets = targets if isinstance(targets, list) else [targets]
        self.topic, self.rate = t, rate
        self.acked = {}  # offset -> seq
        self.refused = {}  # status (or 'error') -> count
        self.seq = 0
        self.stopping = False
        self.task = None
        self.epochs = set()

    def start(self):
        self.task = asyncio.create_task(self.run())
        return self

    def _one(self, target):
        self.seq += 1
        body = json.dumps({"seq": self.seq})
        try:
            r = target.http("POST", "/api/publish?topic=" + q(self.topic), body,
                            {"Content-Type": "application/json"}, timeout=5)
        except OSError as e:
            k = "error:%s" % type(e).__name__
            self.refused[k] = self.refused.get(k, 0) + 1
            return None
        if r.status != 200:
            self.refused[r.status] = self.refused.get(r.status, 0) + 1
            return None
        j = r.json()
        if j["offset"] in self.acked:
            raise Fail("publish %d acked with offset %d, already given to publish %d" % (self.seq, j["offset"],
                                                                                       self.acked[j["offset"]]))
        self.acked[j["offset"]] = self.seq
        self.epochs.add(j["epoch"])
        return j

    async def run(self):
        loop = asyncio.get_running_loop()
        i = 0
        while not self.stopping:
            t0 = time.monotonic()
            await loop.run_in_executor(None, self._one, self.targets[i % len(self.targets)])
            i += 1
            await asyncio.sleep(max(0.0, 1.0 / self.rate - (time.monotonic() - t0)))

    async def stop(self):
        self.stopping = True
        if self.task:
            await self.task

    def count(self):
        return len(self.acked)


class Tally:
    """published (acked offsets), per subscriber delivered (distinct
    published offsets received), lost (acked, not received), duplicated
    (received more than once); printed as one line per scenario."""

    def __init__(self, scenario, pub, subs, start_after=0):
        self.scenario, self.pub, self.subs, self.start_after = scenario, pub, subs, start_after

    def compute(self):
        published = sorted(o for o in self.pub.acked if o > self.start_after)
        pubset = set(published)
        delivered = lost = dup = extra = 0
        worst = None
        unacked = set()
        for s in self.subs:
            seen = {}
            for o in s.got:
                seen[o] = seen.get(o, 0) + 1
            d = sum(1 for o in published if o in seen)
            lo = [o for o in published if o not in seen]
            du = sum(c - 1 for c in seen.values() if c > 1)
            ex = sum(1 for o in seen if o not in pubset and o > self.start_after)
            unacked.update(o for o in seen if o not in pubset and o > self.start_after)
            delivered += d
            lost += len(lo)
            dup += du
            extra += ex
            if lo and worst is None:
                worst = (s.name, lo[:10])
        return dict(published=len(published), subscribers=len(self.subs), delivered=delivered,
                    expected=len(published) * len(self.subs), lost=lost, duplicated=dup, unacked_delivered=extra,
                    worst=worst, gaps=sum(len(s.gaps) for s in self.subs),
                    reconnects=sum(max(0, s.connects - 1) for s in self.subs), unacked=sorted(unacked))

    def report(self):
        c = self.compute()
        say("%s: published %d, subscribers %d, delivered %d of %d, lost %d, duplicated %d, delivered-unacked %d; "
            "reconnects %d, gap notices %d, publishes refused %s%s" % (
                self.scenario, c["published"], c["subscribers"], c["delivered"], c["expected"], c["lost"],
                c["duplicated"], c["unacked_delivered"], c["reconnects"], c["gaps"], self.pub.refused or "none",
                "; offsets delivered but not answered 200: %s" % c["unacked"][:10] if c["unacked"] else ""))
        return c

    def check_clean(self, recovered=True):
        """No loss, no duplicate, in order, every resume recovered (a `gap`
        notice makes the subscriber resume: what it missed must come back)."""
        c = self.report()
        if c["lost"]:
            raise Fail("%s: %d deliveries lost (first: %s %s)" % (self.scenario, c["lost"], c["worst"][0],
                                                                  c["worst"][1]))
        check(c["duplicated"] == 0, "%s: %d duplicated deliveries" % (self.scenario, c["duplicated"]))
        for s in self.subs:
            order = [o for o in s.got]
            check(order == sorted(order), "%s: %s received offsets out of order: %s" % (self.scenario, s.name,
                                                                                      order[:50]))
            check(not s.errors, "%s: %s: %s" % (self.scenario, s.name, s.errors[:3]))
            if recovered:
                bad = [a for a in s.acks[1:] if a[2] is not True]
                check(not bad, "%s: %s resumed with recovered false: acks %s" % (self.scenario, s.name, s.acks))
        return c


async def wait_delivered(pub, subs, timeout, what="every subscriber to reach the last published offset"):
    last = max(pub.acked) if pub.acked else 0
    await await_for(lambda: all(s.last >= last for s in subs), timeout, what + " (%d)" % last, 0.05)


# ---------------------------------------------------------------- runner


def run(tests, timeout_each=110):
    """gwtest.main (ok/FAIL per case, `SCRIPT: N passed, M failed`) with the
    cluster's cleanup: every process stopped by PID, namespaces removed, the
    temp dir removed, or kept with every process's log tail printed when a
    case failed."""
    rc = 1
    try:
        gwtest.main(tests, timeout_each)
    except SystemExit as e:
        rc = e.code
    finally:
        for p in _procs:
            if p.alive():
                try:
                    p.stop(signal.SIGTERM, timeout=5)
                except Fail:
                    pass
        for c in reversed(_cleanups):
            c()
        if TMP is not None:
            if rc:
                say("kept %s (logs of every process)" % TMP)
                for p in _procs:
                    tail = p.log()[-1500:]
                    if tail:
                        say("---- %s log tail:\n%s" % (p.name, tail))
            else:
                shutil.rmtree(TMP, ignore_errors=True)
    sys.exit(rc)
