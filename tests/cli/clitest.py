"""
tests/cli/clitest.py: shared helpers for the tests of `duplex connect`
(issue 4).

A test script gets the duplex binary as argv[1], starts what it needs on
free loopback ports (Serve: `duplex serve`, stopped by PID with SIGTERM),
runs `duplex connect` with a bounded timeout (connect()) and checks its
output and exit status. Every check raises Fail with a clear message; main()
turns that into exit status 1 and kills whatever is left.

Standard library only here; tests that need a real peer import Debian's
python3-websockets (run with /usr/bin/python3).
"""
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

BIN = None  # set by main()
_procs = []
_logs = []  # temporary log files, removed by main() at the end


class Fail(Exception):
    pass


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


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise Fail("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(0.05)


class Serve:
    """`duplex serve` on 127.0.0.1:<free port>, one worker, log in a temp file."""

    def __init__(self, *args, port=None):
        self.port = port or free_port()
        self.logf = tempfile.NamedTemporaryFile(prefix="dx-cli-serve-", suffix=".log", delete=False)
        _logs.append(self.logf.name)
        cmd = [BIN, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"] + list(args)
        say("server:", " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf)
        _procs.append(self.proc)
        wait_for(lambda: "listening on" in self.log() or self.proc.poll() is not None, 15, "serve to listen")
        check(self.proc.poll() is None, "serve exited at start:\n" + self.log())

    def log(self):
        with open(self.logf.name, errors="replace") as f:
            return f.read()

    def url(self, path="/echo", scheme="ws", host="127.0.0.1"):
        return "%s://%s:%d%s" % (scheme, host, self.port, path)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise Fail("serve did not stop within 15 s of SIGTERM")


SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def no_sanitizer_report(text):
    """Fails when a sanitizer report is in `text` (str or bytes): the exit
    status alone does not tell a report from an expected status 1."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    for m in SANITIZER_MARKS:
        check(m not in text, "sanitizer report:\n" + text[-4000:])


class Result:
    def __init__(self, rc, out, err):
        self.rc, self.out, self.err = rc, out, err
        self.errs = err.decode(errors="replace")
        no_sanitizer_report(self.errs)

    def __repr__(self):
        return "exit %s\n--- stdout ---\n%r\n--- stderr ---\n%s" % (self.rc, self.out[:2000], self.errs[-3000:])


def connect(*args, data=b"", timeout=20):
    """Runs `duplex connect ARGS` with `data` on stdin (a pipe: pipe mode)."""
    cmd = [BIN, "connect"] + list(args)
    say("run:", " ".join(cmd))
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _procs.append(p)
    try:
        out, err = p.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise Fail("duplex connect %s did not exit within %d s\n%r" % (args, timeout, Result(None, out, err)))
    return Result(p.returncode, out, err)


def spawn(*args, **kw):
    """Starts `duplex connect ARGS` in the background (the caller owns it)."""
    cmd = [BIN, "connect"] + list(args)
    say("spawn:", " ".join(cmd))
    p = subprocess.Popen(cmd, **kw)
    _procs.append(p)
    return p


class Term:
    """`duplex connect ARGS` with stdin, stdout and stderr on one pty."""

    def __init__(self, *args):
        self.master, slave = pty.openpty()
        cmd = [BIN, "connect"] + list(args)
        say("pty:", " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
        _procs.append(self.proc)
        os.close(slave)
        self.buf = b""

    def _read(self, timeout):
        r, _, _ = select.select([self.master], [], [], timeout)
        if not r:
            return False
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed the terminal
            return None
        if not chunk:
            return None
        self.buf += chunk
        return True

    def expect(self, text, timeout=10):
        """Waits until `text` (bytes) appears after the previous match; returns what came before."""
        deadline = time.monotonic() + timeout
        while text not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or self._read(left) is None:
                raise Fail("did not see %r on the terminal; got:\n%s" % (text, self.buf.decode(errors="replace")))
        i = self.buf.index(text) + len(text)
        before, self.buf = self.buf[:i], self.buf[i:]
        return before

    def type(self, s):
        os.write(self.master, s)

    def wait(self, timeout=15):
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise Fail("the interactive client did not exit; terminal:\n" + self.buf.decode(errors="replace"))
            self._read(0.05)
        while self._read(0.05):
            pass
        os.close(self.master)
        no_sanitizer_report(self.buf)
        return self.proc.returncode



def main(tests):
    """Runs each test function in turn; exit 0 if all passed."""
    global BIN
    if len(sys.argv) < 2:
        print("usage: %s path/to/duplex" % sys.argv[0])
        sys.exit(2)
    BIN = os.path.abspath(sys.argv[1])
    failed = 0
    for t in tests:
        t0 = time.monotonic()
        try:
            t()
            say("ok   %s (%.1f s)" % (t.__name__, time.monotonic() - t0))
        except Exception as e:  # noqa: BLE001 - report every kind of failure
            failed += 1
            say("FAIL %s: %s" % (t.__name__, e))
            if not isinstance(e, Fail):
                traceback.print_exc()
        finally:
            for p in _procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            _procs.clear()
    for name in _logs:
        try:
            os.unlink(name)
        except OSError:
            pass
    say("%s: %d passed, %d failed" % (os.path.basename(sys.argv[0]), len(tests) - failed, failed))
    sys.exit(1 if failed else 0)
