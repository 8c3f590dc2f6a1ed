"""
tests/cli/test_serve_procs.py: `duplex serve --procs N` (issue 13, scale):
a supervisor and N worker processes on one port (SO_REUSEPORT).

Which process holds a connection is read from the kernel: the server side of
a loopback connection is the /proc/net/tcp entry whose remote port is the
client's local port; its inode is a socket:[inode] link in exactly one
child's /proc/PID/fd. Real processes, no sleeps for synchronization: every
wait polls for the event with a generous timeout.

  - spread: 3 children listen; echo connections land on several of them,
    each on a child of the supervisor; each echoes;
  - kill -9 of one child: the log names its pid and the signal, a new child
    is started, listens, and connections land on it and echo;
  - SIGHUP reaches every child (each logs its reload with its pid);
  - SIGTERM with connections open: every child drains, the supervisor exits
    0, no child pid is left;
  - the supervisor SIGKILLed: its children stop too (PR_SET_PDEATHSIG);
  - a crash loop (a child killed again each time it is back): bounded, one
    error line, the supervisor stops the others and exits 1;
  - the probe: a foreign listener (plain, and SO_REUSEPORT) on the port:
    exit 1 with one message and no child forked; --procs with --unix: 2;
  - --procs 2 --redis: a publish through one process reaches a raw
    subscriber held by the other (redis-server started here, stopped by PID).
"""
import base64
import http.client
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile

import clitest
from clitest import Fail, check, free_port, main, say, wait_for

REDIS_BIN = shutil.which("redis-server") or "/usr/bin/redis-server"
KEY = "procs-test-key"


class Procs:
    """`duplex serve --procs N --workers 1` on 127.0.0.1:<free port>."""

    def __init__(self, n, *args, port=None):
        self.n = n
        self.port = port or free_port()
        self.logf = tempfile.NamedTemporaryFile(prefix="dx-procs-", suffix=".log", delete=False)
        clitest._logs.append(self.logf.name)
        cmd = [clitest.BIN, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--procs", str(n), "--drain", "2s", "--close-timeout", "2s"] + list(args)
        say("server:", " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.logf)
        clitest._procs.append(self.proc)
        self.pid = self.proc.pid
        # the supervisor prints the URL once every child listens
        line = self.proc.stdout.readline().decode(errors="replace")
        check(line.startswith("duplex: serving http://127.0.0.1:%d/" % self.port),
              "expected the serving line on stdout, got %r; log:\n%s" % (line, self.log()))
        wait_for(lambda: len(self.children()) == n, 20, "%d children" % n)

    def log(self):
        with open(self.logf.name, errors="replace") as f:
            return f.read()

    def children(self):
        try:
            with open("/proc/%d/task/%d/children" % (self.pid, self.pid)) as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    def signal(self, sig):
        os.kill(self.pid, sig)

    def wait_exit(self, timeout=30):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise Fail("the supervisor did not exit within %d s; log:\n%s" % (timeout, self.log()))
        clitest.no_sanitizer_report(self.log())
        return rc


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def server_pid(port, client_port, pids, timeout=20):
    """The pid among `pids` whose descriptor table holds the server side of
    the loopback connection from client_port to port."""
    want_local = ":%04X" % port
    want_rem = ":%04X" % client_port
    found = []

    def look():
        inode = None
        for name in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(name) as f:
                for line in f.readlines()[1:]:
                    c = line.split()
                    if c[1].endswith(want_local) and c[2].endswith(want_rem) and c[3] == "01":
                        inode = c[9]
        if not inode or inode == "0":
            return False
        link = "socket:[%s]" % inode
        for pid in pids:
            try:
                for fd in os.listdir("/proc/%d/fd" % pid):
                    try:
                        if os.readlink("/proc/%d/fd/%s" % (pid, fd)) == link:
                            found.append(pid)
                            return True
                    except OSError:
                        pass
            except OSError:
                pass
        return False

    wait_for(look, timeout, "the server side of port %d in one of %s" % (client_port, pids))
    return found[0]


class WS:
    """A minimal client: the handshake, masked frames out, frames in."""

    def __init__(self, port, path="/echo"):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=20)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, port, key)).encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        check(head.startswith(b"HTTP/1.1 101"), "handshake %s: %r" % (path, head[:200]))
        self.lport = self.s.getsockname()[1]

    def _more(self):
        d = self.s.recv(65536)
        if not d:
            raise Fail("the server closed the connection")
        self.buf += d

    def send(self, data, op=2):
        mask = os.urandom(4)
        n = len(data)
        hdr = bytes([0x80 | op])
        hdr += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
        self.s.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self):
        while True:
            while len(self.buf) < 2:
                self._more()
            op, n = self.buf[0] & 0x0F, self.buf[1] & 0x7F
            h = 2
            if n == 126:
                while len(self.buf) < 4:
                    self._more()
                n, h = struct.unpack("!H", self.buf[2:4])[0], 4
            elif n == 127:
                while len(self.buf) < 10:
                    self._more()
                n, h = struct.unpack("!Q", self.buf[2:10])[0], 10
            while len(self.buf) < h + n:
                self._more()
            data, self.buf = self.buf[h:h + n], self.buf[h + n:]
            if op in (9, 10):
                continue  # heartbeat
            return op, data

    def echo(self, data):
        self.send(data)
        op, got = self.recv()
        check(op == 2 and got == data, "echo: sent %r, got op %d %r" % (data, op, got))

    def close(self):
        self.s.close()


