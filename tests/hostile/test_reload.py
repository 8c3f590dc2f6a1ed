"""
tests/hostile/test_reload.py: SIGHUP reloads `duplex serve --config FILE`
under load without dropping a connection (issue 10, docs/configuration.md
"Reload").

A TLS server with two workers, configured by a file (certificate A, API key
one). 240 wss connections (Python websockets) each send and check their
echoes without pause while the test:
  1. reloads the same file (done, nothing changes);
  2. reloads a bad file (limits.msg_rate: fast): refused with a log line
     naming file:line: key; API key one still works;
  3. reloads a file with certificate B and API key two: new TLS handshakes
     get B (the DER compared with B's file), API key two works and one is
     refused; the open connections carry on, on certificate A;
  4. reloads a file whose key does not match its certificate: refused, new
     handshakes still get B;
  5. reloads a file with an unknown key (refused), then one that changes
     gateway.max_subs: "needs a restart", the rest (API key) applied;
  6. five SIGHUPs in a row.
/metrics counts the applied reloads (duplex_config_reloads_total). Then
every connection must still be open, none lost an echo (each message
is checked in order), and the server exits 0 on SIGTERM.
"""
import asyncio
import hashlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile import Fail, Server, check, need_websockets, run, say

N_CONNS = 240
TMP = tempfile.mkdtemp(prefix="dx-reload-")


