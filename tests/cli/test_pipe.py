"""
tests/cli/test_pipe.py: `duplex connect` in pipe mode against `duplex serve`'s
/echo: lines, --binary, --null, --show-frames, and the exit-status table
(0 normal close, 1 failure or abnormal close, 2 usage, 3 refused handshake).
"""
import os
import re
import subprocess
import time

from clitest import Fail, Serve, check, connect, free_port, main, no_sanitizer_report, spawn, wait_for


def opens(srv):
    return len(re.findall(r"conn=\d+ open", srv.log()))


def test_lines():
    srv = Serve()
    lines = ["hello", "", "ünïcödé ✓", "x" * 70000, "last"]
    data = ("\n".join(lines) + "\n").encode()
    r = connect(srv.url(), data=data)
    check(r.rc == 0, "exit status for a normal close: %r" % r)
    check(r.out == data, "echoed lines differ from the input: %r" % r)
    # A last line without a newline is still a message.
    r = connect(srv.url(), data=b"one\ntwo")
    check(r.rc == 0 and r.out == b"one\ntwo\n", "unterminated last line: %r" % r)
    # Invalid UTF-8 goes as binary, printed with the marker.
    r = connect(srv.url(), data=b"ok\n\xff\xfe\n")
    check(r.rc == 0, "invalid UTF-8 line: %r" % r)
    check(r.out == b"ok\n[binary 2 bytes] fffe\n", "invalid UTF-8 line echoed as %r" % r.out)
    check("not valid UTF-8" in r.errs, "no warning for a non-UTF-8 line: %r" % r)
    srv.stop()


def test_many_lines():
    srv = Serve()
    data = b"".join(b"line %d\n" % i for i in range(20000))
    r = connect(srv.url(), data=data, timeout=60)
    check(r.rc == 0 and r.out == data, "20000 lines: exit %s, %d of %d bytes back" % (r.rc, len(r.out), len(data)))
    srv.stop()


def test_binary():
    srv = Serve()
    data = os.urandom(300000)
    r = connect("--binary", srv.url(), data=data, timeout=30)
    check(r.rc == 0, "--binary exit status: %r" % r)
    check(r.out == data, "--binary round trip: %d bytes in, %d out" % (len(data), len(r.out)))
    r = connect("-b", srv.url(), data=b"")
    check(r.rc == 0 and r.out == b"", "--binary with empty stdin: %r" % r)
    srv.stop()


def test_null():
    srv = Serve()
    msgs = [b"a\nb", b"", b"line with\nnewlines\n", b"end"]
    data = b"\0".join(msgs) + b"\0"
    r = connect("--null", srv.url(), data=data)
    check(r.rc == 0 and r.out == data, "--null round trip: %r" % r)
    r = connect("-0", srv.url(), data=b"x\0y")
    check(r.rc == 0 and r.out == b"x\0y\0", "-0 with an unterminated last message: %r" % r)
    srv.stop()


def test_show_frames():
    srv = Serve()
    r = connect("--show-frames", srv.url(), data=b"hello\n")
    check(r.rc == 0 and r.out == b"hello\n", "--show-frames run: %r" % r)
    frames = [l for l in r.errs.splitlines() if l.startswith("frame ")]
    pat = re.compile(r'^frame ([<>]) opcode=(\d+)\((\w+)\) fin=([01]) rsv=([01]{3}) len=(\d+) masked=([01]) '
                     r'head=([0-9a-f]*)(\.\.\.)? "(.*)"$')
    parsed = []
    for l in frames:
        m = pat.match(l)
        check(m, "trace line does not have the documented fields: %r" % l)
        parsed.append(m.groups())
    sent = [g for g in parsed if g[0] == ">" and g[2] == "text"]
    got = [g for g in parsed if g[0] == "<" and g[2] == "text"]
    check(sent and sent[0][1:] == ("1", "text", "1", "000", "5", "1", "68656c6c6f", None, "hello"),
          "sent text frame trace: %r" % sent)
    check(got and got[0][1:] == ("1", "text", "1", "000", "5", "0", "68656c6c6f", None, "hello"),
          "received text frame trace (a server does not mask): %r" % got)
    closes = [g for g in parsed if g[2] == "close"]
    check(any(g[0] == ">" for g in closes) and any(g[0] == "<" for g in closes),
          "close frames both ways in the trace: %r" % frames)
    check(all(g[6] == "1" for g in parsed if g[0] == ">") and all(g[6] == "0" for g in parsed if g[0] == "<"),
          "sent frames masked, received not: %r" % frames)
    # A long payload shows its first 16 bytes and '...'.
    r = connect("--show-frames", srv.url(), data=b"A" * 40 + b"\n")
    long_ = [l for l in r.errs.splitlines() if l.startswith("frame >") and "len=40 " in l]
    check(long_ and long_[0].endswith('head=' + "41" * 16 + '... "' + "A" * 16 + '"'),
          "first 16 bytes of a long frame: %r" % r.errs)
    srv.stop()


def test_exit_status():
    srv = Serve()
    # 3: refused handshake (serve answers 404 outside /echo)
    r = connect(srv.url("/nope"), data=b"x\n")
    check(r.rc == 3, "refused handshake should exit 3: %r" % r)
    check("404" in r.errs, "the HTTP status should be printed: %r" % r)
    # 1: nothing listens
    port = free_port()
    r = connect("ws://127.0.0.1:%d/echo" % port, data=b"x\n")
    check(r.rc == 1, "connection refused should exit 1: %r" % r)
    # 1: the peer closes with a code other than 1000/1001 (the echo server echoes our close code:
    # use a too-big message instead: serve closes 1009)
    srv.stop()
    srv = Serve("--max-message", "100")
    r = connect(srv.url(), data=b"y" * 200 + b"\n")
    check(r.rc == 1 and "1009" in r.errs, "close 1009 should exit 1 and print the code: %r" % r)
    # 0: the server goes away with 1001 while we wait (SIGTERM to serve)
    before = opens(srv)
    p = spawn("--no-input", srv.url(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: opens(srv) > before, 10, "the client to connect")
    time.sleep(0.2)
    srv.stop()
    try:
        out, err = p.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        raise Fail("connect did not exit after the server closed with 1001")
    no_sanitizer_report(err)
    check(p.returncode == 0, "close 1001 from the server should exit 0: %s %r" % (p.returncode, err))
    # 2: usage
    for args in ([], ["--bogus", "ws://x/"], ["ws://a/", "ws://b/"], ["--ping-interval", "soon", "ws://a/"],
                 ["ftp://127.0.0.1:1/"], ["--listen", "70000"], ["--binary", "--null", "ws://a/"]):
        r = connect(*args)
        check(r.rc == 2, "usage error %r should exit 2: %r" % (args, r))
    r = connect("--help")
    check(r.rc == 0 and b"exit status" in r.out and b"[30s]" in r.out, "--help: %r" % r)


main([test_lines, test_many_lines, test_binary, test_null, test_show_frames, test_exit_status])
