"""
tests/cli/test_options.py: the wscat/websocat habits of `duplex connect`
(issue 8), each against a real peer (duplex serve, Python websockets, small
raw-socket servers written here):
  -x/--execute (repeatable), -w/--wait keeps the connection after the input
  ends (a late reply is printed), --max-messages/-1, --version, a URL
  without scheme, ws+unix:// URLs, errors naming a forbidden -H or a bad
  --proxy, --basic-auth, client certificates (--cert/--key against a server
  that requires them), SOCKS5 proxies (--proxy socks5://, --socks5), a
  refusing SOCKS5 proxy, -L/--follow-redirects (and its bound), Ctrl-C
  (SIGINT) closes with 1000 and a second one exits at once, received
  control characters shown escaped on a terminal, --listen refusing browser
  origins unless --origin-allow, and --keep serving clients in turn.
"""
import asyncio
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time

import clitest
from clitest import Fail, Serve, Term, check, connect, free_port, main, spawn, wait_for

import websockets

TMP = tempfile.mkdtemp(prefix="dx-cli-opts-")


class PyServer:
    """A Python websockets server on its own thread and event loop."""

    def __init__(self, handler, **kw):
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.kw = kw
        self.handler = handler
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        check(self.ready.wait(10), "python server did not start")

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def start():
            self.server = await websockets.serve(self.handler, "127.0.0.1", 0, **self.kw)
            self.port = self.server.sockets[0].getsockname()[1]
            self.ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def stop(self):
        async def close():
            self.server.close()
            await self.server.wait_closed()
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class RawServer:
    """A TCP server on a thread: `fn(conn)` handles each connection."""

    def __init__(self, fn):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.fn = fn
        self.seen = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c):
        try:
            self.fn(self, c)
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self.sock.close()


def recv_exact(c, n):
    data = b""
    while len(data) < n:
        chunk = c.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def read_head(c):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(4096)
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    finally:
        try:
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def trickle(c, data):
    """Sends one byte at a time: the client must gather split answers."""
    for i in range(len(data)):
        c.sendall(data[i:i + 1])
        time.sleep(0.01)


def socks5(refuse=None, split=False):
    """A SOCKS5 proxy (no authentication); records the requested address."""
    def handle(srv, c):
        hello = recv_exact(c, 2)
        recv_exact(c, hello[1])
        (trickle if split else socket.socket.sendall)(c, b"\x05\x00")
        ver, cmd, _, atyp = recv_exact(c, 4)
        if atyp == 3:
            host = recv_exact(c, recv_exact(c, 1)[0]).decode()
        elif atyp == 1:
            host = socket.inet_ntoa(recv_exact(c, 4))
        else:
            host = socket.inet_ntop(socket.AF_INET6, recv_exact(c, 16))
        port = struct.unpack("!H", recv_exact(c, 2))[0]
        srv.seen.append((atyp, host, port))
        if refuse:
            c.sendall(bytes([5, refuse, 0, 1, 0, 0, 0, 0, 0, 0]))
            return
        up = socket.create_connection(("127.0.0.1" if host == "localhost" else host, port), timeout=10)
        # a domain-name bound address: the variable-length form of the reply
        reply = b"\x05\x00\x00\x03\x09localhost" + struct.pack("!H", up.getsockname()[1])
        (trickle if split else socket.socket.sendall)(c, reply)
        t = threading.Thread(target=pipe, args=(up, c), daemon=True)
        t.start()
        pipe(c, up)
        t.join(10)
        up.close()
    return RawServer(handle)


