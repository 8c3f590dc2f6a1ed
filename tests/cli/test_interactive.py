"""
tests/cli/test_interactive.py: `duplex connect` on a pseudo-terminal (the
interactive mode) against `duplex serve`'s /echo: a typed line comes back
after '< '; /ping prints the pong; /binary prints the hex marker; an unknown
command is reported; `/close 4000 bye` ends the process with status 1 (the
documented rule: any close code other than 1000/1001); Ctrl-D closes with
1000 and exits 0.
"""
import os
import pty
import select
import subprocess
import time

from clitest import Fail, Serve, check, main, no_sanitizer_report
import clitest


class Term:
    """`duplex connect ARGS` with stdin, stdout and stderr on one pty."""

    def __init__(self, *args):
        self.master, slave = pty.openpty()
        cmd = [clitest.BIN, "connect"] + list(args)
        clitest.say("pty:", " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
        clitest._procs.append(self.proc)
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


def test_session():
    srv = Serve()
    t = Term(srv.url())
    t.expect(b"connected to")
    t.type(b"hello there\n")
    t.expect(b"< hello there\r\n")
    t.type(b"/ping are you there\n")
    t.expect(b"< pong: are you there")
    t.type(b"/binary 00ff 10\n")
    t.expect(b"< [binary 3 bytes] 00ff10")
    t.type(b"//slash\n")
    t.expect(b"< /slash")
    t.type(b"/frobnicate\n")
    t.expect(b"unknown command")
    t.type(b"/close 4000 bye\n")
    t.expect(b"closed: 4000")
    rc = t.wait()
    check(rc == 1, "`/close 4000 bye` should exit 1 (a code other than 1000/1001), got %s" % rc)
    srv.stop()


def test_ctrl_d():
    srv = Serve()
    t = Term(srv.url())
    t.expect(b"connected to")
    t.type(b"first\n")
    t.expect(b"< first")
    t.type(b"\x04")  # Ctrl-D at the start of a line: end of input
    rc = t.wait()
    check(rc == 0, "Ctrl-D should close with 1000 and exit 0, got %s; terminal:\n%s" % (rc, t.buf))
    srv.stop()


def test_close_default():
    srv = Serve()
    t = Term(srv.url())
    t.expect(b"connected to")
    t.type(b"/close\n")
    rc = t.wait()
    check(rc == 0, "/close (1000) should exit 0, got %s" % rc)
    srv.stop()


main([test_session, test_ctrl_d, test_close_default])
