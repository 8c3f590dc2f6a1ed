"""
tests/cli/test_pubsub.py: `duplex pub` and `duplex sub` (issue 9) against a
real `duplex serve --api-key KEY --workers 2` (the gateway), and `pub`'s
HTTP client against a Python HTTP/1.1 stand-in that records what it gets:

  - pub over HTTP (arguments, stdin lines) and over the JSON dialect prints
    `TOPIC OFFSET EPOCH` per message, offsets 1, 2, 3...; sub prints each as
    `TOPIC OFFSET DATA` (text as is, json compact, binary b64:) or --json;
  - kinds: text, json, binary both ways, checked through /api/history;
  - --since TOPIC:OFFSET:EPOCH resumes (recovered, exactly the missed
    messages, then live); another epoch is not recovered (live only);
  - patterns (`*`, `>`) with the delivered topic printed;
  - errors: a wrong or missing key (401), a bad topic over HTTP (400) and
    over the WebSocket (err 4400), sub to a bad topic, nothing listening,
    the server stopping (sub prints the close code, exit 1); usage (exit 2);
  - sub --count, --timeout (with and without --count), SIGINT (exit 0);
  - https:// and wss:// with --ca (by address and by name), -k, and without
    a CA (the verification failure named, exit 1);
  - the HTTP client: one keep-alive connection for many messages, the
    Content-Type of each kind, the Bearer key, a kept-alive connection the
    server dropped while idle is replaced (no message lost or doubled),
    `Connection: close` honoured, a chunked answer read, a 429 retried
    after its Retry-After.
"""
import base64
import http.server as httpserver
import json
import os
import shutil
import signal
import socketserver
import subprocess
import tempfile
import threading
import time
import urllib.request

import clitest
from clitest import Fail, Serve, check, main, say

KEY = "cli-test-key-7f3a"
_server = None


def server():
    """One gateway for the tests that only need one (fresh topics per test)."""
    global _server
    if _server is None or _server.proc.poll() is not None:
        _server = Serve("--workers", "2", "--api-key", KEY)
    return _server


def ws(s):
    return "ws://127.0.0.1:%d/ws" % s.port


def http(s):
    return "http://127.0.0.1:%d" % s.port


class Run:
    def __init__(self, rc, out, err):
        self.rc, self.out, self.err = rc, out.decode(errors="replace"), err.decode(errors="replace")
        clitest.no_sanitizer_report(self.err)
        self.lines = [l for l in self.out.split("\n") if l]

    def __repr__(self):
        return "exit %s\n--- stdout ---\n%s--- stderr ---\n%s" % (self.rc, self.out[-3000:], self.err[-3000:])


def duplex(*args, data=b"", timeout=30, env=None):
    cmd = [clitest.BIN] + list(args)
    say("run:", " ".join(cmd))
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    clitest._procs.append(p)
    try:
        out, err = p.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise Fail("duplex %s did not exit within %d s\n%r" % (args, timeout, Run(None, out, err)))
    return Run(p.returncode, out, err)


