"""
Case 3: a 1 MiB message (16 bytes under --max-message 1MiB) sent one byte per
send() call with TCP_NODELAY: every byte of the frame header, mask key and
payload is its own write, so the server sees the frame in pieces as small
as the kernel delivers them (often one byte per read). The message must be
echoed intact, a well-behaved client must be served meanwhile, and the
server's RSS must stay within +64 MiB of its baseline.

Set DX_HOSTILE_CHUNK=N to send N bytes per write instead (default 1).
"""
import os
import threading
import time

from hostile import (check_rss, OP_BINARY, Conn, Server, check, echo_roundtrip, frame, run, say)

SIZE = (1 << 20) - 16  # just under --max-message; see test_echo_at_limit.py for exactly
RSS_MARGIN_KIB = 64 * 1024


def main(binary):
    chunk = int(os.environ.get("DX_HOSTILE_CHUNK", "1"))
    srv = Server(binary, "--max-message", "1MiB", "--close-timeout", "2s")
    try:
        echo_roundtrip(srv.port)
        rss0 = srv.rss_kib()
        cpu0 = srv.cpu_s()
        c = Conn.open(srv.port)
        data = os.urandom(SIZE)
        wire = frame(OP_BINARY, data)
        peak = [rss0]
        side = []
        stop = threading.Event()

        def watcher():
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], srv.rss_kib())
                    if len(side) < 3:  # a few echoes on another connection meanwhile
                        echo_roundtrip(srv.port, b"side %d" % len(side))
                        side.append(1)
                except Exception as e:  # reported below
                    side.append(e)
                    return
                stop.wait(0.5)

        t = threading.Thread(target=watcher)
        t.start()
        t0 = time.monotonic()
        s = c.sock
        send = s.send
        writes = 0
        i = 0
        n = len(wire)
        while i < n:
            i += send(wire[i:i + chunk])
            writes += 1
        took = time.monotonic() - t0
        op, got = c.read_message()
        stop.set()
        t.join()
        errs = [e for e in side if e != 1]
        check(not errs, "side echo failed during the slow send: %r" % errs)
        check(op == OP_BINARY and got == data, "1 MiB message not echoed intact (%d bytes back)" % len(got))
        c.close()
        rss1 = srv.rss_kib()
        cpu = srv.cpu_s() - cpu0
        line = srv.wait_log(r"close remote=127\.0\.0\.1:%d code=1000" % c.local_port())[0]
        say("sent %d bytes in %d writes of <= %d byte(s) in %.1f s; echoed intact; %d side echoes meanwhile"
            % (n, writes, chunk, took, len(side)))
        say("server RSS before %d KiB, peak %d KiB, after %d KiB; server CPU %.2f s" % (rss0, peak[0], rss1, cpu))
        say("log: " + line)
        check_rss(peak[0] < rss0 + RSS_MARGIN_KIB, "RSS grew by more than 64 MiB")
        echo_roundtrip(srv.port)
        srv.stop()
    finally:
        srv.cleanup()


if __name__ == "__main__":
    run(main)
