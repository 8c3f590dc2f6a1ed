#!/usr/bin/python3
"""Python `websockets` client with permessage-deflate against duplex serve's /echo.

    /usr/bin/python3 deflate_py_client.py --url URL --label L --offer JSON [--expect JSON|none]

Run by deflate_peers.py. --offer holds the parameters of websockets'
ClientPerMessageDeflateFactory (server_no_context_takeover,
client_no_context_takeover, server_max_window_bits, client_max_window_bits:
an int, or true for the bare parameter); websockets compresses every
message. --expect is the parameter set the harness computed, or "none" when
the server must decline the offer.

Cases: the negotiated extension (the 101's Sec-WebSocket-Extensions, and
websockets' own PerMessageDeflate object printed); text and binary echo of
0, 1, 125, 126, 65536 and 1048575 bytes, compressible and random, byte for
byte; the 1 MiB - 1 compressible echo arrives compressed (bytes the
protocol received); fragmented sends (a list of text pieces with multi-byte
characters, an async generator of binary pieces); the same 200 random bytes
five times (context takeover as negotiated, seen from the bytes received);
close 1000. Prints "plan N", "ok - L: NAME" / "not ok - L: NAME: WHY".
"""
import argparse
import asyncio
import json
import random
import sys

import websockets
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.legacy.client import WebSocketClientProtocol

SIZES = [0, 1, 125, 126, 65536, 1048575]
KINDS = ["compressible", "random"]
OPS = ["text", "binary"]
CASE_S = 30
PLAN = 1 + len(SIZES) * len(KINDS) * len(OPS) + 1 + 2 + 1 + 1


class Counting(WebSocketClientProtocol):
    nread = 0

    def data_received(self, data):
        self.nread += len(data)
        super().data_received(data)


class Report:
    def __init__(self, label):
        self.label, self.n, self.failed = label, 0, 0

    def ok(self, name):
        self.n += 1
        print(f"ok - {self.label}: {name}", flush=True)

    def bad(self, name, why):
        self.n += 1
        self.failed += 1
        why = str(why).splitlines()[0] if str(why) else type(why).__name__
        print(f"not ok - {self.label}: {name}: {why}", flush=True)


rng = random.Random(0x5EED)


def random_text(n):
    out, ln = [], 0
    while ln < n:
        k = rng.randint(1, 4)
        cp = {1: lambda: rng.randint(0x20, 0x7E), 2: lambda: rng.randint(0x80, 0x7FF),
              3: lambda: rng.choice([rng.randint(0x800, 0xD7FF), rng.randint(0xE000, 0xFFFF)]),
              4: lambda: rng.randint(0x10000, 0x10FFFF)}[k]()
        c = chr(cp)
        b = len(c.encode())
        if ln + b > n:
            break
        out.append(c)
        ln += b
    return "".join(out) + "a" * (n - ln)


def compressible(n):
    parts, ln, i = [], 0, 0
    while ln < n:
        s = '{"id":%d,"user":"user-%d","text":"héllo wörld €%d","ok":%s},' % (i, i % 97, i % 13, str(i % 3 == 0).lower())
        parts.append(s)
        ln += len(s.encode())
        i += 1
    b = "".join(parts).encode()[:n]
    return b.decode("utf-8", errors="ignore")  # a cut character is dropped: padded below


def text_of(n, kind):
    if kind == "random":
        return random_text(n)
    s = compressible(n)
    return s + "a" * (n - len(s.encode()))


def payload(kind, op, n):
    if op == "text":
        return text_of(n, kind)
    return rng.randbytes(n) if kind == "random" else text_of(n, "compressible").encode()


