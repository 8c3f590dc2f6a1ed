"""
permessage-deflate protocol violations and edge cases against `duplex serve`,
on raw sockets with zlib-crafted frames (pmd.py). Each case on a fresh
connection; after each, a well-behaved client is still served.

Violations (RFC 6455 section 5.2: a non-zero RSV bit no extension defined
fails the connection; RFC 7692 section 6: RSV1 only on the first frame of a
data message):
  - RSV1 on a message when no extension was offered           -> 1002
  - RSV1 when the server declined (serve --no-deflate)        -> 1002
  - RSV1 on a continuation frame                              -> 1002
  - RSV1 on a ping, and on a close frame                      -> 1002
  - RSV2, RSV3 on a data frame with the extension negotiated  -> 1002
  - compressed data that is not DEFLATE (garbage, a stream
    with a bad block type, a zlib-wrapped stream)             -> GARBAGE_CODE
Edge cases that must work:
  - an uncompressed message (RSV1 clear) on a deflate connection;
  - a compressed empty message (the empty stored block 00), echoed empty;
  - RSV1 on an empty payload (not a whole DEFLATE block once the tail is
    appended): close 1002, or delivered empty with the next message intact.
    (Not asserted: followed at once by the compressed empty message 00,
    duplex, Node ws and Python websockets all deliver it as the 4 bytes
    00 00 ff ff: the decoder is still inside the first one's stored block.)
  - messages ended with a final block (BFINAL = 1, RFC 7692 section
    7.2.3.3) twice on one connection with context takeover;
  - context takeover: a message whose back-references reach into the
    previous message;
  - negotiation: offers the server must decline (unknown parameter,
    window 7 and 16, a repeated parameter, a value on
    server_no_context_takeover, a bad value) get a 101 without the
    extension; the longest valid offer (all four parameters, two-digit
    windows) is accepted whole; a bad offer followed by a good one gets the
    good one.
"""
import zlib

from hostile import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_TEXT, Closed, Fail, Server, check, echo_roundtrip,
                     frame, run, say)
from pmd import TAIL, PmdConn, deflate

# RFC 7692 names no close code for compressed data that does not inflate
# (section 6.2 only says the payload is inflated; RFC 6455 section 7.4.1
# offers 1002, a protocol error, and 1007, data inconsistent with the
# message's type). Autobahn's 12.* and 13.* cases send only valid data.
# A stream that is not DEFLATE breaks the extension's framing, not the
# message's type: duplex answers 1002 ("invalid compressed data"), as
# Python websockets does (Node ws answers 1007); docs/deflate.md.
GARBAGE_CODE = 1002


def expect_close(c, code, what):
    try:
        while True:
            c.read_message()
    except Closed as e:
        check(e.code == code, "%s: expected close %d, got %d %r" % (what, code, e.code, e.payload[2:]))
    except (OSError, EOFError) as e:
        raise Fail("%s: expected close %d, the connection ended without one (%r)" % (what, code, e))
    c.sock.close()
    say("ok %s: close %d" % (what, code))


def pmd(srv, offer="permessage-deflate"):
    c = PmdConn.open(srv.port, offer=offer)
    check(c.ext is not None, "offer %r: the server did not accept permessage-deflate (%r)"
          % (offer, c.headers.get("sec-websocket-extensions")))
    return c


def echo(c, op, payload, what, **kw):
    c.send_message(op, payload, **kw)
    try:
        got_op, got, _ = c.read_message()
    except Closed as e:
        raise Fail("%s: closed %d %r instead of an echo" % (what, e.code, e.payload[2:]))
    check(got_op == op and got == payload, "%s: echo differs (%d bytes back, %d sent)" % (what, len(got), len(payload)))
    say("ok %s" % what)


def violations(srv):
    c = PmdConn.open(srv.port, offer=None)
    check(c.ext is None, "extension without an offer")
    c.sock.sendall(frame(OP_TEXT, deflate(b"hello"), rsv=4))
    expect_close(c, 1002, "RSV1 without an offer")

    c = pmd(srv)
    body = deflate(b"hello hello hello hello")
    c.sock.sendall(frame(OP_TEXT, body[:5], fin=False, rsv=4) + frame(OP_CONT, body[5:], rsv=4))
    expect_close(c, 1002, "RSV1 on a continuation frame")

    c = pmd(srv)
    c.sock.sendall(frame(OP_PING, b"", rsv=4))
    expect_close(c, 1002, "RSV1 on a ping")

    c = pmd(srv)
    c.sock.sendall(frame(OP_CLOSE, b"\x03\xe8", rsv=4))
    expect_close(c, 1002, "RSV1 on a close frame")

    for rsv, name in ((2, "RSV2"), (1, "RSV3"), (6, "RSV1+RSV2")):
        c = pmd(srv)
        c.sock.sendall(frame(OP_BINARY, deflate(b"x" * 100), rsv=rsv))
        expect_close(c, 1002, "%s on a data frame with the extension" % name)

    for body, name in ((b"\xff\xff\xff\xff garbage", "garbage"),
                       (b"\x07\x00", "a block of the reserved type 3"),
                       (zlib.compress(b"zlib-wrapped, not raw deflate" * 20), "a zlib-wrapped stream")):
        c = pmd(srv)
        c.sock.sendall(frame(OP_BINARY, body, rsv=4))
        expect_close(c, GARBAGE_CODE, "compressed data that does not inflate: %s" % name)
    echo_roundtrip(srv.port)


