"""
tests/hostile/hostile.py: shared helpers for the hostile and fault tests of
`duplex serve` (issue 3).

Standard library only. The hostile side uses raw sockets so that every byte
on the wire is ours: a tiny WebSocket client (handshake, masked frame
encoder, frame decoder) lives here. A test starts its own server on a free
port (Server), attacks it, checks that a well-behaved client is still served
(echo_roundtrip) and that the expected log line appeared (Server.wait_log),
then stops the server with SIGTERM and checks it exited 0 (Server.stop).

Nothing here asserts on elapsed time except generous protocol deadlines.
Every helper fails by raising Fail with a clear message; run() turns that
into a non-zero exit.
"""
import base64
import hashlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class Fail(Exception):
    pass


SKIP = 1  # a missing peer is a failure: scripts/deps.sh installs them all


def skip(why):
    print("FAIL %s: missing prerequisite: %s (run scripts/deps.sh test)" % (os.path.basename(sys.argv[0]), why), flush=True)
    sys.exit(SKIP)


def need_websockets():
    """Imports python3-websockets (Debian's 10.4) or skips the test."""
    try:
        import websockets  # noqa: F401
    except ImportError:
        skip("python3-websockets is not installed for %s" % sys.executable)
    return websockets


# Under sanitizers RSS is the sanitizer's, not the server's: print, don't assert.
ASSERT_RSS = os.environ.get("DX_HOSTILE_NO_RSS") != "1"


def check_rss(ok, msg):
    if ASSERT_RSS:
        check(ok, msg)
    elif not ok:
        say("(not asserted under sanitizers) " + msg)


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def say(*a):
    print(*a, flush=True)


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---- the server under test -------------------------------------------------


_servers = []


