"""
tests/cli/test_deflate.py: the permessage-deflate flags (issue 12,
docs/deflate.md):
  - `duplex connect --deflate --show-frames` against `duplex connect
    --listen 0 --deflate --echo`: RSV1 on the compressed frames both ways,
    the extra line with both lengths (wire smaller), the echo intact;
  - PARAMS reach the wire: a Python websockets server (compression on)
    answers what `connect --deflate='server_no_context_takeover;
    client_max_window_bits=10'` offered; a Python server without
    compression: no RSV1, the message intact;
  - `duplex serve` negotiates by default (a Python client with compression
    sees permessage-deflate in the response), `--no-deflate` does not,
    `--deflate='client_no_context_takeover'` is answered;
  - bad values exit 2 with the shared message: --deflate=foo, a window of 16,
    --deflate-min-size 0, --deflate-mem-budget x (serve), --deflate on bench.
"""
import asyncio
import re
import subprocess

from clitest import Fail, Serve, check, connect, main, no_sanitizer_report, spawn

import websockets


def listener(*extra):
    p = spawn("--listen", "0", *extra, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = p.stderr.readline().decode()
    m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    if not m:
        raise Fail("no 'listening on' line from --listen: %r" % line)
    return p, int(m.group(1))


def test_connect_to_listener():
    p, port = listener("--deflate", "--echo")
    line = ("compress me please, " * 30).encode()
    r = connect("ws://127.0.0.1:%d/" % port, "--deflate", "--show-frames", "-1", data=line + b"\n")
    check(r.rc == 0, "connect --deflate: %r" % r)
    check(r.out == line + b"\n", "echo: %r" % r)
    sent = re.search(r"frame > opcode=1\(text\) fin=1 rsv=100 len=(\d+) masked=1", r.errs)
    got = re.search(r"frame < opcode=1\(text\) fin=1 rsv=100 len=(\d+) masked=0", r.errs)
    check(sent and got, "RSV1 on the text frames both ways: %r" % r)
    m = re.search(r"message > compressed rsv1=1 len=(\d+) wire=(\d+)", r.errs)
    check(m and int(m.group(1)) == len(line) and int(m.group(2)) < len(line) // 4,
          "the sent message's line with both lengths: %r" % r)
    m = re.search(r"message < compressed rsv1=1 wire=(\d+) len=(\d+)", r.errs)
    check(m and int(m.group(2)) == len(line), "the received message's line: %r" % r)
    check("frame > opcode=8(close) fin=1 rsv=000" in r.errs, "close frames are never compressed: %r" % r)
    p.wait(15)
    no_sanitizer_report(p.stderr.read())


async def py_server(compression, seen):
    async def handler(ws):
        seen.append(ws.request_headers.get("Sec-WebSocket-Extensions"))
        seen.append(ws.response_headers.get("Sec-WebSocket-Extensions"))
        async for m in ws:
            await ws.send(m)

    return await websockets.serve(handler, "127.0.0.1", 0, compression=compression)


def run_against_py(compression, *args, data):
    seen = []
    result = {}

    async def go():
        srv = await py_server(compression, seen)
        port = srv.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        result["r"] = await loop.run_in_executor(
            None, lambda: connect("ws://127.0.0.1:%d/" % port, *args, "-1", data=data))
        srv.close()
        await srv.wait_closed()

    asyncio.run(asyncio.wait_for(go(), 30))
    return result["r"], seen


def test_params_reach_python():
    data = ("abcdefgh" * 100 + "\n").encode()
    r, seen = run_against_py("deflate", "--deflate=server_no_context_takeover; client_max_window_bits=10",
                             "--show-frames", data=data)
    check(r.rc == 0 and r.out == data, "echo through websockets with compression: %r" % r)
    check(seen[0] == "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
          "the offer: %r" % seen)
    check(seen[1] and "server_no_context_takeover" in seen[1], "the answer: %r" % seen)
    check("rsv=100" in r.errs, "compressed frames: %r" % r)
    # A server without compression: the offer is declined, nothing compressed.
    r, seen = run_against_py(None, "--deflate", "--show-frames", data=data)
    check(r.rc == 0 and r.out == data, "echo without compression: %r" % r)
    check(seen[1] is None, "no extension answered: %r" % seen)
    check("rsv=100" not in r.errs, "nothing compressed: %r" % r)


def serve_extensions(s, path="/echo"):
    async def go():
        async with websockets.connect(s.url(path), compression="deflate") as ws:
            ext = ws.response_headers.get("Sec-WebSocket-Extensions")
            await ws.send("x" * 1000)
            echo = await asyncio.wait_for(ws.recv(), 10)
            check(echo == "x" * 1000, "echo from serve")
            return ext

    return asyncio.run(asyncio.wait_for(go(), 20))


def test_serve_default_and_flags():
    s = Serve()
    try:
        ext = serve_extensions(s)
        check(ext and ext.startswith("permessage-deflate"), "serve negotiates by default: %r" % ext)
    finally:
        s.stop()
    s = Serve("--no-deflate")
    try:
        ext = serve_extensions(s)
        check(ext is None, "serve --no-deflate: %r" % ext)
    finally:
        s.stop()
    s = Serve("--deflate=client_no_context_takeover", "--deflate-min-size", "16", "--deflate-mem-budget", "8MiB")
    try:
        ext = serve_extensions(s)
        check(ext == "permessage-deflate; client_no_context_takeover", "serve --deflate=PARAMS: %r" % ext)
    finally:
        s.stop()


def run_cmd(*args):
    import clitest
    p = subprocess.run([clitest.BIN] + list(args), stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    no_sanitizer_report(p.stderr)
    return p.returncode, p.stderr.decode(errors="replace")


def test_bad_values():
    for args, name, val in [
        (("connect", "--deflate=foo", "ws://127.0.0.1:1/"), "deflate", "foo"),
        (("connect", "--deflate=server_max_window_bits=16", "ws://127.0.0.1:1/"), "deflate",
         "server_max_window_bits=16"),
        (("serve", "--deflate=client_no_context_takeover=1"), "deflate", "client_no_context_takeover=1"),
        (("serve", "--deflate-min-size", "0"), "deflate-min-size", "0"),
        (("serve", "--deflate-mem-budget", "x"), "deflate-mem-budget", "x"),
        (("bench", "--deflate=a;b", "ws://127.0.0.1:1/"), "deflate", "a;b"),
    ]:
        rc, err = run_cmd(*args)
        check(rc == 2, "%s: exit %s, expected 2 (%s)" % (args, rc, err))
        check("invalid value for --%s: '%s'" % (name, val) in err, "%s: message %r" % (args, err))
    # serve-only flags are not connect's
    rc, err = run_cmd("connect", "--deflate-min-size", "10", "ws://127.0.0.1:1/")
    check(rc == 2, "connect --deflate-min-size is not an option: %s %r" % (rc, err))


if __name__ == "__main__":
    main([test_connect_to_listener, test_params_reach_python, test_serve_default_and_flags, test_bad_values])
