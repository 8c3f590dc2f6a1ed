"""
Case 8: a client that never reads while the server sends. It sends 16 KiB
messages to /echo as fast as the server takes them and reads nothing (small
SO_RCVBUF), so the echoes pile up in the kernel and then in the server's
send queue. With --send-max 256KiB the server must log "slow consumer" and
fail the connection with close 1008; the client then reads everything that
was queued and must find the 1008 close frame at the end. The server's RSS
must stay bounded (+64 MiB) and a well-behaved client must be served
meanwhile.
"""
import os
import select
import time

from hostile import (check_rss, OP_BINARY, Closed, Conn, Server, check, connect, echo_roundtrip, frame, run, say)

MSG = 16 * 1024
RSS_MARGIN_KIB = 64 * 1024
GIVE_UP = 256 << 20  # bytes sent without the server reacting: fail


def main(binary):
    srv = Server(binary, "--send-max", "256KiB", "--send-high-water", "64KiB", "--close-timeout", "5s")
    try:
        echo_roundtrip(srv.port)
        rss0 = srv.rss_kib()
        c = Conn(connect(srv.port, rcvbuf=4096))
        c.handshake()
        msg = frame(OP_BINARY, os.urandom(MSG))
        sent = 0
        pending = b""
        c.sock.setblocking(False)
        peak = rss0
        t0 = time.monotonic()
        last_check = 0
        while True:
            if sent - last_check >= 1 << 20:
                last_check = sent
                peak = max(peak, srv.rss_kib())
                if srv.lines(r"slow consumer"):
                    break
            check(sent < GIVE_UP, "server still accepting after %d MiB without a slow-consumer drop" % (sent >> 20))
            _, w, _ = select.select([], [c.sock], [], 0.5)
            if not w:
                if srv.lines(r"slow consumer"):
                    break
                check(time.monotonic() - t0 < 60, "no progress and no slow-consumer drop within 60 s")
                continue
            if not pending:
                pending = msg
            try:
                n = c.sock.send(pending)
            except (BrokenPipeError, ConnectionResetError) as e:
                check(False, "send failed before the slow-consumer drop was logged: %r" % e)
            pending = pending[n:]
            sent += n
        line = srv.wait_log(r"slow consumer")[0]
        peak = max(peak, srv.rss_kib())
        say("sent %.1f MiB in %.1f s without reading; log: %s" % (sent / 2**20, time.monotonic() - t0, line))
        echo_roundtrip(srv.port, b"meanwhile")
        # now read everything: the echoes that were queued, then the close
        c.sock.setblocking(True)
        c.sock.settimeout(10)
        echoes = 0
        code = None
        try:
            while True:
                op, data = c.read_message(answer_pings=False)
                check(len(data) == MSG, "echo of wrong length %d" % len(data))
                echoes += 1
        except Closed as e:
            code = e.code
        except (EOFError, ConnectionResetError) as e:
            check(False, "connection ended without a close frame after %d echoes: %r" % (echoes, e))
        say("then read %d echoes (%.1f MiB) and close %s" % (echoes, echoes * MSG / 2**20, code))
        check(code == 1008, "expected close 1008, got %s" % code)
        c.sock.close()
        close = srv.wait_log(r"close remote=127\.0\.0\.1:%d code=\d+" % c.local_port())[0]
        say("log: " + close)
        check(" code=1008 " in close, "expected code=1008 in the close line")
        rss1 = srv.rss_kib()
        say("server RSS before %d KiB, peak %d KiB, after %d KiB" % (rss0, peak, rss1))
        check_rss(peak < rss0 + RSS_MARGIN_KIB, "RSS grew by more than 64 MiB")
        echo_roundtrip(srv.port)
        srv.stop()
    finally:
        srv.cleanup()


if __name__ == "__main__":
    run(main)
