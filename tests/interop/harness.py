#!/usr/bin/python3
"""Interop harness: runs one peer's tests against real `duplex serve` processes.

Run through run.sh (which documents the usage). Standard library only, and
run by /usr/bin/python3 so that Debian's packages are the ones in reach.

For one peer (node, python or browser) it:
  1. checks that the peer is installed, and fails loudly if not (never skips);
  2. makes a throwaway test CA and a server certificate for 127.0.0.1 and
     localhost (subjectAltName) with openssl, in a temp dir;
  3. starts four servers on free loopback ports, each its own process:
       big       ws://   --max-message BIG (16 MiB + 64 KiB), --static browser/
       big-tls   wss://  same, with the test certificate
       small     ws://   --max-message SMALL (1 MiB)
       small-tls wss://  same, with the test certificate
     and waits for each /healthz to answer 200 "ok" (over TLS, verified
     against the test CA);
  4. runs the peer's client with the URLs in its environment, relaying its
     "ok - NAME" / "not ok - NAME: WHY" lines (first line "plan N");
  5. opens a raw WebSocket to each server, stops every server by PID with
     SIGTERM, and checks that each connection gets close 1001 and each server
     exits 0;
  6. prints every failure, the server logs when something failed, and ends
     with the line "interop-PEER: N passed, M failed".

Invariants: every process it starts is stopped by its PID (or its own
process group, for a client) before it returns, and dies with the harness if
the harness is killed (PR_SET_PDEATHSIG); everything is bounded in time.
"""

import argparse
import base64
import ctypes
import hashlib
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = ("node", "python", "browser")
# 16 MiB messages must pass; the margin keeps permessage-deflate overhead on
# incompressible data from turning them into a limit test (the small server is that).
BIG = 16 * 1024 * 1024 + 65536
SMALL = 1024 * 1024
CHROMIUM = "/usr/bin/chromium"
PYTHON = "/usr/bin/python3"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    # PR_SET_PDEATHSIG = 1: the child gets SIGKILL when the harness dies,
    # even by SIGKILL (as when ctest's timeout fires).
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = []

    def ok(self, name):
        self.passed += 1
        print(f"ok - {name}", flush=True)

    def fail(self, name, why):
        self.failed.append(f"{name}: {why}")
        print(f"not ok - {name}: {why}", flush=True)

    def check(self, cond, name, why):
        if cond:
            self.ok(name)
        else:
            self.fail(name, why)
        return cond


# ---------------------------------------------------------------- peers

def missing_peers(peer):
    """Returns a list of (what is missing, how to install it)."""
    out = []
    if not shutil.which("openssl"):
        out.append(("openssl", "apt-get install openssl"))
    if peer in ("node", "browser"):
        node = shutil.which("node")
        if not node:
            out.append(("node (Node.js >= 18)", "apt-get install nodejs npm"))
        else:
            v = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
            try:
                major = int(v.lstrip("v").split(".")[0])
            except ValueError:
                major = 0
            if major < 18:  # Debian 12's nodejs; package.json's engines say the same
                out.append((f"Node.js >= 18 (found {v})", "apt-get install nodejs (Debian 12: 18)"))
        mod = "ws" if peer == "node" else "playwright-core"
        if not os.path.isfile(os.path.join(HERE, "node_modules", mod, "package.json")):
            out.append((f"npm package {mod} in tests/interop/node_modules",
                        "cd tests/interop && npm ci"))
    if peer == "python":
        r = subprocess.run([PYTHON, "-c", "import websockets; print(websockets.__version__)"],
                           capture_output=True, text=True) if os.path.exists(PYTHON) else None
        if r is None or r.returncode != 0:
            out.append(("python websockets for /usr/bin/python3", "apt-get install python3-websockets"))
    if peer == "browser" and not os.access(CHROMIUM, os.X_OK):
        out.append((CHROMIUM, "apt-get install chromium"))
    return out


# ---------------------------------------------------------------- certificates

def openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


def make_certs(d):
    """Test CA + server certificate (P-256) for 127.0.0.1 and localhost."""
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n"
                "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=duplex interop test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext", cwd=d)
    # SPKI hash for Chromium's --ignore-certificate-errors-spki-list.
    der = subprocess.run(["openssl", "x509", "-in", "server.pem", "-noout", "-pubkey"], cwd=d,
                         capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=der,
                         capture_output=True, check=True).stdout
    spki = base64.b64encode(hashlib.sha256(der).digest()).decode()
    return {"ca": os.path.join(d, "ca.pem"), "cert": os.path.join(d, "server.pem"),
            "key": os.path.join(d, "server.key"), "spki": spki}


