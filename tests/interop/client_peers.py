#!/usr/bin/python3
"""Interop harness for the duplex *client*: client_driver against real echo servers.

    /usr/bin/python3 client_peers.py --driver BIN [--timeout S] [--keep] [node] [python]

Standard library only; run by /usr/bin/python3 so that Debian's websockets is
in reach. For each peer (default: both):
  1. checks the peer is installed, and fails loudly if not (never skips);
  2. makes a throwaway test CA and a server certificate naming only
     DNS:localhost (so that connecting to 127.0.0.1 is a name mismatch);
  3. starts the peer's echo server twice on free loopback ports, plain and
     TLS (client_echo_server.mjs for Node `ws`, client_echo_server.py for
     Python `websockets`), each its own process, and waits for "listening";
  4. runs client_driver:
       echo  ws://127.0.0.1:P/              text+binary 0..4 MiB, ping, close 4001
       echo  wss://localhost:PT/ --ca CA    the same over TLS, verified
       error wss://localhost:PT/            no CA file: unknown CA → DX_ETLS
       error wss://127.0.0.1:PT/ --ca CA    cert names only localhost → DX_ETLS
     relaying its "ok - ..." / "not ok - ..." lines and checking its plan;
  5. stops every server by PID and ends with "interop-client: N passed, M failed".
Every process it starts is stopped by PID and dies with the harness
(PR_SET_PDEATHSIG); everything is bounded in time.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402  (Results, openssl, free_port, _die_with_parent, missing_peers)

PEERS = ("node", "python")
DX_ETLS = -22


def make_certs(d):
    """Test CA + a server certificate for DNS:localhost only."""
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n"
                "subjectAltName=DNS:localhost\n")
    harness.openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=duplex client test CA",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    harness.openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    harness.openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                    "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext", cwd=d)
    return {"ca": os.path.join(d, "ca.pem"), "cert": os.path.join(d, "server.pem"),
            "key": os.path.join(d, "server.key")}


class EchoServer:
    def __init__(self, peer, tls, certs, tmp):
        self.peer, self.tls, self.certs = peer, tls, certs
        self.name = f"{peer}-{'wss' if tls else 'ws'}"
        self.log = os.path.join(tmp, f"server-{self.name}.log")
        self.proc = None
        self.port = None

    def argv(self):
        if self.peer == "node":
            a = [shutil.which("node") or "node", os.path.join(HERE, "client_echo_server.mjs")]
        else:
            a = [harness.PYTHON, os.path.join(HERE, "client_echo_server.py")]
        a += ["--port", str(self.port)]
        if self.tls:
            a += ["--tls-cert", self.certs["cert"], "--tls-key", self.certs["key"]]
        return a

    def start(self, deadline_s=15.0):
        last = "not started"
        for _attempt in range(3):
            self.port = harness.free_port()
            with open(self.log, "ab") as log:
                log.write(f"== {' '.join(self.argv())}\n".encode())
                log.flush()
                env = dict(os.environ, NODE_PATH=os.path.join(HERE, "node_modules"))
                self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             env=env, cwd=HERE, preexec_fn=harness._die_with_parent)
            end = time.monotonic() + deadline_s
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    last = f"exited with {self.proc.returncode}"
                    break
                with open(self.log, errors="replace") as f:
                    ready = f"listening {self.port}" in f.read()
                if ready:
                    try:
                        socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
                        return
                    except OSError as e:
                        last = str(e)
                time.sleep(0.05)
            else:
                self.kill()
                raise RuntimeError(f"server {self.name}: not listening after {deadline_s}s ({last})")
        raise RuntimeError(f"server {self.name}: {last}")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log_tail(self, n=30):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no log)"


def run_driver(argv, timeout, res):
    """Runs client_driver; relays and counts its lines; checks its plan."""
    print(f"# {' '.join(argv)}", flush=True)
    label = argv[argv.index("--label") + 1] if "--label" in argv else argv[1]
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout, preexec_fn=harness._die_with_parent)
    except subprocess.TimeoutExpired:
        res.fail(f"{label}: client_driver", f"timed out after {timeout}s")
        return
    plan, seen, failed = None, 0, 0
    for line in p.stdout.splitlines():
        if line.startswith("plan "):
            plan = int(line.split()[1])
        elif line.startswith("ok - "):
            seen += 1
            res.ok(line[5:])
        elif line.startswith("not ok - "):
            seen += 1
            failed += 1
            name, _, why = line[9:].rpartition(": ")
            res.fail(name or line[9:], why or "failed")
        else:
            print(f"  {line}", flush=True)
    for line in p.stderr.splitlines()[-20:]:
        print(f"  stderr: {line}", flush=True)
    if p.returncode != 0 and failed == 0:
        res.fail(f"{label}: client_driver", f"exited with status {p.returncode}")
    if plan is None:
        res.fail(f"{label}: client_driver", "printed no plan (did it start?)")
    elif seen != plan:
        res.fail(f"{label}: client_driver", f"ran {seen} of {plan} planned cases")


def main():
    ap = argparse.ArgumentParser(description="duplex client interop tests against real echo servers")
    ap.add_argument("--driver", required=True, help="the client_driver binary")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per client_driver run (default 60)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (certs, server logs)")
    ap.add_argument("peers", nargs="*", help="node, python (default: both)")
    a = ap.parse_args()
    peers = a.peers or list(PEERS)
    for p in peers:
        if p not in PEERS:
            ap.error(f"unknown peer {p!r} (choose from {', '.join(PEERS)})")
    tag = "interop-client"
    res = harness.Results()

    def summary():
        for f in res.failed:
            print(f"FAILED: {f}")
        print(f"{tag}: {res.passed} passed, {len(res.failed)} failed", flush=True)
        return 0 if not res.failed and res.passed > 0 else 1

    if not os.access(a.driver, os.X_OK):
        res.fail("client_driver", f"not found or not executable: {a.driver!r}")
        return summary()
    for peer in peers:
        for what, how in harness.missing_peers(peer):
            res.fail(f"{peer}: peer missing", f"{what} (install: {how})")
    if res.failed:
        return summary()

    tmp = tempfile.mkdtemp(prefix=f"dx-{tag}-")
    servers = []
    try:
        certs = make_certs(tmp)
        drv_timeout = str(int(max(10, a.timeout - 10)))
        for peer in peers:
            plain = EchoServer(peer, False, certs, tmp)
            tls = EchoServer(peer, True, certs, tmp)
            servers += [plain, tls]
            plain.start()
            tls.start()
            res.ok(f"{peer}: echo servers listen (ws {plain.port}, wss {tls.port})")
            d = [a.driver]
            run_driver(d + ["echo", f"ws://127.0.0.1:{plain.port}/", "--label", f"{peer} ws",
                            "--timeout", drv_timeout], a.timeout, res)
            run_driver(d + ["echo", f"wss://localhost:{tls.port}/", "--ca", certs["ca"], "--label",
                            f"{peer} wss", "--timeout", drv_timeout], a.timeout, res)
            run_driver(d + ["error", f"wss://localhost:{tls.port}/", "--want", "certificate verify failed",
                            "--err", str(DX_ETLS), "--label", f"{peer} wss unknown CA",
                            "--timeout", drv_timeout], a.timeout, res)
            run_driver(d + ["error", f"wss://127.0.0.1:{tls.port}/", "--ca", certs["ca"], "--want",
                            "certificate verify failed", "--err", str(DX_ETLS), "--label",
                            f"{peer} wss wrong host", "--timeout", drv_timeout], a.timeout, res)
            for s in (plain, tls):
                s.kill()
                res.check(s.proc.returncode is not None, f"{s.name}: stopped", "still running")
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
