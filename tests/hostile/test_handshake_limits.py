"""
Cases 5 and 6: request heads the server must refuse, each answered with a
complete HTTP error response (never a 101, never a truncated one), followed
by the server closing the connection.

5: 2,000 header lines -> 431 (also 65 short lines, under --max-head, to hit
   --max-headers 64 alone); a 100 KiB header -> 431.
6: Upgrade: h2c and other non-websocket upgrades -> 400; missing
   Sec-WebSocket-Key -> 400; Sec-WebSocket-Version: 8 -> 426 with
   Sec-WebSocket-Version: 13; POST /echo with upgrade headers -> 405 (the
   server's answer, documented in docs/limits.md); GET / without --static
   -> 404; upgrade to an unknown path -> 404.
"""
from hostile import (Conn, Server, check, connect, echo_roundtrip, request, run, say, wait_eof)


def refused(srv, raw, status, what, header=None):
    c = Conn(connect(srv.port))
    try:
        c.sock.sendall(raw)
    except (BrokenPipeError, ConnectionResetError) as e:
        check(False, "%s: server reset the connection while we sent the request: %r" % (what, e))
    got, hdrs, head = c.read_head()
    check(got != 101, "%s: server accepted (101)!" % what)
    check(got == status, "%s: expected %d, got %d: %r" % (what, status, got, head[:200]))
    # the body is complete: Content-Length bytes, then EOF
    n = int(hdrs.get("content-length", "0"))
    how, extra = wait_eof(c.sock, 10)
    body_len = len(c.buf) + extra
    check(body_len == n, "%s: body %d bytes, Content-Length %d" % (what, body_len, n))
    if header:
        k, v = header
        check(hdrs.get(k.lower()) == v, "%s: expected header %s: %s, got %r" % (what, k, v, hdrs.get(k.lower())))
    say("%-40s -> %d %s (%d-byte request, body %d bytes, then %s)"
        % (what, got, head.split(b"\r\n")[0][13:].decode(), len(raw), n, how))
    c.sock.close()
    return c.local_port()


def main(binary):
    srv = Server(binary, "--close-timeout", "2s")
    try:
        base, _ = request()
        base = base[:-2]  # without the final CRLF
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(2000))
        refused(srv, base + many + b"\r\n", 431, "2,000 header lines")
        few = b"".join(b"a:%d\r\n" % (i % 10) for i in range(60))  # + 5 = 65 lines
        refused(srv, base + few + b"\r\n", 431, "65 header lines (< 8 KiB)")
        refused(srv, base + b"X-Big: " + b"a" * (100 * 1024) + b"\r\n\r\n", 431, "one 100 KiB header")
        refused(srv, base + b"X-Big: " + b"a" * (8 * 1024) + b"\r\n\r\n", 431, "one 8 KiB header (head > 8 KiB)")
        # under the limits: accepted
        c = Conn(connect(srv.port))
        ok, key = request(extra=["a:%d" % (i % 10) for i in range(59)])  # + 5 = 64
        c.sock.sendall(ok)
        st, _, _ = c.read_head()
        check(st == 101, "64 header lines in total must be accepted, got %d" % st)
        c.close()
        say("%-40s -> 101" % "64 header lines in total")
        srv.wait_log(r"handshake refused .*status=431", count=4)

        refused(srv, request(upgrade="h2c")[0], 400, "Upgrade: h2c")
        refused(srv, request(upgrade="h2c", connection="Upgrade, HTTP2-Settings",
                             extra=["HTTP2-Settings: AAMAAABkAAQAAP__"], key=False, version=None)[0],
                400, "h2c with HTTP2-Settings, no WS headers")
        refused(srv, request(upgrade="TLS/1.0")[0], 400, "Upgrade: TLS/1.0")
        refused(srv, request(upgrade="websocketx")[0], 400, "Upgrade: websocketx")
        refused(srv, request(connection="keep-alive")[0], 400, "Connection without upgrade")
        refused(srv, request(key=False)[0], 400, "missing Sec-WebSocket-Key")
        refused(srv, request(key="short")[0], 400, "Sec-WebSocket-Key not 16 bytes")
        refused(srv, request(version="8")[0], 426, "Sec-WebSocket-Version: 8",
                header=("Sec-WebSocket-Version", "13"))
        refused(srv, request(version=None)[0], 426, "no Sec-WebSocket-Version",
                header=("Sec-WebSocket-Version", "13"))
        refused(srv, request(method="POST")[0], 405, "POST /echo with upgrade", header=("Allow", "GET"))
        refused(srv, request(path="/nope")[0], 404, "upgrade to /nope")
        refused(srv, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 404, "GET / without --static")
        refused(srv, b"GET /healthz HTTP/1.0\r\n\r\n", 200, "GET /healthz (control)")
        refused(srv, b"BLAH\r\n\r\n", 400, "garbage request line")
        srv.wait_log(r"handshake refused .*status=426", count=2)
        srv.wait_log(r"handshake refused .*status=405")
        opened = srv.lines(r" open remote=")
        check(len(opened) == 1, "only the one valid upgrade may open, saw %d: %r" % (len(opened), opened))
        echo_roundtrip(srv.port)
        srv.stop()
    finally:
        srv.cleanup()


if __name__ == "__main__":
    run(main)
