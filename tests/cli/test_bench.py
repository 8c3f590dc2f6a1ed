"""
tests/cli/test_bench.py: `duplex bench` against `duplex serve` (issue 4).

    test_bench.py PATH/TO/duplex

Each case starts `duplex serve --workers 1` on a free port with
--log-level info, runs a short bench, stops the server with SIGTERM and
checks that what the bench reports matches what the server logged: one
"conn=ID close ... msgs_in=N msgs_out=M" line per connection, and the sums
of msgs_in / msgs_out equal the bench's sent_total / received_total. Also:
--json parses, errors are 0, --text, --rate, --procs, --idle with
--ready-file, --handshakes, and usage errors exit 2.

Bounded: every subprocess has a timeout. No machine-speed assertions except
--rate, whose achieved rate is checked within a wide margin.
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

DUPLEX = None
CLOSE_RE = re.compile(r"conn=\d+ close .*code=(\d+) .*msgs_in=(\d+) msgs_out=(\d+)")


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def say(*a):
    print(*a, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Serve:
    """duplex serve on a free port; stop() returns its stderr."""

    def __init__(self, *extra):
        self.port = free_port()
        self.log = tempfile.TemporaryFile()
        self.p = subprocess.Popen(
            [DUPLEX, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--log-level", "info"] + list(extra), stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.time() + 10
        while time.time() < deadline:
            check(self.p.poll() is None, "duplex serve exited at start")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise Fail("duplex serve does not listen")

    def url(self, path="/echo"):
        return "ws://127.0.0.1:%d%s" % (self.port, path)

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            rc = self.p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise Fail("duplex serve did not stop on SIGTERM")
        check(rc == 0, "duplex serve exited %d" % rc)
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")


def bench(*args, expect_rc=0, timeout=60):
    cmd = [DUPLEX, "bench"] + [str(a) for a in args]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    out, err = r.stdout.decode(), r.stderr.decode()
    if expect_rc is not None and r.returncode != expect_rc:
        raise Fail("%s: exit %d, want %d\nstdout: %s\nstderr: %s" % (" ".join(cmd), r.returncode, expect_rc,
                                                                    out[-2000:], err[-2000:]))
    check("\r" not in err, "progress line written to a stderr that is not a terminal")
    return out, err


def bench_json(*args, **kw):
    out, err = bench(*(list(args) + ["--json"]), **kw)
    lines = [l for l in out.splitlines() if l.strip()]
    check(len(lines) == 1, "--json printed %d lines: %r" % (len(lines), out))
    try:
        return json.loads(lines[0])
    except ValueError as e:
        raise Fail("--json output does not parse: %s: %r" % (e, lines[0]))


def server_sums(log, want_conns):
    closes = [CLOSE_RE.search(l) for l in log.splitlines()]
    closes = [m for m in closes if m]
    check(len(closes) == want_conns, "server logged %d closes, want %d" % (len(closes), want_conns))
    codes = {m.group(1) for m in closes}
    check(codes == {"1000"}, "close codes %s, want only 1000" % codes)
    return sum(int(m.group(2)) for m in closes), sum(int(m.group(3)) for m in closes)


def check_counts(j, log, conns):
    check(j["errors"] == 0, "errors counted: %r" % j)
    check(j["open"] == conns, "open %s, want %d" % (j["open"], conns))
    check(j["msgs"] > 0 and j["msgs_per_s"] > 0, "nothing measured: %r" % j)
    check(j["lat_n"] == j["msgs"], "latency samples %d != messages %d" % (j["lat_n"], j["msgs"]))
    check(0 < j["lat_p50_us"] <= j["lat_p90_us"] <= j["lat_p99_us"] <= j["lat_p999_us"] <= j["lat_max_us"],
          "percentiles out of order: %r" % j)
    srv_in, srv_out = server_sums(log, conns)
    say("  bench sent %d received %d; server msgs_in %d msgs_out %d" % (j["sent_total"], j["received_total"],
                                                                        srv_in, srv_out))
    check(srv_in == j["sent_total"], "server received %d, bench sent %d" % (srv_in, j["sent_total"]))
    check(srv_out == j["received_total"], "server echoed %d, bench received %d" % (srv_out, j["received_total"]))
    check(j["sent_total"] == j["received_total"], "echoes lost: %r" % j)
    check(j["sent_total"] >= j["msgs"], "window larger than the run: %r" % j)


def case_echo_counts():
    s = Serve()
    try:
        j = bench_json("-c", 20, "-d", 8, "--size", 100, "-t", "2", "--warmup", "0.5", s.url())
    finally:
        log = s.stop()
    say("  echo depth 8: %s msgs/s, p50 %s us, p99.9 %s us" % (j["msgs_per_s"], j["lat_p50_us"], j["lat_p999_us"]))
    check(j["mode"] == "echo" and j["depth"] == 8 and j["size"] == 100 and j["text"] is False, "fields: %r" % j)
    check(1.5 < j["seconds"] < 3, "window %s s, want ~2" % j["seconds"])
    check_counts(j, log, 20)


def case_text_summary():
    s = Serve()
    try:
        out, _ = bench("-c", 5, "--size", 3, "--text", "-t", "1", "--warmup", "0", s.url())
    finally:
        log = s.stop()
    for word in ("messages", "latency", "p50", "p90", "p99", "p99.9", "max", "errors      0"):
        check(word in out, "summary lacks %r:\n%s" % (word, out))
    server_sums(log, 5)


def case_rate():
    s = Serve()
    try:
        j = bench_json("-c", 10, "--rate", 200, "-t", "2", "--warmup", "0.5", s.url())
    finally:
        log = s.stop()
    want = 10 * 200
    say("  rate: %s msgs/s out for %d wanted, late %s" % (j["out_per_s"], want, j["late"]))
    check(j["mode"] == "rate", "mode %r" % j["mode"])
    # The upper bound is the schedule's (never faster than asked); the lower one
    # is loose so that a loaded machine cannot fail it.
    check(0.3 * want < j["out_per_s"] < 1.4 * want, "sent %s/s, want about %d/s" % (j["out_per_s"], want))
    check_counts(j, log, 10)


def case_procs():
    s = Serve()
    try:
        j = bench_json("-c", 30, "--procs", 3, "-d", 4, "-t", "1.5", "--warmup", "0.3", s.url())
    finally:
        log = s.stop()
    check(j["procs"] == 3, "procs %r" % j["procs"])
    check_counts(j, log, 30)


def case_sources():
    s = Serve()
    try:
        j = bench_json("-c", 12, "--sources", 3, "-t", "1", "--warmup", "0", s.url())
    finally:
        log = s.stop()
    check_counts(j, log, 12)
    remotes = set(re.findall(r"conn=\d+ open remote=([\d.]+):", log))
    if not remotes:  # the open line's format is the server's business: fall back to close lines
        remotes = set(re.findall(r"conn=\d+ close remote=([\d.]+):", log))
    check(remotes == {"127.0.0.1", "127.0.0.2", "127.0.0.3"}, "source addresses seen by the server: %s" % remotes)


def case_sources_base():
    """--sources K@ADDR: K addresses counting up from ADDR, across an octet."""
    s = Serve()
    try:
        j = bench_json("-c", 12, "--sources", "3@127.0.2.254", "-t", "1", "--warmup", "0", s.url())
    finally:
        log = s.stop()
    check_counts(j, log, 12)
    remotes = set(re.findall(r"conn=\d+ open remote=([\d.]+):", log))
    if not remotes:
        remotes = set(re.findall(r"conn=\d+ close remote=([\d.]+):", log))
    check(remotes == {"127.0.2.254", "127.0.2.255", "127.0.3.0"}, "source addresses seen by the server: %s" % remotes)
    for bad in ("0", "3@10.0.0.1", "2@127.255.255.254", "3@127.0.0", "3x", "4097"):
        out, err = bench("--sources", bad, "-c", "1", s.url(), expect_rc=2)
        check("--sources" in err, "--sources %s: no message naming the flag: %r" % (bad, err))


def case_idle():
    s = Serve()
    ready = tempfile.mktemp(prefix="duplex-bench-ready-")
    try:
        j = bench_json("--idle", "-c", 40, "-t", "0.5", "--ready-file", ready, s.url())
        with open(ready) as f:
            check(f.read().strip() == "40", "ready file content")
    finally:
        log = s.stop()
        if os.path.exists(ready):
            os.unlink(ready)
    check(j["mode"] == "idle" and j["open"] == 40 and j["errors"] == 0, "idle: %r" % j)
    srv_in, srv_out = server_sums(log, 40)
    check(srv_in == 0 and srv_out == 0, "idle connections carried messages")


def case_idle_subscribe():
    """--idle --subscribe T: held subscribers count what is published
    elsewhere (here: POST /api/publish); a 'dxts NS' payload gives the
    publish-to-delivery time; nothing else is an error."""
    key = "bench-test-key"
    s = Serve("--api-key", key)
    ready = tempfile.mktemp(prefix="duplex-bench-ready-")
    cmd = [DUPLEX, "bench", "--json", "--idle", "--subscribe", "idle.t", "-c", "30", "-t", "10", "--ready-file",
           ready, s.url("/ws")]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 30
        while not os.path.exists(ready):
            check(p.poll() is None and time.time() < deadline, "bench did not open its 30 subscribers")
            time.sleep(0.05)
        bodies = [b"dxts %d" % time.monotonic_ns(), b"not stamped", b"dxts %d" % time.monotonic_ns()]
        for body in bodies:
            c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=20)
            c.request("POST", "/api/publish?topic=idle.t", body=body,
                      headers={"Authorization": "Bearer " + key, "Content-Type": "text/plain"})
            r = c.getresponse()
            check(r.status == 200, "publish: %d %r" % (r.status, r.read()))
            c.close()
        out, err = p.communicate(timeout=40)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
        log = s.stop()
        if os.path.exists(ready):
            os.unlink(ready)
    check(p.returncode == 0, "bench exit %d: %s" % (p.returncode, err.decode()[-1000:]))
    j = json.loads([l for l in out.decode().splitlines() if l.startswith("{")][-1])
    check(j["mode"] == "idle" and j["open"] == 30 and j["errors"] == 0, "idle subscribe: %r" % j)
    check(j["delivered"] == 90, "delivered %r, want 90 (30 subscribers x 3 publishes)" % j["delivered"])
    check(j["lat_n"] == 60 and 0 < j["lat_max_us"] < 20e6, "stamped deliveries: %r" % j)
    out, err = bench("--idle", "--subscribe", "idle.t", "--rate", "5", "-c", "1", s.url("/ws"), expect_rc=2)
    check("--rate" in err, "--idle --subscribe --rate: %r" % err)


def case_handshakes():
    s = Serve()
    try:
        j = bench_json("--handshakes", 150, "--concurrency", 4, s.url())
    finally:
        log = s.stop()
    check(j["mode"] == "handshakes" and j["ok"] == 150 and j["errors"] == 0, "handshakes: %r" % j)
    server_sums(log, 150)


def case_usage():
    bench("--help", expect_rc=0)
    bench("http://127.0.0.1:1/", expect_rc=2)
    bench("-c", "0", "ws://127.0.0.1:1/", expect_rc=2)
    bench("--depth", "x", "ws://127.0.0.1:1/", expect_rc=2)
    # nothing listens: connection errors, exit 1, still one JSON line
    j = bench_json("-c", 2, "-t", "0.5", "--timeout", "5", "ws://127.0.0.1:%d/echo" % free_port(), expect_rc=1)
    check(j["errors"] >= 2 and j["err_connect"] + j["err_not_open"] >= 2, "refused connects not counted: %r" % j)


def case_not_echo():
    """A 404 from the server is a handshake error, not a silent zero."""
    s = Serve()
    try:
        j = bench_json("-c", 3, "-t", "0.5", "--timeout", "5", s.url("/nope"), expect_rc=1)
    finally:
        s.stop()
    check(j["err_handshake"] + j["err_connect"] == 3, "404 not counted: %r" % j)


CASES = [case_usage, case_echo_counts, case_text_summary, case_rate, case_procs, case_sources, case_sources_base,
         case_idle, case_idle_subscribe, case_handshakes, case_not_echo]


def main():
    global DUPLEX
    if len(sys.argv) != 2:
        print("usage: test_bench.py PATH/TO/duplex", file=sys.stderr)
        return 2
    DUPLEX = sys.argv[1]
    failed = 0
    for c in CASES:
        say("== " + c.__name__)
        try:
            c()
            say("ok   " + c.__name__)
        except (Fail, subprocess.TimeoutExpired) as e:
            failed += 1
            say("FAIL %s: %s" % (c.__name__, e))
    say("%d of %d cases passed" % (len(CASES) - failed, len(CASES)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
