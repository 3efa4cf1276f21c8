"""The `websockets` peer: an echo server on its asyncio API (benchmarks/run.py).

Configured like the evws example under test: no compression, no size limit,
no keepalive pings, backlog 1024. It prints whether the `websockets` C
speedups are in use, since they decide the 1 MiB result.

    python3 benchmarks/peers/websockets_echo.py --port 8765
"""

import argparse
import asyncio
import signal
import sys

import websockets
from websockets.asyncio.server import serve


async def echo(ws) -> None:
    async for message in ws:
        await ws.send(message)


async def main(port: int) -> None:
    try:
        from websockets import speedups
        accel = speedups.__file__
    except ImportError:
        accel = None
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(echo, "127.0.0.1", port, compression=None, max_size=None,
                     ping_interval=None, backlog=1024):
        print(f"websockets {websockets.__version__} on 127.0.0.1:{port}, speedups: {accel}",
              file=sys.stderr, flush=True)
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
