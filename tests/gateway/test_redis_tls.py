"""
tests/gateway/test_redis_tls.py: `duplex serve --redis rediss://...` (issue
11; docs/gateway.md "The Redis bus", TLS) against a real redis-server this
script starts with --tls-port only (no plain port) and --tls-auth-clients
yes, on a free port in a temp dir, with a CA, a server certificate (for
localhost and 127.0.0.1) and a client certificate made here with the
openssl CLI, plus a second CA that signed nothing of this.

  - two nodes on rediss://localhost:PORT with --redis-tls-ca, -cert, -key:
    a publish through node A's API reaches a JSON subscriber on node B and
    one on A, in order, offsets 1..N;
  - a node with the wrong CA: the log names the failure ("certificate
    verify failed"), /healthz 503 and publishes 503 while it cannot
    connect; it serves meanwhile;
  - a node with the right CA but no client certificate (the server asks
    for one): /healthz 503, publishes 503, the handshake failure logged;
  - --redis-tls-* with a redis:// URL, or a certificate without its key:
    refused at startup with a clear message.

A missing redis-server or openssl fails the test (nothing is skipped).
"""
import os
import shutil
import signal
import subprocess
import tempfile

import gwtest
from gwtest import (Serve, check, check_sub_ack, expect_eq, free_port, http, jconnect, main, publish, say, topic,
                    wait_for)

REDIS_BIN = shutil.which("redis-server") or "/usr/bin/redis-server"
D = None
PORT = None
PROC = None


def sh(*args):
    p = subprocess.run(args, cwd=D, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    check(p.returncode == 0, "%s failed: %s" % (" ".join(args), p.stderr.decode(errors="replace")[-500:]))


def certs():
    k = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    sh("openssl", "req", "-x509", *k, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=dx-test-ca")
    sh("openssl", "req", "-x509", *k, "-keyout", "other.key", "-out", "other.pem", "-days", "2", "-subj",
       "/CN=dx-other-ca")
    with open(os.path.join(D, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, cn, ext in (("srv", "localhost", True), ("cli", "dx-client", False)):
        sh("openssl", "req", *k, "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + cn)
        sh("openssl", "x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
           "-out", name + ".pem", "-days", "2", *(["-extfile", "ext.cnf"] if ext else []))


def redis_up():
    global D, PORT, PROC
    if PROC is not None:
        return
    check(os.path.exists(REDIS_BIN), "redis-server not found (Debian: redis-server; scripts/deps.sh test)")
    check(shutil.which("openssl") is not None, "openssl not found (Debian: openssl)")
    D = tempfile.mkdtemp(prefix="dx-redis-tls-")
    certs()
    PORT = free_port()
    logf = open(os.path.join(D, "redis.log"), "ab")
    PROC = subprocess.Popen(
        [REDIS_BIN, "--port", "0", "--tls-port", str(PORT), "--bind", "127.0.0.1", "--dir", D, "--save", "",
         "--appendonly", "no", "--tls-cert-file", os.path.join(D, "srv.pem"), "--tls-key-file",
         os.path.join(D, "srv.key"), "--tls-ca-cert-file", os.path.join(D, "ca.pem"), "--tls-auth-clients", "yes"],
        stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
    gwtest._procs.append(PROC)

    def listening():
        try:
            import socket
            socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
            return True
        except OSError:
            return PROC.poll() is not None
    wait_for(listening, 20, "redis-server to listen on its TLS port")
    check(PROC.poll() is None, "redis-server exited at start (built without TLS?)")


def f(name):
    return os.path.join(D, name)


def url():
    return "rediss://localhost:%d" % PORT


def healthz(s):
    try:
        return http(s, "GET", "/healthz", key=None, timeout=5).status
    except OSError:
        return 0


async def test_rediss_publish_on_a_received_on_b():
    redis_up()
    tls = ("--redis-tls-ca", f("ca.pem"), "--redis-tls-cert", f("cli.pem"), "--redis-tls-key", f("cli.key"))
    a = Serve("--redis", url(), *tls, workers=2)
    b = Serve("--redis", url(), *tls, workers=2)
    for s in (a, b):
        wait_for(lambda: healthz(s) == 200, 20, "node :%d /healthz 200 over rediss://" % s.port, step=0.05)
    check("connected to Redis" in a.log(), "no 'connected to Redis' line:\n" + a.log()[-2000:])
    t = topic("tls")
    jb = await jconnect(b)
    ja = await jconnect(a)
    check_sub_ack(await jb.sub(t), t, offset=0, recovered=False)
    await ja.sub(t)
    n = 40
    ep = None
    for i in range(1, n + 1):
        p = publish(a, t, "m%d" % i)
        expect_eq(p["offset"], i, "publish %d: offset" % i)
        ep = ep or p["epoch"]
    for j, what in ((jb, "subscriber on B"), (ja, "subscriber on A")):
        for i in range(1, n + 1):
            m = await j.msg(timeout=15, what="%s: offset %d" % (what, i))
            check(m["op"] == "msg" and m["offset"] == i and m["epoch"] == ep,
                  "%s: expected offset %d, got %r" % (what, i, m))
    await ja.close()
    await jb.close()
    a.stop()
    b.stop()


def refused_node(args, why):
    s = Serve("--redis", url(), *args)
    wait_for(lambda: why in s.log(), 20, "%r in the log" % why)
    expect_eq(healthz(s), 503, "/healthz while the TLS handshake fails")
    r = http(s, "POST", "/api/publish?topic=" + topic("tlsno"), body="x", headers={"Content-Type": "text/plain"})
    expect_eq(r.status, 503, "publish while the TLS handshake fails")
    check(s.alive(), "the node died")
    say("  logged: " + [l for l in s.log().splitlines() if why in l][0].strip()[-160:])
    s.stop()


def test_wrong_ca_503_and_logged():
    redis_up()
    refused_node(("--redis-tls-ca", f("other.pem"), "--redis-tls-cert", f("cli.pem"), "--redis-tls-key",
                  f("cli.key")), "certificate verify failed")


def test_no_client_certificate_503():
    redis_up()
    refused_node(("--redis-tls-ca", f("ca.pem")), "connection to Redis 127.0.0.1:%d failed" % PORT)


def test_bad_tls_options_refused():
    redis_up()
    for args, what in ((("--redis", "redis://127.0.0.1:1", "--redis-tls-ca", f("ca.pem")), "rediss://"),
                       (("--redis", url(), "--redis-tls-cert", f("cli.pem")), "go together"),
                       (("--redis", url(), "--redis-tls-ca", f("ca.key")), "CA file")):
        p = subprocess.run([gwtest.BIN, "serve", "--host", "127.0.0.1", "--port", str(free_port()), *args],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
        out = (p.stdout + p.stderr).decode(errors="replace")
        check(p.returncode != 0, "%s: serve started (%s)" % (args, out[-300:]))
        check(what in out, "%s: expected %r in the message, got:\n%s" % (args, what, out[-500:]))


def teardown():
    if PROC is not None and PROC.poll() is None:
        os.kill(PROC.pid, signal.SIGTERM)
        PROC.wait()
    if D:
        shutil.rmtree(D, ignore_errors=True)


if __name__ == "__main__":
    import atexit
    atexit.register(teardown)
    main([
        test_bad_tls_options_refused,
        test_rediss_publish_on_a_received_on_b,
        test_wrong_ca_503_and_logged,
        test_no_client_certificate_503,
    ])
