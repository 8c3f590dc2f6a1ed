"""
tests/cli/test_stdin.py: what `duplex connect` reads on the loop (a dx_watch
on fd 0, or a 0 ms dx_timer when epoll refuses fd 0), and its flow control.

- stdin a regular file and /dev/null (epoll refuses both): read in chunks,
  every line echoed, exit 0; an empty input closes with 1000.
- stdin closed (`<&-`): an empty input; the loop's own descriptors do not
  take fd 0, and a closed stdout does not turn into a socket.
- a pipe kept open with no data: the loop still serves the connection and
  Ctrl-C (close 1000, exit 0), and a pipe that ends later ends the input.
- backpressure: 200 MiB piped (and 200 MiB read from a file) into
  `connect --binary` towards a server that reads slowly at first. The
  producer is held back (stdin is not read while the send queue is above
  its high-water mark: when the sink has got 8 MiB, connect has read at
  most 48 MiB more), the peak RSS of connect (VmHWM) stays within 48 MiB of
  an idle run's (without the pacing it would be 200 MiB more), and every
  byte arrives. Also for text lines (64 MiB of 1 KiB lines).
- a terminal (pty, libedit): lines typed while the handshake is still
  pending are sent, in order, once it completes; Ctrl-D before it completes
  gives up at once.
- fd 0's O_NONBLOCK, added for a pipe, is taken off again when connect
  exits (normally, and by a second Ctrl-C).
"""
import asyncio
import atexit
import base64
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

import clitest
from clitest import Fail, Serve, Term, check, connect, main, no_sanitizer_report, say, spawn, wait_for

import websockets

TMP = tempfile.mkdtemp(prefix="dx-cli-stdin-")
atexit.register(shutil.rmtree, TMP, True)
MiB = 1 << 20


def child_env():
    env = dict(os.environ)
    # Under ASan, freed blocks wait in a 256 MiB quarantine and count in the
    # RSS; keep it small so VmHWM measures what connect holds.
    asan = env.get("ASAN_OPTIONS", "")
    env["ASAN_OPTIONS"] = (asan + ":" if asan else "") + "quarantine_size_mb=8:thread_local_quarantine_size_kb=64"
    return env


def vm_hwm(pid):
    """The peak RSS of a running process in KiB (VmHWM: reset at exec, unlike
    ru_maxrss, which keeps the forking parent's), or 0 once it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_waited(cmd, timeout, **kw):
    """Runs cmd; returns (status, stdout, stderr, peak RSS in KiB). The peak
    is VmHWM sampled every 20 ms until the process exits: a high-water mark,
    so only a peak reached in its last 20 ms can be missed."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(), **kw)
    clitest._procs.append(p)
    out = []
    err = []
    ts = [threading.Thread(target=lambda f, acc: acc.append(f.read()), args=(p.stdout, out), daemon=True),
          threading.Thread(target=lambda f, acc: acc.append(f.read()), args=(p.stderr, err), daemon=True)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + timeout
    peak = 0
    while p.poll() is None:
        peak = max(peak, vm_hwm(p.pid))
        if time.monotonic() > deadline:
            p.kill()
            p.wait()
            raise Fail("%s did not exit within %d s" % (" ".join(cmd), timeout))
        time.sleep(0.02)
    for t in ts:
        t.join(10)
    o, e = (out[0] if out else b""), (err[0] if err else b"")
    no_sanitizer_report(e)
    return p.returncode, o, e.decode(errors="replace"), peak


def accept_key(head):
    key = re.search(rb"Sec-WebSocket-Key: *(\S+)", head, re.I).group(1)
    return base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())


