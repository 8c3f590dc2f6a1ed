#!/usr/bin/python3
"""
scripts/bench_million.py: as many idle WebSocket connections as this machine
allows, up to a target (default 1,000,000), then one broadcast to all of
them (issue 13, docs/scaling.md). Run by scripts/bench_million.sh
(`make bench-million`); not part of make test or (unless DX_BENCH_MILLION=1)
make bench.

  servers  `duplex serve --procs N --workers 1 --redis URL`: N so that each
           process holds at most PER_PROC connections (its descriptor limit
           is 20,000); one redis-server started here (no persistence) makes
           the N processes one gateway;
  clients  `duplex bench --idle --subscribe million.t` in steps of STEP
           connections (each step its own bench with STEP/PER_PROC worker
           processes and its own source addresses: 5 per 100k, counting up
           from 127.0.1.1, since a client port is unique per source address
           and the ephemeral range holds ~28,000 ports); each connection a
           raw-dialect subscriber of one topic.

Before each step the script checks MemAvailable against the previous step's
cost; while a step opens it polls MemAvailable every 0.2 s and stops that
step (SIGINT: its connections close) when it falls under FLOOR_MB. The
machine is never driven into the OOM killer.

Measured, before the first step and after each one:
  - connections held (what the benches reported open; and the kernel's
    count: /proc/net/sockstat TCP inuse, both ends on this machine);
  - user bytes per connection: the sum of the server processes' RSS
    (/proc/PID/statm) growth / connections (the benches' too, separately);
  - kernel bytes per connection: /proc/meminfo Slab growth plus
    /proc/net/sockstat TCP `mem` pages growth, / connections (both ends:
    two sockets per connection live in this kernel); the caches that grew
    most from /proc/slabinfo (root only; skipped when unreadable);
  - time to open each step.
Then one POST /api/publish with the payload 'dxts <CLOCK_MONOTONIC ns>'
(it lands on one process; Redis carries it to the others): deliveries
counted at the clients, and the time from the publish to the last delivery
(the benches' largest publish-to-delivery time).

No sysctl is changed by default: source addresses instead of a wider
ip_local_port_range, per-process descriptor limits (20,000) instead of a
larger fs.nr_open, net.core.somaxconn (4096) above every backlog used. Set
DX_MILLION_SYSCTLS="net.ipv4.tcp_mem=573000 764000 1146000;..." to raise
some: each is saved first and restored on exit, whatever the exit.

Environment: DX_MILLION_TARGET (1000000), DX_MILLION_STEP (100000),
DX_MILLION_PER_PROC (18000), DX_MILLION_FLOOR_MB (4096),
DX_MILLION_SOURCE_BASE (127.0.1.1), DX_MILLION_CONNECT_RATE (20000),
DX_MILLION_PORT (a free port).

  /usr/bin/python3 scripts/bench_million.py BUILD/duplex BUILD_DIR
"""
import http.client
import ipaddress
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")
TARGET = int(os.environ.get("DX_MILLION_TARGET", "1000000"))
STEP = int(os.environ.get("DX_MILLION_STEP", "100000"))
PER_PROC = int(os.environ.get("DX_MILLION_PER_PROC", "18000"))
FLOOR_KB = int(os.environ.get("DX_MILLION_FLOOR_MB", "4096")) * 1024
SOURCE_BASE = ipaddress.IPv4Address(os.environ.get("DX_MILLION_SOURCE_BASE", "127.0.1.1"))
CONNECT_RATE = os.environ.get("DX_MILLION_CONNECT_RATE", "20000")
PORTS_PER_SOURCE = 25000  # below the ~28,000 of the default ephemeral range
KEY = "bench-million-key"
TOPIC = "million.t"

procs = []      # every process started here, stopped by PID at the end
saved = []      # (path, old value) of the sysctls changed


def say(*a):
    print(*a, flush=True)


def meminfo():
    m = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            m[k] = int(v.split()[0])
    return m


def sockstat():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                c = line.split()[1:]
                return dict(zip(c[0::2], (int(x) for x in c[1::2])))
    return {}


def slabinfo():
    try:
        with open("/proc/slabinfo") as f:
            lines = f.readlines()[2:]
    except OSError:
        return None
    out = {}
    for line in lines:
        c = line.split()
        out[c[0]] = int(c[2]) * int(c[3])  # num_objs x objsize
    return out