def parse_ext(header):
    if not header:
        return None
    parts = [p.strip() for p in header.split(",")[0].split(";")]
    if parts[0] != "permessage-deflate":
        return None
    out = {}
    for p in parts[1:]:
        if not p:
            continue
        k, _, v = p.partition("=")
        out[k.strip()] = int(v.strip().strip('"')) if v else True
    return out


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--label", default="python")
    ap.add_argument("--offer", default="{}")
    ap.add_argument("--expect", default="{}")
    a = ap.parse_args()
    offer = json.loads(a.offer)
    expect = None if a.expect == "none" else json.loads(a.expect)
    r = Report(a.label)
    print(f"plan {PLAN}", flush=True)
    try:
        factory = ClientPerMessageDeflateFactory(
            server_no_context_takeover=bool(offer.get("server_no_context_takeover")),
            client_no_context_takeover=bool(offer.get("client_no_context_takeover")),
            server_max_window_bits=offer.get("server_max_window_bits"),
            client_max_window_bits=offer.get("client_max_window_bits"),
        )
        ws = await asyncio.wait_for(websockets.connect(a.url, extensions=[factory], compression=None,
                                                       max_size=64 << 20, ping_interval=None,
                                                       create_protocol=Counting), CASE_S)
    except Exception as e:  # noqa: BLE001 - reported
        r.bad("connects", repr(e))
        while r.n < PLAN:
            r.bad("planned case", "not reached")
        return 1
    header = ws.response_headers.get("Sec-WebSocket-Extensions")
    got = parse_ext(header)
    print(f"# {a.label}: offer {factory.get_request_params()}; server answered "
          f"Sec-WebSocket-Extensions: {header or '(none)'}", flush=True)
    for ext in ws.extensions:
        print(f"# {a.label}: websockets negotiated {ext!r}", flush=True)
    name = "negotiated " + (json.dumps(expect, sort_keys=True) if expect is not None else "no extension")
    if expect is None:
        (r.ok if got is None and not ws.extensions else lambda n: r.bad(n, f"server answered {header!r}"))(name)
    elif got is None or not ws.extensions:
        r.bad(name, f"no permessage-deflate in the answer ({header!r})")
    elif got != expect:
        r.bad(name, f"server answered {json.dumps(got, sort_keys=True)}")
    else:
        r.ok(name)
    deflate = bool(ws.extensions)
    # zlib cannot compress with a window of 8: duplex then sends uncompressed
    server_compresses = deflate and not (got and got.get("server_max_window_bits") == 8)

    big_in = -1
    for n in SIZES:
        for kind in KINDS:
            for op in OPS:
                cname = f"echo {op} {kind} {n} bytes"
                try:
                    data = payload(kind, op, n)
                    before = ws.nread
                    await ws.send(data)
                    m = await asyncio.wait_for(ws.recv(), CASE_S)
                    if type(m) is not type(data):
                        raise AssertionError(f"type changed to {type(m).__name__}")
                    if m != data:
                        raise AssertionError(f"got {len(m)} items, sent {len(data)}")
                    if n == 1048575 and kind == "compressible" and op == "binary":
                        big_in = ws.nread - before
                    r.ok(cname)
                except Exception as e:  # noqa: BLE001
                    r.bad(cname, repr(e))
    cname = ("the 1 MiB - 1 compressible echo came compressed (under 1/4 of its size on the wire)" if server_compresses
             else "the 1 MiB - 1 echo came uncompressed (%s)" % ("server window 8" if deflate else "no extension"))
    print(f"# {a.label}: 1 MiB - 1 compressible echo: {big_in} bytes on the wire", flush=True)
    if big_in < 0:
        r.bad(cname, "the echo did not arrive")
    elif (big_in < 1048575 // 4) if server_compresses else (big_in >= 1048575):
        r.ok(cname)
    else:
        r.bad(cname, f"{big_in} bytes read for it")

    # Fragmented by websockets.
    cname = "fragmented text (a list of 4 pieces, multi-byte characters)"
    try:
        pieces = ["€", "uro ", "€uro " * 1400, "€uro " * 1599]
        await ws.send(pieces)
        m = await asyncio.wait_for(ws.recv(), CASE_S)
        (r.ok if m == "".join(pieces) else lambda n: r.bad(n, f"got {len(m)} chars"))(cname)
    except Exception as e:  # noqa: BLE001
        r.bad(cname, repr(e))
    cname = "fragmented binary (an async generator: 1 + 65536 + 70000 bytes)"
    try:
        parts = [rng.randbytes(1), text_of(65536, "compressible").encode(), rng.randbytes(70000)]

        async def gen():
            for p in parts:
                yield p

        await ws.send(gen())
        m = await asyncio.wait_for(ws.recv(), CASE_S)
        (r.ok if m == b"".join(parts) else lambda n: r.bad(n, f"got {len(m)} bytes"))(cname)
    except Exception as e:  # noqa: BLE001
        r.bad(cname, repr(e))

    no_ctx = not server_compresses or bool(got and got.get("server_no_context_takeover"))
    cname = ("the same 200 random bytes 5 times: each echo costs them again (no server context takeover, "
             "or no compression)" if no_ctx
             else "the same 200 random bytes 5 times: later echoes are back-references (server context takeover)")
    try:
        data = rng.randbytes(200)
        sizes = []
        for i in range(5):
            before = ws.nread
            await ws.send(data)
            m = await asyncio.wait_for(ws.recv(), CASE_S)
            if m != data:
                raise AssertionError(f"echo {i + 1} differs")
            sizes.append(ws.nread - before)
        print(f"# {a.label}: wire bytes of the 5 echoes: {sizes}", flush=True)
        later = sizes[1:]
        good = all(s >= 200 for s in later) if no_ctx else all(s < 60 for s in later)
        (r.ok if good else lambda n: r.bad(n, f"wire bytes per echo {sizes}"))(cname)
    except Exception as e:  # noqa: BLE001
        r.bad(cname, repr(e))

    cname = "close 1000 echoed"
    try:
        await asyncio.wait_for(ws.close(1000, "done"), 10)
        (r.ok if ws.close_code == 1000 else lambda n: r.bad(n, f"close code {ws.close_code}"))(cname)
    except Exception as e:  # noqa: BLE001
        r.bad(cname, repr(e))
    while r.n < PLAN:
        r.bad("planned case", "not reached")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