def test_execute_wait_max_messages():
    srv = Serve()
    r = connect("-x", "one", "-x", "two", "127.0.0.1:%d/echo" % srv.port)  # no scheme: ws://
    check(r.rc == 0 and r.out == b"one\ntwo\n", "-x twice: %r" % r)
    r = connect("--version")
    check(r.rc == 0 and re.match(rb"duplex connect \d+\.\d+", r.out), "--version: %r" % r)

    # A server that answers one second late: lost without -w, printed with it.
    async def late(ws, path=None):
        async for m in ws:
            await asyncio.sleep(1.0)
            try:
                await ws.send("late " + m)
            except websockets.exceptions.ConnectionClosed:
                pass

    py = PyServer(late)
    url = "ws://127.0.0.1:%d/" % py.port
    r = connect(url, data=b"hi\n")
    check(r.rc == 0 and r.out == b"", "without -w the late reply should not be waited for: %r" % r)
    t0 = time.monotonic()
    r = connect("-w", "3", url, data=b"hi\n")
    check(r.rc == 0 and r.out == b"late hi\n", "-w 3: %r" % r)
    check(time.monotonic() - t0 >= 2.5, "-w 3 closed before 3 s")
    t0 = time.monotonic()
    r = connect("-1", url, data=b"hi\n")
    check(r.rc == 0 and r.out == b"late hi\n", "-1: %r" % r)
    check(time.monotonic() - t0 < 30, "-1 did not exit after the message")
    r = connect("--max-messages", "2", "-x", "a", "-x", "b", url)
    check(r.rc == 0 and r.out == b"late a\nlate b\n", "--max-messages 2 with -x: %r" % r)
    py.stop()
    srv.stop()


def test_errors_name_the_problem():
    srv = Serve()
    url = srv.url()
    for h, want in (("Upgrade: x", "Upgrade"), ("Sec-WebSocket-Protocol: chat", "-s/--subprotocol"),
                    ("Origin: http://a", "-o/--origin"), ("Bad Name: x", "expected 'Name: value'")):
        r = connect("-H", h, url)
        check(r.rc == 2 and want in r.errs and "invalid URL" not in r.errs, "-H %r: %r" % (h, r))
    r = connect("--proxy", "ftp://127.0.0.1:1", url)
    check(r.rc == 2 and "--proxy 'ftp://127.0.0.1:1'" in r.errs, "bad proxy scheme: %r" % r)
    r = connect("--proxy", "http://127.0.0.1:99999", url)
    check(r.rc == 2 and "invalid --proxy" in r.errs, "bad proxy port: %r" % r)
    r = connect("ws://", data=b"")
    check(r.rc == 2 and "invalid URL" in r.errs, "bad URL: %r" % r)
    r = connect("--cert", "x.pem", url)
    check(r.rc == 2 and "--cert and --key" in r.errs, "--cert alone: %r" % r)
    srv.stop()


def test_unix_url():
    path = os.path.join(TMP, "s.sock")
    p = subprocess.Popen([clitest.BIN, "serve", "--unix", path], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    clitest._procs.append(p)
    check(p.stdout.readline().startswith(b"duplex: serving unix:"), "serve --unix did not start")
    r = connect("ws+unix://%s:/echo" % path, data=b"over unix\n")
    check(r.rc == 0 and r.out == b"over unix\n", "ws+unix: %r" % r)
    r = connect("ws+unix://%s:/nope" % path, data=b"x\n")
    check(r.rc == 3 and "404" in r.errs, "ws+unix 404: %r" % r)
    r = connect("ws+unix://%s.missing:/echo" % path, data=b"x\n")
    check(r.rc == 1 and "unix:%s.missing" % path in r.errs, "missing socket: %r" % r)
    p.terminate()
    p.wait(15)


def test_basic_auth():
    seen = {}

    async def handler(ws, path=None):
        seen["auth"] = ws.request_headers.get("Authorization")
        await ws.send("welcome")
        await ws.close()

    py = PyServer(handler)
    r = connect("--basic-auth", "alice:s3cr:et", "-n", "ws://127.0.0.1:%d/" % py.port)
    check(r.rc == 0 and r.out == b"welcome\n", "--basic-auth: %r" % r)
    check(seen.get("auth") == "Basic YWxpY2U6czNjcjpldA==", "Authorization header: %r" % seen.get("auth"))
    py.stop()


def make_cert(name, cn, san=None, ca=None):
    crt, key = os.path.join(TMP, name + ".crt"), os.path.join(TMP, name + ".key")
    cmd = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
           "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=" + cn]
    if san:
        cmd += ["-addext", "subjectAltName=" + san]
    subprocess.run(cmd, check=True, capture_output=True)
    return crt, key