class Sub:
    """`duplex sub ARGS` in the background; its stdout and stderr collected by threads."""

    def __init__(self, *args):
        cmd = [clitest.BIN, "sub"] + list(args)
        say("spawn:", " ".join(cmd))
        self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        clitest._procs.append(self.p)
        self.out, self.err = b"", b""
        self.cv = threading.Condition()
        for f, attr in ((self.p.stdout, "out"), (self.p.stderr, "err")):
            threading.Thread(target=self._pump, args=(f, attr), daemon=True).start()

    def _pump(self, f, attr):
        while True:
            chunk = os.read(f.fileno(), 65536)
            with self.cv:
                if not chunk:
                    setattr(self, attr + "_eof", True)
                    self.cv.notify_all()
                    return
                setattr(self, attr, getattr(self, attr) + chunk)
                self.cv.notify_all()

    def wait_for(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        with self.cv:
            while not pred(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Fail("sub: timed out waiting for %s\n%r" % (what, self.result(wait=False)))
                self.cv.wait(left)

    def subscribed(self, n=1, timeout=10):
        self.wait_for(lambda s: s.err.count(b"sub: subscribed to") >= n, timeout, "%d subscription acks" % n)

    def lines(self):
        return [l for l in self.out.decode(errors="replace").split("\n") if l]

    def finish(self, timeout=15):
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            raise Fail("sub did not exit within %d s\n%r" % (timeout, self.result(wait=False)))
        self.wait_for(lambda s: getattr(s, "out_eof", False) and getattr(s, "err_eof", False), 5, "sub's pipes")
        return self.result(wait=False)

    def result(self, wait=True):
        return Run(self.p.poll(), self.out, self.err)


def history(s, topic, since=0):
    req = urllib.request.Request("%s/api/history?topic=%s&since=%d" % (http(s), topic, since),
                                 headers={"Authorization": "Bearer " + KEY})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def check_pub_lines(r, topic, first, n):
    """pub printed n lines `topic offset epoch`, offsets first..first+n-1, one epoch; returns it."""
    check(r.rc == 0, "pub failed: %r" % r)
    check(len(r.lines) == n, "want %d lines: %r" % (n, r))
    epochs = set()
    for i, l in enumerate(r.lines):
        parts = l.split(" ")
        check(len(parts) == 3 and parts[0] == topic and parts[1] == str(first + i) and parts[2],
              "line %d is not '%s %d EPOCH': %r" % (i, topic, first + i, l))
        epochs.add(parts[2])
    check(len(epochs) == 1, "epochs changed: %r" % epochs)
    return epochs.pop()


# ---- against the gateway -------------------------------------------------------------


def test_pub_http_and_ws_sub_prints():
    s = server()
    sub = Sub(ws(s), "ps.one", "-n", "7")
    sub.subscribed()
    e1 = check_pub_lines(duplex("pub", "--api-key", KEY, http(s), "ps.one", "hello", "two words"), "ps.one", 1, 2)
    e2 = check_pub_lines(duplex("pub", ws(s), "ps.one", data=b"three\n\nfour\r\n"), "ps.one", 3, 2)
    check(e1 == e2, "HTTP and WebSocket publishes got epochs %s and %s" % (e1, e2))
    # the key from the environment; http:// with a trailing slash
    env = dict(os.environ, DUPLEX_API_KEY=KEY)
    check_pub_lines(duplex("pub", http(s) + "/", "ps.one", data=b"five\nsix\n", env=env), "ps.one", 5, 2)
    # options after the operands (as docs/gateway.md writes it); `--` before a message with a dash
    r = duplex("pub", http(s), "ps.one", "--api-key", KEY, "--", "-seven")
    check_pub_lines(r, "ps.one", 7, 1)
    r = sub.finish()
    check(r.rc == 0, "sub -n 7: %r" % r)
    want = ["ps.one 1 hello", "ps.one 2 two words", "ps.one 3 three", "ps.one 4 four", "ps.one 5 five",
            "ps.one 6 six", "ps.one 7 -seven"]
    check(r.lines == want, "sub printed %r, want %r" % (r.lines, want))
    check('sub: subscribed to ps.one (offset 0, epoch "' in r.err, "subscription notice: %r" % r)


def test_kinds():
    s = server()
    sub = Sub("-n", "6", ws(s), "ps.kinds")
    sub.subscribed()
    check_pub_lines(duplex("pub", "--api-key", KEY, "--kind", "json", http(s), "ps.kinds", '{"a": [1, 2]}'),
                    "ps.kinds", 1, 1)
    check_pub_lines(duplex("pub", "--kind", "json", ws(s), "ps.kinds", '{"b" : true}'), "ps.kinds", 2, 1)
    check_pub_lines(duplex("pub", "--api-key", KEY, "--kind", "binary", http(s), "ps.kinds", "bin\x01ary"),
                    "ps.kinds", 3, 1)
    check_pub_lines(duplex("pub", "--kind", "binary", ws(s), "ps.kinds", data=b"\xff\x00\xfe\n"), "ps.kinds", 4, 1)
    check_pub_lines(duplex("pub", "--api-key", KEY, "--kind", "text", http(s), "ps.kinds", "caf\u00e9"),
                    "ps.kinds", 5, 1)
    check_pub_lines(duplex("pub", ws(s), "ps.kinds", "{not json}"), "ps.kinds", 6, 1)
    r = sub.finish()
    want = ['ps.kinds 1 {"a":[1,2]}', 'ps.kinds 2 {"b":true}',
            "ps.kinds 3 b64:" + base64.b64encode(b"bin\x01ary").decode(),
            "ps.kinds 4 b64:" + base64.b64encode(b"\xff\x00\xfe").decode(),
            "ps.kinds 5 caf\u00e9", "ps.kinds 6 {not json}"]
    check(r.rc == 0 and r.lines == want, "sub printed %r, want %r\n%r" % (r.lines, want, r))
    # the gateway stored what was meant (kinds kept), seen through the HTTP API
    h = history(s, "ps.kinds")
    msgs = h["messages"]
    check(len(msgs) == 6, "history: %r" % h)
    check(msgs[0]["data"] == {"a": [1, 2]} and msgs[1]["data"] == {"b": True}, "json kinds: %r" % msgs[:2])
    check(base64.b64decode(msgs[2]["b64"]) == b"bin\x01ary" and base64.b64decode(msgs[3]["b64"]) == b"\xff\x00\xfe",
          "binary kinds: %r" % msgs[2:4])
    check(msgs[4]["data"] == "caf\u00e9" and msgs[5]["data"] == "{not json}", "text kinds: %r" % msgs[4:])
    # refused before sending: not JSON, not UTF-8 (exit 1, said why)
    r = duplex("pub", "--kind", "json", ws(s), "ps.kinds", "{nope")
    check(r.rc == 1 and "not JSON" in r.err and not r.lines, "bad JSON over ws: %r" % r)
    r = duplex("pub", "--api-key", KEY, "--kind", "json", http(s), "ps.kinds", "{nope")
    check(r.rc == 1 and "HTTP 400" in r.err and not r.lines, "bad JSON over HTTP: %r" % r)
    r = duplex("pub", ws(s), "ps.kinds", data=b"\xff\xfe\n")
    check(r.rc == 1 and "not UTF-8" in r.err, "bad UTF-8 over ws: %r" % r)
    check(history(s, "ps.kinds")["offset"] == 6, "a refused message was published")


def test_sub_json_output():
    s = server()
    # URLs without a path mean /ws; http:// means ws:// for sub
    sub = Sub("--json", "-n", "2", http(s), "ps.json")
    sub.subscribed()
    check_pub_lines(duplex("pub", "ws://127.0.0.1:%d" % s.port, "ps.json", "x y"), "ps.json", 1, 1)
    check_pub_lines(duplex("pub", "--kind", "binary", ws(s), "ps.json", "z"), "ps.json", 2, 1)
    r = sub.finish()
    check(r.rc == 0 and len(r.lines) == 2, "sub --json: %r" % r)
    m1, m2 = (json.loads(l) for l in r.lines)
    check(m1["op"] == "msg" and m1["topic"] == "ps.json" and m1["offset"] == 1 and m1["data"] == "x y",
          "first msg: %r" % m1)
    check(m2["offset"] == 2 and base64.b64decode(m2["b64"]) == b"z" and m1["epoch"] == m2["epoch"],
          "second msg: %r" % m2)


def test_since_resume():
    s = server()
    r = duplex("pub", ws(s), "ps.since", "m1", "m2", "m3", "m4", "m5")
    epoch = check_pub_lines(r, "ps.since", 1, 5)
    sub = Sub("-n", "5", "--since", "ps.since:2:" + epoch, ws(s), "ps.since")
    sub.subscribed()
    sub.wait_for(lambda x: len(x.lines()) >= 3, 10, "the 3 missed messages")
    check_pub_lines(duplex("pub", ws(s), "ps.since", "m6", "m7"), "ps.since", 6, 2)
    r = sub.finish()
    want = ["ps.since %d m%d" % (i, i) for i in range(3, 8)]
    check(r.rc == 0 and r.lines == want, "resumed sub printed %r, want %r\n%r" % (r.lines, want, r))
    check("recovered" in r.err and "cannot resume" not in r.err, "resume notice: %r" % r)
    # another epoch: not recovered, said so, live messages only
    sub = Sub("-n", "1", "--since", "ps.since:2:not-the-epoch", ws(s), "ps.since")
    sub.subscribed()
    check_pub_lines(duplex("pub", ws(s), "ps.since", "m8"), "ps.since", 8, 1)
    r = sub.finish()
    check(r.rc == 0 and r.lines == ["ps.since 8 m8"], "other epoch: %r" % r)
    check("cannot resume after offset 2" in r.err, "no 'cannot resume' notice: %r" % r)
    # a topic with ':' in it (the spec is matched against the topics given)
    e = check_pub_lines(duplex("pub", ws(s), "ps:colon", "c1", "c2"), "ps:colon", 1, 2)
    r = duplex("sub", "-n", "1", "--timeout", "10s", "--since", "ps:colon:1:" + e, ws(s), "ps:colon")
    check(r.rc == 0 and r.lines == ["ps:colon 2 c2"], "since on a topic with ':': %r" % r)
    # usage errors
    for bad in ("other:1:x", "ps.since:x:e", "ps.since"):
        r = duplex("sub", "--since", bad, ws(s), "ps.since")
        check(r.rc == 2 and "--since" in r.err, "--since %s: %r" % (bad, r))


def test_patterns():
    s = server()
    sub = Sub("-n", "3", ws(s), "pat.*", "deep.>")
    sub.subscribed(2)
    check("sub: subscribed to pat.* (offset 0" in sub.err.decode(), "pattern ack: %r" % sub.err)
    check_pub_lines(duplex("pub", ws(s), "pat.a", "A"), "pat.a", 1, 1)
    check_pub_lines(duplex("pub", ws(s), "pat.a.b", "not matched"), "pat.a.b", 1, 1)
    check_pub_lines(duplex("pub", ws(s), "other", "not matched"), "other", 1, 1)
    check_pub_lines(duplex("pub", "--api-key", KEY, http(s), "deep.x.y", "XY"), "deep.x.y", 1, 1)
    check_pub_lines(duplex("pub", ws(s), "pat.b", "B"), "pat.b", 1, 1)
    r = sub.finish()
    check(r.rc == 0 and r.lines == ["pat.a 1 A", "deep.x.y 1 XY", "pat.b 1 B"], "pattern sub: %r" % r)
    # pub to a pattern is refused, both ways
    r = duplex("pub", ws(s), "pat.*", "x")
    check(r.rc == 1 and "err 4400" in r.err, "pub to a pattern over ws: %r" % r)
    r = duplex("pub", "--api-key", KEY, http(s), "pat.>", "x")
    check(r.rc == 1 and "HTTP 400" in r.err, "pub to a pattern over HTTP: %r" % r)


def test_errors():
    s = server()
    r = duplex("pub", "--api-key", "wrong", http(s), "ps.err", "a", "b")
    check(r.rc == 1 and "HTTP 401" in r.err and not r.lines, "wrong key: %r" % r)
    check(r.err.count("HTTP 401") == 1, "a 401 should stop at once: %r" % r)
    env = {k: v for k, v in os.environ.items() if k != "DUPLEX_API_KEY"}
    r = duplex("pub", http(s), "ps.err", "a", env=env)
    check(r.rc == 1 and "HTTP 401" in r.err, "no key: %r" % r)
    r = duplex("pub", "--api-key", KEY, http(s), "bad..topic", "a")
    check(r.rc == 1 and "HTTP 400" in r.err and "topic" in r.err, "bad topic over HTTP: %r" % r)
    r = duplex("pub", ws(s), "bad..topic", "a")
    check(r.rc == 1 and "err 4400" in r.err and "topic" in r.err, "bad topic over ws: %r" % r)
    r = duplex("pub", "--api-key", KEY, http(s), "x" * 201, "a")
    check(r.rc == 1 and "HTTP 400" in r.err, "long topic: %r" % r)
    # one bad message among good ones: the rest published, exit 1
    r = duplex("pub", "--kind", "json", ws(s), "ps.err", data=b"1\n{bad\n2\n")
    check(r.rc == 1 and [l.split(" ")[:2] for l in r.lines] == [["ps.err", "1"], ["ps.err", "2"]],
          "good messages around a bad one: %r" % r)
    r = duplex("sub", ws(s), "bad..topic")
    check(r.rc == 1 and "cannot subscribe to bad..topic: err 4400" in r.err, "sub to a bad topic: %r" % r)
    r = duplex("sub", "--timeout", "2s", ws(s), "ps.ok", "user:someone.else")
    check(r.rc == 1 and "err 4403" in r.err, "sub to another user's topic: %r" % r)
    r = duplex("sub", "ws://127.0.0.1:%d/echo" % s.port, "t")
    check(r.rc == 1 and "duplex.v1" in r.err, "sub to /echo: %r" % r)
    port = clitest.free_port()
    for args in (("sub", "ws://127.0.0.1:%d/ws" % port, "t"), ("pub", "ws://127.0.0.1:%d/ws" % port, "t", "x"),
                 ("pub", "http://127.0.0.1:%d" % port, "t", "x")):
        r = duplex(*args)
        check(r.rc == 1 and "cannot connect" in r.err, "%s to nothing: %r" % (args, r))
    for args in (("pub",), ("pub", http(s)), ("pub", "ftp://x", "t", "m"), ("pub", "--kind", "xml", http(s), "t"),
                 ("sub", ws(s)), ("sub", "--count", "0", ws(s), "t"), ("sub", "--bogus", ws(s), "t"),
                 ("pub", "--timeout", "0", http(s), "t")):
        r = duplex(*args)
        check(r.rc == 2 and r.err, "usage %s: %r" % (args, r))
    for cmd in ("pub", "sub"):
        r = duplex(cmd, "--help")
        check(r.rc == 0 and ("usage: duplex %s" % cmd) in r.out, "%s --help: %r" % (cmd, r))
    r = duplex("--help")
    check(" pub " in r.out and " sub " in r.out, "top-level help lists pub and sub: %r" % r)


def test_sub_count_timeout_signal():
    s = server()
    t0 = time.monotonic()
    r = duplex("sub", "--timeout", "500ms", ws(s), "ps.quiet")
    check(r.rc == 0 and not r.lines and time.monotonic() - t0 < 10, "--timeout without --count: %r" % r)
    r = duplex("sub", "--timeout", "500ms", "-n", "1", ws(s), "ps.quiet")
    check(r.rc == 1 and "timed out" in r.err and "0 of 1" in r.err, "--timeout before --count: %r" % r)
    sub = Sub(ws(s), "ps.sig")
    sub.subscribed()
    check_pub_lines(duplex("pub", ws(s), "ps.sig", "one"), "ps.sig", 1, 1)
    sub.wait_for(lambda x: x.lines() == ["ps.sig 1 one"], 10, "the message")
    os.kill(sub.p.pid, signal.SIGINT)
    r = sub.finish()
    check(r.rc == 0, "SIGINT: %r" % r)


def test_server_stops():
    s = Serve("--workers", "2", "--api-key", KEY)
    sub = Sub(ws(s), "ps.stop")
    sub.subscribed()
    s.stop()
    r = sub.finish()
    check(r.rc == 1 and "closed by the server: code 1012" in r.err, "sub when the server stops: %r" % r)


def test_tls():
    tmp = tempfile.mkdtemp(prefix="dx-cli-pubsub-")
    try:
        crt, key = os.path.join(tmp, "s.crt"), os.path.join(tmp, "s.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
        s = Serve("--workers", "2", "--api-key", KEY, "--tls-cert", crt, "--tls-key", key)
        https, wss = "https://127.0.0.1:%d" % s.port, "wss://127.0.0.1:%d/ws" % s.port
        sub = Sub("--ca", crt, "-n", "4", wss, "tls.t")
        sub.subscribed()
        check_pub_lines(duplex("pub", "--api-key", KEY, "--ca", crt, https, "tls.t", "a"), "tls.t", 1, 1)
        check_pub_lines(duplex("pub", "--api-key", KEY, "--ca", crt, "https://localhost:%d" % s.port, "tls.t", "b"),
                        "tls.t", 2, 1)
        check_pub_lines(duplex("pub", "--api-key", KEY, "-k", https, "tls.t", "c"), "tls.t", 3, 1)
        check_pub_lines(duplex("pub", "--ca", crt, wss, "tls.t", "d"), "tls.t", 4, 1)
        r = sub.finish()
        check(r.rc == 0 and r.lines == ["tls.t %d %s" % (i + 1, c) for i, c in enumerate("abcd")], "wss sub: %r" % r)
        for args in (("pub", "--api-key", KEY, https, "tls.t", "x"), ("pub", wss, "tls.t", "x"), ("sub", wss, "tls.t")):
            r = duplex(*args)
            check(r.rc == 1 and "verif" in r.err, "%s without --ca: %r" % (args, r))
        s.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- the HTTP client, against a stand-in -------------------------------------------------


class StandIn(socketserver.ThreadingMixIn, httpserver.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def standin(behaviour):
    """An HTTP/1.1 server recording (connection number, headers, body) per request.
    behaviour(n) for the n-th request (from 1): 'ok', 'drop-after' (answer, then
    close silently), 'close' (answer with Connection: close), 'chunked'."""
    log = []
    conns = [0]
    lock = threading.Lock()

    class H(httpserver.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            with lock:
                conns[0] += 1
                self.conn_no = conns[0]

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                log.append((self.conn_no, self.path, dict(self.headers), body))
                n = len(log)
            how = behaviour(n)
            if how == "429":
                ans = b'{"error":"rate limited"}'
                self.send_response(429)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", str(len(ans)))
                self.end_headers()
                self.wfile.write(ans)
                return
            ans = json.dumps({"topic": "t", "offset": n, "epoch": "E"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if how == "chunked":
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for part in (ans[:5], ans[5:]):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Content-Length", str(len(ans)))
                if how == "close":
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(ans)
            self.wfile.flush()
            if how in ("drop-after", "close"):
                self.close_connection = True

    srv = StandIn(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, log


def test_http_client():
    srv, log = standin(lambda n: "ok")
    try:
        url = "http://127.0.0.1:%d" % srv.server_address[1]
        lines = b"".join(b"line %d\n" % i for i in range(50))
        r = duplex("pub", "--api-key", "K1", url, "a/b:c@d", data=lines)
        check(r.rc == 0 and len(r.lines) == 50 and r.lines[49] == "t 50 E", "50 lines: %r" % r)
        nconn = len({c for c, *_ in log})
        check(nconn == 1, "keep-alive: %d connections for 50 messages" % nconn)
        check([b for *_, b in log] == [b"line %d" % i for i in range(50)], "bodies: %r" % [b for *_, b in log][:5])
        path, hdr = log[0][1], log[0][2]
        check(path == "/api/publish?topic=a%2Fb%3Ac%40d", "request target: %r" % path)
        check(hdr.get("Authorization") == "Bearer K1", "Authorization: %r" % hdr)
        check(hdr.get("Content-Type") == "text/plain; charset=utf-8", "text Content-Type: %r" % hdr)
        for kind, ctype in (("json", "application/json"), ("binary", "application/octet-stream")):
            del log[:]
            r = duplex("pub", "--api-key", "K1", "--kind", kind, url + "/prefix/", "t", "1")
            check(r.rc == 0, "%s: %r" % (kind, r))
            check(log[0][1] == "/prefix/api/publish?topic=t" and log[0][2].get("Content-Type") == ctype,
                  "%s: %r" % (kind, log[0][:3]))
    finally:
        srv.shutdown()
    # the server drops every kept-alive connection after its answer (silently,
    # or saying Connection: close), or answers chunked: all 6 published once
    for how in ("drop-after", "close", "chunked"):
        srv, log = standin(lambda n, how=how: how)
        try:
            url = "http://127.0.0.1:%d" % srv.server_address[1]
            r = duplex("pub", url, "t", "1", "2", "3", "4", "5", "6")
            check(r.rc == 0 and len(r.lines) == 6, "%s: %r" % (how, r))
            check([b for *_, b in log] == [b"1", b"2", b"3", b"4", b"5", b"6"], "%s: bodies %r" % (how, log))
            nconn = len({c for c, *_ in log})
            check(nconn == (1 if how == "chunked" else 6), "%s: %d connections" % (how, nconn))
        finally:
            srv.shutdown()
    # 429: the same message again after Retry-After
    srv, log = standin(lambda n: "429" if n == 1 else "ok")
    try:
        t0 = time.monotonic()
        r = duplex("pub", "http://127.0.0.1:%d" % srv.server_address[1], "t", "once")
        check(r.rc == 0 and r.lines == ["t 2 E"] and "429" in r.err, "429 then 200: %r" % r)
        check([b for *_, b in log] == [b"once", b"once"] and time.monotonic() - t0 >= 0.9,
              "429: retried after Retry-After: %r" % log)
    finally:
        srv.shutdown()


if __name__ == "__main__":
    try:
        main([test_pub_http_and_ws_sub_prints, test_kinds, test_sub_json_output, test_since_resume, test_patterns,
              test_errors, test_sub_count_timeout_signal, test_server_stops, test_tls, test_http_client])
    finally:
        if _server is not None:
            _server.stop()
