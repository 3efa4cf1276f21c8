#!/usr/bin/env python3
"""Line echo over plain TCP: AnyEvent::Handle's push_read(line)/push_write, ported.

    python3 examples/line_echo.py serve --port 7000        # the line server
    python3 examples/line_echo.py client 127.0.0.1 7000 hello world
    python3 examples/line_echo.py demo hello world          # both, on one loop

The server answers every line ``X`` with ``echo: X`` and a ``bye`` line with
``bye`` before it closes; a line over 1 KiB fails that connection
(``evws.LineTooLong``). The client sends each argument as a line, prints each
answer as it arrives, says ``bye`` and exits 0 (1 if the server went away
early). No WebSocket anywhere: ``evws.tcp_server``, ``evws.tcp_connect`` and
``evws.Stream`` with its queued reads, the pieces a Perl port uses for the
other sockets it has.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys

import evws

log = logging.getLogger("line_echo")
MAX_LINE = 1024


def serve(host: str, port: int, loop: evws.Loop) -> evws.TcpServer:
    """Start the line server; return its listener (``.port`` is the real port)."""
    def on_accept(sock: socket.socket, peer_host: str, peer_port: int) -> None:
        def on_close(error: Exception | None) -> None:
            if error is not None:  # AnyEvent::Handle's on_error
                log.warning("%s:%d: %s", peer_host, peer_port, error)

        stream = evws.Stream(sock, loop, on_close=on_close)
        stream.on_eof = stream.close  # the client left without "bye"

        def on_line(line: bytes) -> None:
            if line == b"bye":
                stream.write(b"bye\n")
                stream.close()  # flushes "bye" first
                return
            stream.write(b"echo: " + line + b"\n")
            stream.read_line(on_line, max_size=MAX_LINE)  # the next line

        stream.read_line(on_line, max_size=MAX_LINE)

    return evws.tcp_server(host, port, on_accept, loop=loop)


def client(host: str, port: int, lines: list[str], loop: evws.Loop,
           timeout: float = 10.0) -> int:
    """Send ``lines``, print the answers; return the exit status."""
    try:
        sock = evws.tcp_connect(host, port, loop, timeout=timeout).recv(timeout=timeout)
    except OSError as exc:
        print(f"line_echo: cannot connect to {host}:{port}: {exc}", file=sys.stderr)
        return 1
    done = evws.CondVar(loop)

    def on_close(error: Exception | None) -> None:
        done.send(1 if error is not None or lines else 0)

    stream = evws.Stream(sock, loop, on_close=on_close)
    stream.on_eof = stream.close

    def on_answer(answer: bytes) -> None:
        print(answer.decode("utf-8", "replace"), flush=True)
        if lines:
            lines.pop(0)

    for line in lines:  # push_write and push_read, all queued up front
        stream.write(line.encode() + b"\n")
        stream.read_line(on_answer, max_size=MAX_LINE)
    stream.write(b"bye\n")
    stream.read_line(lambda answer: stream.close(), max_size=MAX_LINE)
    try:
        result: int = done.recv(timeout=timeout)
    except evws.WaitTimeout:
        print("line_echo: no answer in time", file=sys.stderr)
        stream.abort()
        return 1
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve", help="run the line server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=7000, help="0 = any free port")
    c = sub.add_parser("client", help="send lines to a line server")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("lines", nargs="+")
    d = sub.add_parser("demo", help="server and client on one loop")
    d.add_argument("lines", nargs="+")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    loop = evws.get_loop()
    if args.mode == "serve":
        listener = serve(args.host, args.port, loop)
        # The same banner shape as the WebSocket examples, so one probe finds both.
        print(f"line_echo: listening on tcp://{listener.host}:{listener.port}/", file=sys.stderr,
              flush=True)
        loop.run()
        return 0
    if args.mode == "client":
        return client(args.host, args.port, list(args.lines), loop)
    listener = serve("127.0.0.1", 0, loop)
    try:
        return client("127.0.0.1", listener.port, list(args.lines), loop)
    finally:
        listener.close()


if __name__ == "__main__":
    sys.exit(main())
