"""
Case 1: frame lengths. A header-only frame declaring a 2^63-1 byte payload
must be answered with close 1009 (before any payload arrives); a length with
the most significant bit set (RFC 6455 section 5.2) with close 1002. Also
the boundary: a message of exactly --max-message is echoed, one byte more
is 1009.
"""
import struct
import sys

from hostile import (OP_BINARY, Conn, Server, check, echo_roundtrip, frame, frame_header, run, say, wait_eof)

MAX = 64 * 1024


def expect_close(srv, hdr, code, what):
    c = Conn.open(srv.port)
    c.sock.sendall(hdr)
    got, payload = c.read_close()
    say("%s: close %d reason=%r" % (what, got, payload[2:]))
    check(got == code, "%s: expected close %d, got %d" % (what, code, got))
    how, _ = wait_eof(c.sock, 10)
    say("%s: then %s" % (what, how))
    c.sock.close()
    srv.wait_log(r"close remote=127\.0\.0\.1:%d code=%d" % (c.local_port(), code))
    echo_roundtrip(srv.port)


def main(binary):
    srv = Server(binary, "--max-message", str(MAX), "--close-timeout", "2s")
    try:
        # 127 + 8-byte length 0x7FFF_FFFF_FFFF_FFFF, masked, no payload at all
        expect_close(srv, b"\x82\xff" + struct.pack(">Q", (1 << 63) - 1) + b"\x00\x00\x00\x00",
                     1009, "2^63-1 length")
        expect_close(srv, b"\x82\xff" + struct.pack(">Q", 1 << 63) + b"\x00\x00\x00\x00",
                     1002, "top length bit set")
        expect_close(srv, b"\x82\xff" + struct.pack(">Q", (1 << 64) - 1) + b"\x00\x00\x00\x00",
                     1002, "all length bits set")
        # boundary: exactly max is echoed, max+1 is 1009
        c = Conn.open(srv.port)
        data = bytes(range(256)) * (MAX // 256)
        c.send_frame(OP_BINARY, data)
        op, got = c.read_message()
        check(op == OP_BINARY and got == data, "message of exactly --max-message not echoed intact")
        say("boundary: %d bytes echoed" % len(got))
        c.sock.sendall(frame_header(OP_BINARY, MAX + 1))
        code, _ = c.read_close()
        check(code == 1009, "max+1 header: expected 1009, got %d" % code)
        say("boundary: %d-byte header -> close %d" % (MAX + 1, code))
        c.sock.close()
        # a fragmented message passing max in its second fragment
        c = Conn.open(srv.port)
        c.sock.sendall(frame(OP_BINARY, b"x" * (MAX // 2), fin=False))
        c.sock.sendall(frame_header(0, MAX // 2 + 1))
        code, _ = c.read_close()
        check(code == 1009, "fragments summing past max: expected 1009, got %d" % code)
        say("fragments summing to max+1 -> close %d" % code)
        c.sock.close()
        srv.wait_log(r"protocol failure .*sent close 1009")
        srv.wait_log(r"protocol failure .*sent close 1002")
        echo_roundtrip(srv.port)
        say("stopped in %.2f s" % srv.stop())
    finally:
        srv.cleanup()


if __name__ == "__main__":
    run(main)