def spread_until(srv, pred, limit, what):
    """Opens echo connections (kept) until pred(pids seen) holds."""
    conns, seen = [], []
    for _ in range(limit):
        w = WS(srv.port)
        w.echo(b"hello %d" % len(conns))
        seen.append(server_pid(srv.port, w.lport, srv.children()))
        conns.append(w)
        if pred(seen):
            return conns, seen
    raise Fail("%s: not after %d connections (pids %s)" % (what, limit, sorted(set(seen))))


def test_spread():
    srv = Procs(3)
    kids = srv.children()
    conns, seen = spread_until(srv, lambda s: len(set(s)) >= 2, 60, "connections on two processes")
    check(set(seen) <= set(kids), "a connection on %s, not a child of the supervisor %s" % (seen, kids))
    say("connections landed on pids", sorted(set(seen)), "of", kids)
    for c in conns:
        c.close()
    srv.signal(signal.SIGTERM)
    check(srv.wait_exit() == 0, "exit status: %s\n%s" % (srv.proc.returncode, srv.log()))


def test_kill9_restart():
    srv = Procs(3)
    kids = srv.children()
    victim = kids[1]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: "(pid %d) killed by signal 9" % victim in srv.log(), 20, "the log line naming pid %d" % victim)
    wait_for(lambda: len(srv.children()) == 3 and victim not in srv.children(), 20, "a new third child")
    new = [p for p in srv.children() if p not in kids]
    check(len(new) == 1, "expected one new child, children %s, before %s" % (srv.children(), kids))
    wait_for(lambda: "(pid %d) restarted and listening" % new[0] in srv.log(), 20, "the new child to listen")
    conns, _ = spread_until(srv, lambda s: new[0] in s, 300, "a connection on the restarted child")
    for c in conns:
        c.close()
    srv.signal(signal.SIGTERM)
    check(srv.wait_exit() == 0, "exit status %s\n%s" % (srv.proc.returncode, srv.log()))


def test_hup_reaches_every_child():
    srv = Procs(3)
    kids = srv.children()
    srv.signal(signal.SIGHUP)
    for pid in kids:
        wait_for(lambda: "pid %d: serve: reload 1 done" % pid in srv.log(), 20, "pid %d to reload" % pid)
    check(srv.children() == kids, "children changed on SIGHUP: %s -> %s" % (kids, srv.children()))
    srv.signal(signal.SIGTERM)
    check(srv.wait_exit() == 0, "exit status %s" % srv.proc.returncode)


def test_term_stops_all():
    srv = Procs(3)
    kids = srv.children()
    conns, _ = spread_until(srv, lambda s: len(s) >= 6, 6, "six connections")
    srv.signal(signal.SIGTERM)
    # each connection gets the echo endpoint's 1001 close
    for c in conns:
        op, data = c.recv()
        check(op == 8 and data[:2] == struct.pack("!H", 1001), "expected close 1001, got %d %r" % (op, data))
        c.close()
    rc = srv.wait_exit()
    check(rc == 0, "SIGTERM: supervisor exit status %d, want 0\n%s" % (rc, srv.log()))
    left = [p for p in kids if alive(p)]
    check(not left, "children still alive after the supervisor exited: %s" % left)
    check("supervisor exiting 0" in srv.log(), "no final line:\n" + srv.log())


def test_supervisor_killed():
    srv = Procs(2)
    kids = srv.children()
    os.kill(srv.pid, signal.SIGKILL)
    srv.proc.wait(10)
    wait_for(lambda: not any(alive(p) for p in kids), 30, "the children %s to stop after the supervisor died" % kids)


