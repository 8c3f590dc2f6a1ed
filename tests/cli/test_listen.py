"""
tests/cli/test_listen.py: `duplex connect --listen PORT`, the one-shot server:
a Python websockets client (Debian's python3-websockets) sends text and
binary and closes; the listener prints them with the pipe-mode rules and
exits 0; a second client is refused while the first is connected; stdin
lines go to the client; another `duplex connect` works as the client too.
"""
import asyncio
import re
import subprocess

from clitest import Fail, check, main, no_sanitizer_report, spawn

import websockets


def start_listener(*extra, stdin=subprocess.DEVNULL):
    p = spawn("--listen", "0", *extra, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = p.stderr.readline().decode()
    m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    if not m:
        raise Fail("no 'listening on' line from --listen: %r" % line)
    return p, int(m.group(1))


def finish(p, timeout=15):
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise Fail("the listener did not exit; stdout %r stderr %r" % (out, err))
    no_sanitizer_report(err)
    return p.returncode, out, err.decode(errors="replace")


def test_python_client():
    p, port = start_listener("--no-input", "--subprotocol", "chat")

    async def client():
        url = "ws://127.0.0.1:%d/some/path?x=1" % port
        async with websockets.connect(url, subprotocols=["other", "chat"]) as ws:
            check(ws.subprotocol == "chat", "subprotocol chosen by --listen: %r" % ws.subprotocol)
            # one client only: a second is refused
            try:
                async with websockets.connect(url):
                    raise Fail("a second client was accepted")
            except websockets.exceptions.InvalidStatusCode as e:
                check(e.status_code == 503, "second client refused with %s, expected 503" % e.status_code)
            await ws.send("hello listener")
            await ws.send(b"\x01\x02\x03")
            await ws.send("ünïcödé")
            pong = await ws.ping(b"p")
            await asyncio.wait_for(pong, 5)
            await ws.close(1000, "done")

    asyncio.run(asyncio.wait_for(client(), 20))
    rc, out, err = finish(p)
    check(rc == 0, "listener exit status after a 1000 close: %s (%s)" % (rc, err))
    expect = "hello listener\n[binary 3 bytes] 010203\nünïcödé\n".encode()
    check(out == expect, "listener printed %r, expected %r" % (out, expect))


def test_stdin_to_client():
    p, port = start_listener(stdin=subprocess.PIPE)

    async def client():
        async with websockets.connect("ws://127.0.0.1:%d/" % port) as ws:
            p.stdin.write(b"to the client\n")
            p.stdin.flush()
            got = await asyncio.wait_for(ws.recv(), 10)
            check(got == "to the client", "client got %r from the listener's stdin" % got)
            await ws.send("back")
            await ws.close(4001, "custom")

    asyncio.run(asyncio.wait_for(client(), 20))
    rc, out, err = finish(p)
    check(out == b"back\n", "listener printed %r" % out)
    check(rc == 1 and "4001" in err, "a 4001 close should exit 1 and print the code: %s %r" % (rc, err))


def test_duplex_client():
    p, port = start_listener("--no-input", "--null")
    c = spawn("--null", "ws://127.0.0.1:%d/" % port, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
              stderr=subprocess.PIPE)
    try:
        cout, cerr = c.communicate(b"one\0two\0", timeout=15)
    except subprocess.TimeoutExpired:
        raise Fail("the duplex client did not exit")
    no_sanitizer_report(cerr)
    rc, out, err = finish(p)
    check(c.returncode == 0, "client exit %s: %r" % (c.returncode, cerr))
    check(rc == 0 and out == b"one\0two\0", "listener: exit %s printed %r (%s)" % (rc, out, err))


def test_abrupt_client():
    p, port = start_listener("--no-input")

    async def client():
        ws = await websockets.connect("ws://127.0.0.1:%d/" % port)
        await ws.send("before the drop")
        await asyncio.sleep(0.2)
        ws.transport.abort()  # no close frame: 1006

    asyncio.run(asyncio.wait_for(client(), 20))
    rc, out, err = finish(p)
    check(out == b"before the drop\n", "printed %r" % out)
    check(rc == 1 and "1006" in err, "a dropped client should exit 1 with 1006: %s %r" % (rc, err))


main([test_python_client, test_stdin_to_client, test_duplex_client, test_abrupt_client])
