"""
tests/cli/test_interactive.py: `duplex connect` on a pseudo-terminal (the
interactive mode) against `duplex serve`'s /echo: a typed line comes back
after '< '; /ping prints the pong; /binary prints the hex marker; an unknown
command is reported; `/close 4000 bye` ends the process with status 1 (the
documented rule: any close code other than 1000/1001); Ctrl-D closes with
1000 and exits 0.
"""
from clitest import Serve, Term, check, main


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
