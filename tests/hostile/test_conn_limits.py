"""
Case 15: admission limits of `duplex serve`.

--max-conns-per-ip 3 (one worker): three WebSocket connections from
127.0.0.2 are served; seven more from 127.0.0.2 each get "503" with a
Retry-After header and the end of the connection, without the server
reading their request; 127.0.0.3 is not affected. The burst is logged
once when it starts and once, with its total (7), when it is over. When
one of the three leaves, 127.0.0.2 gets a slot again.

--max-handshaking 3: three silent TCP connections fill the handshaking
slots; the next connections are closed at accept with no byte sent, while
open WebSocket clients keep echoing; once the silent ones leave, new
clients are served.

--workers 2 --max-conns-per-ip 4: each worker enforces its share (2), so a
client never holds more than 4, whichever worker its connections land on.
"""
import socket
import time

from hostile import (OP_TEXT, Conn, Server, check, connect, echo_roundtrip, request, run, say, wait_eof)


def from_addr(port, src, timeout=10.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(timeout)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    return s


def ws_from(port, src):
    c = Conn(from_addr(port, src))
    c.handshake()
    return c


def try_ws(port, src):
    """Returns ('open', conn) or ('refused', status, headers)."""
    c = Conn(from_addr(port, src))
    req, _ = request()
    c.sock.sendall(req)
    status, hdrs, _ = c.read_head()
    if status == 101:
        return "open", c
    how, n = wait_eof(c.sock, 10)
    c.sock.close()
    return "refused", status, hdrs


def echo(c, text):
    c.send_frame(OP_TEXT, text)
    op, got = c.read_message()
    check(got == text, "echo mismatch %r" % got)


def per_ip(binary):
    srv = Server(binary, "--max-conns-per-ip", "3")
    mine = [ws_from(srv.port, "127.0.0.2") for _ in range(3)]
    for i in range(7):
        r = try_ws(srv.port, "127.0.0.2")
        check(r[0] == "refused" and r[1] == 503, "connection %d over the limit: expected 503, got %r" % (i + 4, r[:2]))
        check("retry-after" in r[2], "503 without Retry-After: %r" % r[2])
    other = [ws_from(srv.port, "127.0.0.3") for _ in range(3)]
    for c in mine + other:
        echo(c, b"still here")
    srv.wait_log(r"max_conns_per_ip burst over: 7 connections refused")
    check(len(srv.lines(r"max_conns_per_ip \(3\) reached")) == 1, "expected one line at the start of the burst")
    check(len(srv.lines(r"max_conns_per_ip")) == 2, "expected two lines for the burst in all")
    say("per-ip: 7 refusals with 503 + Retry-After, logged in 2 lines")
    mine.pop().close()
    deadline = time.monotonic() + 10
    while True:  # the server counts the departure when it reads the close
        r = try_ws(srv.port, "127.0.0.2")
        if r[0] == "open":
            mine.append(r[1])
            break
        check(time.monotonic() < deadline, "no slot for 127.0.0.2 after one of its connections left")
        time.sleep(0.05)
    for c in mine + other:
        c.close()
    srv.stop()


def handshaking(binary):
    srv = Server(binary, "--max-handshaking", "3")
    live = Conn.open(srv.port)
    silent = [connect(srv.port) for _ in range(3)]
    refused = 0
    deadline = time.monotonic() + 10
    while refused < 3:
        s = connect(srv.port)
        req, _ = request()
        try:
            s.sendall(req)
        except OSError:
            pass
        how, n = wait_eof(s, 10)
        s.close()
        if n == 0:
            refused += 1
        check(time.monotonic() < deadline, "no connection refused at accept with 3 silent ones holding the slots")
    echo(live, b"served meanwhile")
    srv.wait_log(r"max_handshaking \(3\) reached")
    for s in silent:
        s.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            echo_roundtrip(srv.port)
            break
        except Exception:
            check(time.monotonic() < deadline, "new clients not served after the silent ones left")
            time.sleep(0.05)
    srv.wait_log(r"max_handshaking burst over")
    say("handshaking: refused at accept while 3 silent connections held the slots")
    live.close()
    srv.stop()


def workers(binary):
    srv = Server(binary, "--max-conns-per-ip", "4", workers=2)
    held = []
    for _ in range(20):
        r = try_ws(srv.port, "127.0.0.4")
        if r[0] == "open":
            held.append(r[1])
        else:
            check(r[1] == 503, "expected 503, got %r" % (r[1],))
    say("two workers, limit 4: %d of 20 connections from one address held" % len(held))
    check(2 <= len(held) <= 4, "held %d connections from one address with --max-conns-per-ip 4" % len(held))
    for c in held:
        c.close()
    srv.stop()


def main(binary):
    per_ip(binary)
    handshaking(binary)
    workers(binary)


if __name__ == "__main__":
    run(main)