class Server:
    """`duplex serve` on 127.0.0.1:<free port>, stderr to a temporary file."""

    def __init__(self, binary, *args, prefix=(), workers=1):
        _servers.append(self)
        self.port = free_port()
        self.logf = tempfile.NamedTemporaryFile(prefix="dx-hostile-", suffix=".log", delete=False)
        cmd = list(prefix) + [binary, "serve", "--host", "127.0.0.1", "--port", str(self.port),
                              "--workers", str(workers)] + list(args)
        say("server:", " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf)
        self.pid = self.proc.pid
        self.stopped = False
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise Fail("server exited at start with %s; log:\n%s" % (self.proc.returncode, self.log()))
            if "listening on" in self.log():
                break
            check(time.monotonic() < deadline, "server did not start within 15 s; log:\n" + self.log())
            time.sleep(0.05)

    def log(self):
        with open(self.logf.name, "r", errors="replace") as f:
            return f.read()

    def lines(self, pattern):
        return [l for l in self.log().splitlines() if re.search(pattern, l)]

    def wait_log(self, pattern, timeout=10.0, count=1):
        """Waits for `count` log lines matching regex `pattern`; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.lines(pattern)
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise Fail("log line /%s/ (x%d) not seen within %.0f s; log tail:\n%s"
                           % (pattern, count, timeout, "\n".join(self.log().splitlines()[-30:])))
            time.sleep(0.05)

    def alive(self):
        return self.proc.poll() is None

    def rss_kib(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise Fail("no VmRSS for pid %d" % self.pid)

    def cpu_s(self):
        """User + system CPU time of the server so far, in seconds."""
        with open("/proc/%d/stat" % self.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is field 3 (state); utime is field 14, stime field 15
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def fds(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    def stop(self, timeout=15.0):
        """SIGTERM; the server must exit 0 within `timeout`. Returns seconds taken."""
        if self.stopped:
            return 0.0
        self.stopped = True
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Fail("server did not exit within %.0f s of SIGTERM; log tail:\n%s"
                       % (timeout, "\n".join(self.log().splitlines()[-30:])))
        took = time.monotonic() - t0
        check(rc == 0, "server exited with %s after SIGTERM; log tail:\n%s"
              % (rc, "\n".join(self.log().splitlines()[-30:])))
        check("serve: stopped" in self.log(), "no 'serve: stopped' line in the log")
        return took

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def cleanup(self):
        """Kills the server if it still runs; the log is removed by run() on success."""
        self.kill()


# ---- a raw WebSocket client ---------------------------------------------------


def connect(port, rcvbuf=None, nodelay=True, timeout=10.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if nodelay:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def request(path="/echo", key=None, extra=(), method="GET", version="13", upgrade="websocket",
            connection="Upgrade"):
    """An upgrade request head as bytes; key=None makes a random one, key=False omits it."""
    if key is None:
        key = base64.b64encode(os.urandom(16)).decode()
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1"]
    if upgrade is not None:
        lines.append("Upgrade: " + upgrade)
    if connection is not None:
        lines.append("Connection: " + connection)
    if key is not False:
        lines.append("Sec-WebSocket-Key: " + key)
    if version is not None:
        lines.append("Sec-WebSocket-Version: " + version)
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), key


def accept_for(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


class Conn:
    """A raw client connection with a receive buffer and a frame decoder."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.lport = sock.getsockname()[1]

    @classmethod
    def open(cls, port, path="/echo", extra=(), **kw):
        c = cls(connect(port, **kw))
        c.headers = c.handshake(path, extra)
        return c

    def local_port(self):
        return self.lport

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise EOFError("connection closed by the server")
        self.buf += d

    def read_head(self):
        """Reads an HTTP response head; returns (status, headers dict lowercased, raw head)."""
        while b"\r\n\r\n" not in self.buf:
            check(len(self.buf) < 65536, "response head larger than 64 KiB")
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        check(len(parts) >= 2 and parts[0] == "HTTP/1.1" and parts[1].isdigit(),
              "malformed status line %r" % lines[0])
        hdrs = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        return int(parts[1]), hdrs, head

    def handshake(self, path="/echo", extra=()):
        """Upgrades with the extra header lines given; returns the 101's headers (lowercased names)."""
        req, key = request(path, extra=extra)
        self.sock.sendall(req)
        status, hdrs, head = self.read_head()
        check(status == 101, "handshake: expected 101, got %d: %r" % (status, head))
        check(hdrs.get("sec-websocket-accept") == accept_for(key), "handshake: bad Sec-WebSocket-Accept")
        return hdrs

    def read_frame(self):
        """Returns (fin, opcode, payload). Server frames must be unmasked."""
        while len(self.buf) < 2:
            self._fill()
        b0, b1 = self.buf[0], self.buf[1]
        self.last_rsv = (b0 >> 4) & 7  # RSV1 = 4 (permessage-deflate), RSV2 = 2, RSV3 = 1
        check(not (b1 & 0x80), "server sent a masked frame")
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            while len(self.buf) < 4:
                self._fill()
            n = struct.unpack(">H", self.buf[2:4])[0]
            pos = 4
        elif n == 127:
            while len(self.buf) < 10:
                self._fill()
            n = struct.unpack(">Q", self.buf[2:10])[0]
            pos = 10
        while len(self.buf) < pos + n:
            self._fill()
        payload = self.buf[pos:pos + n]
        self.buf = self.buf[pos + n:]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def read_message(self, answer_pings=True):
        """Reads data frames until a complete message; returns (opcode, payload).
        A close frame raises Closed."""
        op0, parts = None, []
        while True:
            fin, op, p = self.read_frame()
            if op == OP_PING:
                if answer_pings:
                    self.send_frame(OP_PONG, p)
                continue
            if op == OP_PONG:
                continue
            if op == OP_CLOSE:
                raise Closed(close_code(p), p)
            if op0 is None:
                op0 = op
            parts.append(p)
            if fin:
                return op0, b"".join(parts)

    def read_close(self):
        """Reads frames until a close frame; returns (code, payload). Skips data and pings."""
        while True:
            fin, op, p = self.read_frame()
            if op == OP_CLOSE:
                return close_code(p), p

    def send_frame(self, op, payload=b"", fin=True, rsv=0):
        self.sock.sendall(frame(op, payload, fin=fin, rsv=rsv))

    def close(self, code=1000):
        try:
            self.send_frame(OP_CLOSE, struct.pack(">H", code))
            self.read_close()
            self.sock.settimeout(5)
            while self.sock.recv(65536):
                pass
        except (OSError, EOFError):
            pass
        self.sock.close()


class Closed(Exception):
    def __init__(self, code, payload):
        super().__init__("closed with %s" % code)
        self.code = code
        self.payload = payload


def close_code(p):
    return struct.unpack(">H", p[:2])[0] if len(p) >= 2 else 1005


def mask_bytes(payload, key):
    if not payload:
        return b""
    k = (key * (len(payload) // 4 + 1))[:len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(len(payload), "big")


def frame_header(op, length, fin=True, rsv=0, key=b"\x11\x22\x33\x44", masked=True):
    b0 = (0x80 if fin else 0) | (rsv << 4) | op
    m = 0x80 if masked else 0
    if length < 126:
        h = struct.pack(">BB", b0, m | length)
    elif length < 65536:
        h = struct.pack(">BBH", b0, m | 126, length)
    else:
        h = struct.pack(">BBQ", b0, m | 127, length)
    return h + (key if masked else b"")


def frame(op, payload=b"", fin=True, rsv=0, key=None):
    """A masked client frame."""
    if key is None:
        key = os.urandom(4)
    return frame_header(op, len(payload), fin, rsv, key) + mask_bytes(payload, key)


def echo_roundtrip(port, payload=b"still serving", op=OP_TEXT):
    """A well-behaved client: handshake, one echo, clean close. Raises Fail."""
    try:
        c = Conn.open(port)
        c.send_frame(op, payload)
        got_op, got = c.read_message()
        check(got_op == op and got == payload, "echo mismatch: %r %r" % (got_op, got[:64]))
        c.close()
    except (OSError, EOFError, Closed) as e:
        raise Fail("well-behaved echo client failed: %r" % e)


def wait_eof(sock, timeout):
    """Reads and discards until EOF/reset; returns ('eof'|'reset', bytes read). Fail on timeout."""
    sock.settimeout(timeout)
    n = 0
    try:
        while True:
            d = sock.recv(65536)
            if not d:
                return "eof", n
            n += len(d)
    except ConnectionResetError:
        return "reset", n
    except socket.timeout:
        raise Fail("server did not close the connection within %.0f s" % timeout)


def _dump_logs():
    for srv in _servers:
        print("---- server log %s (last 40 lines) ----" % srv.logf.name)
        print("\n".join(srv.log().splitlines()[-40:]), flush=True)


def run(main):
    """Runs main(binary) and exits 0 on success, 1 with a message on failure."""
    if len(sys.argv) < 2:
        print("usage: %s PATH/TO/duplex" % sys.argv[0], file=sys.stderr)
        sys.exit(2)
    name = os.path.basename(sys.argv[0])
    try:
        main(os.path.abspath(sys.argv[1]))
    except Fail as e:
        _dump_logs()
        print("FAIL %s: %s" % (name, e), flush=True)
        sys.exit(1)
    except Exception:
        import traceback
        traceback.print_exc()
        _dump_logs()
        print("FAIL %s: unexpected exception" % name, flush=True)
        sys.exit(1)
    for srv in _servers:
        try:
            os.unlink(srv.logf.name)
        except OSError:
            pass
    print("PASS %s" % name, flush=True)
