#!/usr/bin/python3
"""permessage-deflate (RFC 7692) against real peers, both roles.

    /usr/bin/python3 deflate_peers.py --duplex BIN [--driver BIN] [--timeout S] [--keep] MODE...

Standard library only; run by /usr/bin/python3 (Debian's websockets for the
peers). The shape of Autobahn's cases 12.* (compressed messages of many
sizes) and 13.* (every parameter combination), with our own peers:

  node     Node `ws` clients (deflate_node_client.mjs), one per offer in
           OFFERS, against `duplex serve` started with each configuration in
           SERVERS (--deflate=PARAMS, --no-deflate);
  python   Python `websockets` clients (deflate_py_client.py), the same matrix;
  client   the duplex client: client_driver --deflate PARAMS (every offer)
           against Node `ws` and Python `websockets` echo servers
           (deflate_echo_server.mjs / .py) with each peer configuration in
           PEER_SERVERS; the negotiated parameters are compared three ways:
           what the model below expects, what dx_conn_deflate() says and what
           the peer server says it accepted ("negotiated?");
  browser  headless Chromium (deflate_browser.mjs) against `duplex serve`:
           Chromium offers "permessage-deflate; client_max_window_bits".

For each offer and configuration the expected answer comes from
`negotiate()`, the negotiation rules of docs/deflate.md; each client checks
the answer it got against it (and the server's log line for the connection
must name the same extension), then echoes text and binary messages of 0, 1,
125, 126, 65536 and 1048575 bytes (compressible and random), fragmented
messages, and checks context takeover from the bytes on the wire. The
servers' /metrics must show compressed messages both ways after the run,
and each server must close a connection with 1001 and exit 0 on SIGTERM.

Ends with "interop-deflate-MODE: N passed, M failed" per mode. Every process
it starts is stopped by PID and dies with the harness (PR_SET_PDEATHSIG).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402  (Results, Server, free_port, stop_servers, _die_with_parent, missing_peers)
from client_peers import run_driver  # noqa: E402

MODES = ("node", "python", "client", "browser")
SNCT, CNCT, SMWB, CMWB = ("server_no_context_takeover", "client_no_context_takeover",
                          "server_max_window_bits", "client_max_window_bits")

# Offers a client makes, in RFC form (True: the parameter without a value).
OFFERS = {
    "default": {CMWB: True},  # what ws and websockets offer by default
    "bare": {},
    "no-context-both": {SNCT: True, CNCT: True},
    "windows-10": {SMWB: 10, CMWB: 10},
    "client-nct-server-9": {CNCT: True, SMWB: 9},
    "windows-15": {SMWB: 15, CMWB: 15},
    "server-nct-client-12": {SNCT: True, CMWB: 12},
    # zlib cannot compress with a window of 8: duplex answers 8 and sends uncompressed
    "server-8": {SMWB: 8, CMWB: True},
}

# `duplex serve` configurations: name -> --deflate PARAMS (None: --no-deflate).
SERVERS = {
    "on": "",
    "nct": "server_no_context_takeover; client_no_context_takeover",
    "windows": "server_max_window_bits=11; client_max_window_bits=12",
    "off": None,
}

# Peer echo servers for the client role: name -> (ws options, websockets factory options).
PEER_SERVERS = {
    "on": ({}, {}),
    "nct": ({"serverNoContextTakeover": True, "clientNoContextTakeover": True},
            {SNCT: True, CNCT: True}),
    "windows": ({"serverMaxWindowBits": 11, "clientMaxWindowBits": 12},
                {SMWB: 11, CMWB: 12}),
}


def parse_params(s):
    """'a; b=10' -> {'a': True, 'b': 10}."""
    out = {}
    for p in (s or "").split(";"):
        p = p.strip()
        if not p or p == "permessage-deflate":
            continue
        k, _, v = p.partition("=")
        out[k.strip()] = int(v) if v else True
    return out


def negotiate(offer, cfg):
    """The response duplex serve gives to `offer` under --deflate=cfg
    (docs/deflate.md, "Negotiation"); None when it declines. `offer` and
    the result are dicts of RFC parameters."""
    if cfg is None:
        return None
    c = parse_params(cfg)
    resp = {}
    if c.get(SNCT) or offer.get(SNCT):
        resp[SNCT] = True
    if c.get(CNCT) or offer.get(CNCT):
        resp[CNCT] = True
    # the server names server_max_window_bits only when the client asked
    # (a smaller window of its own needs no announcement)
    if SMWB in offer:
        resp[SMWB] = min(c.get(SMWB, 15), offer[SMWB])
    # client_max_window_bits only when offered, and only when it limits
    if CMWB in offer:
        lim = min(c.get(CMWB, 15), 15 if offer[CMWB] is True else offer[CMWB])
        if lim < 15:
            resp[CMWB] = lim
    return resp


def negotiate_peer(peer, offer, cfg_name):
    """What a peer server answers to the duplex client's offer, following
    each library's code: ws 8.x PerMessageDeflate.acceptAsServer (an offer
    it cannot meet is refused with HTTP 400: "refused"), websockets 10.x
    ServerPerMessageDeflateFactory.process_request_params."""
    ws_opts, py_opts = PEER_SERVERS[cfg_name]
    offer = dict(offer)
    offer.setdefault(CMWB, True)  # the duplex client always offers client_max_window_bits
    if peer == "node":
        s_opt, c_opt = ws_opts.get("serverMaxWindowBits"), ws_opts.get("clientMaxWindowBits")
        if SMWB in offer and s_opt is not None and s_opt > offer[SMWB]:
            return "refused"
        if c_opt is not None:
            v = offer.get(CMWB)
            if (c_opt > v) if isinstance(v, int) and v is not True else not v:
                return "refused"
        resp = dict(offer)
        if ws_opts.get("serverNoContextTakeover"):
            resp[SNCT] = True
        if ws_opts.get("clientNoContextTakeover"):
            resp[CNCT] = True
        if s_opt is not None:
            resp[SMWB] = s_opt
        if c_opt is not None:
            resp[CMWB] = c_opt
        elif resp.get(CMWB) is True:
            del resp[CMWB]
        return resp
    resp = {}
    if py_opts.get(SNCT) or offer.get(SNCT):
        resp[SNCT] = True
    if py_opts.get(CNCT) or offer.get(CNCT):
        resp[CNCT] = True
    s_cfg, c_cfg = py_opts.get(SMWB), py_opts.get(CMWB)
    smwb = offer.get(SMWB)
    if s_cfg is not None:
        smwb = s_cfg if smwb is None else min(s_cfg, smwb)
    if smwb:
        resp[SMWB] = smwb
    cmwb = offer.get(CMWB)
    if c_cfg is None:
        cmwb = None if cmwb is True else cmwb
    elif cmwb is True:
        cmwb = c_cfg
    elif cmwb is not None:
        cmwb = min(c_cfg, cmwb)
    if cmwb:
        resp[CMWB] = cmwb
    return resp


def ws_options(offer):
    """RFC offer -> ws perMessageDeflate client options (threshold 0: compress all)."""
    o = {"threshold": 0}
    if offer.get(SNCT):
        o["serverNoContextTakeover"] = True
    if offer.get(CNCT):
        o["clientNoContextTakeover"] = True
    if SMWB in offer:
        o["serverMaxWindowBits"] = offer[SMWB]
    if CMWB in offer:
        o["clientMaxWindowBits"] = offer[CMWB]
    else:
        o["clientMaxWindowBits"] = False  # ws offers the bare parameter unless told not to
    return o


def offer_params(offer):
    """RFC offer -> the PARAMS string of --deflate."""
    parts = []
    for k in (SNCT, CNCT, SMWB, CMWB):
        if k in offer:
            parts.append(k if offer[k] is True else f"{k}={offer[k]}")
    return "; ".join(parts)


# ---------------------------------------------------------------- servers

class DuplexServer(harness.Server):
    """duplex serve with a --deflate configuration (plain ws://, 2 workers)."""

    def __init__(self, name, duplex, tmp, cfg, extra=()):
        super().__init__(name, duplex, tmp, False, None, 2 * 1024 * 1024, None)
        self.cfg = cfg
        self.extra = list(extra)

    def argv(self):
        a = super().argv()
        a += ["--no-deflate"] if self.cfg is None else [f"--deflate={self.cfg}"]
        return a + self.extra

    def metrics(self):
        with urllib.request.urlopen(self.base("http") + "/metrics", timeout=5) as r:
            text = r.read().decode(errors="replace")
        out = {}
        for line in text.splitlines():
            m = re.match(r"^(duplex_deflate_[a-z_]*)(\{[^}]*\})?\s+([0-9.eE+-]+)$", line)
            if m:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
        return out


class PeerServer:
    """deflate_echo_server.mjs / .py on a free port."""

    def __init__(self, peer, cfg_name, tmp):
        self.peer, self.cfg_name = peer, cfg_name
        self.name = f"{peer}-{cfg_name}"
        self.log = os.path.join(tmp, f"peer-{self.name}.log")
        self.proc = None
        self.port = None

    def argv(self):
        ws_opts, py_opts = PEER_SERVERS[self.cfg_name]
        if self.peer == "node":
            return [shutil.which("node") or "node", os.path.join(HERE, "deflate_echo_server.mjs"),
                    "--port", str(self.port), "--deflate", json.dumps(ws_opts)]
        return [harness.PYTHON, os.path.join(HERE, "deflate_echo_server.py"), "--port", str(self.port),
                "--deflate", json.dumps(py_opts)]

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
                    if f"listening {self.port}" in f.read():
                        return
                time.sleep(0.05)
            else:
                self.kill()
                raise RuntimeError(f"peer server {self.name}: not listening after {deadline_s}s ({last})")
        raise RuntimeError(f"peer server {self.name}: {last}")

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


# ---------------------------------------------------------------- modes

def check_metrics(srv, res, want_traffic):
    """duplex serve's own view: compressed messages counted both ways
    (/metrics samples the workers' counters every second: poll)."""
    name = (f"{srv.name}: /metrics counts compressed messages both ways" if want_traffic
            else f"{srv.name}: /metrics counts no compressed message (--no-deflate)")
    m, out, inn = {}, 0, 0
    deadline = time.monotonic() + 5
    while True:
        try:
            m = srv.metrics()
        except Exception as e:  # noqa: BLE001
            res.fail(name, f"/metrics: {e}")
            return
        out = m.get('duplex_deflate_messages_total{direction="out"}', 0)
        inn = m.get('duplex_deflate_messages_total{direction="in"}', 0)
        if not want_traffic or (out > 0 and inn > 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print(f"# {srv.name}: deflate metrics {json.dumps(m, sort_keys=True)}", flush=True)
    if want_traffic:
        res.check(out > 0 and inn > 0, name, f"deflate messages out {out}, in {inn} ({sorted(m)})")
    else:
        time.sleep(1.2)  # one more sample
        m = srv.metrics()
        out = m.get('duplex_deflate_messages_total{direction="out"}', 0)
        inn = m.get('duplex_deflate_messages_total{direction="in"}', 0)
        res.check(out == 0 and inn == 0, name, f"deflate messages out {out}, in {inn}")


def check_server_log(srv, offset, want, label, res):
    """Our side of the negotiation: the server logs each open connection
    with the extension it answered (" extensions=..."); the client's
    connection is the only one opened during its run."""
    with open(srv.log, errors="replace") as f:
        f.seek(offset)
        opens = [ln for ln in f.read().splitlines() if " open " in ln and "path=/echo" in ln]
    name = f"{label}: the server's log names the negotiated extension"
    if len(opens) != 1:
        res.fail(name, f"{len(opens)} open lines for one client")
        return
    m = re.search(r" extensions=(.*)$", opens[0])
    got = parse_params(m.group(1)) if m else None
    res.check(got == want, name, f"log says {m.group(1) if m else 'no extension'!r}, expected {want!r}")


def run_serve_mode(mode, a, tmp, res):
    servers = {name: DuplexServer(f"serve-{name}", a.duplex, tmp, cfg) for name, cfg in SERVERS.items()}
    try:
        for s in servers.values():
            s.start()
            res.ok(f"{s.name}: starts ({' '.join(s.argv()[2:])})")
        t = str(int(max(20, a.timeout)))
        for sname, s in servers.items():
            for oname, offer in OFFERS.items():
                want = negotiate(offer, s.cfg)
                label = f"{mode} offer {oname} -> serve {sname}"
                url = s.base("ws") + "/echo"
                expect = "none" if want is None else json.dumps(want)
                log_at = os.path.getsize(s.log)
                if mode == "node":
                    argv = [shutil.which("node") or "node", os.path.join(HERE, "deflate_node_client.mjs"),
                            "--url", url, "--label", label, "--offer", json.dumps(ws_options(offer)),
                            "--expect", expect]
                else:
                    argv = [harness.PYTHON, os.path.join(HERE, "deflate_py_client.py"), "--url", url,
                            "--label", label, "--offer", json.dumps(offer), "--expect", expect]
                run_driver(argv, float(t), res)
                check_server_log(s, log_at, want, label, res)
        for sname, s in servers.items():
            check_metrics(s, res, SERVERS[sname] is not None)
        harness.stop_servers(list(servers.values()), res)
    finally:
        for s in servers.values():
            s.kill()
        if res.failed:
            for s in servers.values():
                print(f"---- server {s.name} log (last lines) ----\n{s.log_tail()}", end="")


def run_client_mode(a, tmp, res):
    if not a.driver or not os.access(a.driver, os.X_OK):
        res.fail("client_driver", f"not found or not executable: {a.driver!r}")
        return
    peers = []
    try:
        for peer in ("node", "python"):
            for cfg_name in PEER_SERVERS:
                ps = PeerServer(peer, cfg_name, tmp)
                peers.append(ps)
                ps.start()
                res.ok(f"{ps.name}: echo server listens ({ps.port})")
                for oname, offer in OFFERS.items():
                    if offer.get(SMWB) == 8:
                        continue  # zlib (under ws and websockets alike) cannot compress with a window of 8
                    want = negotiate_peer(peer, offer, cfg_name)
                    label = f"client offer {oname} -> {ps.name}"
                    argv = [a.driver, "echo", f"ws://127.0.0.1:{ps.port}/", "--label", label,
                            "--timeout", str(int(max(20, a.timeout - 10))), "--deflate", offer_params(offer)]
                    if want == "refused":
                        argv += ["--expect-deflate", "refused"]
                    else:
                        argv += ["--expect-deflate", offer_params(want) or "on"]
                    run_driver(argv, a.timeout, res)
                ps.kill()
    finally:
        for ps in peers:
            ps.kill()
        if res.failed:
            for ps in peers:
                print(f"---- peer {ps.name} log (last lines) ----\n{ps.log_tail()}", end="")


def run_browser_mode(a, tmp, res):
    srv = DuplexServer("serve-on", a.duplex, tmp, "")
    try:
        srv.start()
        res.ok(f"{srv.name}: starts ({' '.join(srv.argv()[2:])})")
        env = dict(os.environ, DX_WS_URL=srv.base("ws") + "/echo", DX_HTTP_URL=srv.base("http"),
                   DX_TMP=tmp, DX_CHROMIUM=harness.CHROMIUM, NODE_PATH=os.path.join(HERE, "node_modules"),
                   PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1",
                   DX_EXPECT=json.dumps(negotiate({CMWB: True}, "")))
        argv = [shutil.which("node") or "node", os.path.join(HERE, "deflate_browser.mjs"), "--label", "chromium"]
        print(f"# {' '.join(argv)}", flush=True)
        try:
            p = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=a.timeout, start_new_session=True, preexec_fn=harness._die_with_parent)
            out = p.stdout
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            res.fail("chromium", f"timed out after {a.timeout}s")
        plan = seen = 0
        for line in out.splitlines():
            if line.startswith("plan "):
                plan = int(line.split()[1])
            elif line.startswith("ok - "):
                seen += 1
                res.ok(line[5:])
            elif line.startswith("not ok - "):
                seen += 1
                name, _, why = line[9:].partition(": ")
                res.fail(name, why or "failed")
            else:
                print(f"  {line}", flush=True)
        if not plan or seen != plan:
            res.fail("chromium", f"ran {seen} of {plan} planned cases")
        check_metrics(srv, res, True)
        harness.stop_servers([srv], res)
    finally:
        srv.kill()
        if res.failed:
            print(f"---- server {srv.name} log (last lines) ----\n{srv.log_tail()}", end="")


def main():
    ap = argparse.ArgumentParser(description="permessage-deflate against real peers, both roles")
    ap.add_argument("--duplex", default=os.environ.get("DUPLEX"), help="the duplex binary")
    ap.add_argument("--driver", help="the client_driver binary (mode client)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per client run (default 60)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server logs)")
    ap.add_argument("modes", nargs="+", choices=MODES)
    a = ap.parse_args()
    status = 0
    for mode in a.modes:
        tag = f"interop-deflate-{mode}"
        res = harness.Results()
        if mode != "client" and (not a.duplex or not os.access(a.duplex, os.X_OK)):
            res.fail("duplex binary", f"not found or not executable: {a.duplex!r}")
        needs = {"node": ["node"], "python": ["python"], "client": ["node", "python"], "browser": ["browser"]}[mode]
        for n in needs:
            for what, how in harness.missing_peers(n):
                res.fail(f"{n}: peer missing", f"{what} (install: {how})")
        tmp = tempfile.mkdtemp(prefix=f"dx-{tag}-")
        if not res.failed:
            try:
                if mode in ("node", "python"):
                    run_serve_mode(mode, a, tmp, res)
                elif mode == "client":
                    run_client_mode(a, tmp, res)
                else:
                    run_browser_mode(a, tmp, res)
            except Exception as e:  # noqa: BLE001 - any harness error is a loud failure
                res.fail("harness", f"{type(e).__name__}: {e}")
        for f in res.failed:
            print(f"FAILED: {f}")
        print(f"{tag}: {res.passed} passed, {len(res.failed)} failed", flush=True)
        if a.keep or res.failed:
            print(f"# kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        if res.failed or not res.passed:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
