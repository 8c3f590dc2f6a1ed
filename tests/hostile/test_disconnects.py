"""
Case 7: peers that vanish. Each must end in a "close ... code=1006" log
line for its connection, free the connection (the server's connection
count, seen through its descriptors, returns to the baseline) and leave a
well-behaved client working:
  - half a frame (header + part of the payload), then close();
  - half a message (first fragment) then a reset (SO_LINGER 0 + close: RST);
  - half a frame then a reset;
  - shutdown(SHUT_WR) right after the handshake (half-close);
  - close() right after the handshake.
"""
import socket
import struct
import time

from hostile import (OP_BINARY, OP_TEXT, Conn, Server, check, echo_roundtrip, frame, frame_header,
                     run, say)


def rst(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def case(srv, what, act):
    c = Conn.open(srv.port)
    srv.wait_log(r"open remote=127\.0\.0\.1:%d " % c.local_port())
    act(c)
    line = srv.wait_log(r"close remote=127\.0\.0\.1:%d code=\d+" % c.local_port())[0]
    why = srv.lines(r"dropped remote=127\.0\.0\.1:%d:" % c.local_port())
    check(" code=1006 " in line, "%s: expected code=1006 in %r" % (what, line))
    say("%-34s -> %s | %s" % (what, line.split(" info  ")[-1], why[0].split(": ", 1)[-1] if why else "-"))
    echo_roundtrip(srv.port)


def main(binary):
    srv = Server(binary, "--close-timeout", "2s")
    try:
        echo_roundtrip(srv.port)
        time.sleep(0.3)
        fds0 = srv.fds()

        def half_frame_close(c):
            c.sock.sendall(frame_header(OP_BINARY, 1000) + b"x" * 300)
            c.sock.close()

        def half_message_rst(c):
            c.sock.sendall(frame(OP_TEXT, b"part one", fin=False))
            time.sleep(0.1)
            rst(c.sock)

        def half_frame_rst(c):
            c.sock.sendall(frame_header(OP_BINARY, 100000) + b"y" * 5000)
            time.sleep(0.1)
            rst(c.sock)

        def half_close(c):
            c.sock.shutdown(socket.SHUT_WR)
            # the server must close its side too (no close frame from a 1006 drop)
            c.sock.settimeout(10)
            try:
                d = c.sock.recv(100)
            except ConnectionResetError:
                d = b""
            check(d == b"", "after our half-close the server sent %r" % d)
            c.sock.close()

        def close_after_handshake(c):
            c.sock.close()

        case(srv, "half a frame, then close()", half_frame_close)
        case(srv, "half a message, then RST", half_message_rst)
        case(srv, "half a frame, then RST", half_frame_rst)
        case(srv, "shutdown(SHUT_WR) after handshake", half_close)
        case(srv, "close() after handshake", close_after_handshake)
        deadline = time.monotonic() + 5
        while srv.fds() != fds0 and time.monotonic() < deadline:
            time.sleep(0.1)
        say("server descriptors: %d before, %d after" % (fds0, srv.fds()))
        check(srv.fds() == fds0, "descriptors leaked: %d before, %d after" % (fds0, srv.fds()))
        echo_roundtrip(srv.port)
        srv.stop()
    finally:
        srv.cleanup()


if __name__ == "__main__":
    run(main)
