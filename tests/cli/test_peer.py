"""
tests/cli/test_peer.py: `duplex connect` against Python peers (Debian's
python3-websockets and a small HTTP CONNECT proxy written here):
  --echo: the server sends text, binary, a fragmented and a large message and
          a ping; each comes back with its opcode; the server closes 1000;
  -H, --origin, --subprotocol arrive at the server; --no-input prints;
  a close with 4002 and a dropped TCP connection exit 1 with the code;
  --proxy tunnels through CONNECT;
  --reconnect: gives up after --max-attempts, and input waits for a server
          that starts late.
"""
import asyncio
import os
import re
import subprocess
import time

import clitest
from clitest import Fail, Result, Serve, check, free_port, main, spawn

import websockets


async def run_connect(*args, data=b"", timeout=20):
    cmd = [clitest.BIN, "connect"] + list(args)
    clitest.say("run:", " ".join(cmd))
    p = await asyncio.create_subprocess_exec(*cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(p.communicate(data), timeout)
    except asyncio.TimeoutError:
        p.kill()
        out, err = await p.communicate()
        raise Fail("duplex connect %s did not exit: %r" % (args, Result(None, out, err)))
    return Result(p.returncode, out, err)


def serve_py(handler, **kw):
    return websockets.serve(handler, "127.0.0.1", 0, **kw)


def port_of(server):
    return server.sockets[0].getsockname()[1]


def test_echo():
    results = {}

    async def handler(ws, path=None):
        try:
            msgs = ["text one", b"\x00\x01binary\xff", "ü" * 1000, os.urandom(200000), ""]
            for m in msgs:
                await ws.send(m)
                got = await asyncio.wait_for(ws.recv(), 10)
                check(got == m and type(got) is type(m), "echo of %r came back as %r" % (m[:20], got[:20]))
            await ws.send(["frag1 ", "frag2 ", "frag3"])  # one text message in three frames
            got = await asyncio.wait_for(ws.recv(), 10)
            check(got == "frag1 frag2 frag3", "fragmented message echoed as %r" % got)
            await asyncio.wait_for(await ws.ping(b"hb"), 10)
            await ws.close(1000, "all good")
            results["ok"] = True
        except Exception as e:  # noqa: BLE001
            results["error"] = e
            await ws.close(1011)

    async def go():
        async with serve_py(handler) as server:
            r = await run_connect("--echo", "ws://127.0.0.1:%d/" % port_of(server))
        return r

    r = asyncio.run(go())
    if "error" in results:
        raise Fail("server side: %s; client: %r" % (results["error"], r))
    check(results.get("ok"), "the server script did not finish: %r" % r)
    check(r.rc == 0, "--echo exit status after the server's 1000: %r" % r)
    check(r.out == b"", "--echo prints nothing: %r" % r)


def test_request_options():
    async def handler(ws, path=None):
        h = ws.request_headers
        await ws.send("%s|%s|%s|%s|%s" % (h.get("X-Test"), h.get("X-Other"), h.get("Origin"), ws.subprotocol,
                                          ws.path))
        await ws.send(b"\xde\xad")
        await ws.close(1000)

    async def go():
        async with serve_py(handler, subprotocols=["b", "c"]) as server:
            return await run_connect("-n", "-H", "X-Test: 42", "--header", "X-Other:  spaced value",
                                     "--origin", "http://example.test", "-s", "a", "--subprotocol", "b",
                                     "ws://127.0.0.1:%d/p/q?k=v&z" % port_of(server))

    r = asyncio.run(go())
    check(r.rc == 0, "exit status: %r" % r)
    check(r.out == b"42|spaced value|http://example.test|b|/p/q?k=v&z\n[binary 2 bytes] dead\n",
          "request as the server saw it: %r" % r)


def test_abnormal():
    async def closer(ws, path=None):
        await ws.close(4002, "go away")

    async def dropper(ws, path=None):
        await ws.send("then nothing")
        await asyncio.sleep(0.2)
        ws.transport.abort()

    async def go(handler):
        async with serve_py(handler) as server:
            return await run_connect("-n", "ws://127.0.0.1:%d/" % port_of(server))

    r = asyncio.run(go(closer))
    check(r.rc == 1 and "4002" in r.errs and "go away" in r.errs, "close 4002: %r" % r)
    r = asyncio.run(go(dropper))
    check(r.rc == 1 and "1006" in r.errs and r.out == b"then nothing\n", "dropped connection: %r" % r)


async def proxy_server(seen):
    async def pipe(reader, writer):
        try:
            while True:
                b = await reader.read(65536)
                if not b:
                    break
                writer.write(b)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n")[0].decode()
        seen.append(line)
        m = re.match(r"CONNECT ([^ ]+):(\d+) HTTP/1\.[01]$", line)
        if not m:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        ur, uw = await asyncio.open_connection(m.group(1), int(m.group(2)))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(pipe(reader, uw), pipe(ur, writer))

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_proxy():
    srv = Serve()
    seen = []

    async def go():
        proxy = await proxy_server(seen)
        pport = proxy.sockets[0].getsockname()[1]
        try:
            return await run_connect("--proxy", "http://127.0.0.1:%d" % pport, srv.url(), data=b"via proxy\n")
        finally:
            proxy.close()

    r = asyncio.run(go())
    check(r.rc == 0 and r.out == b"via proxy\n", "echo through the proxy: %r" % r)
    check(seen and seen[0].startswith("CONNECT 127.0.0.1:%d " % srv.port), "proxy saw %r" % seen)
    srv.stop()


def test_reconnect_gives_up():
    port = free_port()
    t0 = time.monotonic()
    r = clitest.connect("--reconnect", "--max-attempts", "3", "--backoff-base", "50ms", "--backoff-cap", "200ms",
                        "ws://127.0.0.1:%d/echo" % port, data=b"x\n")
    check(r.rc == 1, "giving up after --max-attempts should exit 1: %r" % r)
    check(len(re.findall(r"reconnecting in \d+ ms", r.errs)) >= 2, "reconnect notices: %r" % r)
    check(time.monotonic() - t0 < 10, "3 attempts with a 200 ms cap took too long")


def test_reconnect_late_server():
    port = free_port()
    p = spawn("--reconnect", "--backoff-base", "50ms", "--backoff-cap", "300ms", "ws://127.0.0.1:%d/echo" % port,
              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdin.write(b"waited\nfor you\n")
    p.stdin.close()
    p.stdin = None  # communicate() must not flush it again
    time.sleep(0.8)  # a few failed attempts
    check(p.poll() is None, "the client gave up although --max-attempts is unlimited")
    srv = Serve(port=port)
    try:
        out, err = p.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        raise Fail("the client did not finish after the server started")
    clitest.no_sanitizer_report(err)
    check(p.returncode == 0 and out == b"waited\nfor you\n",
          "input sent after reconnecting: %r" % Result(p.returncode, out, err))
    srv.stop()


main([test_echo, test_request_options, test_abnormal, test_proxy, test_reconnect_gives_up,
      test_reconnect_late_server])