def test_client_certificate():
    scrt, skey = make_cert("server", "localhost", "DNS:localhost,IP:127.0.0.1")
    ccrt, ckey = make_cert("client", "alice")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(scrt, skey)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(ccrt)
    seen = {}

    async def handler(ws, path=None):
        peer = ws.transport.get_extra_info("peercert")
        seen["cn"] = dict(x[0] for x in peer["subject"])["commonName"]
        await ws.send("hello " + seen["cn"])
        await ws.close()

    py = PyServer(handler, ssl=ctx)
    url = "wss://127.0.0.1:%d/" % py.port
    r = connect("--ca", scrt, "-n", url)
    check(r.rc != 0, "a server requiring a client certificate accepted none: %r" % r)
    r = connect("--ca", scrt, "--cert", ccrt, "--key", ckey, "-n", url)
    check(r.rc == 0 and r.out == b"hello alice\n", "--cert/--key: %r" % r)
    check(seen.get("cn") == "alice", "the server saw %r" % seen)
    r = connect("--ca", scrt, "--cert", ccrt, "--key", skey, "-n", url)
    check(r.rc == 1 and "mismatch" in r.errs and "client key" in r.errs, "mismatched key: %r" % r)
    py.stop()


def test_socks5():
    srv = Serve()
    px = socks5()
    r = connect("--proxy", "socks5://127.0.0.1:%d" % px.port, srv.url(host="localhost"), data=b"via socks\n")
    check(r.rc == 0 and r.out == b"via socks\n", "socks5 by name: %r" % r)
    check(px.seen[-1] == (3, "localhost", srv.port), "the proxy was asked for %r" % (px.seen[-1],))
    r = connect("--socks5", "127.0.0.1:%d" % px.port, srv.url(), data=b"literal\n")  # websocat's spelling
    check(r.rc == 0 and r.out == b"literal\n", "--socks5 with an IP literal: %r" % r)
    check(px.seen[-1] == (1, "127.0.0.1", srv.port), "the proxy was asked for %r" % (px.seen[-1],))
    px.stop()
    bad = socks5(refuse=5)
    r = connect("--proxy", "socks5://127.0.0.1:%d" % bad.port, srv.url(), data=b"x\n")
    check(r.rc == 3 and "connection refused" in r.errs and "SOCKS5" in r.errs, "refusing proxy: %r" % r)
    bad.stop()
    slow = socks5(split=True)  # every answer byte by byte
    r = connect("--proxy", "socks5://127.0.0.1:%d" % slow.port, srv.url(), data=b"split\n")
    check(r.rc == 0 and r.out == b"split\n", "socks5 with split answers: %r" % r)
    slow.stop()

    def http_not_socks(rs, c):
        c.recv(16)
        c.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    junk = RawServer(http_not_socks)
    r = connect("--proxy", "socks5://127.0.0.1:%d" % junk.port, srv.url(), data=b"x\n")
    check(r.rc == 3 and "malformed answer" in r.errs, "an HTTP server as SOCKS5 proxy: %r" % r)

    def hang_up(rs, c):
        c.recv(16)
        c.sendall(b"\x05")  # half an answer, then close

    hu = RawServer(hang_up)
    r = connect("--proxy", "socks5://127.0.0.1:%d" % hu.port, srv.url(), data=b"x\n")
    check(r.rc == 1 and "proxy closed the connection" in r.errs, "a proxy closing mid-answer: %r" % r)
    junk.stop()
    hu.stop()
    srv.stop()