def test_crash_loop_bounded():
    srv = Procs(2)
    survivor = srv.children()[0]
    for i in range(5):
        victim = [p for p in srv.children() if p != survivor][0]
        os.kill(victim, signal.SIGKILL)
        if i == 4:
            break
        got = []

        def restarted():
            kids = srv.children()
            got[:] = [p for p in kids if p not in (survivor, victim)]
            return len(kids) == 2 and survivor in kids and len(got) == 1

        wait_for(restarted, 30, "restart %d after killing %d" % (i + 1, victim))
        new = got[0]
        wait_for(lambda: "(pid %d) restarted and listening" % new in srv.log(), 30, "pid %d to listen" % new)
    rc = srv.wait_exit(40)
    check(rc == 1, "crash loop: exit status %d, want 1\n%s" % (rc, srv.log()))
    check("a crash loop" in srv.log() and "5 exits in a row" in srv.log(), "no crash-loop line:\n" + srv.log())
    check(not alive(survivor), "the surviving child %d was not stopped" % survivor)


def test_probe_rejects_foreign_listener():
    for reuse in (False, True):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        try:
            p = subprocess.run([clitest.BIN, "serve", "--host", "127.0.0.1", "--port", str(port), "--procs", "3",
                                "--workers", "1"], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        finally:
            s.close()
        err = p.stderr.decode(errors="replace")
        check(p.returncode == 1, "foreign listener (reuseport %s): exit %d, want 1\n%s" % (reuse, p.returncode, err))
        check("already in use" in err and "supervisor" not in err and "proc " not in err,
              "expected one refusal before any child:\n" + err)
    d = tempfile.mkdtemp(prefix="dx-procs-unix-")
    try:
        p = subprocess.run([clitest.BIN, "serve", "--unix", os.path.join(d, "s"), "--procs", "2"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    check(p.returncode == 2 and b"--unix" in p.stderr, "--procs with --unix: exit %d %r" % (p.returncode, p.stderr))


def test_redis_one_gateway():
    check(os.path.exists(REDIS_BIN), "redis-server not found (Debian: redis-server; scripts/deps.sh test)")
    d = tempfile.mkdtemp(prefix="dx-procs-redis-")
    rport = free_port()
    rlog = open(os.path.join(d, "redis.log"), "ab")
    redis = subprocess.Popen([REDIS_BIN, "--port", str(rport), "--bind", "127.0.0.1", "--dir", d, "--save", "",
                              "--appendonly", "no", "--daemonize", "no"], stdin=subprocess.DEVNULL, stdout=rlog,
                             stderr=rlog)
    clitest._procs.append(redis)

    def pong():
        try:
            with socket.create_connection(("127.0.0.1", rport), timeout=2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    try:
        wait_for(lambda: pong() or redis.poll() is not None, 20, "redis-server to answer PING")
        check(redis.poll() is None, "redis-server exited at start")
        srv = Procs(2, "--redis", "redis://127.0.0.1:%d" % rport, "--api-key", KEY)
        kids = srv.children()
        # each process answers 503 until its Redis connections are up: wait
        # until a subscriber is accepted by each, and keep one
        subs = {}

        def subscribe():
            try:
                w = WS(srv.port, "/ws?subscribe=procs.t")
            except Fail:
                return False
            pid = server_pid(srv.port, w.lport, kids)
            if pid in subs:
                w.close()
            else:
                subs[pid] = w
            return len(subs) == 2

        wait_for(subscribe, 30, "both processes to accept a subscriber (Redis connected)")
        sub_pid = kids[0]
        sub = subs.pop(sub_pid)
        subs.pop(kids[1]).close()
        # an HTTP connection held by the other process
        for _ in range(300):
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20)
            c.connect()
            if server_pid(srv.port, c.sock.getsockname()[1], kids) != sub_pid:
                break
            c.close()
        else:
            raise Fail("no HTTP connection landed on the other process")
        c.request("POST", "/api/publish?topic=procs.t", body=b"across processes",
                  headers={"Authorization": "Bearer " + KEY, "Content-Type": "text/plain"})
        r = c.getresponse()
        body = r.read()
        check(r.status == 200, "publish: %d %r" % (r.status, body))
        c.close()
        op, data = sub.recv()
        check(op == 1 and data == b"across processes", "subscriber on pid %d got %d %r" % (sub_pid, op, data))
        sub.close()
        srv.signal(signal.SIGTERM)
        check(srv.wait_exit() == 0, "exit status %s\n%s" % (srv.proc.returncode, srv.log()))
    finally:
        if redis.poll() is None:
            redis.terminate()
            redis.wait(10)
        rlog.close()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main([test_spread, test_kill9_restart, test_hup_reaches_every_child, test_term_stops_all,
          test_supervisor_killed, test_crash_loop_bounded, test_probe_rejects_foreign_listener,
          test_redis_one_gateway])