# ---------------------------------------------------------------- servers

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name, duplex, tmp, tls, certs, max_message, static):
        self.name, self.tls, self.certs = name, tls, certs
        self.duplex, self.tmp, self.max_message, self.static = duplex, tmp, max_message, static
        self.proc = None
        self.port = None
        self.log = os.path.join(tmp, f"server-{name}.log")

    def argv(self):
        a = [self.duplex, "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "2", "--max-message", str(self.max_message)]
        if self.tls:
            a += ["--tls-cert", self.certs["cert"], "--tls-key", self.certs["key"]]
        if self.static:
            a += ["--static", self.static]
        return a

    def base(self, scheme):
        s = scheme + ("s" if self.tls else "")
        return f"{s}://127.0.0.1:{self.port}"

    def ssl_context(self):
        return ssl.create_default_context(cafile=self.certs["ca"]) if self.tls else None

    def healthz(self):
        with urllib.request.urlopen(self.base("http") + "/healthz", timeout=2,
                                    context=self.ssl_context()) as r:
            return r.status, r.read().decode(errors="replace").strip()

    def start(self, deadline_s=15.0):
        """Starts on a free port; retries a new port if the process dies early."""
        last = "not started"
        for _attempt in range(3):
            self.port = free_port()
            with open(self.log, "ab") as log:
                log.write(f"== {' '.join(self.argv())}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=log, preexec_fn=_die_with_parent)
            end = time.monotonic() + deadline_s
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    last = f"exited with {self.proc.returncode} before answering /healthz"
                    break
                try:
                    status, body = self.healthz()
                    if status == 200 and body == "ok":
                        return
                    last = f"/healthz answered {status} {body!r}"
                except (OSError, ssl.SSLError) as e:
                    last = f"/healthz: {e}"
                time.sleep(0.1)
            else:
                self.kill()
                raise RuntimeError(f"server {self.name}: no healthy /healthz in {deadline_s}s ({last})")
        raise RuntimeError(f"server {self.name}: {last}")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_tail(self, n=40):
        try:
            with open(self.log, errors="replace") as f:
                lines = f.readlines()
        except OSError:
            return "(no log)"
        return "".join(lines[-n:])


# ---------------------------------------------------------------- raw WebSocket (shutdown check)

def raw_ws_open(srv, timeout=5.0):
    """A minimal RFC 6455 client handshake on a plain or TLS socket."""
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
    if srv.tls:
        sock = srv.ssl_context().wrap_socket(sock, server_hostname="127.0.0.1")
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("connection closed during the handshake")
        buf += chunk
        if len(buf) > 16384:
            raise RuntimeError("handshake response too long")
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 101"):
        raise RuntimeError(f"handshake answered {lines[0]!r}")
    want = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
    hdrs = {ln.split(":", 1)[0].strip().lower(): ln.split(":", 1)[1].strip() for ln in lines[1:] if ":" in ln}
    if hdrs.get("sec-websocket-accept") != want:
        raise RuntimeError(f"bad Sec-WebSocket-Accept {hdrs.get('sec-websocket-accept')!r}")
    return sock, rest


def raw_ws_read_close(sock, buf, timeout):
    """Reads frames until a close frame; returns its code (None if empty)."""
    sock.settimeout(timeout)

    def need(n):
        nonlocal buf
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed without a close frame")
            buf += chunk

    while True:
        need(2)
        op, ln = buf[0] & 0x0F, buf[1] & 0x7F
        hl = 2
        if ln == 126:
            need(4)
            ln, hl = struct.unpack(">H", buf[2:4])[0], 4
        elif ln == 127:
            need(10)
            ln, hl = struct.unpack(">Q", buf[2:10])[0], 10
        if buf[1] & 0x80:
            raise RuntimeError("server frame is masked")
        need(hl + ln)
        payload, buf = buf[hl:hl + ln], buf[hl + ln:]
        if op == 0x8:
            return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None


def raw_ws_send_close(sock, code):
    mask = os.urandom(4)
    payload = struct.pack(">H", code)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    try:
        sock.sendall(bytes([0x88, 0x80 | len(payload)]) + mask + masked)
    except OSError:
        pass


def stop_servers(servers, res):
    """SIGTERM each server by PID; each open connection must get close 1001; exit 0."""
    conns = {}
    for s in servers:
        if s.proc is None or s.proc.poll() is not None:
            continue
        try:
            conns[s.name] = raw_ws_open(s)
        except Exception as e:  # noqa: BLE001 - reported as a failed case
            res.fail(f"{s.name}: raw WebSocket before shutdown", str(e))
    for s in servers:
        if s.proc is not None and s.proc.poll() is None:
            os.kill(s.proc.pid, signal.SIGTERM)
    for s in servers:
        if s.name in conns:
            sock, rest = conns[s.name]
            try:
                code = raw_ws_read_close(sock, rest, 10.0)
                res.check(code == 1001, f"{s.name}: SIGTERM sends close 1001", f"got close {code}")
                raw_ws_send_close(sock, 1001)
            except Exception as e:  # noqa: BLE001
                res.fail(f"{s.name}: SIGTERM sends close 1001", str(e))
            finally:
                sock.close()
    for s in servers:
        if s.proc is None:
            continue
        try:
            rc = s.proc.wait(timeout=10)
            res.check(rc == 0, f"{s.name}: exits 0 on SIGTERM", f"exit status {rc}")
        except subprocess.TimeoutExpired:
            s.kill()
            res.fail(f"{s.name}: exits 0 on SIGTERM", "still running 10 s after SIGTERM (killed)")


# ---------------------------------------------------------------- clients

def client_argv(peer):
    if peer == "node":
        return [shutil.which("node") or "node", os.path.join(HERE, "node_client.mjs")]
    if peer == "python":
        return [PYTHON, os.path.join(HERE, "py_client.py")]
    return [shutil.which("node") or "node", os.path.join(HERE, "browser_client.mjs")]


def run_client(peer, env, timeout, res):
    """Runs the client in its own process group; relays and counts its lines."""
    argv = client_argv(peer)
    print(f"# client: {' '.join(argv)}", flush=True)
    p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True,
                         preexec_fn=_die_with_parent)
    plan = None
    seen = 0
    failed = 0
    deadline = time.monotonic() + timeout
    timed_out = False

    def on_alarm(_sig, _frm):
        raise TimeoutError

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, deadline - time.monotonic()))
    try:
        for line in p.stdout:
            line = line.rstrip("\n")
            if line.startswith("plan "):
                plan = int(line.split()[1])
            elif line.startswith("ok - "):
                seen += 1
                res.ok(line[5:])
            elif line.startswith("not ok - "):
                seen += 1
                failed += 1
                name, _, why = line[9:].partition(": ")
                res.fail(name, why or "failed")
            else:
                print(f"  {line}", flush=True)
        p.wait()
    except TimeoutError:
        timed_out = True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)  # the client's own group (it and its browser)
            p.wait()
    if timed_out:
        res.fail(f"{peer} client", f"timed out after {timeout}s")
    elif p.returncode != 0 and failed == 0:
        res.fail(f"{peer} client", f"exited with status {p.returncode}")
    if plan is None:
        res.fail(f"{peer} client", "printed no plan (did it start?)")
    elif seen != plan:
        res.fail(f"{peer} client", f"ran {seen} of {plan} planned cases")


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(prog="run.sh", description="duplex interop tests against a real peer")
    ap.add_argument("--duplex", default=os.environ.get("DUPLEX"), help="the duplex binary")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds for the client (default 240)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (certs, server logs)")
    ap.add_argument("peer", choices=PEERS)
    a = ap.parse_args()
    tag = f"interop-{a.peer}"
    res = Results()

    def summary():
        for f in res.failed:
            print(f"FAILED: {f}")
        print(f"{tag}: {res.passed} passed, {len(res.failed)} failed", flush=True)
        return 0 if not res.failed and res.passed > 0 else 1

    if not a.duplex or not os.access(a.duplex, os.X_OK):
        res.fail("duplex binary", f"not found or not executable: {a.duplex!r} (build target duplex, "
                 "or pass --duplex / set DUPLEX)")
        return summary()
    missing = missing_peers(a.peer)
    for what, how in missing:
        res.fail("peer missing", f"{what} (install: {how})")
    if missing:
        return summary()

    tmp = tempfile.mkdtemp(prefix=f"dx-{tag}-")
    servers = []
    try:
        certs = make_certs(tmp)
        static = os.path.join(HERE, "browser")
        servers = [Server("big", a.duplex, tmp, False, certs, BIG, static),
                   Server("big-tls", a.duplex, tmp, True, certs, BIG, static),
                   Server("small", a.duplex, tmp, False, certs, SMALL, None),
                   Server("small-tls", a.duplex, tmp, True, certs, SMALL, None)]
        print(f"# {tag}: duplex={a.duplex} tmp={tmp}", flush=True)
        for s in servers:
            s.start()
            res.ok(f"{s.name}: starts, /healthz answers 200 ok ({s.base('ws')})")
        env = dict(os.environ)
        env.update({
            "DX_WS_URL": servers[0].base("ws") + "/echo",
            "DX_WSS_URL": servers[1].base("ws") + "/echo",
            "DX_WS_SMALL_URL": servers[2].base("ws") + "/echo",
            "DX_WSS_SMALL_URL": servers[3].base("ws") + "/echo",
            "DX_HTTP_URL": servers[0].base("http"),
            "DX_HTTPS_URL": servers[1].base("http"),
            "DX_BIG_LIMIT": str(BIG),
            "DX_SMALL_LIMIT": str(SMALL),
            "DX_CA_FILE": certs["ca"],
            "DX_SPKI": certs["spki"],
            "DX_TMP": tmp,
            "DX_CHROMIUM": CHROMIUM,
            "NODE_PATH": os.path.join(HERE, "node_modules"),
            "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
        })
        run_client(a.peer, env, a.timeout, res)
        stop_servers(servers, res)
    except Exception as e:  # noqa: BLE001 - any harness error is a loud failure
        res.fail("harness", f"{type(e).__name__}: {e}")
    finally:
        for s in servers:
            s.kill()
        if res.failed:
            for s in servers:
                print(f"---- server {s.name} log (last lines) ----\n{s.log_tail()}", end="")
        if a.keep or res.failed:
            print(f"# kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return summary()


if __name__ == "__main__":
    sys.exit(main())
