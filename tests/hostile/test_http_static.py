"""
Static files under load (issue 7, item 5): `duplex serve --static DIR` with a
16 MiB file, over plain TCP (sendfile) and over TLS (the file read a 16 KiB
piece at a time: TLS has no sendfile).

For each transport:
  - a GET returns exactly the file's bytes (sha256), with http.client;
  - HEAD returns its Content-Length and no body, and the server reads no
    file bytes for it (/proc/PID/io rchar grows by less than 64 KiB);
  - 16 clients GET the file and never read past the response head: once
    the server stops making progress (its write counter /proc/PID/io wchar
    is stable), its RSS must have grown by less than 16 x send_max (1 MiB)
    + 8 MiB (before the streaming rewrite: +235 MB); a normal client gets
    the file (sha256) meanwhile, and keep-alive serves a second request on
    its connection;
  - 200 pipelined requests in one write (GET /healthz, HEAD and GET of a
    small file, the last with Connection: close) are all answered, in
    order, then the server closes.
"""
import hashlib
import http.client
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time

from hostile import Fail, Server, check, check_rss, run, say

SIZE = 16 << 20
SLOW = 16
RSS_BOUND_KIB = SLOW * 1024 + 8 * 1024


def proc_io(pid, key):
    with open("/proc/%d/io" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise Fail("no %s in /proc/%d/io" % (key, pid))


def make_cert(d):
    crt, key = os.path.join(d, "srv.crt"), os.path.join(d, "srv.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return crt, key


def client_ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def conn(port, tls):
    if tls:
        return http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=client_ctx())
    return http.client.HTTPConnection("127.0.0.1", port, timeout=30)


def get_sha(port, tls, path="/big.bin", srv=None):
    c = conn(port, tls)
    c.request("GET", path)
    r = c.getresponse()
    check(r.status == 200, "GET %s: status %d" % (path, r.status))
    h = hashlib.sha256()
    n = 0
    while True:
        b = r.read(1 << 20)
        if not b:
            break
        h.update(b)
        n += len(b)
    # keep-alive: a second request on the same connection
    c.request("HEAD", path)
    r2 = c.getresponse()
    check(r2.status == 200 and r2.read() == b"", "HEAD after GET on a kept-alive connection failed")
    if srv:
        # the kept-alive connection, idle after 16 MiB: the server must sleep
        # (a write interest left on would spin: ~1 s of CPU per second)
        cpu0, t0 = srv.cpu_s(), time.monotonic()
        time.sleep(1.0)
        cpu = srv.cpu_s() - cpu0
        say("idle kept-alive connection: server CPU %.3f s over %.1f s" % (cpu, time.monotonic() - t0))
        check(cpu < 0.25, "server busy (%.2f s CPU in 1 s) with an idle kept-alive connection" % cpu)
    c.close()
    return h.hexdigest(), n


def slow_client(port, tls):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    if tls:
        s = client_ctx().wrap_socket(s)
    s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got:
        d = s.recv(1024)
        check(d, "slow client: EOF before the response head")
        got += d
    check(got.startswith(b"HTTP/1.1 200"), "slow client: %r" % got[:40])
    return s


def pipelined(port, tls, n=200):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    if tls:
        s = client_ctx().wrap_socket(s)
    reqs, want = [], []
    for i in range(n):
        last = "Connection: close\r\n" if i == n - 1 else ""
        if i % 3 == 0:
            reqs.append("GET /healthz?%d HTTP/1.1\r\nHost: x\r\n%s\r\n" % (i, last))
            want.append(b"ok\n")
        elif i % 3 == 1:
            reqs.append("HEAD /small.txt HTTP/1.1\r\nHost: x\r\n%s\r\n" % last)
            want.append(b"")
        else:
            reqs.append("GET /small.txt HTTP/1.1\r\nHost: x\r\n%s\r\n" % last)
            want.append(b"small %d\n" % 7)
    s.sendall("".join(reqs).encode())
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    got = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        check(sep and head.startswith(b"HTTP/1.1 200"), "pipelined: bad response %r" % data[:80])
        length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
        blen = 0 if want[len(got)] == b"" and len(got) % 3 == 1 else length
        got.append(rest[:blen])
        data = rest[blen:]
    check(got == want, "pipelined over %s: %d answers, first difference at %s"
          % ("TLS" if tls else "TCP", len(got),
             next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))))


def one(binary, d, sha, tls):
    name = "TLS" if tls else "TCP"
    args = ["--static", d, "--close-timeout", "60s"]
    if tls:
        crt, key = make_cert(d)
        args += ["--tls-cert", crt, "--tls-key", key]
    srv = Server(binary, *args)
    try:
        got, n = get_sha(srv.port, tls, srv=srv)
        check(n == SIZE and got == sha, "%s GET: %d bytes, sha %s, want %d bytes %s" % (name, n, got, SIZE, sha))
        say("%s: GET of %d bytes matches sha256" % (name, SIZE))
        pipelined(srv.port, tls)
        say("%s: 200 pipelined requests answered in order" % name)

        r0 = proc_io(srv.pid, "rchar")
        c = conn(srv.port, tls)
        c.request("HEAD", "/big.bin")
        r = c.getresponse()
        body = r.read()
        c.close()
        r1 = proc_io(srv.pid, "rchar")
        check(r.status == 200 and body == b"" and int(r.getheader("Content-Length")) == SIZE,
              "%s HEAD: status %d, %d body bytes, length %s" % (name, r.status, len(body),
                                                                  r.getheader("Content-Length")))
        say("%s: HEAD: server read %d bytes meanwhile" % (name, r1 - r0))
        check(r1 - r0 < 64 * 1024, "%s HEAD read %d bytes: the file was read" % (name, r1 - r0))

        rss0 = srv.rss_kib()
        slow = [slow_client(srv.port, tls) for _ in range(SLOW)]
        # until the server stops writing: every slow socket is full
        deadline = time.monotonic() + 60
        last, stable, peak = -1, 0, rss0
        while stable < 10:
            check(time.monotonic() < deadline, "%s: the server kept writing for 60 s" % name)
            time.sleep(0.05)
            w = proc_io(srv.pid, "wchar")
            stable = stable + 1 if w == last else 0
            last = w
            peak = max(peak, srv.rss_kib())
        rss1 = srv.rss_kib()
        peak = max(peak, rss1)
        say("%s: %d slow GETs of %d MiB: RSS %d KiB before, %d KiB after, peak %d KiB (+%d KiB; bound %d KiB)"
            % (name, SLOW, SIZE >> 20, rss0, rss1, peak, peak - rss0, RSS_BOUND_KIB))
        check_rss(peak - rss0 < RSS_BOUND_KIB, "%s: RSS grew by %d KiB with %d slow GETs" % (name, peak - rss0, SLOW))
        got, n = get_sha(srv.port, tls)
        check(n == SIZE and got == sha, "%s GET among slow readers: %d bytes, sha %s" % (name, n, got))
        say("%s: a GET among the slow readers matches sha256" % name)
        for s in slow:
            s.close()
        srv.stop()
    finally:
        srv.cleanup()


def main(binary):
    d = tempfile.mkdtemp(prefix="dx-static-")
    try:
        data = os.urandom(SIZE)
        sha = hashlib.sha256(data).hexdigest()
        with open(os.path.join(d, "big.bin"), "wb") as f:
            f.write(data)
        with open(os.path.join(d, "small.txt"), "wb") as f:
            f.write(b"small 7\n")
        del data
        one(binary, d, sha, tls=False)
        one(binary, d, sha, tls=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    run(main)
