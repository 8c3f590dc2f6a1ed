#!/usr/bin/python3
"""
scripts/bench_scale.py: how cost grows with work (issue 13, "Scale"), run by
scripts/bench_scale.sh from make bench. Three curves, each against a fresh
`duplex serve --workers 1` (one loop: the cost of one core's work):

  a. throughput against active connections: 100, 1k, 10k echo connections
     at one fixed total rate (DX_SCALE_RATE messages/s in all, default
     20,000: `duplex bench --rate R/N`); server CPU per echoed message
     (utime+stime of the server sampled every 50 ms from /proc/PID/stat,
     over the bench's measured window only) and the client's p99 latency;
  b. RSS against idle connections: 1k, 5k, 10k, 19k held by `duplex bench
     --idle` (19k: the server process's descriptor limit is 20,000), on
     /echo and on the gateway's /ws?subscribe=T (raw dialect): bytes per
     connection = (RSS once all are open - RSS before) / N;
  c. handshake rate against concurrency: `duplex bench --handshakes`
     with 1, 8, 64, 256 concurrent openers; handshakes/s, p99 and server
     CPU per handshake.

Prints the tables on stdout, writes them to BUILD/bench-scale.txt and the
charts to BUILD/bench-scale-{throughput,rss,handshakes}.png (gnuplot;
missing gnuplot: the tables only, said once). Each run is bounded (bench
timeouts, subprocess timeouts); every server started is stopped by PID.
Clients connect from 127.0.1.0/24 (DX_SCALE_SOURCE_BASE) so others' tests on
127.0.0.1 are not disturbed.

  /usr/bin/python3 scripts/bench_scale.py BUILD/duplex BUILD
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
RATE = int(os.environ.get("DX_SCALE_RATE", "20000"))          # a: messages/s in all
DURATION = float(os.environ.get("DX_SCALE_DURATION", "4"))    # a: measured seconds per point
SOURCE_BASE = os.environ.get("DX_SCALE_SOURCE_BASE", "127.0.1.1")
ACTIVE = [100, 1000, 10000]
IDLE = [1000, 5000, 10000, 19000]
CONCURRENCY = [1, 8, 64, 256]
HANDSHAKES = int(os.environ.get("DX_SCALE_HANDSHAKES", "4000"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        c = f.read().rsplit(")", 1)[1].split()
    return (int(c[11]) + int(c[12])) / TICK  # utime, stime (fields 14, 15)


def rss_bytes(pid):
    with open("/proc/%d/statm" % pid) as f:
        return int(f.read().split()[1]) * PAGE


class Server:
    def __init__(self, duplex, *extra):
        self.port = free_port()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([duplex, "serve", "--host", "127.0.0.1", "--port", str(self.port),
                                      "--workers", "1", "--log-level", "warn", "--conns-per-ip", "off",
                                      "--handshakes-per-ip", "off", "--msg-rate", "off"] + list(extra),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log)
        line = self.proc.stdout.readline()
        if not line.startswith(b"duplex: serving"):
            self.stop()
            raise RuntimeError("duplex serve did not start: %r" % line)

    def url(self, path):
        return "ws://127.0.0.1:%d%s" % (self.port, path)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Sampler(threading.Thread):
    """(monotonic time, CPU seconds) of a pid every 50 ms."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.samples, self.done = pid, [], threading.Event()
        self.start()

    def run(self):
        while not self.done.is_set():
            try:
                self.samples.append((time.monotonic(), cpu_s(self.pid)))
            except OSError:
                return
            self.done.wait(0.05)

    def between(self, t0, t1):
        """CPU seconds used between t0 and t1 (nearest samples inside)."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return None, 0
        return inside[-1][1] - inside[0][1], inside[-1][0] - inside[0][0]

    def stop(self):
        self.done.set()
        self.join()


def bench(duplex, *args, timeout=120):
    cmd = [duplex, "bench", "--json", "--no-progress"] + [str(a) for a in args]
    t0 = time.monotonic()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    t1 = time.monotonic()
    lines = [l for l in r.stdout.decode().splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError("%s: no result (exit %d): %s" % (" ".join(cmd), r.returncode, r.stderr.decode()[-500:]))
    j = json.loads(lines[-1])
    if j.get("errors"):
        sys.stderr.write("bench_scale: %s: %d errors\n" % (" ".join(cmd), j["errors"]))
    return j, t0, t1


def sources(n):
    return "%d@%s" % (max(1, 1 + n // 4000), SOURCE_BASE)


def curve_throughput(duplex, out):
    rows = []
    for n in ACTIVE:
        srv = Server(duplex)
        try:
            smp = Sampler(srv.proc.pid)
            warm = 1.0
            j, t0, t1 = bench(duplex, "--rate", "%g" % (RATE / n), "-c", n, "-t", DURATION, "--warmup", warm,
                              "--sources", sources(n), "--connect-rate", 20000, srv.url("/echo"))
            smp.stop()
            # the measured window: after the connections and the warm-up
            w0 = t0 + j["connect_s"] + warm + 0.1
            cpu, span = smp.between(w0, w0 + j["seconds"] - 0.2)
            us = cpu / (j["msgs_per_s"] * span) * 1e6 if cpu is not None and j["msgs_per_s"] and span else None
            rows.append((n, j["msgs_per_s"], us, cpu / span * 100 if span else None, j["lat_p50_us"],
                         j["lat_p99_us"], rss_bytes(srv.proc.pid), j["errors"]))
        finally:
            srv.stop()
    out.append("== a. throughput against active connections: echo, %d messages/s in all, 16 B, server --workers 1"
               % RATE)
    out.append("%-8s %10s %14s %9s %9s %9s %10s %6s" % ("conns", "msgs/s", "srv us/msg", "srv cpu%",
                                                        "p50 us", "p99 us", "srv RSS MB", "errors"))
    for n, mps, us, pct, p50, p99, rss, err in rows:
        out.append("%-8d %10.0f %14s %9s %9.0f %9.0f %10.1f %6d" % (
            n, mps, "%.2f" % us if us is not None else "-", "%.1f" % pct if pct is not None else "-", p50, p99,
            rss / 1e6, err))
    out.append("")
    return rows


def curve_rss(duplex, out):
    rows = []
    for path, label in (("/echo", "echo"), ("/ws?subscribe=scale.t", "gateway raw sub")):
        for n in IDLE:
            srv = Server(duplex)
            ready = tempfile.mktemp(prefix="dx-scale-ready-")
            try:
                before = rss_bytes(srv.proc.pid)
                procs = 1 if n < 15000 else 2
                p = subprocess.Popen([duplex, "bench", "--json", "--no-progress", "--idle", "-c", str(n), "-t", "60",
                                      "--procs", str(procs), "--sources", sources(n), "--ready-file", ready,
                                      srv.url(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                t0 = time.monotonic()
                while not os.path.exists(ready) and p.poll() is None and time.monotonic() - t0 < 60:
                    time.sleep(0.05)
                opened = os.path.exists(ready)
                # the server may still be finishing the last handshakes' replies
                time.sleep(0.3)
                after = rss_bytes(srv.proc.pid)
                p.send_signal(signal.SIGINT)
                try:
                    p.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.communicate()
                rows.append((label, n, before, after, (after - before) / n if opened else None))
            finally:
                if os.path.exists(ready):
                    os.unlink(ready)
                srv.stop()
    out.append("== b. RSS against idle connections: server --workers 1, RSS before and once all are open")
    out.append("(marginal: the RSS growth from the previous point / the connections added; it leaves out the")
    out.append(" one-time growth of the first connections, such as slab and table first touches)")
    out.append("%-16s %8s %10s %10s %11s %11s" % ("endpoint", "conns", "RSS0 MB", "RSS MB", "bytes/conn",
                                                   "marginal B"))
    prev = {}
    marg = []
    for label, n, b, a, per in rows:
        m = None
        if label in prev and per:
            pn, pa = prev[label]
            m = (a - pa) / (n - pn)
        prev[label] = (n, a)
        marg.append(m)
        out.append("%-16s %8d %10.1f %10.1f %11s %11s" % (label, n, b / 1e6, a / 1e6, "%.0f" % per if per else "-",
                                                         "%.0f" % m if m is not None else "-"))
    rows[:] = [r + (m,) for r, m in zip(rows, marg)]
    out.append("")
    return rows


def curve_handshakes(duplex, out):
    rows = []
    for k in CONCURRENCY:
        srv = Server(duplex)
        try:
            c0 = cpu_s(srv.proc.pid)
            j, _, _ = bench(duplex, "--handshakes", HANDSHAKES if k > 1 else HANDSHAKES // 2, "--concurrency", k,
                            "--sources", "%d@%s" % (4, SOURCE_BASE), srv.url("/echo"))
            c1 = cpu_s(srv.proc.pid)
            rows.append((k, j["per_s"], j["hs_p50_us"], j["hs_p99_us"], (c1 - c0) / max(1, j["ok"]) * 1e6,
                         j["errors"]))
        finally:
            srv.stop()
    out.append("== c. handshakes against concurrency: open + close, /echo, server --workers 1")
    out.append("%-12s %12s %10s %10s %14s %6s" % ("concurrency", "handshakes/s", "p50 us", "p99 us", "srv us/hs",
                                                  "errors"))
    for k, ps, p50, p99, us, err in rows:
        out.append("%-12d %12.0f %10.0f %10.0f %14.1f %6d" % (k, ps, p50, p99, us, err))
    out.append("")
    return rows


def charts(build, a, b, c):
    if not shutil.which("gnuplot"):
        print("bench_scale: gnuplot not installed (apt-get install gnuplot-nox): tables only")
        return []
    d = tempfile.mkdtemp(prefix="dx-scale-chart-")
    try:
        with open(os.path.join(d, "a.dat"), "w") as f:
            for n, mps, us, pct, p50, p99, rss, err in a:
                f.write("%d %s %s\n" % (n, "%.3f" % us if us is not None else "NaN", p99))
        with open(os.path.join(d, "b.dat"), "w") as f:
            for label in ("echo", "gateway raw sub"):
                for lab, n, _, _, per, m in b:
                    if lab == label:
                        f.write("%d %s %s\n" % (n, "%.0f" % per if per else "NaN", "%.0f" % m if m is not None
                                                 else "NaN"))
                f.write("\n\n")
        with open(os.path.join(d, "c.dat"), "w") as f:
            for k, ps, p50, p99, us, err in c:
                f.write("%d %.0f %.0f %.1f\n" % (k, ps, p99, us))
        pngs = [os.path.join(build, "bench-scale-%s.png" % x) for x in ("throughput", "rss", "handshakes")]
        script = """
