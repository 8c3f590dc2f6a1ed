"""
tests/hostile/pmd.py: permessage-deflate (RFC 7692) on raw sockets, for the
hostile deflate tests. Standard library only (zlib crafts and checks every
compressed byte); builds on hostile.py's raw client.

PmdConn.open() offers the extension with the parameters given and parses
the 101's answer; send_message() compresses a message (RSV1 on its first
frame only, RFC 7692 section 6) into one or many frames; read_message()
reads one message and inflates it when RSV1 is set, with one decompressor
per connection (server context takeover) or a fresh one per message (when
server_no_context_takeover was negotiated).
"""
import zlib

from hostile import OP_CONT, OP_CLOSE, OP_PING, OP_PONG, Closed, Conn, check, close_code, connect, frame

TAIL = b"\x00\x00\xff\xff"
RSV1 = 4


def parse_ext(header):
    """'permessage-deflate; a; b=10' -> {'a': True, 'b': 10}; None if absent."""
    if not header:
        return None
    parts = [p.strip() for p in header.split(",")[0].split(";")]
    if parts[0] != "permessage-deflate":
        return None
    out = {}
    for p in parts[1:]:
        if p:
            k, _, v = p.partition("=")
            out[k.strip()] = int(v.strip().strip('"')) if v else True
    return out


def deflate(data, wbits=15, final=False, level=6):
    """One message compressed on its own (no context), as RFC 7692 section
    7.2.1 sends it: sync flush with the 00 00 ff ff tail removed, or with
    final=True a final block (BFINAL=1) kept whole."""
    c = zlib.compressobj(level, zlib.DEFLATED, -wbits)
    out = c.compress(data)
    if final:
        return out + c.flush(zlib.Z_FINISH)
    out += c.flush(zlib.Z_SYNC_FLUSH)
    check(out.endswith(TAIL), "zlib sync flush without the 00 00 ff ff tail")
    return out[:-4]


def bomb(n, wbits=15):
    """n zero bytes compressed (about n/1000 bytes), in pieces so that the
    whole message never sits in this process's memory."""
    c = zlib.compressobj(9, zlib.DEFLATED, -wbits)
    chunk = bytes(1 << 20)
    parts, left = [], n
    while left:
        k = min(left, len(chunk))
        parts.append(c.compress(chunk[:k]))
        left -= k
    parts.append(c.flush(zlib.Z_SYNC_FLUSH))
    out = b"".join(parts)
    return out[:-4]


class PmdConn(Conn):
    @classmethod
    def open(cls, port, offer="permessage-deflate", path="/echo", **kw):
        c = cls(connect(port, **kw))
        extra = ("Sec-WebSocket-Extensions: " + offer,) if offer else ()
        c.headers = c.handshake(path, extra)
        c.ext = parse_ext(c.headers.get("sec-websocket-extensions"))
        c.inflater = None
        return c

    def send_message(self, op, payload, compressed=True, pieces=1, wbits=15, final=False):
        """Sends one message; compressed (unless told not to) and cut into
        `pieces` frames of the compressed bytes."""
        body = deflate(payload, wbits, final) if compressed else payload
        n = max(1, pieces)
        step = max(1, -(-len(body) // n)) if body else 1
        cuts = [body[i:i + step] for i in range(0, len(body), step)] or [b""]
        while len(cuts) < n:
            cuts.append(b"")
        out = []
        for i, part in enumerate(cuts):
            out.append(frame(op if i == 0 else OP_CONT, part, fin=i == len(cuts) - 1,
                             rsv=RSV1 if (i == 0 and compressed) else 0))
        self.sock.sendall(b"".join(out))

    def read_message(self, answer_pings=True):
        """(opcode, payload, was_compressed); a close frame raises Closed."""
        op0, parts, rsv1 = None, [], False
        while True:
            fin, op, p = self.read_frame()
            if op == OP_PING:
                if answer_pings:
                    self.send_frame(OP_PONG, p)
                continue
            if op == OP_PONG:
                continue
            if op == OP_CLOSE:
                raise Closed(close_code(p), p)
            if op0 is None:
                op0 = op
                rsv1 = bool(self.last_rsv & RSV1)
                check(self.ext is not None or not rsv1, "RSV1 from the server without the extension")
            else:
                check(not (self.last_rsv & RSV1), "RSV1 on a continuation frame from the server")
            parts.append(p)
            if fin:
                break
        data = b"".join(parts)
        if rsv1:
            wbits = (self.ext or {}).get("server_max_window_bits", 15)
            if self.inflater is None or (self.ext or {}).get("server_no_context_takeover"):
                self.inflater = zlib.decompressobj(-max(9, wbits))
            data = self.inflater.decompress(data + TAIL)
        return op0, data, rsv1
