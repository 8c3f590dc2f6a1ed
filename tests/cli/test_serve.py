"""
tests/cli/test_serve.py: `duplex serve` as a command (issue 8):
  - a second serve on a port in use fails with one clear message, exit 1
    (SO_REUSEPORT is only shared between one process's workers): with the
    first one's 2 workers, and with 1;
  - the URL line comes after the listen; Unix sockets: the line names the
    path; a path in use is refused; an error does not append a port;
  - an unresolvable --host says "cannot resolve"; --static FILE is refused;
  - every log line has a timestamp; HTTP lines name method and path;
    --log-format json gives one JSON object per line; close durations are
    in ms from the clock (not 250 ms steps);
  - a second SIGINT during the shutdown wait exits at once with status 1.
"""
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time

import clitest
from clitest import Fail, Serve, check, free_port, main, say, wait_for

import asyncio

import websockets

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (error|warn |info |debug) ")


def run_serve(*args, timeout=20):
    cmd = [clitest.BIN, "serve"] + list(args)
    say("run:", " ".join(cmd))
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    clitest.no_sanitizer_report(p.stderr)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def http_get(port, path, method="GET"):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    # HTTP/1.1 keeps the connection: ask for close, then read to EOF
    s.sendall(("%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (method, path)).encode())
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    return data


def test_port_in_use():
    for workers in ("2", "1"):
        first = Serve("--workers", workers) if workers == "1" else Serve()
        if workers == "2":
            # Serve() starts one worker; start a 2-worker one on its own port.
            first.stop()
            port = free_port()
            first = Serve("--workers", "2", port=port)
        rc, out, err = run_serve("--host", "127.0.0.1", "--port", str(first.port), "--workers", "2")
        check(rc == 1, "second serve on a used port: exit %s, expected 1\n%s" % (rc, err))
        lines = [ln for ln in err.splitlines() if "error" in ln]
        check(len(lines) == 1 and "already in use" in lines[0] and str(first.port) in lines[0],
              "expected one clear error line, got:\n%s" % err)
        check("serving" not in out, "the second serve printed a URL: %r" % out)
        # the first still answers every request (nothing split its traffic)
        for _ in range(20):
            check(b"200 OK" in http_get(first.port, "/healthz"), "the first server stopped answering")
        first.stop()


def test_url_line_after_listen():
    srv = Serve()
    log = srv.log()
    check("duplex: serving http://127.0.0.1:%d/" % srv.port in log, "no URL line:\n" + log)
    # the URL line is printed once the port accepts: connect right after it
    check(b"200 OK" in http_get(srv.port, "/healthz"), "healthz")
    srv.stop()


def test_unix_socket():
    d = tempfile.mkdtemp(prefix="dx-cli-unix-")
    path = os.path.join(d, "s.sock")
    p = subprocess.Popen([clitest.BIN, "serve", "--unix", path], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    clitest._procs.append(p)
    line = p.stdout.readline().decode()
    check(line.startswith("duplex: serving unix:%s" % path), "unix URL line: %r" % line)
    # a second serve on the same path is refused, the socket kept
    rc, out, err = run_serve("--unix", path)
    check(rc == 1 and "in use" in err, "second serve on a used unix path: %s %r" % (rc, err))
    check(os.path.exists(path), "the second serve removed the first one's socket")
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=15)
    err = err.decode()
    check("listening on unix:%s" % path in err, "startup line does not name the path:\n" + err)
    os.unlink(path) if os.path.exists(path) else None
    os.rmdir(d)
    # an error names the path and no port
    bad = "/nonexistent-dir-dx/s.sock"
    rc, out, err = run_serve("--unix", bad)
    # no port after the path (timestamps have colons and zeros of their own)
    check(rc == 1 and ("unix:%s: " % bad) in err and ("%s:0" % bad) not in err, "unix error line: %s %r" % (rc, err))


def test_bad_host_and_static():
    rc, out, err = run_serve("--host", "no-such-host.invalid", "--port", str(free_port()))
    check(rc == 1 and "cannot resolve" in err and "no-such-host.invalid" in err, "bad host: %s %r" % (rc, err))
    with tempfile.NamedTemporaryFile(suffix=".html") as f:
        rc, out, err = run_serve("--static", f.name, "--port", str(free_port()))
        check(rc == 2 and "not a directory" in err, "--static FILE: %s %r" % (rc, err))
    rc, out, err = run_serve("--static", "/nonexistent-dx-dir", "--port", str(free_port()))
    check(rc == 2 and "nonexistent-dx-dir" in err, "--static missing: %s %r" % (rc, err))
    rc, out, err = run_serve("--log-format", "xml")
    check(rc == 2 and "log-format" in err, "--log-format xml: %s %r" % (rc, err))


def test_log_lines():
    d = tempfile.mkdtemp(prefix="dx-cli-static-")
    with open(os.path.join(d, "index.html"), "w") as f:
        f.write("<p>hi</p>")
    srv = Serve("--static", d)
    check(b"200 OK" in http_get(srv.port, "/index.html?q=1"), "static GET")
    check(b"404" in http_get(srv.port, "/missing.txt"), "404")
    http_get(srv.port, "/healthz", "HEAD")
    async def client():
        async with websockets.connect(srv.url()) as ws:
            t0 = time.monotonic()
            await ws.send("x")
            await ws.recv()
            await asyncio.sleep(0.33)  # a duration that is not a multiple of 250 ms
            return time.monotonic() - t0

    held = asyncio.run(asyncio.wait_for(client(), 20))
    wait_for(lambda: "code=1000" in srv.log(), 15, "the close line")
    srv.stop()
    log = srv.log()
    for ln in log.splitlines():
        if ln.startswith("duplex: serving"):
            continue  # the URL line on stdout
        check(STAMP.match(ln), "log line without the timestamp format: %r" % ln)
    check(re.search(r"http remote=\S+ method=GET path=/index.html status=200", log), "GET line:\n" + log)
    check(re.search(r"method=GET path=/missing.txt status=404", log), "404 line:\n" + log)
    check(re.search(r"method=HEAD path=/healthz status=200", log), "HEAD line:\n" + log)
    m = re.search(r"close remote=\S+ code=1000 duration_ms=(\d+)", log)
    check(m, "close line:\n" + log)
    ms = int(m.group(1))
    check(ms % 250 != 0 and abs(ms - held * 1000) < 200 + held * 1000,
          "duration_ms=%d for a connection held %.0f ms" % (ms, held * 1000))
    os.unlink(os.path.join(d, "index.html"))
    os.rmdir(d)


def test_json_log():
    srv = Serve("--log-format", "json")
    http_get(srv.port, "/healthz")
    srv.stop()
    n = 0
    for ln in srv.log().splitlines():
        if ln.startswith("duplex: serving"):
            continue
        obj = json.loads(ln)
        check(set(obj) == {"time", "level", "msg"}, "json keys: %r" % obj)
        n += 1
    check(n >= 4, "too few json lines:\n" + srv.log())
    check('"msg":"serve: stopped"' in srv.log(), "no stopped line in json")


def test_second_signal_forces_exit():
    srv = Serve("--close-timeout", "30s")
    # a raw client that upgrades and then never answers the close
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    check(b"101" in s.recv(4096), "upgrade")
    os.kill(srv.proc.pid, signal.SIGINT)
    wait_for(lambda: "closing connections with 1012 (gateway) and 1001" in srv.log(), 15, "the shutdown line")
    t0 = time.monotonic()
    os.kill(srv.proc.pid, signal.SIGINT)
    try:
        rc = srv.proc.wait(10)
    except subprocess.TimeoutExpired:
        raise Fail("a second SIGINT did not end serve within 10 s")
    check(rc == 1, "exit status after a second SIGINT: %s" % rc)
    check("exiting now" in srv.log(), "no 'exiting now' line:\n" + srv.log())
    say("  second SIGINT: exited after %.2f s" % (time.monotonic() - t0))
    s.close()


main([test_port_in_use, test_url_line_after_listen, test_unix_socket, test_bad_host_and_static, test_log_lines,
      test_json_log, test_second_signal_forces_exit])
