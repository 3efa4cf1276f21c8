#!/usr/bin/env python3
"""Echo server: the first example of AnyEvent::WebSocket::Server, line for line.

Every message is sent back as it came (text as text, binary as binary);
``finish`` drops the connection. Run it and point any WebSocket client at
ws://127.0.0.1:8080/ .
"""

import argparse
import logging
import signal
import sys

import evws

log = logging.getLogger("echo_server")


# The listeners are plain functions, not closures made per connection: they
# need nothing but their arguments, and at thousands of idle connections
# every object a connection holds counts (issue 4).
def echo(connection, message):
    connection.send(message)


def finish(connection):
    # Nothing else holds the connection: once finished it is dropped.
    log.debug("connection from %s finished", connection.request.peer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any free port)")
    parser.add_argument("--max-payload-size", type=int, default=1 << 20, metavar="BYTES",
                        help="largest message accepted (default 1 MiB; 0 = no limit)")
    parser.add_argument("--no-compression", action="store_true",
                        help="decline permessage-deflate (on by default)")
    parser.add_argument("--malloc-defaults", action="store_true",
                        help="keep the C allocator's defaults (see evws.keep_freed_memory)")
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    args = parser.parse_args()
    if not args.malloc_defaults:
        # A server program's choice (it affects the whole process): reuse the
        # memory of freed large messages instead of faulting it in again.
        evws.keep_freed_memory()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

    server = evws.Server(max_payload_size=args.max_payload_size or None,
                         compression=None if args.no_compression else "deflate")

    def on_accept(sock, peer_host, peer_port):
        def established(cv):
            try:
                connection = cv.recv()
            except evws.HandshakeError as exc:
                # Port probes connect and leave without a handshake: routine, not an error.
                log.debug("invalid connection request from %s:%s: %s", peer_host, peer_port, exc)
                sock.close()
                return

            connection.on("each_message", echo)
            connection.on("finish", finish)

        server.establish(sock).cb(established)

    listener = server.listen(args.host, args.port, on_accept)
    print(f"echo server listening on ws://{args.host}:{listener.port}/", file=sys.stderr, flush=True)
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