class SlowSink:
    """A WebSocket server for one client that reads slowly (32 KiB per 10 ms)
    until it got `slow_bytes`, calls `at_fast()` then, and reads at full
    speed after; it counts payload bytes and messages (frames are parsed,
    payloads skipped unread) and answers the close with 1000."""

    def __init__(self, slow_bytes=8 * MiB, at_fast=None, stall_after=None):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.slow_bytes = slow_bytes
        self.at_fast = at_fast
        self.opened = threading.Event()
        self.stall_after = stall_after  # stop reading for good after this many bytes
        self.stalled = threading.Event()
        self.raw = 0
        self.payload = 0
        self.messages = 0
        self.close_code = None
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def url(self):
        return "ws://127.0.0.1:%d/" % self.port

    def _run(self):
        try:
            c, _ = self.sock.accept()
            c.settimeout(120)
            head = b""
            while b"\r\n\r\n" not in head:
                d = c.recv(4096)
                if not d:
                    return
                head += d
            rest = head[head.index(b"\r\n\r\n") + 4:]
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Accept: " + accept_key(head) + b"\r\n\r\n")
            self.opened.set()
            self._frames(c, bytearray(rest))
            c.close()
        except Exception as e:  # reported by the test
            self.error = e
        finally:
            self.sock.close()

    def _frames(self, c, buf):
        skip = 0  # payload bytes of the current data frame still to skip
        while True:
            if skip:
                n = min(skip, len(buf))
                del buf[:n]
                skip -= n
                self.payload += n
                if buf:
                    continue  # the frame ended inside buf: parse the next one
            elif len(buf) >= 2:
                b0, b1 = buf[0], buf[1]
                n = b1 & 0x7F
                hl = 2 + (2 if n == 126 else 8 if n == 127 else 0) + (4 if b1 & 0x80 else 0)
                if len(buf) >= hl:
                    if n == 126:
                        n = struct.unpack("!H", buf[2:4])[0]
                    elif n == 127:
                        n = struct.unpack("!Q", buf[2:10])[0]
                    op = b0 & 0x0F
                    if op in (0, 1, 2):
                        if b0 & 0x80:
                            self.messages += 1
                        del buf[:hl]
                        skip = n
                        continue
                    if len(buf) >= hl + n:  # a control frame, whole
                        if op == 8:
                            mask = buf[hl - 4:hl]
                            body = bytes(buf[hl + i] ^ mask[i % 4] for i in range(n))
                            self.close_code = struct.unpack("!H", body[:2])[0] if n >= 2 else 1005
                            c.sendall(b"\x88\x02\x03\xe8")  # close 1000
                            return
                        del buf[:hl + n]  # a ping (heartbeats are off in these runs) or pong
                        continue
            if self.stall_after is not None and self.raw >= self.stall_after:
                self.stalled.set()
                time.sleep(60)  # a daemon thread: the test does not wait for it
                return
            if self.raw < self.slow_bytes:
                d = c.recv(32768)
                time.sleep(0.01)
            else:
                d = c.recv(1 << 20)
            if not d:
                return
            before = self.raw
            self.raw += len(d)
            if before < self.slow_bytes <= self.raw and self.at_fast:
                self.at_fast()
            buf += d


def producer(w, total, block, stats):
    """Writes `total` bytes of `block` repeated to fd w, then closes it."""
    try:
        left = total
        while left:
            left -= os.write(w, block[:min(left, len(block))])
            stats["written"] = total - left
    except OSError as e:
        stats["error"] = e
    finally:
        os.close(w)


BASE = []


def baseline_rss():
    """The peak RSS of a connect that sends nothing (same options)."""
    if not BASE:
        srv = Serve()
        # -w 1: it stays up long enough for the 20 ms samples.
        rc, out, err, rss = run_waited([clitest.BIN, "connect", "-b", "--ping-interval", "off", "-w", "1",
                                        srv.url()], 30, stdin=subprocess.DEVNULL)
        check(rc == 0 and rss > 0, "idle run: exit %s rss %d %s" % (rc, rss, err))
        srv.stop()
        say("idle connect: peak RSS %d KiB" % rss)
        BASE.append(rss)
    return BASE[0]