set terminal png size 800,480 font ",10"
set grid
set key top left
set datafile missing "NaN"
set logscale x
set output "{0}"
set title "throughput against active connections ({3} msgs/s in all, server --workers 1)"
set xlabel "active connections"
set ylabel "server CPU us per echoed message"
set y2label "client p99 latency (us)"
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
plot "{4}/a.dat" using 1:2 with linespoints lw 2 title "server us/msg", \\
     "" using 1:3 axes x1y2 with linespoints lw 2 title "p99 latency us"
set output "{1}"
unset y2tics
unset y2label
set key top right
set title "server RSS per idle connection (bytes, server --workers 1)"
set xlabel "idle connections"
set ylabel "bytes per connection"
set yrange [0:*]
plot "{4}/b.dat" index 0 using 1:2 with linespoints lw 2 title "/echo: RSS / conns", \\
     "" index 0 using 1:3 with linespoints lw 2 dt 2 title "/echo: marginal", \\
     "" index 1 using 1:2 with linespoints lw 2 title "gateway /ws raw subscriber: RSS / conns", \\
     "" index 1 using 1:3 with linespoints lw 2 dt 2 title "gateway: marginal"
set output "{2}"
set title "handshakes against concurrency (open + close)"
set xlabel "concurrent openers"
set ylabel "handshakes/s"
set y2label "server CPU us per handshake"
set y2tics
plot "{4}/c.dat" using 1:2 with linespoints lw 2 title "handshakes/s", \\
     "" using 1:4 axes x1y2 with linespoints lw 2 title "server us/handshake"
""".format(pngs[0], pngs[1], pngs[2], RATE, d)
        subprocess.run(["gnuplot"], input=script.encode(), check=True, timeout=60)
        return pngs
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    if len(sys.argv) != 3:
        print("usage: bench_scale.py BUILD/duplex BUILD_DIR", file=sys.stderr)
        return 2
    duplex, build = os.path.abspath(sys.argv[1]), sys.argv[2]
    out = ["# duplex scale curves (scripts/bench_scale.sh), %s, %d cores" % (
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.cpu_count())]
    t0 = time.monotonic()
    a = curve_throughput(duplex, out)
    b = curve_rss(duplex, out)
    c = curve_handshakes(duplex, out)
    out.append("(%.0f s)" % (time.monotonic() - t0))
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    with open(os.path.join(build, "bench-scale.txt"), "w") as f:
        f.write(text)
    for p in charts(build, a, b, c):
        print("chart:", p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