def rss(pid):
    try:
        with open("/proc/%d/statm" % pid) as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0


def cpu(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            c = f.read().rsplit(")", 1)[1].split()
        return (int(c[11]) + int(c[12])) / TICK
    except OSError:
        return 0.0


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def set_sysctls():
    spec = os.environ.get("DX_MILLION_SYSCTLS", "").strip()
    for item in filter(None, (x.strip() for x in spec.split(";"))):
        name, value = item.split("=", 1)
        path = "/proc/sys/" + name.strip().replace(".", "/")
        with open(path) as f:
            old = f.read().strip()
        with open(path, "w") as f:
            f.write(value.strip())
        saved.append((path, old))
        say("sysctl %s: %s -> %s (restored on exit)" % (name.strip(), old, value.strip()))


def restore_sysctls():
    for path, old in reversed(saved):
        try:
            with open(path, "w") as f:
                f.write(old)
        except OSError as e:
            say("bench_million: cannot restore %s to %s: %s" % (path, old, e))
    saved.clear()


def stop(p, sig=signal.SIGTERM, timeout=120):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class Step:
    def __init__(self, duplex, url, index, n, first_source):
        self.n = n
        self.nsrc = max(1, math.ceil(n / PORTS_PER_SOURCE))
        self.first = first_source
        self.ready = tempfile.mktemp(prefix="dx-million-ready-")
        nprocs = max(1, math.ceil(n / PER_PROC))
        cmd = [duplex, "bench", "--json", "--no-progress", "--idle", "--subscribe", TOPIC, "-c", str(n),
               "--procs", str(nprocs), "--sources", "%d@%s" % (self.nsrc, first_source), "--ready-file",
               self.ready, "-t", "3600", "--timeout", "300", "--connect-rate", CONNECT_RATE, url]
        say("step %d: %s" % (index, " ".join(cmd)))
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(self.p)
        self.opened_s = None
        self.result = None

    def pids(self):
        return [self.p.pid] + children(self.p.pid)

    def finish(self):
        """SIGINT: the bench closes its connections and prints its JSON."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
        try:
            out, err = self.p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            self.p.kill()
            out, err = self.p.communicate()
        lines = [l for l in out.decode().splitlines() if l.startswith("{")]
        self.result = json.loads(lines[-1]) if lines else None
        if not self.result:
            say("bench_million: a step printed no result: %s" % err.decode()[-800:])
        if os.path.exists(self.ready):
            os.unlink(self.ready)
        return self.result


def snapshot(server_pid, steps):
    kids = children(server_pid)
    return {"t": time.monotonic(), "mem": meminfo(), "sock": sockstat(), "slab": slabinfo(),
            "srv_rss": sum(rss(p) for p in kids), "srv_n": len(kids),
            "cli_rss": sum(rss(p) for s in steps for p in s.pids())}


def wait_gateway(port, n, timeout=60):
    deadline = time.monotonic() + timeout
    ok = 0
    while ok < n:
        if time.monotonic() > deadline:
            raise RuntimeError("the gateway processes did not all accept subscribers within %d s" % timeout)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /ws?subscribe=" + TOPIC.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      b"Sec-WebSocket-Version: 13\r\n\r\n")
            head = s.recv(4096)
        if head.startswith(b"HTTP/1.1 101"):
            ok += 1
        else:
            ok = 0
            time.sleep(0.1)


def report_step(base, snap, held, out):
    d_slab = (snap["mem"]["Slab"] - base["mem"]["Slab"]) * 1024
    d_tcpmem = (snap["sock"].get("mem", 0) - base["sock"].get("mem", 0)) * PAGE
    d_srv = snap["srv_rss"] - base["srv_rss"]
    d_avail = (base["mem"]["MemAvailable"] - snap["mem"]["MemAvailable"]) * 1024
    inuse = snap["sock"].get("inuse", 0) - base["sock"].get("inuse", 0)
    out.append("%9d %9d %10.0f %10.0f %10.0f %10.0f %12.0f %10.0f" % (
        held, inuse // 2, d_srv / held, snap["cli_rss"] / held, d_slab / held, d_tcpmem / held, d_avail / held,
        snap["mem"]["MemAvailable"] / 1024))


def main():
    if len(sys.argv) != 3:
        print("usage: bench_million.py BUILD/duplex BUILD_DIR", file=sys.stderr)
        return 2
    duplex, build = os.path.abspath(sys.argv[1]), sys.argv[2]
    redis_bin = shutil.which("redis-server") or "/usr/sbin/redis-server"
    if not os.path.exists(redis_bin):
        print("bench_million: redis-server not installed (scripts/deps.sh bench)", file=sys.stderr)
        return 2
    nsrv = max(1, math.ceil(TARGET / PER_PROC))
    steps_total = math.ceil(TARGET / STEP)
    last_src = SOURCE_BASE + steps_total * max(1, math.ceil(STEP / PORTS_PER_SOURCE)) - 1
    if last_src > ipaddress.IPv4Address("127.0.9.255"):
        print("bench_million: %d steps need source addresses past 127.0.9.255" % steps_total, file=sys.stderr)
        return 2
    port = int(os.environ.get("DX_MILLION_PORT", "0")) or free_port()
    out = ["# duplex: a million connections (scripts/bench_million.sh), %s, %d cores, %.1f GiB" % (
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.cpu_count(), meminfo()["MemTotal"] / 2 ** 20),
        "target %d, steps of %d, servers: duplex serve --procs %d --workers 1 --redis, floor %d MiB available" % (
            TARGET, STEP, nsrv, FLOOR_KB // 1024)]
    rdir = tempfile.mkdtemp(prefix="dx-million-redis-")
    steps = []
    srv = redis = None
    stopped_why = "target reached"
    try:
        set_sysctls()
        rport = free_port()
        redis = subprocess.Popen([redis_bin, "--port", str(rport), "--bind", "127.0.0.1", "--dir", rdir, "--save", "",
                                  "--appendonly", "no", "--daemonize", "no", "--maxclients", "10000"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(redis)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", rport), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or redis.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
        srvlog = open(os.path.join(build, "bench-million-serve.log"), "wb")
        cmd = [duplex, "serve", "--procs", str(nsrv), "--workers", "1", "--host", "127.0.0.1", "--port", str(port),
               "--redis", "redis://127.0.0.1:%d" % rport, "--api-key", KEY, "--log-level", "warn",
               "--conns-per-ip", "off", "--handshakes-per-ip", "off", "--ping-interval", "off", "--history", "0",
               "--drain", "1s", "--close-timeout", "2s"]
        say("server:", " ".join(cmd))
        srv = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=srvlog)
        procs.append(srv)
        line = srv.stdout.readline()
        if not line.startswith(b"duplex: serving"):
            raise RuntimeError("duplex serve --procs %d did not start (see %s)" % (nsrv, srvlog.name))
        url = "ws://127.0.0.1:%d/ws" % port
        # every process connected to Redis (before that a process answers
        # 503): 8 handshakes per process in a row accepted
        wait_gateway(port, 8 * nsrv)
        base = snapshot(srv.pid, steps)
        out.append("before: MemAvailable %d MiB, TCP sockets %d, Slab %d MiB, servers' RSS %.0f MiB (%d processes)" % (
            base["mem"]["MemAvailable"] // 1024, base["sock"].get("inuse", 0), base["mem"]["Slab"] // 1024,
            base["srv_rss"] / 2 ** 20, base["srv_n"]))
        table = ["%9s %9s %10s %10s %10s %10s %12s %10s" % ("held", "kernel", "srv B/c", "bench B/c", "slab B/c",
                                                           "tcpmem B/c", "avail B/c", "avail MiB"),
                 "(per connection: both ends' sockets are in this kernel; 'kernel' = TCP sockets in use / 2)"]
        held = 0
        src = SOURCE_BASE
        prev_avail = base["mem"]["MemAvailable"]
        step_cost_kb = 0
        t_open0 = time.monotonic()
        open_s = 0.0
        for i in range(steps_total):
            n = min(STEP, TARGET - held)
            avail = meminfo()["MemAvailable"]
            if avail - step_cost_kb * n / STEP * 1.2 < FLOOR_KB:
                stopped_why = "memory: MemAvailable %d MiB, the next step needs ~%d MiB above the %d MiB floor" % (
                    avail // 1024, step_cost_kb * n / STEP // 1024, FLOOR_KB // 1024)
                break
            st = Step(duplex, url, i, n, src)
            steps.append(st)
            src += st.nsrc
            floor_hit = False
            while not os.path.exists(st.ready) and st.p.poll() is None:
                if meminfo()["MemAvailable"] < FLOOR_KB:
                    floor_hit = True
                    break
                time.sleep(0.2)
            if floor_hit or not os.path.exists(st.ready):
                r = st.finish()
                steps.pop()
                stopped_why = ("memory floor reached during step %d (MemAvailable under %d MiB): step closed" % (
                    i, FLOOR_KB // 1024)) if floor_hit else "step %d failed: %r" % (i, r)
                break
            st.opened_s = time.monotonic() - st.t0
            open_s += st.opened_s
            held += n
            snap = snapshot(srv.pid, steps)
            step_cost_kb = prev_avail - snap["mem"]["MemAvailable"]
            prev_avail = snap["mem"]["MemAvailable"]
            say("step %d: %d open in %.1f s; held %d; MemAvailable %d MiB" % (
                i, n, st.opened_s, held, snap["mem"]["MemAvailable"] // 1024))
            report_step(base, snap, held, table)
        wall_open = time.monotonic() - t_open0
        if not held:
            raise RuntimeError("no step opened: " + stopped_why)
        last = snapshot(srv.pid, steps)
        out.append("held %d connections (%s); opening took %.1f s in steps (%.0f connections/s), %.1f s wall" % (
            held, stopped_why, open_s, held / open_s, wall_open))
        out.extend(table)
        if last["slab"] and base["slab"]:
            grew = sorted(((last["slab"].get(k, 0) - v, k) for k, v in base["slab"].items()), reverse=True)[:8]
            out.append("slab caches that grew most (bytes per connection): " + ", ".join(
                "%s %.0f" % (k, d / held) for d, k in grew if d > 0))
        # the broadcast: one publish through one process, Redis to the others
        allp = [p for s in steps for p in s.pids()] + children(srv.pid) + [redis.pid]
        # the idle rate of all these processes (timers, tickers) over 2 s
        b0, tb0 = sum(cpu(p) for p in allp), time.monotonic()
        time.sleep(2)
        c0 = sum(cpu(p) for p in allp)
        idle_rate = (c0 - b0) / (time.monotonic() - tb0)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        stamp = time.monotonic_ns()
        conn.request("POST", "/api/publish?topic=" + TOPIC, body=b"dxts %d" % stamp,
                     headers={"Authorization": "Bearer " + KEY, "Content-Type": "text/plain"})
        r = conn.getresponse()
        body = r.read()
        conn.close()
        if r.status != 200:
            raise RuntimeError("publish: %d %r" % (r.status, body))
        # delivered once the processes are back to their idle rate (no
        # progress counter to read from the benches): within 5% of a core
        # of it for a second, at most 300 s; the benches' largest
        # publish-to-delivery time is the figure, this wait only bounds it
        t_pub = time.monotonic()
        quiet, last_c, last_t = 0, c0, t_pub
        while time.monotonic() - t_pub < 300:
            time.sleep(0.25)
            c = sum(cpu(p) for p in allp)
            t = time.monotonic()
            quiet = quiet + 1 if (c - last_c) / (t - last_t) < idle_rate + 0.05 else 0
            last_c, last_t = c, t
            if quiet >= 4:
                break
        bcast_cpu = last_c - c0 - idle_rate * (last_t - t_pub)
        delivered, lat_max, lat_p50 = 0, 0.0, []
        for s in steps:
            res = s.finish()
            if res:
                delivered += res.get("delivered", 0)
                lat_max = max(lat_max, res.get("lat_max_us", 0.0))
                lat_p50.append(res.get("lat_p50_us", 0.0))
        out.append("broadcast: 1 publish, %d deliveries counted at the clients of %d held (%s); publish to the last "
                   "delivery %.2f s; per-step p50 %s s; CPU for it %.1f s (all processes)" % (
                       delivered, held, "all" if delivered == held else "%d missing" % (held - delivered),
                       lat_max / 1e6, "/".join("%.2f" % (x / 1e6) for x in lat_p50), bcast_cpu))
        steps.clear()
    finally:
        for s in steps:
            s.finish()
        if srv:
            stop(srv, signal.SIGTERM, 300)
            say("servers stopped: exit %s" % srv.returncode)
        if redis:
            stop(redis)
        for p in procs:
            stop(p, signal.SIGKILL, 10)
        restore_sysctls()
        shutil.rmtree(rdir, ignore_errors=True)
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    with open(os.path.join(build, "bench-million.txt"), "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