def edges(srv):
    c = pmd(srv)
    echo(c, OP_TEXT, b"not compressed on a deflate connection", "uncompressed message on a deflate connection",
         compressed=False)
    c.sock.sendall(frame(OP_BINARY, b"\x00", rsv=4))
    op, got, _ = c.read_message()
    check(op == OP_BINARY and got == b"", "the empty stored block 00: got %r" % got[:20])
    say("ok the empty stored block 00 (RFC 7692 section 7.2.3.6): echoed empty")
    for i in range(2):
        echo(c, OP_TEXT, b"final block %d " % i * 50, "message %d ended with a final block (BFINAL)" % (i + 1),
             final=True)
    c.close()

    # context takeover: the second message's back-references reach into the first
    c = pmd(srv)
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = bytes(range(256)) * 4
    m1 = comp.compress(first) + comp.flush(zlib.Z_SYNC_FLUSH)
    m2 = comp.compress(first) + comp.flush(zlib.Z_SYNC_FLUSH)
    check(len(m2) < 40, "zlib did not use the context (%d bytes)" % len(m2))
    for i, m in enumerate((m1, m2)):
        check(m.endswith(TAIL), "no sync tail")
        c.sock.sendall(frame(OP_BINARY, m[:-4], rsv=4))
        try:
            op, got, _ = c.read_message()
        except Closed as e:
            raise Fail("context takeover message %d: closed %d" % (i + 1, e.code))
        check(got == first, "context takeover message %d: echo differs" % (i + 1))
    say("ok a message whose back-references reach into the previous one (context takeover)")
    c.close()


def empty_rsv1(srv):
    """RSV1 on an empty payload: with the 00 00 ff ff tail appended that is
    not a whole DEFLATE block (a stored block header and half its length),
    so the inflater is left inside a block. The server must either fail the
    connection (1002, invalid compressed data) or not let it leak into the
    next message: a valid compressed message after it must arrive intact."""
    c = pmd(srv)
    c.sock.sendall(frame(OP_BINARY, b"", rsv=4))
    try:
        op, got, _ = c.read_message()
        check(got == b"", "RSV1 with an empty payload: delivered %r" % got[:20])
        nxt = b"next message " * 10
        c.send_message(OP_BINARY, nxt)
        op, got, _ = c.read_message()
        check(got == nxt, "RSV1 with an empty payload leaves the inflater inside a stored block: the next valid "
              "compressed message (%d bytes) arrived as %d bytes %r" % (len(nxt), len(got), got[:16]))
        say("ok RSV1 with an empty payload: delivered empty, the next message intact")
        c.close()
    except Closed as e:
        check(e.code == 1002, "RSV1 with an empty payload: close %d, expected 1002 or an intact next message" % e.code)
        say("ok RSV1 with an empty payload: close 1002")


def negotiation(srv):
    bad = ["permessage-deflate; foo",
           "permessage-deflate; server_max_window_bits=7",
           "permessage-deflate; client_max_window_bits=16",
           "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
           "permessage-deflate; server_no_context_takeover=1",
           "permessage-deflate; server_max_window_bits=abc",
           "permessage-deflate; server_max_window_bits"]
    for offer in bad:
        c = PmdConn.open(srv.port, offer=offer)
        check(c.ext is None, "offer %r accepted: %r" % (offer, c.headers.get("sec-websocket-extensions")))
        echo(c, OP_TEXT, b"plain", "offer %r declined, connection works without it" % offer, compressed=False)
        c.close()
    longest = ("permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
               "server_max_window_bits=10; client_max_window_bits=10")
    c = PmdConn.open(srv.port, offer=longest)
    want = {"server_no_context_takeover": True, "client_no_context_takeover": True,
            "server_max_window_bits": 10, "client_max_window_bits": 10}
    check(c.ext == want, "the longest valid offer (all four parameters, two-digit windows; the answer is 128 "
          "bytes) was answered %r" % c.headers.get("sec-websocket-extensions"))
    echo(c, OP_TEXT, b"all four " * 20, "the longest valid offer is accepted whole")
    c.close()
    c = PmdConn.open(srv.port, offer="permessage-deflate; foo=1, permessage-deflate; server_no_context_takeover")
    check(c.ext == {"server_no_context_takeover": True},
          "a bad offer then a good one: answered %r" % c.headers.get("sec-websocket-extensions"))
    echo(c, OP_TEXT, b"second offer " * 20, "a bad offer then a good one: the good one is accepted")
    c.close()


def main(binary):
    srv = Server(binary, workers=1)
    try:
        echo_roundtrip(srv.port)
        failed = []
        for case in (violations, edges, empty_rsv1, negotiation):
            try:
                case(srv)
            except (Fail, Closed, OSError, EOFError) as e:
                failed.append("%s: %s" % (case.__name__, e))
                say("FAILED %s" % failed[-1])
        check(not failed, "; ".join(failed))
        srv.wait_log(r"1002")
        echo_roundtrip(srv.port)
        srv.stop()
    finally:
        srv.cleanup()
    # the server declines every offer with --no-deflate: RSV1 is then a protocol error
    srv = Server(binary, "--no-deflate", workers=1)
    try:
        c = PmdConn.open(srv.port, offer="permessage-deflate; client_max_window_bits")
        check(c.ext is None, "--no-deflate accepted the extension: %r" % c.headers.get("sec-websocket-extensions"))
        c.sock.sendall(frame(OP_TEXT, deflate(b"hello"), rsv=4))
        expect_close(c, 1002, "RSV1 when the server declined the extension (--no-deflate)")
        echo_roundtrip(srv.port)
        srv.stop()
    finally:
        srv.cleanup()


if __name__ == "__main__":
    run(main)
