"""
tests/gateway/gwtest.py: shared helpers for the gateway's conformance tests
(issue 9; the contract is GATEWAY.md, documented in docs/gateway.md).

A test script gets the duplex binary as argv[1] and starts `duplex serve`
itself (Serve: 127.0.0.1, a free port, `--api-key KEY`, stopped by PID with
SIGTERM). Each test case is a function (plain or `async`); main() runs them
in turn, prints `ok NAME` or `FAIL NAME: request / expected / got`, and ends
with `SCRIPT: N passed, M failed` (exit 1 when one failed). Nothing is
skipped: a missing peer (python3-websockets) fails the import.

Peers: Debian's python3-websockets (run with /usr/bin/python3) for
well-behaved WebSocket clients, http.client for HTTP, and a small raw
WebSocket client here (RawWS / AsyncRawWS) for what a library hides: a
subscriber that never reads, thousands of light connections, exact frames.
"""
import asyncio
import base64
import http.client as httpclient
import inspect
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse

import websockets  # Debian python3-websockets; a missing one fails the test

BIN = None  # set by main()
KEY = "gw-test-key-%08x" % random.getrandbits(32)
PROTO = "duplex.v1"
_procs = []
_logs = []
_servers = []


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def expect_eq(got, want, what):
    if got != want:
        raise Fail("%s\n  expected: %r\n  got:      %r" % (what, want, got))


