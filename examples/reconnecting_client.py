#!/usr/bin/env python3
"""Reconnecting client: stay connected to a WebSocket server, through its restarts.

    python3 examples/reconnecting_client.py ws://127.0.0.1:8080/feed
    python3 examples/reconnecting_client.py ws://127.0.0.1:8080/ --hello subscribe --max-delay 10

Every message the server sends is printed on stdout, one per line. When the
connection ends or a connect fails, the client waits and connects again: the
wait doubles from --initial-delay up to --max-delay, minus a random part of it
(so that many clients dropped by one restart do not all come back at the same
instant), and starts over once a connection has lasted. --hello is sent on
every new connection (a subscription, a login...). Connects, disconnects and
the retries go to stderr.

A refusal that retrying cannot fix (403, 404...) ends it with exit 1.
SIGINT (Ctrl-C) or SIGTERM stops it, whatever it is doing: a wait or a
connect in flight is cancelled at once, a connection is closed with 1000
(after the server's answer); then it exits 0.
"""

import argparse
import logging
import signal
import sys

import evws


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="ws:// or wss:// URL")
    parser.add_argument("--hello", help="message to send on every new connection")
    parser.add_argument("--initial-delay", type=float, default=1.0,
                        help="seconds before the first retry (default 1)")
    parser.add_argument("--max-delay", type=float, default=30.0,
                        help="longest wait between retries (default 30)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds allowed for each connect (default 10)")
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def say(text: str) -> None:
        print(f"reconnecting_client: {text}", file=sys.stderr, flush=True)

    try:
        policy = evws.ReconnectPolicy(initial_delay=args.initial_delay, max_delay=args.max_delay)
        client = evws.reconnecting(args.url, policy, timeout=args.timeout)
    except ValueError as exc:  # a bad URL or delay
        parser.error(str(exc))

    loop = evws.get_loop()

    @client.on("connect")
    def connected(conn):
        say(f"connected to {args.url}")
        if args.hello is not None:
            conn.send(args.hello)

    @client.on("message")
    def message(conn, message):
        print(message.decoded_body if message.is_text else message.body.hex(), flush=True)

    @client.on("disconnect")
    def disconnected(conn):
        say(f"disconnected ({conn.close_code} {conn.close_reason!r})")

    @client.on("reconnect")
    def retrying(attempt, delay, cause):
        say(f"connect #{attempt} in {delay:.2f} s ({type(cause).__name__}: {cause})")

    @client.on("finish")
    def finished(error):
        if error is not None:
            say(f"giving up: {type(error).__name__}: {error}")
        loop.stop()

    def stop(signum: int) -> None:
        say(f"signal {signum}: stopping")
        client.close(1000)  # finish follows: at once, or after the closing handshake

    loop.signal(signal.SIGINT, stop)
    loop.signal(signal.SIGTERM, stop)
    loop.run()
    return 0 if client.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