def flow(what, args, total, block=None, path=None):
    """Sends `total` bytes through `connect ARGS` to a SlowSink, from a pipe
    fed by a producer thread (`block` repeated) or from the file `path`.
    Checks: while the sink reads slowly, connect has read at most 48 MiB more
    than the sink got; its peak RSS stays within 48 MiB of an idle run's;
    every byte arrives; exit 0. Returns the sink."""
    base = baseline_rss()
    stats = {"written": 0}
    lead = []
    f = r = w = None
    if path:
        f = open(path, "rb")
        read_so_far = lambda: os.lseek(f.fileno(), 0, os.SEEK_CUR)  # noqa: E731 - shared offset
    else:
        r, w = os.pipe()
        read_so_far = lambda: stats["written"]  # noqa: E731
    sink = SlowSink(at_fast=lambda: lead.append(read_so_far() - sink.raw))
    cmd = [clitest.BIN, "connect", "--ping-interval", "off"] + args + [sink.url()]
    say("run:", " ".join(cmd), "<", path or "a pipe", "(%d MiB)" % (total // MiB))
    res = {}

    def run():
        try:
            res["r"] = run_waited(cmd, 240, stdin=f if f else r)
        except Exception as e:  # raised below
            res["e"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    if r is not None:
        check(sink.opened.wait(30), "%s: connect did not open the connection" % what)
        os.close(r)  # after the Popen in run(), which has its copy
        pt = threading.Thread(target=producer, args=(w, total, block, stats), daemon=True)
        pt.start()
    t.join(240)
    if f:
        f.close()
    if "e" in res:
        raise res["e"]
    check("r" in res, "%s: connect did not finish" % what)
    rc, out, err, rss = res["r"]
    say("%s: exit %s, peak RSS %d KiB (idle %d KiB); connect read %s bytes more than the slow sink had got; "
        "the sink got %d payload bytes in %d messages" % (what, rc, rss, base, lead[0] if lead else None,
                                                          sink.payload, sink.messages))
    sink.thread.join(10)
    check(sink.error is None, "%s: the sink failed: %r" % (what, sink.error))
    check(rc == 0, "%s: exit %s: %s" % (what, rc, err[-2000:]))
    check(lead and lead[0] < 48 * MiB, "%s: stdin was not held back: connect read %s bytes more than the peer "
          "had taken" % (what, lead[0] if lead else None))
    check(rss - base < 48 * 1024, "%s: peak RSS %d KiB, %d KiB above an idle run's" % (what, rss, rss - base))
    check(sink.close_code == 1000, "%s: close code %s" % (what, sink.close_code))
    return sink


def test_backpressure_pipe():
    total = 200 * MiB
    sink = flow("200 MiB pipe", ["-b"], total, block=b"\x5a" * MiB)
    check(sink.payload == total, "the sink got %d payload bytes, expected %d" % (sink.payload, total))


def test_backpressure_lines():
    """Text lines: each 1 KiB line (with its newline) a message, 64 MiB."""
    total = 64 * MiB
    sink = flow("64 MiB of lines", [], total, block=(b"y" * 1023 + b"\n") * 1024)
    check(sink.payload == total // 1024 * 1023 and sink.messages == total // 1024,
          "lines: %d payload bytes in %d messages, expected %d in %d" %
          (sink.payload, sink.messages, total // 1024 * 1023, total // 1024))


def test_backpressure_file():
    """A 200 MiB (sparse) regular file: epoll refuses it, the 0 ms timer
    reads it, and the send queue's high-water mark still paces the reads."""
    total = 200 * MiB
    path = os.path.join(TMP, "big")
    with open(path, "wb") as f:
        f.truncate(total)
    try:
        sink = flow("200 MiB file", ["-b"], total, path=path)
    finally:
        os.unlink(path)
    check(sink.payload == total, "the sink got %d payload bytes, expected %d" % (sink.payload, total))


def test_file_and_devnull():
    srv = Serve()
    path = os.path.join(TMP, "lines")
    data = b"".join(b"file line %d\n" % i for i in range(5000)) + b"x" * 200000 + b"\nlast"
    with open(path, "wb") as f:
        f.write(data)
    with open(path, "rb") as f:
        p = spawn(srv.url(), stdin=f, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate(timeout=60)
    no_sanitizer_report(err)
    check(p.returncode == 0 and out == data + b"\n", "< file: exit %s, %d of %d bytes back %r" %
          (p.returncode, len(out), len(data) + 1, err))
    # --binary from a file: the bytes come back raw.
    with open(path, "rb") as f:
        p = spawn("-b", srv.url(), stdin=f, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate(timeout=60)
    no_sanitizer_report(err)
    check(p.returncode == 0 and out == data, "-b < file: exit %s, %d bytes back" % (p.returncode, len(out)))
    for extra in ([], ["-b"], ["-0"]):
        p = spawn(*extra, srv.url(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate(timeout=20)
        no_sanitizer_report(err)
        check(p.returncode == 0 and out == b"", "%s </dev/null: exit %s out %r err %r" % (extra, p.returncode, out, err))
    # -w after an empty input still waits, then closes with 1000.
    t0 = time.monotonic()
    p = spawn("-w", "1", srv.url(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=20)
    no_sanitizer_report(err)
    check(p.returncode == 0 and time.monotonic() - t0 >= 0.9, "-w 1 </dev/null: exit %s after %.1f s %r" %
          (p.returncode, time.monotonic() - t0, err))
    srv.stop()


def test_closed_stdin_and_stdout():
    srv = Serve("--log-level", "debug")
    b = clitest.BIN
    url = srv.url()
    r = subprocess.run("exec %s connect %s <&-" % (b, url), shell=True, capture_output=True, timeout=20)
    no_sanitizer_report(r.stderr)
    check(r.returncode == 0 and r.stdout == b"", "<&-: exit %s %r %r" % (r.returncode, r.stdout, r.stderr))
    # stdout closed: the echoes must not be written into the socket (which
    # would be a protocol error at the server); writing stdout fails instead.
    r = subprocess.run("exec %s connect %s >&-" % (b, url), shell=True, input=b"one\ntwo\n", capture_output=True,
                       timeout=20)
    no_sanitizer_report(r.stderr)
    check(b"writing stdout" in r.stderr, ">&-: the failed write to stdout is not reported: %r" % r.stderr)
    check(r.returncode == 0, ">&-: exit %s %r" % (r.returncode, r.stderr))
    # 1000 (the input ended) or 1001 (stdout failed), whichever came first.
    log = srv.log()
    check(re.search(r"conn=2 close .*code=100[01] .*msgs_in=2 ", log) and "code=1002" not in log,
          "the server should see two messages and a clean close, not a protocol error:\n" + log[-2000:])
    srv.stop()


def test_idle_pipe_ctrl_c_and_late_eof():
    srv = Serve()
    # A pipe with no data: the loop serves the connection; Ctrl-C closes 1000.
    r, w = os.pipe()
    p = spawn(srv.url(), stdin=r, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.write(w, b"early\n")
    line = p.stdout.readline()
    check(line == b"early\n", "first line over an open pipe: %r" % line)
    check(fcntl.fcntl(r, fcntl.F_GETFL) & os.O_NONBLOCK, "stdin (a pipe) was not made non-blocking")
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=15)
    no_sanitizer_report(err)
    check(p.returncode == 0, "Ctrl-C over an idle pipe: exit %s %r" % (p.returncode, err))
    check(not fcntl.fcntl(r, fcntl.F_GETFL) & os.O_NONBLOCK, "O_NONBLOCK left on the shared pipe after exit")
    os.close(w)
    os.close(r)

    # The pipe ends later: the input ends, close 1000, exit 0.
    r, w = os.pipe()
    p = spawn(srv.url(), stdin=r, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(r)
    os.write(w, b"one\n")
    check(p.stdout.readline() == b"one\n", "one line over a pipe")
    os.write(w, b"two")
    os.close(w)
    out, err = p.communicate(timeout=15)
    no_sanitizer_report(err)
    check(p.returncode == 0 and out == b"two\n", "late EOF: exit %s out %r err %r" % (p.returncode, out, err))

    # A second Ctrl-C (the first's close is stuck behind a peer that never
    # answers) exits 130 and still gives the pipe back blocking.
    sink = SlowSink(slow_bytes=1 << 60, stall_after=1 * MiB)  # reads 1 MiB slowly, then nothing
    r, w = os.pipe()
    p = spawn("-b", "--close-timeout", "60s", "--ping-interval", "off", sink.url(), stdin=r,
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    check(sink.opened.wait(20), "connect did not open the connection")
    fl = fcntl.fcntl(w, fcntl.F_GETFL)
    fcntl.fcntl(w, fcntl.F_SETFL, fl | os.O_NONBLOCK)
    block = b"z" * 65536
    written = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until the sink stalled and the pipe is full
        try:
            written += os.write(w, block)
        except BlockingIOError:
            if sink.stalled.is_set():
                break
            time.sleep(0.05)
    check(sink.stalled.is_set(), "the sink never got 1 MiB")
    say("second Ctrl-C test: %d bytes written before the pipe filled" % written)
    wait_for(lambda: fcntl.fcntl(r, fcntl.F_GETFL) & os.O_NONBLOCK, 10, "connect to set O_NONBLOCK")
    p.send_signal(signal.SIGINT)
    seen = b""
    while b"closing with 1000" not in seen:  # two signals sent at once may arrive as one
        line = p.stderr.readline()
        check(line, "connect ended after the first Ctrl-C: %r" % seen)
        seen += line
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=15)
    no_sanitizer_report(err)
    check(p.returncode == 130, "second Ctrl-C while stdin is held back: exit %s %r" % (p.returncode, err))
    check(not fcntl.fcntl(r, fcntl.F_GETFL) & os.O_NONBLOCK, "O_NONBLOCK left on the pipe after exit 130")
    os.close(w)
    os.close(r)
    srv.stop()


class GatedEcho:
    """A Python websockets echo server whose handshakes wait for `gate`."""

    def __init__(self):
        self.gate = threading.Event()
        self.asked = threading.Event()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def process_request(path, headers):
            self.asked.set()
            await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 30)
            return None

        async def echo(ws, path=None):
            async for m in ws:
                await ws.send(m)

        def run():
            asyncio.set_event_loop(self.loop)

            async def start():
                self.server = await websockets.serve(echo, "127.0.0.1", 0, process_request=process_request)
                self.port = self.server.sockets[0].getsockname()[1]
                ready.set()

            self.loop.run_until_complete(start())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        check(ready.wait(10), "python server did not start")

    def stop(self):
        self.gate.set()

        async def close():
            self.server.close()
            await self.server.wait_closed()
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_typing_before_open():
    py = GatedEcho()
    t = Term("ws://127.0.0.1:%d/" % py.port)
    check(py.asked.wait(10), "connect did not send its upgrade request")
    t.expect(b"> ")
    t.type(b"early one\n")
    t.expect(b"early one")  # the editor keeps taking keys while connecting
    t.type(b"early two\n")
    py.gate.set()
    t.expect(b"connected to")
    t.expect(b"< early one")
    t.expect(b"< early two")
    t.type(b"\x04")
    check(t.wait() == 0, "Ctrl-D after the early lines should close with 1000 and exit 0")
    py.stop()

    py = GatedEcho()
    t = Term("ws://127.0.0.1:%d/" % py.port)
    check(py.asked.wait(10), "connect did not send its upgrade request")
    t.expect(b"> ")
    t.type(b"\x04")  # Ctrl-D while the handshake is pending: give up
    rc = t.wait(10)
    check(rc == 1, "Ctrl-D before the connection opened: exit %s, expected 1 (no connection); terminal:\n%s" %
          (rc, t.buf.decode(errors="replace")))
    py.stop()


main([test_file_and_devnull, test_closed_stdin_and_stdout, test_idle_pipe_ctrl_c_and_late_eof, test_typing_before_open,
      test_backpressure_pipe, test_backpressure_lines, test_backpressure_file])
