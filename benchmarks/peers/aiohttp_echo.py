"""The `aiohttp` peer: its WebSocket server as an echo (or broadcast) server (benchmarks/run.py).

An ``aiohttp.web`` application with one WebSocket route on ``/``, the way
aiohttp's documentation writes one; no size limit, no heartbeat,
``compress=True`` only with ``--deflate``. ``--broadcast`` sends every
message to every client (the sender included) by awaiting ``send_bytes``/
``send_str`` on each open WebSocketResponse in turn (aiohttp has no
broadcast helper).

    python3 benchmarks/peers/aiohttp_echo.py --port 8765 [--deflate] [--broadcast] [--tls-cert PEM --tls-key PEM]
"""

import argparse
import asyncio
import signal
import ssl
import sys

import aiohttp
from aiohttp import WSMsgType, web

CLIENTS: set[web.WebSocketResponse] = set()


def make_handler(deflate: bool, fan_out: bool):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=deflate, max_msg_size=0, autoping=True)
        await ws.prepare(request)
        CLIENTS.add(ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    targets = list(CLIENTS) if fan_out else [ws]
                    for target in targets:
                        if not target.closed:
                            await target.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    targets = list(CLIENTS) if fan_out else [ws]
                    for target in targets:
                        if not target.closed:
                            await target.send_bytes(msg.data)
        finally:
            CLIENTS.discard(ws)
        return ws
    return handler


async def main(args: argparse.Namespace) -> None:
    context = None
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    app = web.Application()
    app.router.add_get("/", make_handler(args.deflate, args.broadcast))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024, ssl_context=context)
    await site.start()
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    print(f"aiohttp {aiohttp.__version__} on 127.0.0.1:{args.port}, loop: "
          f"{type(asyncio.get_running_loop()).__module__}, broadcast: {args.broadcast}, "
          f"deflate: {args.deflate}, tls: {bool(context)}", file=sys.stderr, flush=True)
    await stop
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--deflate", action="store_true")
    parser.add_argument("--broadcast", action="store_true")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    asyncio.run(main(parser.parse_args()))