def say(*a):
    print(*a, flush=True)


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(pred, timeout, what, step=0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise Fail("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(step)


async def await_for(pred, timeout, what, step=0.02):
    """wait_for in a coroutine; pred may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if inspect.isawaitable(v):
            v = await v
        if v:
            return v
        if time.monotonic() > deadline:
            raise Fail("timed out after %.1f s waiting for %s" % (timeout, what))
        await asyncio.sleep(step)


def topic(prefix="t"):
    """A fresh topic name, so cases sharing a server never see each other."""
    return "%s.%08x" % (prefix, random.getrandbits(32))


# ---------------------------------------------------------------- server


class Serve:
    """`duplex serve` on 127.0.0.1:<free port> with --api-key KEY (unless
    api_key=None), `workers` workers; the log in a temp file."""

    def __init__(self, *args, workers=1, api_key=KEY, env=None):
        self.port = free_port()
        self.logf = tempfile.NamedTemporaryFile(prefix="dx-gw-serve-", suffix=".log", delete=False)
        _logs.append(self.logf.name)
        cmd = [BIN, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers)]
        if api_key is not None:
            cmd += ["--api-key", api_key]
        cmd += list(args)
        self.cmd = cmd
        say("server:", " ".join(cmd))
        e = dict(os.environ)
        e.pop("DUPLEX_API_KEY", None)
        if env:
            e.update(env)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf, env=e)
        _procs.append(self.proc)
        _servers.append(self)
        line = "duplex: serving http://127.0.0.1:%d/" % self.port
        wait_for(lambda: line in self.log() or self.proc.poll() is not None, 20, "serve to print %r" % line)
        check(self.proc.poll() is None, "serve exited at start:\n" + self.log())

    def log(self):
        with open(self.logf.name, errors="replace") as f:
            return f.read()

    def url(self, path="/ws", scheme="ws"):
        return "%s://127.0.0.1:%d%s" % (scheme, self.port, path)

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self in _servers:
            _servers.remove(self)
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise Fail("serve did not stop within 15 s of SIGTERM")
        for m in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "WARNING: ThreadSanitizer"):
            check(m not in self.log(), "sanitizer report in the server log:\n" + self.log()[-4000:])


# ---------------------------------------------------------------- HTTP


class Resp:
    def __init__(self, status, headers, body, req):
        self.status, self.headers, self.body, self.req = status, headers, body, req

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            raise Fail("%s: the body is not JSON: %r" % (self.req, self.body[:300]))

    def __repr__(self):
        return "%s -> %d %r" % (self.req, self.status, self.body[:300])


def http(srv, method, path, body=None, headers=None, key=KEY, timeout=20):
    """One request on its own connection. key=None sends no Authorization."""
    h = {}
    if key is not None:
        h["Authorization"] = "Bearer " + key
    if headers:
        h.update(headers)
    if isinstance(body, str):
        body = body.encode()
    c = httpclient.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        return Resp(r.status, r.getheaders(), data, "%s %s" % (method, path))
    finally:
        c.close()


def expect_status(r, status, what=""):
    if r.status != status:
        raise Fail("%s%s\n  expected: %d\n  got:      %d %r" % (what + ": " if what else "", r.req, status,
                                                            r.status, r.body[:300]))


def expect_error(r, status, what=""):
    """`status` with a JSON body {"error": "<reason>"}."""
    expect_status(r, status, what)
    j = r.json()
    check(isinstance(j, dict) and isinstance(j.get("error"), str) and j["error"],
          "%s: expected {\"error\":\"<reason>\"}, got %r" % (r.req, r.body[:300]))
    return j


def q(s):
    return urllib.parse.quote(s, safe="")


def publish(srv, t, body, ctype="text/plain", key=KEY):
    """POST /api/publish; checks 200 and the reply's shape; returns the reply."""
    h = {"Content-Type": ctype} if ctype is not None else {}
    r = http(srv, "POST", "/api/publish?topic=" + q(t), body=body, headers=h, key=key)
    expect_status(r, 200, "publish")
    j = r.json()
    check(j.get("topic") == t and isinstance(j.get("offset"), int) and isinstance(j.get("epoch"), str)
          and j["epoch"], "%s: expected {topic,offset,epoch}, got %r" % (r.req, j))
    return j


def publish_many(srv, t, bodies, ctype="text/plain"):
    """Publishes each body on t over keep-alive connections (reopened when
    the server ends one); returns the offsets."""
    c = httpclient.HTTPConnection("127.0.0.1", srv.port, timeout=20)
    offs = []
    try:
        for b in bodies:
            c.request("POST", "/api/publish?topic=" + q(t), body=b,
                      headers={"Authorization": "Bearer " + KEY, "Content-Type": ctype})
            r = c.getresponse()
            data = r.read()
            if r.status != 200:
                raise Fail("POST /api/publish?topic=%s: %d %r" % (t, r.status, data[:200]))
            offs.append(json.loads(data)["offset"])
            if (r.getheader("Connection") or "").lower() == "close":
                c.close()
    finally:
        c.close()
    return offs


def history(srv, t, since=None, limit=None):
    p = "/api/history?topic=" + q(t)
    if since is not None:
        p += "&since=%d" % since
    if limit is not None:
        p += "&limit=%d" % limit
    r = http(srv, "GET", p)
    expect_status(r, 200, "history")
    return r.json()


def metrics(srv):
    """GET /metrics parsed: {(name, frozenset(labels)): value}; checks the format."""
    r = http(srv, "GET", "/metrics", key=None)
    expect_status(r, 200, "metrics")
    ct = r.header("Content-Type") or ""
    check(ct.startswith("text/plain"), "/metrics Content-Type %r, expected text/plain (Prometheus text format)" % ct)
    out = {}
    import re
    line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)(\s+\d+)?$')
    lab_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for ln in r.body.decode().splitlines():
        if not ln or ln.startswith("#"):
            if ln.startswith("#"):
                check(ln.startswith("# HELP ") or ln.startswith("# TYPE "), "bad /metrics comment line %r" % ln)
            continue
        m = line_re.match(ln)
        check(m, "bad /metrics sample line %r" % ln)
        labels = frozenset(lab_re.findall(m.group(2) or ""))
        try:
            v = float(m.group(3))
        except ValueError:
            raise Fail("bad /metrics value in %r" % ln)
        out[(m.group(1), labels)] = v
    return out


def metric_sum(ms, name_part, **labels):
    """Sum of samples whose name contains name_part (and not _bucket etc.)
    and that carry every given label."""
    tot = 0.0
    n = 0
    for (name, labs), v in ms.items():
        if name_part not in name or name.endswith("_bucket") or name.endswith("_sum") or name.endswith("_count"):
            continue
        d = dict(labs)
        if all(d.get(k) == v2 for k, v2 in labels.items()):
            tot += v
            n += 1
    return tot, n


# ---------------------------------------------------------------- WebSocket (websockets)


async def jconnect(srv, path="/ws", **kw):
    """A JSON-dialect client (websockets, subprotocol duplex.v1)."""
    ws = await websockets.connect(srv.url(path), subprotocols=[PROTO], open_timeout=10, max_size=None,
                                  ping_interval=None, close_timeout=2, max_queue=None, **kw)
    check(ws.subprotocol == PROTO, "GET %s with Sec-WebSocket-Protocol: %s: the server chose %r" % (path, PROTO,
                                                                                                   ws.subprotocol))
    return J(ws)


async def rconnect(srv, query="", **kw):
    """A raw-dialect client (websockets, no subprotocol)."""
    path = "/ws" + ("?" + query if query else "")
    ws = await websockets.connect(srv.url(path), open_timeout=10, max_size=None, ping_interval=None,
                                  close_timeout=2, **kw)
    check(ws.subprotocol is None, "raw dialect: the server chose subprotocol %r" % ws.subprotocol)
    return ws


async def handshake_status(srv, path, subprotocols=None):
    """The HTTP status of a WebSocket handshake that should fail (101 when it did not)."""
    try:
        ws = await websockets.connect(srv.url(path), subprotocols=subprotocols, open_timeout=10,
                                      ping_interval=None, close_timeout=1)
    except websockets.exceptions.InvalidStatusCode as e:
        return e.status_code
    await ws.close()
    return 101


async def handshake_status_origin(srv, path, origin, subprotocols=None):
    """The status of a WebSocket handshake sent with `Origin: origin`."""
    try:
        ws = await websockets.connect(srv.url(path), subprotocols=subprotocols, origin=origin, open_timeout=10,
                                      ping_interval=None, close_timeout=1)
    except websockets.exceptions.InvalidStatusCode as e:
        return e.status_code
    await ws.close()
    return 101


async def recv_timeout(ws, timeout, what):
    try:
        return await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        raise Fail("timed out after %.1f s waiting for %s" % (timeout, what))
    except websockets.exceptions.ConnectionClosed as e:
        raise Fail("connection closed (%s) while waiting for %s" % (close_of(e), what))


def close_of(e):
    r = getattr(e, "rcvd", None)
    if r is None:
        return "no close frame received"
    return "close %d %r" % (r.code, r.reason)


async def expect_closed(ws, code, timeout, what):
    """Reads until the connection closes; checks the close code received."""
    deadline = time.monotonic() + timeout
    n = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Fail("%s: still open after %.1f s (expected close %d)" % (what, timeout, code))
        try:
            await asyncio.wait_for(ws.recv(), left)
            n += 1
        except asyncio.TimeoutError:
            continue
        except websockets.exceptions.ConnectionClosed as e:
            r = getattr(e, "rcvd", None)
            got = r.code if r is not None else None
            if got != code:
                raise Fail("%s\n  expected: close %d\n  got:      %s" % (what, code, close_of(e)))
            return n


class J:
    """A JSON-dialect connection: requests with their replies, and the
    server's msg/gap frames kept in arrival order."""

    def __init__(self, ws):
        self.ws = ws
        self.pending = []  # msg / gap frames received while waiting for a reply
        self.next_id = 1

    async def send(self, obj):
        await self.ws.send(obj if isinstance(obj, (str, bytes)) else json.dumps(obj))

    async def frame(self, timeout=10, what="a frame"):
        raw = await recv_timeout(self.ws, timeout, what)
        check(isinstance(raw, str), "JSON dialect: the server sent a binary frame %r" % raw[:100])
        try:
            f = json.loads(raw)
        except ValueError:
            raise Fail("JSON dialect: the server sent a frame that is not JSON: %r" % raw[:300])
        check(isinstance(f, dict) and isinstance(f.get("op"), str), "frame without op: %r" % raw[:300])
        check("\n" not in raw, "a server frame has a raw newline: %r" % raw[:300])
        return f

    async def reply(self, timeout=10, what="a reply"):
        """The next ack/err; msg and gap frames go to pending."""
        while True:
            f = await self.frame(timeout, what)
            if f["op"] in ("msg", "gap"):
                self.pending.append(f)
                continue
            check(f["op"] in ("ack", "err"), "unknown server op %r in %r" % (f["op"], f))
            return f

    async def req(self, op, _id=True, **fields):
        """Sends {"op":op,"id":N,...} (no id when _id is None; a given int
        when _id is an int) and returns the reply, checking the id echo."""
        obj = {"op": op}
        if _id is True:
            _id = self.next_id
            self.next_id += 1
        if _id is not None:
            obj["id"] = _id
        obj.update(fields)
        await self.send(obj)
        r = await self.reply(what="the reply to %s" % json.dumps(obj)[:200])
        if _id is None:
            check("id" not in r, "request %s without id: the reply has one: %r" % (json.dumps(obj)[:200], r))
        else:
            expect_eq(r.get("id"), _id, "request %s: id echoed in %r" % (json.dumps(obj)[:200], r))
        return r

    async def ack(self, op, _id=True, **fields):
        r = await self.req(op, _id, **fields)
        if r["op"] != "ack":
            raise Fail("request %s %s\n  expected: ack\n  got:      %r" % (op, fields, r))
        return r

    async def err(self, op, code, _id=True, **fields):
        """Sends a request and expects an err with `code` (id echoed)."""
        r = await self.req(op, _id, **fields)
        if r.get("op") != "err" or r.get("code") != code:
            raise Fail("request %s %s\n  expected: err %d\n  got:      %r" % (op, json.dumps(fields)[:150], code, r))
        check(isinstance(r.get("reason"), str), "err without a reason string: %r" % r)
        return r

    async def err_raw(self, frame, code, want_id=None):
        """Sends a raw frame (str: text, bytes: binary) and expects err `code`."""
        await self.send(frame)
        r = await self.reply(what="the reply to %r" % frame[:100])
        if r.get("op") != "err" or r.get("code") != code:
            raise Fail("frame %r\n  expected: err %d\n  got:      %r" % (frame[:100], code, r))
        check(isinstance(r.get("reason"), str), "err without a reason string: %r" % r)
        expect_eq(r.get("id"), want_id, "frame %r: id of the err %r" % (frame[:100], r))
        return r

    async def alive(self):
        """The connection survived: a request still gets its ack."""
        await self.ack("unsub", topic="alive.check")

    async def sub(self, t, **kw):
        a = await self.ack("sub", topic=t, **kw)
        return a

    async def msg(self, timeout=10, what="a msg"):
        """The next msg or gap frame (pending first)."""
        if self.pending:
            return self.pending.pop(0)
        while True:
            f = await self.frame(timeout, what)
            if f["op"] in ("msg", "gap"):
                return f
            raise Fail("expected a msg, got %r" % f)

    async def msgs(self, n, timeout=10, what="msgs"):
        return [await self.msg(timeout, "%s (%d of %d)" % (what, i + 1, n)) for i in range(n)]

    async def quiet(self, seconds=0.3):
        """Nothing more arrives within `seconds` (a bounded negative check:
        used after a sentinel message has already arrived)."""
        if self.pending:
            raise Fail("unexpected frame %r" % self.pending[0])
        try:
            raw = await asyncio.wait_for(self.ws.recv(), seconds)
        except asyncio.TimeoutError:
            return
        raise Fail("unexpected frame %r" % raw[:300])

    async def close(self):
        await self.ws.close()


def check_msg(m, t, offset=None, epoch=None, data=None, b64=None, pattern=None, what="msg"):
    """A msg frame: op, topic, offset, epoch, data or b64, pattern iff given."""
    check(m.get("op") == "msg", "%s: expected a msg, got %r" % (what, m))
    expect_eq(m.get("topic"), t, "%s: topic of %r" % (what, m))
    check(isinstance(m.get("offset"), int) and m["offset"] >= 1, "%s: bad offset in %r" % (what, m))
    check(isinstance(m.get("epoch"), str) and m["epoch"], "%s: bad epoch in %r" % (what, m))
    if offset is not None:
        expect_eq(m["offset"], offset, "%s: offset of %r" % (what, m))
    if epoch is not None:
        expect_eq(m["epoch"], epoch, "%s: epoch of %r" % (what, m))
    if b64 is not None:
        check("data" not in m, "%s: binary message with data: %r" % (what, m))
        expect_eq(m.get("b64"), base64.b64encode(b64).decode(), "%s: b64 of %r" % (what, m))
    elif data is not None or "data" in m:
        check("b64" not in m, "%s: json/text message with b64: %r" % (what, m))
        check("data" in m, "%s: no data in %r" % (what, m))
        if data is not None:
            expect_eq(m["data"], data, "%s: data of %r" % (what, m))
    if pattern is None:
        check("pattern" not in m, "%s: delivered through an exact subscription but has pattern: %r" % (what, m))
    else:
        expect_eq(m.get("pattern"), pattern, "%s: pattern of %r" % (what, m))


def check_sub_ack(a, t, offset=None, epoch=None, recovered=False):
    expect_eq(a.get("op"), "ack", "sub %s: reply" % t)
    expect_eq(a.get("topic"), t, "sub %s: ack topic" % t)
    check(isinstance(a.get("offset"), int) and a["offset"] >= 0, "sub %s: ack offset in %r" % (t, a))
    check(isinstance(a.get("epoch"), str), "sub %s: ack epoch in %r" % (t, a))
    check(isinstance(a.get("recovered"), bool), "sub %s: ack recovered in %r" % (t, a))
    if offset is not None:
        expect_eq(a["offset"], offset, "sub %s: ack offset of %r" % (t, a))
    if epoch is not None:
        expect_eq(a["epoch"], epoch, "sub %s: ack epoch of %r" % (t, a))
    expect_eq(a["recovered"], recovered, "sub %s: ack recovered of %r" % (t, a))


# ---------------------------------------------------------------- raw WebSocket client


def ws_head(port, path, protocol=None, extra=""):
    key = base64.b64encode(os.urandom(16)).decode()
    h = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n" % (path, port, key))
    if protocol:
        h += "Sec-WebSocket-Protocol: %s\r\n" % protocol
    return (h + extra + "\r\n").encode()


def ws_frame(opcode, payload, mask=True):
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = 0x80 | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        h = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        h = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        h = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return h + payload
    k = os.urandom(4)
    # XOR by whole ints: fast enough for megabytes
    reps = (n + 3) // 4
    kk = int.from_bytes(k * reps, "big") if n else 0
    p = (int.from_bytes(payload, "big") ^ (kk >> (8 * (reps * 4 - n)))).to_bytes(n, "big") if n else b""
    return h + k + p


class FrameParser:
    """Incremental parser of server (unmasked) frames: feed bytes, pop
    (opcode, payload) messages (fragments joined; close payload kept)."""

    def __init__(self):
        self.buf = bytearray()
        self.frag_op = None
        self.frag = bytearray()

    def feed(self, data):
        self.buf += data

    def pop(self):
        while True:
            b = self.buf
            if len(b) < 2:
                return None
            fin, op, n = b[0] & 0x80, b[0] & 0x0F, b[1] & 0x7F
            i = 2
            if n == 126:
                if len(b) < 4:
                    return None
                n = struct.unpack("!H", b[2:4])[0]
                i = 4
            elif n == 127:
                if len(b) < 10:
                    return None
                n = struct.unpack("!Q", b[2:10])[0]
                i = 10
            if b[1] & 0x80:
                raise Fail("the server sent a masked frame")
            if len(b) < i + n:
                return None
            payload = bytes(b[i:i + n])
            del b[:i + n]
            if op >= 8:
                return (op, payload)
            if op == 0:
                self.frag += payload
                if fin:
                    r = (self.frag_op, bytes(self.frag))
                    self.frag_op, self.frag = None, bytearray()
                    return r
                continue
            if not fin:
                self.frag_op, self.frag = op, bytearray(payload)
                continue
            return (op, payload)


def read_head(sock_recv):
    """Reads an HTTP response head through sock_recv(n); returns (status, head, rest)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock_recv(4096)
        if not chunk:
            raise Fail("the server closed during the handshake: %r" % data)
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    return status, head.decode(errors="replace"), rest


class RawWS:
    """A blocking raw WebSocket client on a plain socket (masked frames out,
    frames parsed in); `rcvbuf` shrinks the receive buffer before connect
    (a subscriber that stops reading then fills up fast)."""

    def __init__(self, srv, path, protocol=None, rcvbuf=None, timeout=10, src=None):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if src:
            self.s.bind((src, 0))
        self.s.settimeout(timeout)
        self.s.connect(("127.0.0.1", srv.port))
        self.s.sendall(ws_head(srv.port, path, protocol))
        self.status, self.head, rest = read_head(self.s.recv)
        self.p = FrameParser()
        self.p.feed(rest)
        self.eof = False

    def send(self, opcode, payload):
        self.s.sendall(ws_frame(opcode, payload))

    def send_json(self, obj):
        self.send(1, json.dumps(obj))

    def recv(self, timeout=10):
        """The next message (opcode, payload); ('eof', None) when the TCP
        connection ended (EOF or reset)."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.p.pop()
            if m is not None:
                return m
            if self.eof:
                return ("eof", None)
            left = deadline - time.monotonic()
            if left <= 0:
                raise Fail("raw client: timed out after %.1f s waiting for a frame" % timeout)
            self.s.settimeout(left)
            try:
                chunk = self.s.recv(262144)
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                self.eof = True
            else:
                self.p.feed(chunk)

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def close_code(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


# ---------------------------------------------------------------- runner


def main(tests, timeout_each=120):
    """Runs each test function in turn (async ones with asyncio.run, bounded
    by timeout_each); exit 0 if all passed."""
    global BIN
    if len(sys.argv) < 2:
        print("usage: %s path/to/duplex [test-name...]" % sys.argv[0])
        sys.exit(2)
    BIN = os.path.abspath(sys.argv[1])
    only = sys.argv[2:]
    if only:
        tests = [t for t in tests if t.__name__ in only or any(o in t.__name__ for o in only)]
    failed = 0
    for t in tests:
        t0 = time.monotonic()
        try:
            if inspect.iscoroutinefunction(t):
                async def run():
                    try:
                        await asyncio.wait_for(t(), timeout_each)
                    except asyncio.TimeoutError:
                        raise Fail("did not finish within %d s" % timeout_each)
                asyncio.run(run())
            else:
                t()
            for s in _servers:
                check(s.alive(), "the server died during the test:\n" + s.log()[-3000:])
            say("ok   %s (%.1f s)" % (t.__name__, time.monotonic() - t0))
        except Exception as e:  # noqa: BLE001 - report every kind of failure
            failed += 1
            say("FAIL %s: %s" % (t.__name__, e))
            if not isinstance(e, Fail):
                traceback.print_exc()
            for s in _servers:
                if not s.alive():
                    say("  server exited with status %s; log tail:\n%s" % (s.proc.returncode, s.log()[-3000:]))
    for s in list(_servers):
        try:
            s.stop()
        except Fail as e:
            failed += 1
            say("FAIL stop server: %s" % e)
    for p in _procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    for name in _logs:
        try:
            os.unlink(name)
        except OSError:
            pass
    say("%s: %d passed, %d failed" % (os.path.basename(sys.argv[0]), len(tests) - failed, failed))
    sys.exit(1 if failed else 0)


_shared = {}


def shared(*args, workers=1, api_key=KEY):
    """One server per distinct configuration per script, started on first use."""
    k = (args, workers, api_key)
    s = _shared.get(k)
    if s is None or not s.alive():
        s = _shared[k] = Serve(*args, workers=workers, api_key=api_key)
    return s


# ---------------------------------------------------------------- SSE client


class SSE:
    """GET /sse?QUERY on a plain socket; parses the event stream (chunked
    or not). events() gives dicts {event, data, id}; comment lines are
    kept in .comments with their arrival time."""

    def __init__(self, srv, query, headers=None, timeout=10, rcvbuf=None):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.settimeout(timeout)
        self.s.connect(("127.0.0.1", srv.port))
        h = "GET /sse?%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept: text/event-stream\r\n" % (query, srv.port)
        for k, v in (headers or {}).items():
            h += "%s: %s\r\n" % (k, v)
        self.s.sendall((h + "\r\n").encode())
        self.status, self.head, rest = read_head(self.s.recv)
        self.headers = {}
        for ln in self.head.split("\r\n")[1:]:
            k, _, v = ln.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self.raw = bytearray(rest)  # bytes as received (maybe chunked)
        self.text = bytearray()  # the event stream itself
        self.comments = []
        self.others = []  # events other than msg
        self.eof = False
        self.query = query
        self._dechunk()  # what came with the head

    def _dechunk(self):
        if not self.chunked:
            self.text += self.raw
            self.raw.clear()
            return
        while True:
            i = self.raw.find(b"\r\n")
            if i < 0:
                return
            n = int(bytes(self.raw[:i]).split(b";")[0], 16)
            if len(self.raw) < i + 2 + n + 2:
                return
            self.text += self.raw[i + 2:i + 2 + n]
            del self.raw[:i + 2 + n + 2]
            if n == 0:
                self.eof = True
                return

    def _fill(self, deadline, what):
        left = deadline - time.monotonic()
        if left <= 0:
            raise Fail("SSE ?%s: timed out waiting for %s" % (self.query, what))
        self.s.settimeout(left)
        try:
            chunk = self.s.recv(65536)
        except socket.timeout:
            return
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return
        self.raw += chunk
        self._dechunk()

    def _line(self, deadline, what):
        while True:
            i = self.text.find(b"\n")
            if i >= 0:
                ln = bytes(self.text[:i])
                del self.text[:i + 1]
                if ln.endswith(b"\r"):
                    ln = ln[:-1]
                return ln.decode()
            if self.eof:
                return None
            self._fill(deadline, what)

    def event(self, timeout=10, what="an SSE event"):
        """The next event {event, data (list of data lines), id}; None at EOF."""
        deadline = time.monotonic() + timeout
        ev = {"data": []}
        while True:
            ln = self._line(deadline, what)
            if ln is None:
                return None
            if ln == "":
                if ev["data"] or "event" in ev or "id" in ev:
                    return ev
                continue
            if ln.startswith(":"):
                self.comments.append((time.monotonic(), ln))
                continue
            k, _, v = ln.partition(":")
            if v.startswith(" "):
                v = v[1:]
            if k == "data":
                ev["data"].append(v)
            else:
                ev[k] = v

    def msg(self, timeout=10, what="an SSE msg event"):
        """The next event, checked: `event: msg`, one `data:` line holding a
        msg object, an `id:`; returns (msg dict, id string)."""
        deadline = time.monotonic() + timeout
        while True:
            ev = self.event(max(0.01, deadline - time.monotonic()), what)
            if ev is None:
                raise Fail("SSE ?%s: the stream ended while waiting for %s" % (self.query, what))
            if ev.get("event") in ("ack",) and "id" not in ev:
                self.others.append(ev)  # an extension (docs/gateway.md): one ack per topic at the start
                continue
            break
        check(ev.get("event") == "msg", "SSE event without 'event: msg': %r" % ev)
        check(len(ev["data"]) == 1, "SSE msg event with %d data lines (expected one): %r" % (len(ev["data"]), ev))
        try:
            m = json.loads(ev["data"][0])
        except ValueError:
            raise Fail("SSE data is not JSON: %r" % ev)
        check("id" in ev, "SSE msg event without id: %r" % ev)
        return m, ev["id"]

    def wait_comment(self, n, timeout):
        deadline = time.monotonic() + timeout
        while len(self.comments) < n:
            ln = self._line(deadline, "%d comment lines" % n)
            if ln is None:
                raise Fail("SSE stream ended while waiting for heartbeat comments")
            if ln.startswith(":"):
                self.comments.append((time.monotonic(), ln))
            elif ln.startswith("event:") and ln[6:].strip() == "msg":
                raise Fail("SSE: expected only heartbeat comments on an idle stream, got %r" % ln)

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def parse_sse_id(v):
    """'a:17:e1,user:bob:3:x' -> {topic: (offset, epoch)}."""
    out = {}
    for item in v.split(","):
        rest, _, epoch = item.rpartition(":")
        t, _, off = rest.rpartition(":")
        check(t and off.isdigit() and epoch, "bad SSE id item %r in %r" % (item, v))
        out[t] = (int(off), epoch)
    return out
