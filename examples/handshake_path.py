#!/usr/bin/env python3
"""Path-checking server: the handshake example of AnyEvent::WebSocket::Server.

Accepts ws://HOST:PORT/YYYY/MM, rejects other paths and months outside 1..12
from the ``handshake`` callback (the rejected client gets an HTTP error on the
still-open socket), and greets accepted clients with the year and month.
"""

import argparse
import logging
import re
import signal
import sys

import evws

log = logging.getLogger("handshake_path")


def handshake(request, response):
    # request is an evws.Request, response the default evws.Response
    match = re.match(r"^/(\d{4})/(\d{2})", request.resource_name)
    if not match:
        raise ValueError("Invalid format")
    year, month = match.groups()
    if not 1 <= int(month) <= 12:
        raise ValueError("Invalid month")
    return response, year, month


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 = any free port")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    server = evws.Server(handshake=handshake)

    def on_accept(sock, peer_host, peer_port):
        def established(cv):
            try:
                connection, year, month = cv.recv()
            except evws.HandshakeError as exc:
                # The socket is still open: answer the client, then hang up.
                reason = exc.__cause__ or exc
                body = f"{reason}\n".encode()
                try:
                    sock.sendall(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n"
                                 b"Content-Type: text/plain\r\n"
                                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                except OSError:
                    pass
                sock.close()
                return
            connection.send(f"You are accessing YEAR = {year}, MONTH = {month}")
            connection.on("finish", lambda connection: None)

        server.establish(sock).cb(established)

    listener = server.listen(args.host, args.port, on_accept)
    print(f"handshake_path server listening on ws://{args.host}:{listener.port}/YYYY/MM",
          file=sys.stderr, flush=True)
    loop = evws.get_loop()

    def stop(signum):
        # Stop accepting, close every connection with 1001 (going away) after
        # what it had queued, then leave the loop; stragglers get 5 s.
        log.info("signal %d: shutting down", signum)
        server.shutdown(code=1001, reason="server shutting down", timeout=5).cb(
            lambda cv: loop.stop())

    loop.signal(signal.SIGINT, stop)
    loop.signal(signal.SIGTERM, stop)
    try:
        loop.run()
    finally:
        listener.close()


if __name__ == "__main__":
    main()