def test_follow_redirects():
    srv = Serve()

    def redirect(target):
        def handle(rs, c):
            read_head(c)
            rs.seen.append(1)
            c.sendall(("HTTP/1.1 301 Moved Permanently\r\nLocation: %s\r\nContent-Length: 0\r\n"
                       "Connection: close\r\n\r\n" % target(rs)).encode())
        return handle

    rd = RawServer(redirect(lambda rs: "http://127.0.0.1:%d/echo" % srv.port))
    url = "ws://127.0.0.1:%d/old" % rd.port
    r = connect(url, data=b"x\n")
    check(r.rc == 3 and "301" in r.errs and "Location: http://127.0.0.1:%d/echo" % srv.port in r.errs,
          "without -L the redirect is shown: %r" % r)
    r = connect("-L", url, data=b"moved\n")
    check(r.rc == 0 and r.out == b"moved\n", "-L: %r" % r)
    check("following the redirect to ws://127.0.0.1:%d/echo" % srv.port in r.errs, "-L notice: %r" % r)
    loop = RawServer(redirect(lambda rs: "/again"))  # relative, to itself: a loop
    r = connect("-L", "ws://127.0.0.1:%d/start" % loop.port, data=b"x\n")
    check(r.rc == 3 and "more than 5 redirects" in r.errs, "redirect loop: %r" % r)
    check(len(loop.seen) == 6, "a redirect loop made %d requests, expected 6" % len(loop.seen))
    rd.stop()
    loop.stop()
    srv.stop()


def test_ctrl_c():
    srv = Serve()
    t = Term(srv.url())
    t.expect(b"connected to")
    os.kill(t.proc.pid, signal.SIGINT)
    t.expect(b"closing with 1000")
    t.expect(b"closed: 1000")
    check(t.wait() == 0, "Ctrl-C should close with 1000 and exit 0")
    srv.stop()

    # A server that never answers the close: the second Ctrl-C exits at once.
    def deaf(rs, c):
        head = read_head(c).decode()
        key = re.search(r"Sec-WebSocket-Key: (\S+)", head, re.I).group(1)
        import base64
        import hashlib
        acc = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Accept: " + acc + b"\r\n\r\n")
        time.sleep(30)

    rs = RawServer(deaf)
    t = Term("--close-timeout", "60s", "ws://127.0.0.1:%d/" % rs.port)
    t.expect(b"connected to")
    os.kill(t.proc.pid, signal.SIGINT)
    t.expect(b"closing with 1000")
    t0 = time.monotonic()
    os.kill(t.proc.pid, signal.SIGINT)
    rc = t.wait(10)
    check(rc == 130, "second Ctrl-C: exit %s, expected 130" % rc)
    check(time.monotonic() - t0 < 5, "the second Ctrl-C did not exit at once")
    rs.stop()

    # Ctrl-C while the handshake is still pending: the attempt is abandoned.
    def silent(rs, c):
        read_head(c)
        rs.seen.append(1)
        time.sleep(30)

    hs = RawServer(silent)
    p = spawn("-n", "ws://127.0.0.1:%d/" % hs.port, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
              stderr=subprocess.PIPE)
    wait_for(lambda: hs.seen, 10, "the upgrade request (the loop runs: the handler is installed)")
    p.send_signal(signal.SIGINT)
    try:
        out, err = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        raise Fail("Ctrl-C during the handshake did not end connect")
    clitest.no_sanitizer_report(err)
    check(p.returncode == 1, "Ctrl-C during the handshake: exit %s %r" % (p.returncode, err))
    hs.stop()


def test_control_characters_escaped():
    async def handler(ws, path=None):
        await ws.send("\x1b[2J\x1b]0;title\x07red\tline\nnext\r\x7f\u0085 back\\slash")
        await ws.wait_closed()

    py = PyServer(handler)
    t = Term("ws://127.0.0.1:%d/" % py.port)
    line = t.expect(b"slash").replace(b"\r\x1b[K", b"")  # the line editor's own "clear the row"
    check(b"\x1b" not in line and b"\x07" not in line, "raw control bytes reached the terminal: %r" % line)
    want = rb"< \e[2J\e]0;title\x07red\tline\nnext\r\x7f\u0085 back\\slash"
    check(want in line, "escaped line %r not in %r" % (want, line))
    os.kill(t.proc.pid, signal.SIGINT)
    t.wait(15)
    py.stop()


