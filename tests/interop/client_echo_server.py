#!/usr/bin/python3
"""Python `websockets` echo server for the duplex client interop tests.

    /usr/bin/python3 client_echo_server.py --port P [--tls-cert FILE --tls-key FILE]

Listens on 127.0.0.1:P (wss:// when given a certificate), echoes every
message with its type (except the text "fragment-me", answered by
"alpha-beta-gamma" in three frames), answers pings and echoes the close code it receives
(websockets does both itself). Prints "listening P" once ready. Works with
websockets 10.x (Debian 12) and later (websockets.serve, legacy or new).
Runs until killed.
"""

import argparse
import asyncio
import ssl

import websockets


async def echo(ws, *_path):  # websockets < 13 passes the path too
    try:
        async for msg in ws:
            if msg == "fragment-me":
                # one message in three frames: text, continuation, continuation
                await ws.send(iter(["alpha-", "beta-", "gamma"]))
            else:
                await ws.send(msg)
    except websockets.ConnectionClosed:
        pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    a = ap.parse_args()
    ctx = None
    if a.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
    async with websockets.serve(echo, "127.0.0.1", a.port, ssl=ctx, max_size=64 * 1024 * 1024,
                                compression=None):
        print(f"listening {a.port}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
