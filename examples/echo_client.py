#!/usr/bin/env python3
"""Echo client: send lines to a WebSocket server and print what comes back.

    python3 examples/echo_client.py ws://127.0.0.1:8080/ hello world   # one message per argument
    printf 'a\\nb\\n' | python3 examples/echo_client.py ws://127.0.0.1:8080/   # one per stdin line

Each reply is printed on its own line as it arrives. Once every message was
answered (and stdin reached EOF), the client closes with 1000 and exits 0;
a failed connect exits 1 with the reason on stderr. Everything runs on the
evws loop: stdin is just one more readable fd (POSIX).
"""

import argparse
import logging
import os
import ssl
import sys

import evws


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="ws:// or wss:// URL")
    parser.add_argument("messages", nargs="*", help="messages to send (default: lines of stdin)")
    parser.add_argument("--cafile", help="PEM CA certificate(s) to trust for wss://")
    parser.add_argument("--timeout", type=float, default=10.0, help="connect timeout in seconds")
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    try:
        conn = evws.connect(args.url, ssl_context=context, timeout=args.timeout).recv()
    except (OSError, evws.WebSocketError) as exc:
        print(f"echo_client: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return 1

    loop = evws.get_loop()
    state = {"sent": 0, "received": 0, "input_done": False}

    def maybe_close() -> None:
        if state["input_done"] and state["received"] >= state["sent"]:
            conn.close(1000)

    @conn.on("each_message")
    def reply(conn, message):
        print(message.decoded_body if message.is_text else repr(message.body), flush=True)
        state["received"] += 1
        maybe_close()

    @conn.on("finish")
    def finish(conn):
        loop.stop()

    def send(line: str) -> None:
        conn.send(line)
        state["sent"] += 1

    if args.messages:
        for text in args.messages:
            send(text)
        state["input_done"] = True
        maybe_close()
    else:
        fd = sys.stdin.fileno()
        pending = bytearray()

        def readable() -> None:
            data = os.read(fd, 65536)
            if data:
                pending.extend(data)
                *lines, rest = pending.split(b"\n")
                pending[:] = rest
                for line in lines:
                    send(line.decode("utf-8", "replace").rstrip("\r"))
                return
            watcher.cancel()
            if pending:
                send(pending.decode("utf-8", "replace"))
            state["input_done"] = True
            maybe_close()

        watcher = loop.io(fd, "r", readable)

    loop.run()
    return 0 if conn.close_code in (1000, 1005) else 1


if __name__ == "__main__":
    sys.exit(main())
