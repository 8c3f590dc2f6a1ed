#!/usr/bin/python3
"""Python `websockets` client against duplex serve's /echo.

Run by harness.py with /usr/bin/python3 (Debian's python3-websockets), which
starts the servers and passes their URLs in DX_* environment variables.
Prints "plan N", then one "ok - NAME" or "not ok - NAME: WHY" per case, and
exits 0 only if every case passed. Each case has its own time limit. TLS
trusts the test CA explicitly (an SSLContext with cafile), never CERT_NONE.
Works with websockets 10.x (Debian 12) and the newer asyncio API (14+): it
uses only connect(), send(), recv(), ping(), close() and close_code.
Otherwise websockets' defaults (it offers permessage-deflate).
"""

import asyncio
import os
import random
import ssl
import sys

import websockets


def env(k):
    v = os.environ.get(k)
    if not v:
        print(f"missing environment variable {k} (run through run.sh)")
        sys.exit(2)
    return v


SSL = ssl.create_default_context(cafile=env("DX_CA_FILE"))
SMALL = int(env("DX_SMALL_LIMIT"))
SIZES = [0, 125, 126, 65535, 65536, 16 * 1024 * 1024]
CASE_S = 30.0
MAX_SIZE = 64 * 1024 * 1024

_rng = random.Random(0x5EED)


def random_bytes(n):
    return _rng.randbytes(n)


def utf8_text(n):
    """Exactly n bytes of valid UTF-8 mixing 1- to 4-byte characters (as str)."""
    unit = "aé€😀"  # 1 + 2 + 3 + 4 = 10 bytes
    s = unit * (n // 10) + "x" * (n % 10)
    assert len(s.encode()) == n
    return s


def same(got, want):
    if got == want:
        return None
    gb = got.encode() if isinstance(got, str) else got
    wb = want.encode() if isinstance(want, str) else want
    i = next((k for k in range(min(len(gb), len(wb))) if gb[k] != wb[k]), min(len(gb), len(wb)))
    return (f"echo differs: got {type(got).__name__} of {len(gb)} bytes, sent {type(want).__name__} "
            f"of {len(wb)} bytes, first difference at byte {i}")


def connect(url):
    return websockets.connect(url, ssl=SSL if url.startswith("wss:") else None, max_size=MAX_SIZE,
                              open_timeout=10, close_timeout=10)


async def expect_echo(ws, payload):
    got = await ws.recv()
    why = same(got, payload)
    if why:
        raise AssertionError(why)


async def close_code_after(ws, send):
    """Runs send(); returns the close code the server sent (fails on an echo)."""
    try:
        await send()
    except websockets.ConnectionClosed:
        pass  # the server may close while we write
    try:
        await ws.recv()
        raise AssertionError("the message was echoed instead of close 1009")
    except websockets.ConnectionClosed as e:
        rcvd = getattr(e, "rcvd", None)
        return rcvd.code if rcvd is not None else ws.close_code


async def fragments(parts):
    for p in parts:
        await asyncio.sleep(0)
        yield p


def build_cases():
    cases = []

    def add(name):
        def deco(fn):
            cases.append((name, fn))
            return fn
        return deco

    for scheme, url, small in (("ws", env("DX_WS_URL"), env("DX_WS_SMALL_URL")),
                               ("wss", env("DX_WSS_URL"), env("DX_WSS_SMALL_URL"))):
        state = {"ws": None}

        async def conn(url=url, state=state):
            if state["ws"] is None:
                state["ws"] = await connect(url)
            return state["ws"]

        @add(f"{scheme}: connect" + (" (certificate verified against the test CA)" if scheme == "wss" else ""))
        async def _c(conn=conn, scheme=scheme):
            ws = await conn()
            ext = getattr(ws, "extensions", None)
            print(f"# {scheme}: negotiated extensions: {[type(x).__name__ for x in ext or []]}")

        for kind in ("text", "binary"):
            for n in SIZES:
                @add(f"{scheme}: {kind} echo {n} bytes")
                async def _e(conn=conn, kind=kind, n=n):
                    ws = await conn()
                    payload = utf8_text(n) if kind == "text" else random_bytes(n)
                    await ws.send(payload)
                    await expect_echo(ws, payload)

        @add(f"{scheme}: fragmented text from an iterable (empty fragment included)")
        async def _ft(conn=conn):
            ws = await conn()
            parts = [utf8_text(3), "", utf8_text(65536), utf8_text(70001), "é€😀"]
            await ws.send(parts)
            await expect_echo(ws, "".join(parts))

        @add(f"{scheme}: fragmented binary from an async iterable (1 + 65536 + 70000 bytes)")
        async def _fb(conn=conn):
            ws = await conn()
            parts = [random_bytes(1), random_bytes(65536), random_bytes(70000)]
            await ws.send(fragments(parts))
            await expect_echo(ws, b"".join(parts))

        for label, payload in (("empty", b""), ('"duplex-ping"', b"duplex-ping"), ("125 bytes", None)):
            @add(f"{scheme}: ping {label} gets a pong with the same payload")
            async def _p(conn=conn, payload=payload):
                ws = await conn()
                data = payload if payload is not None else random_bytes(125)
                # websockets resolves the waiter only on a pong carrying the same data.
                waiter = await ws.ping(data)
                await asyncio.wait_for(waiter, 10)

        @add(f"{scheme}: close 4000 with a reason is echoed with code 4000")
        async def _cl(conn=conn, scheme=scheme, state=state):
            ws = await conn()
            await ws.close(4000, "bye from python")
            print(f"# {scheme}: close answered with {ws.close_code} {ws.close_reason!r}")
            state["ws"] = None
            if ws.close_code != 4000:
                raise AssertionError(f"close answered with {ws.close_code} {ws.close_reason!r}")

        # Compressible, so that with permessage-deflate it also checks that the
        # limit counts the decompressed size (and without, the raw size).
        @add(f"{scheme} (limit {SMALL}): binary of exactly the limit is echoed")
        async def _lim(small=small):
            async with connect(small) as ws:
                payload = bytes((i * 7) % 251 for i in range(SMALL))
                await ws.send(payload)
                await expect_echo(ws, payload)

        overs = (
            ("binary of limit + 1", lambda ws: ws.send(random_bytes(SMALL + 1))),
            ("text of limit + 1", lambda ws: ws.send(utf8_text(SMALL + 1))),
            ("fragmented binary totalling limit + 1",
             lambda ws: ws.send([random_bytes(SMALL // 2), random_bytes(SMALL // 2 + 1)])),
        )
        for label, send in overs:
            @add(f"{scheme} (limit {SMALL}): {label} gets close 1009")
            async def _over(small=small, send=send):
                ws = await connect(small)
                try:
                    code = await close_code_after(ws, lambda: send(ws))
                finally:
                    await ws.close()
                if code != 1009:
                    raise AssertionError(f"closed with {code}")

    return cases


async def main():
    cases = build_cases()
    print(f"plan {len(cases)}", flush=True)
    failed = 0
    for name, fn in cases:
        try:
            await asyncio.wait_for(fn(), CASE_S)
            print(f"ok - {name}", flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported by name
            failed += 1
            why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            print(f"not ok - {name}: {why}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    print(f"# websockets {websockets.__version__}, Python {sys.version.split()[0]}", flush=True)
    sys.exit(asyncio.run(main()))
