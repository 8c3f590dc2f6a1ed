"""
Case 12: heartbeat, with --ping-interval 1s --pong-timeout 1s.
  - a raw client that completes the handshake, reads everything but never
    answers a ping is dropped within a few seconds: the server closes TCP,
    logs "heartbeat timeout" and a close line with code=1006;
  - a client that answers pings (python3-websockets, which pongs by itself)
    stays connected over several ping periods and still echoes.
"""
import asyncio
import time


from hostile import (need_websockets, OP_PING, Conn, Server, check, echo_roundtrip, run, say)

websockets = need_websockets()


def deaf_client(srv):
    c = Conn.open(srv.port)
    c.sock.settimeout(15)
    t0 = time.monotonic()
    pings = 0
    how = None
    try:
        while True:
            fin, op, p = c.read_frame()
            if op == OP_PING:
                pings += 1
                check(len(p) <= 125, "ping payload too long")
            else:
                check(False, "unexpected frame opcode %d from the server" % op)
    except EOFError:
        how = "eof"
    except ConnectionResetError:
        how = "reset"
    took = time.monotonic() - t0
    c.sock.close()
    return c.local_port(), how, took, pings


async def polite_client(port, seconds):
    """Sends nothing for `seconds` (the server pings it about once a second and
    websockets answers by itself), then echoes one message."""
    async with websockets.connect("ws://127.0.0.1:%d/echo" % port, ping_interval=None,
                                  compression=None) as ws:
        await asyncio.sleep(seconds)
        msg = "after %.0f s" % seconds
        await ws.send(msg)
        got = await asyncio.wait_for(ws.recv(), 10)
        check(got == msg, "polite client: echo mismatch %r" % got)


def main(binary):
    srv = Server(binary, "--ping-interval", "1s", "--pong-timeout", "1s", "--close-timeout", "2s")
    try:
        port, how, took, pings = deaf_client(srv)
        say("client that never pongs: dropped (%s) after %.1f s, %d ping(s) received" % (how, took, pings))
        check(pings >= 1, "no ping was received before the drop")
        check(took < 10, "not dropped within 10 s (ping 1 s + pong timeout 1 s)")
        drop = srv.wait_log(r"dropped remote=127\.0\.0\.1:%d: heartbeat timeout" % port)[0]
        close = srv.wait_log(r"close remote=127\.0\.0\.1:%d code=\d+" % port)[0]
        say("log: " + drop)
        say("log: " + close)
        check(" code=1006 " in close, "expected code=1006 in the close line")
        echo_roundtrip(srv.port)

        t0 = time.monotonic()
        asyncio.run(polite_client(srv.port, 5))
        say("client that pongs: still connected and echoing after %.1f s" % (time.monotonic() - t0))
        check(not srv.lines(r"heartbeat timeout")[1:], "the polite client was dropped for a missing pong")
        srv.stop()
    finally:
        srv.cleanup()


if __name__ == "__main__":
    run(main)
