#!/usr/bin/python3
"""Python `websockets` echo server with permessage-deflate, for deflate_peers.py.

    /usr/bin/python3 deflate_echo_server.py --port P --deflate JSON

JSON holds the parameters of websockets' ServerPerMessageDeflateFactory
(server_no_context_takeover, client_no_context_takeover,
server_max_window_bits, client_max_window_bits, require_client_max_window_bits),
or is "false" for no extension. Listens on 127.0.0.1:P; echoes every message
with its type (websockets compresses every frame once negotiated), except:
  "negotiated?"  answered with the response's permessage-deflate parameters
                 as JSON ({"server_no_context_takeover": true, ...}; null
                 when nothing was negotiated)
  "fragment-me"  answered by "alpha-beta-gamma" in three frames
Prints "listening P" once ready. Runs until killed.
"""
import argparse
import asyncio
import json

import websockets
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory


def params_of(header):
    if not header:
        return None
    parts = [p.strip() for p in header.split(",")[0].split(";")]
    out = {}
    for p in parts[1:]:
        if p:
            k, _, v = p.partition("=")
            out[k.strip()] = int(v.strip().strip('"')) if v else True
    return out


async def echo(ws, *_path):  # websockets < 13 passes the path too
    print(f"connection: offer {ws.request_headers.get('Sec-WebSocket-Extensions')!r} "
          f"answer {ws.response_headers.get('Sec-WebSocket-Extensions')!r} {ws.extensions!r}", flush=True)
    try:
        async for msg in ws:
            if msg == "negotiated?":
                await ws.send(json.dumps(params_of(ws.response_headers.get("Sec-WebSocket-Extensions"))))
            elif msg == "fragment-me":
                await ws.send(iter(["alpha-", "beta-", "gamma"]))
            else:
                await ws.send(msg)
    except websockets.ConnectionClosed:
        pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--deflate", default="{}")
    a = ap.parse_args()
    cfg = json.loads(a.deflate)
    exts = None if cfg is False else [ServerPerMessageDeflateFactory(**cfg)]
    async with websockets.serve(echo, "127.0.0.1", a.port, max_size=64 * 1024 * 1024, compression=None,
                                extensions=exts, ping_interval=None):
        print(f"listening {a.port}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
