"""The `websockets` peer: an echo (or broadcast) server on its asyncio API (benchmarks/run.py).

Configured like the evws server under test: no compression unless
``--deflate``, no size limit, no keepalive pings, backlog 1024. It prints
whether the `websockets` C speedups are in use, since they decide the 1 MiB
result. ``--broadcast`` sends every message to every client (the sender
included) with ``websockets.broadcast()``; ``--tls-cert``/``--tls-key`` serve wss://.

    python3 benchmarks/peers/websockets_echo.py --port 8765 [--deflate] [--broadcast] [--tls-cert PEM --tls-key PEM]
"""

import argparse
import asyncio
import signal
import ssl
import sys

import websockets
from websockets.asyncio.server import broadcast, serve


async def echo(ws) -> None:
    async for message in ws:
        await ws.send(message)


async def main(args: argparse.Namespace) -> None:
    try:
        from websockets import speedups
        accel = speedups.__file__
    except ImportError:
        accel = None
    context = None
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async def fan_out(ws) -> None:
        async for message in ws:
            broadcast(ws.server.connections, message)

    handler = fan_out if args.broadcast else echo
    async with serve(handler, "127.0.0.1", args.port, compression="deflate" if args.deflate else None,
                     max_size=None, ping_interval=None, backlog=1024, ssl=context):
        print(f"websockets {websockets.__version__} on 127.0.0.1:{args.port}, speedups: {accel}, "
              f"broadcast: {args.broadcast}, deflate: {args.deflate}, tls: {bool(context)}",
              file=sys.stderr, flush=True)
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--deflate", action="store_true")
    parser.add_argument("--broadcast", action="store_true")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    asyncio.run(main(parser.parse_args()))
