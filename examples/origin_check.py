#!/usr/bin/env python3
"""Echo server that refuses cross-site WebSocket requests (an Origin check).

Why: browsers apply no same-origin policy to WebSockets. Any page the user
visits may open ws://your-server/ from its script, and the browser sends the
user's cookies along; if the server authenticates by cookie, that page now
talks to it as the user ("cross-site WebSocket hijacking", CSWSH). What the
browser does add is an ``Origin`` header naming the page's site, which the
page cannot forge. So a server that relies on cookies (or on the client's
network position) must compare ``Origin`` with the sites it trusts, in the
handshake, before the 101 answer.

What this example does:

- ``--allow-origin URL`` (repeatable) lists the trusted origins, compared
  exactly (scheme, host and port, lower-cased; ``http://localhost:8080`` is
  not ``http://localhost:8081``). Never match by prefix or substring:
  ``https://example.com.evil.net`` starts with ``https://example.com``.
- A request with another ``Origin`` gets ``403 Forbidden``.
- A request without ``Origin`` comes from a non-browser client (browsers
  always send it), which cannot be driven by a hostile page: it is accepted
  unless ``--require-origin`` is given.

The check does not replace authentication: a non-browser client can send any
``Origin`` it likes. It stops *browsers* from being used against your users.
"""

import argparse
import logging
import signal
import sys

import evws

log = logging.getLogger("origin_check")


def normalize_origin(origin):
    """``Origin`` values are case-insensitive in scheme and host; compare lower-cased."""
    return origin.strip().lower().rstrip("/")


def make_handshake(allowed, require_origin=False):
    """A handshake callback accepting only the ``allowed`` origins."""
    allowed = {normalize_origin(o) for o in allowed}

    def handshake(request, response):
        origin = request.origin
        if origin is None:
            if require_origin:
                raise evws.HandshakeError("no Origin header", status=403,
                                          response=_forbidden("Origin required"))
            return response
        if normalize_origin(origin) not in allowed:
            raise evws.HandshakeError(f"origin {origin!r} is not allowed", status=403,
                                      response=_forbidden("origin not allowed"))
        return response

    return handshake


def _forbidden(text):
    body = (text + "\n").encode()
    return (b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Type: text/plain\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 = any free port")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                        help="a trusted origin, e.g. https://app.example.com (repeatable)")
    parser.add_argument("--require-origin", action="store_true",
                        help="also refuse requests without an Origin header")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    server = evws.Server()

    def on_accept(sock, peer_host, peer_port):
        def established(cv):
            try:
                connection = cv.recv()
            except evws.HandshakeError as exc:
                # 403 for a foreign origin, the ready 4xx answer otherwise.
                log.info("refused %s:%s: %s", peer_host, peer_port, exc)
                try:
                    sock.sendall(exc.response)
                except OSError:
                    pass
                sock.close()
                return
            connection.on("each_message", lambda conn, message: conn.send(message))

        server.establish(sock).cb(established)

    listener = server.listen(args.host, args.port, on_accept)
    if not args.allow_origin:  # default: pages served from this very host and port
        args.allow_origin = [f"http://localhost:{listener.port}", f"http://127.0.0.1:{listener.port}"]
    server.handshake = make_handshake(args.allow_origin, args.require_origin)
    print(f"origin_check server listening on ws://{args.host}:{listener.port}/ "
          f"(allowed origins: {', '.join(args.allow_origin)})", file=sys.stderr, flush=True)
    loop = evws.get_loop()

    def stop(signum):
        server.shutdown(timeout=5).cb(lambda cv: loop.stop())

    loop.signal(signal.SIGINT, stop)
    loop.signal(signal.SIGTERM, stop)
    try:
        loop.run()
    finally:
        listener.close()


if __name__ == "__main__":
    main()
