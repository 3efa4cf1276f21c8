"""The `picows` peer: an echo (or broadcast) server, on uvloop when installed (benchmarks/run.py).

picows hands over frames, not messages: a data frame is echoed as it came
(same opcode, same FIN), which echoes fragmented messages too. Close and
ping are answered here, as picows leaves them to the listener. picows has
no permessage-deflate, so it is not a peer of the deflate workload.
``--broadcast`` sends each data frame to every client (the sender included)
by looping over the open transports, picows' way (it has no broadcast helper).

    python3 benchmarks/peers/picows_echo.py --port 8765 [--broadcast] [--tls-cert PEM --tls-key PEM]
"""

import argparse
import asyncio
import signal
import ssl
import sys

import picows
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

try:
    import uvloop
except ImportError:
    uvloop = None

CLIENTS: set[WSTransport] = set()
DATA = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION)


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type in DATA:
            transport.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif frame.msg_type == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())


class FanOut(Echo):
    def on_ws_connected(self, transport: WSTransport) -> None:
        CLIENTS.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        CLIENTS.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type in DATA:
            payload = frame.get_payload_as_bytes()   # the frame's buffer is reused afterwards
            for client in CLIENTS:
                client.send(frame.msg_type, payload, frame.fin)
        else:
            super().on_ws_frame(transport, frame)


async def main(args: argparse.Namespace) -> None:
    context = None
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    listener = FanOut if args.broadcast else Echo
    server = await ws_create_server(lambda request: listener(), "127.0.0.1", args.port,
                                    max_frame_size=1 << 22, backlog=1024, ssl=context)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, server.close)
    print(f"picows {picows.__version__} on 127.0.0.1:{args.port}, loop: {type(loop).__module__}, "
          f"broadcast: {args.broadcast}, tls: {bool(context)}", file=sys.stderr, flush=True)
    try:
        await server.serve_forever()
    except asyncio.CancelledError:
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--broadcast", action="store_true")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    arguments = parser.parse_args()
    if uvloop is not None:
        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))
