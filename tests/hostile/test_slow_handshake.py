"""
Case 4: a handshake sent one byte a second (slowloris) is dropped at the
handshake deadline (--handshake-timeout 2s): the server closes the
connection (EOF or reset on our side), logs "handshake timeout", and keeps
serving a well-behaved client meanwhile. Also: a connection that sends
nothing at all is dropped the same way.
"""
import select
import time

from hostile import (Server, check, connect, echo_roundtrip, request, run, say)

HS_TIMEOUT = 2.0


def slowloris(srv, raw):
    s = connect(srv.port)
    t0 = time.monotonic()
    sent = 0
    how = None
    while time.monotonic() - t0 < HS_TIMEOUT + 10:
        if sent < len(raw):
            try:
                s.send(raw[sent:sent + 1])
                sent += 1
            except (BrokenPipeError, ConnectionResetError):
                how = "reset on send"
                break
        if sent == 1:
            echo_roundtrip(srv.port)  # served meanwhile
        r, _, _ = select.select([s], [], [], 1.0)
        if r:
            try:
                d = s.recv(4096)
            except ConnectionResetError:
                how = "reset"
                break
            check(not d, "server answered a partial head: %r" % d[:100])
            how = "eof"
            break
    took = time.monotonic() - t0
    s.close()
    check(how is not None, "server did not drop the slow handshake within %.0f s" % (HS_TIMEOUT + 10))
    check(took >= HS_TIMEOUT - 0.5, "dropped after %.1f s, before the %.0f s deadline" % (took, HS_TIMEOUT))
    return how, took, sent


def main(binary):
    srv = Server(binary, "--handshake-timeout", "2s", "--close-timeout", "2s")
    try:
        raw, _ = request()
        how, took, sent = slowloris(srv, raw)
        say("one byte a second: dropped (%s) after %.1f s and %d of %d head bytes" % (how, took, sent, len(raw)))
        line = srv.wait_log(r"handshake timeout .*after 2000 ms")[0]
        say("log: " + line)
        how, took, sent = slowloris(srv, b"")
        say("silent connection: dropped (%s) after %.1f s" % (how, took))
        srv.wait_log(r"handshake timeout .*\(0 head bytes\)")
        echo_roundtrip(srv.port)
        srv.stop()
    finally:
        srv.cleanup()


if __name__ == "__main__":
    run(main)
