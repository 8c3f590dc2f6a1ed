"""
The largest message the server accepts must be echoable with the default
limits: --max-message and --send-max are both 1 MiB by default, and an echo
of a 1 MiB message is a 1 MiB + 10 byte frame. With nothing queued the
server must write it (queueing at most what the kernel does not take), not
drop the connection as a slow consumer. Also with --send-max smaller than
the message: a message larger than --send-max on an empty queue is sent.
"""
import os

from hostile import (OP_BINARY, Closed, Conn, Server, check, echo_roundtrip, run, say)


def echo_big(srv, size):
    c = Conn.open(srv.port)
    data = os.urandom(size)
    c.send_frame(OP_BINARY, data)
    try:
        op, got = c.read_message()
    except Closed as e:
        raise Check("echo of a %d-byte message: server closed with %d %r (expected the echo)"
                    % (size, e.code, e.payload[2:]))
    check(op == OP_BINARY and got == data, "echo of %d bytes not intact" % size)
    c.close()
    say("%d-byte message echoed intact" % size)


class Check(Exception):
    pass


def main(binary):
    srv = Server(binary)  # all limits at their defaults
    try:
        try:
            echo_big(srv, 1 << 20)
        except Check as e:
            line = (srv.lines(r"slow consumer") or ["(no slow consumer line)"])[0]
            check(False, "%s; log: %s" % (e, line))
        echo_roundtrip(srv.port)
        srv.stop()
    finally:
        srv.cleanup()
    # --send-max below the message size: "unsent bytes" are what the kernel
    # did not take, and a reading client takes everything.
    srv = Server(binary, "--send-max", "64KiB", "--send-high-water", "16KiB", "--max-message", "256KiB")
    try:
        try:
            echo_big(srv, 256 * 1024)
        except Check as e:
            line = (srv.lines(r"slow consumer") or ["(no slow consumer line)"])[0]
            check(False, "%s; log: %s" % (e, line))
        echo_roundtrip(srv.port)
        srv.stop()
    finally:
        srv.cleanup()


if __name__ == "__main__":
    run(main)