def make_cert(name, serial):
    cert, key = os.path.join(TMP, name + ".pem"), os.path.join(TMP, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-set_serial", str(serial), "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def fingerprint_file(cert):
    with open(cert) as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()


def client_ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def served_fingerprint(port):
    """A new TLS handshake: the SHA-256 of the certificate the server sends."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with client_ctx().wrap_socket(s, server_hostname="localhost") as t:
            return hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest()


def api_status(port, key):
    req = urllib.request.Request("https://127.0.0.1:%d/api/publish?topic=reload.t" % port, data=b"x",
                                 method="POST", headers={"Authorization": "Bearer " + key})
    try:
        with urllib.request.urlopen(req, timeout=10, context=client_ctx()) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def get_metrics(port):
    with urllib.request.urlopen("https://127.0.0.1:%d/metrics" % port, timeout=10, context=client_ctx()) as r:
        return r.read().decode()


def write_config(path, cert, key, api_key, extra=""):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("listen:\n  tls:\n    - cert: %s\n      key: %s\napi:\n  key: %s\n%s" % (cert, key, api_key, extra))
    os.replace(tmp, path)  # a reload never reads half a file


async def wait_log(srv, pattern, count, timeout=30):
    deadline = time.monotonic() + timeout
    while len(srv.lines(pattern)) < count:
        if time.monotonic() > deadline:
            raise Fail("log line /%s/ (x%d) not seen within %d s; tail:\n%s"
                       % (pattern, count, timeout, "\n".join(srv.log().splitlines()[-30:])))
        await asyncio.sleep(0.05)


async def main_async(binary, websockets):
    cert_a, key_a = make_cert("a", 1001)
    cert_b, key_b = make_cert("b", 2002)
    fa, fb = fingerprint_file(cert_a), fingerprint_file(cert_b)
    check(fa != fb, "the two certificates are the same")
    cfg = os.path.join(TMP, "duplex.yaml")
    write_config(cfg, cert_a, key_a, "key-one")
    srv = Server(binary, "--config", cfg, workers=2)
    port = srv.port
    loop = asyncio.get_running_loop()

    def blocking(fn, *a):
        return loop.run_in_executor(None, fn, *a)

    check(await blocking(served_fingerprint, port) == fa, "the first certificate is not A")
    check(await blocking(api_status, port, "key-one") == 200, "API key one refused at start")

    conns = []
    for i in range(N_CONNS):
        ws = await websockets.connect("wss://127.0.0.1:%d/echo" % port, ssl=client_ctx(), max_size=1 << 20,
                                      ping_interval=None, open_timeout=30)
        conns.append(ws)
    say("%d wss connections open" % len(conns))
    stop = asyncio.Event()
    counts = [0] * N_CONNS
    errors = []

    async def pump(i, ws):
        n = 0
        try:
            while not stop.is_set():
                msg = "c%d-%d" % (i, n)
                await ws.send(msg)
                got = await asyncio.wait_for(ws.recv(), 60)
                if got != msg:
                    errors.append("conn %d: sent %r, got %r" % (i, msg, got))
                    return
                n += 1
                counts[i] = n
                if n % 4 == 0:
                    await asyncio.sleep(0.01)  # keep 240 pumps from starving the reload steps
        except Exception as e:  # a closed or broken connection is the failure under test
            errors.append("conn %d after %d echoes: %r" % (i, n, e))

    tasks = [asyncio.create_task(pump(i, ws)) for i, ws in enumerate(conns)]

    async def progressed():
        """Waits until every connection has echoed at least once more."""
        before = list(counts)
        deadline = time.monotonic() + 60
        while any(c <= b for c, b in zip(counts, before)) and not errors:
            check(time.monotonic() < deadline, "connections stopped echoing: %d of %d moved"
                  % (sum(c > b for c, b in zip(counts, before)), N_CONNS))
            await asyncio.sleep(0.05)
        check(not errors, "errors on live connections: %s" % errors[:5])

    await progressed()
    reloads = 0

    async def hup():
        os.kill(srv.pid, signal.SIGHUP)

    # 1. the same file
    await hup()
    reloads += 1
    await wait_log(srv, r"serve: reload %d done" % reloads, 1)
    await progressed()

    # 2. a bad file: refused, the old configuration stays
    write_config(cfg, cert_b, key_b, "key-two", "limits:\n  msg_rate: fast\n")
    await hup()
    await wait_log(srv, r"serve: reload refused: %s:8: limits\.msg_rate: expected a number" % cfg, 1)
    check(await blocking(api_status, port, "key-one") == 200, "the old API key stopped working after a bad reload")
    check(await blocking(api_status, port, "key-two") in (401, 403), "a refused file's API key works")
    check(await blocking(served_fingerprint, port) == fa, "a refused file's certificate is served")
    await progressed()

    # 3. a new certificate and API key
    write_config(cfg, cert_b, key_b, "key-two")
    await hup()
    reloads += 1
    await wait_log(srv, r"serve: reload %d done.*TLS certificates replaced" % reloads, 1)
    for _ in range(4):  # each worker takes it at its next accept: try several handshakes
        check(await blocking(served_fingerprint, port) == fb, "a new handshake after the reload did not get B")
    check(await blocking(api_status, port, "key-two") == 200, "the new API key is refused after the reload")
    check(await blocking(api_status, port, "key-one") in (401, 403), "the old API key still works after the reload")
    # the open connections kept certificate A
    peer = conns[0].transport.get_extra_info("ssl_object")
    check(hashlib.sha256(peer.getpeercert(binary_form=True)).hexdigest() == fa,
          "an open connection's certificate changed")
    fresh = await websockets.connect("wss://127.0.0.1:%d/echo" % port, ssl=client_ctx(), open_timeout=30)
    await fresh.send("fresh")
    check(await asyncio.wait_for(fresh.recv(), 30) == "fresh", "a new connection after the reload is not served")
    await fresh.close()
    await progressed()

    # 4. a key that does not match its certificate: refused, B stays
    write_config(cfg, cert_b, key_a, "key-three")
    await hup()
    await wait_log(srv, r"serve: reload refused: listen\.tls: .*the current configuration stays", 1)
    check(await blocking(served_fingerprint, port) == fb, "a refused certificate replaced B")
    check(await blocking(api_status, port, "key-two") == 200, "a refused reload changed the API key")
    check(await blocking(api_status, port, "key-three") in (401, 403), "a refused reload's API key works")
    await progressed()

    # 5. keys that need a restart: kept, the rest applied
    write_config(cfg, cert_b, key_b, "key-four", "gateway:\n  max_subs: 7\nlisten_port_unused: 0\n")
    await hup()
    await wait_log(srv, r"reload refused: .*listen_port_unused: unknown key", 1)  # unknown keys refuse too
    write_config(cfg, cert_b, key_b, "key-four", "gateway:\n  max_subs: 7\n")
    await hup()
    reloads += 1
    await wait_log(srv, r"serve: reload %d done" % reloads, 1)
    check(srv.lines(r"reload: gateway\.max_subs changed \(100 -> 7\): needs a restart; keeping 100"),
          "no 'needs a restart' line for gateway.max_subs")
    check(await blocking(api_status, port, "key-four") == 200, "the policy part of a restart-needing file not applied")
    await progressed()

    # 6. several in a row
    for _ in range(5):
        await hup()
        reloads += 1
        await wait_log(srv, r"serve: reload %d done" % reloads, 1)
    await progressed()

    metrics = await blocking(get_metrics, port)
    check('duplex_config_reloads_total{result="applied"} %d' % reloads in metrics,
          "duplex_config_reloads_total does not count %d applied reloads:\n%s"
          % (reloads, "\n".join(l for l in metrics.splitlines() if "reload" in l)))
    stop.set()
    await asyncio.gather(*tasks)
    check(not errors, "errors on live connections: %s" % errors[:5])
    total = sum(counts)
    check(min(counts) > 0, "a connection never echoed")
    say("%d connections, %d echoes checked in order, %d reloads, 0 dropped" % (N_CONNS, total, reloads))
    for ws in conns:
        check(ws.open, "a connection was closed during the reloads")
    for ws in conns:
        await ws.close()
    check(not srv.lines(r"AddressSanitizer|LeakSanitizer|ThreadSanitizer|runtime error"), "sanitizer report in the log")
    srv.stop()


def main(binary):
    websockets = need_websockets()
    asyncio.run(main_async(binary, websockets))


if __name__ == "__main__":
    run(main)
