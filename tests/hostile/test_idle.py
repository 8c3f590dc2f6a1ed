"""
Case 13: --idle-timeout 2s. A client that sends nothing after the handshake
gets close 1001 (going away) within the timeout plus a margin for the
250 ms timer ticks (bound: 6 s), and once it answers the close the log
line says code=1001. Run with the default --ping-interval (30 s) and with
--ping-interval off. A client that sends a message every 0.5 s stays
connected past the idle timeout.
"""
import socket
import struct
import time

from hostile import (OP_CLOSE, OP_TEXT, Conn, Server, check, echo_roundtrip, run, say, wait_eof)

IDLE = 2.0
BOUND = IDLE + 4.0  # generous: a loaded CI machine must not fail it


def silent(srv, what):
    c = Conn.open(srv.port)
    c.sock.settimeout(40)
    t0 = time.monotonic()
    try:
        code, payload = c.read_close()
    except socket.timeout:
        check(False, "%s: no close within 40 s of --idle-timeout 2s" % what)
    took = time.monotonic() - t0
    say("%s: silent client got close %d %r after %.2f s" % (what, code, payload[2:], took))
    check(code == 1001, "%s: expected close 1001, got %d" % (what, code))
    check(took >= IDLE - 0.5, "%s: idle close after %.2f s, before the 2 s timeout" % (what, took))
    c.send_frame(OP_CLOSE, struct.pack(">H", 1001))
    wait_eof(c.sock, 10)
    c.sock.close()
    line = srv.wait_log(r"close remote=127\.0\.0\.1:%d code=\d+" % c.local_port())[0]
    say("log: " + line)
    check(" code=1001 " in line, "expected code=1001 in the close line")
    return took


def main(binary):
    late = []
    for extra, what in (((), "default ping interval"), (("--ping-interval", "off"), "ping off")):
        srv = Server(binary, "--idle-timeout", "2s", "--close-timeout", "2s", *extra)
        try:
            took = silent(srv, what)
            if took > BOUND:
                late.append("%s: idle close after %.2f s with --idle-timeout 2s (bound %.1f s)" % (what, took, BOUND))
            c = Conn.open(srv.port)
            t0 = time.monotonic()
            n = 0
            while time.monotonic() - t0 < 5:
                c.send_frame(OP_TEXT, b"tick %d" % n)
                op, got = c.read_message()
                check(got == b"tick %d" % n, "echo mismatch")
                n += 1
                time.sleep(0.5)
            c.close()
            say("%s: busy client: %d echoes over %.1f s, not closed" % (what, n, time.monotonic() - t0))
            echo_roundtrip(srv.port)
            srv.stop()
        finally:
            srv.cleanup()
    check(not late, "; ".join(late))


if __name__ == "__main__":
    run(main)