def test_line_editing():
    """libedit: a message arriving while a line is typed is printed above
    it, and the typed text is redrawn and sent whole; history recalls."""
    r = connect("--version")
    check(b"line editing: libedit" in r.out, "built without libedit: %r" % r.out)
    sent = []
    typed = threading.Event()

    async def handler(ws, path=None):
        async for m in ws:
            sent.append(m)
            if m == "later":  # answer once the test has typed half a line
                await asyncio.get_running_loop().run_in_executor(None, typed.wait, 10)
            await ws.send("got " + m)

    py = PyServer(handler)
    t = Term("ws://127.0.0.1:%d/" % py.port)
    t.expect(b"connected to")
    t.type(b"first line\n")
    t.expect(b"< got first line")
    t.type(b"later\n")
    wait_for(lambda: "later" in sent, 10, "the server to get 'later'")
    t.type(b"half typ")
    t.expect(b"half typ")
    typed.set()
    t.expect(b"< got later")
    redraw = t.expect(b"half typ", timeout=10)  # the typed text drawn again below the message
    check(b"\n" in redraw, "the typed text was not redrawn on its own line: %r" % redraw)
    t.type(b"ed\n")
    t.expect(b"< got half typed")
    t.type(b"\x1b[A\n")  # up arrow: the last line again
    t.expect(b"< got half typed")
    check(sent[-2:] == ["half typed", "half typed"], "sent %r" % sent)
    t.type(b"\x04")
    check(t.wait() == 0, "Ctrl-D after editing should close with 1000 and exit 0")
    py.stop()


def start_listener(*extra):
    p = spawn("--listen", "0", *extra, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = p.stderr.readline().decode()
    m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    if not m:
        raise Fail("no 'listening on' line: %r" % line)
    return p, int(m.group(1))


def test_listen_origin_and_keep():
    p, port = start_listener("-n")
    url = "ws://127.0.0.1:%d/" % port

    async def browser(origin):
        async with websockets.connect(url, origin=origin) as ws:
            await ws.send("from " + origin)
            await ws.close()

    try:
        asyncio.run(browser("http://evil.example"))
        raise Fail("a browser origin was accepted without --origin-allow")
    except websockets.exceptions.InvalidStatusCode as e:
        check(e.status_code == 403, "browser refused with %s, expected 403" % e.status_code)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=15)
    check(b"Origin http://evil.example" in err and b"--origin-allow" in err, "refusal not explained: %r" % err)

    p, port = start_listener("-n", "--keep", "--origin-allow", "http://ok.example")
    url = "ws://127.0.0.1:%d/" % port
    asyncio.run(browser("http://ok.example"))

    async def tool(i):
        async with websockets.connect(url) as ws:  # no Origin: a tool
            await ws.send("client %d" % i)
            await ws.close()

    asyncio.run(tool(2))

    async def vanish():  # a client that drops without a close frame
        ws = await websockets.connect(url)
        await ws.send("dropping")
        await asyncio.sleep(0.1)
        ws.transport.abort()

    asyncio.run(vanish())
    time.sleep(0.2)
    asyncio.run(tool(3))
    time.sleep(0.2)
    check(p.poll() is None, "--keep exited after a client")
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=15)
    check(out == b"from http://ok.example\nclient 2\ndropping\nclient 3\n", "--keep printed %r (%r)" % (out, err))
    check(p.returncode == 0, "--keep exit status %s after Ctrl-C (the last client closed with 1000)" % p.returncode)


main([test_execute_wait_max_messages, test_errors_name_the_problem, test_unix_url, test_basic_auth,
      test_client_certificate, test_socks5, test_follow_redirects, test_ctrl_c, test_control_characters_escaped,
      test_line_editing, test_listen_origin_and_keep])
