#!/usr/bin/env python3
"""A Flask application on the evws loop: a page on /, an echo WebSocket on /ws, one port.

The Perl original runs under Twiggy and upgrades with ``establish_psgi``;
here ``evws.wsgi.serve`` runs the Flask app on the evws loop and the ``/ws``
view upgrades with ``server.establish_wsgi(request.environ)``. Views run on
the loop: keep them quick, a slow view stalls every connection. Needs Flask
(``pip install flask``)::

    python3 examples/flask_app.py --port 8000
"""

import argparse
import logging
import sys

from flask import Flask, request

import evws
import evws.wsgi

log = logging.getLogger("flask_app")


def create_app(server: evws.Server) -> Flask:
    """The Flask application; ``server`` establishes the WebSocket connections."""
    app = Flask(__name__)

    @app.get("/")
    def index():
        return "<!DOCTYPE html><title>evws + Flask</title><p>WebSocket echo on /ws</p>"

    @app.post("/echo")
    def echo_body():
        return request.get_data(), 200, {"Content-Type": "application/octet-stream"}

    # websocket=True: werkzeug's router sends upgrade requests only to such rules
    # (and answers 400 to a plain GET on them).
    @app.route("/ws", websocket=True)
    def ws():
        cv = server.establish_wsgi(request.environ)
        try:
            connection = cv.recv()      # ready at once: the handshake was in the request
        except evws.HandshakeError as exc:
            return str(exc), exc.status

        @connection.on("each_message")
        def echo(connection, message):
            connection.send(message)

        # The socket belongs to the connection now; evws.wsgi ignores this response.
        return "", 204

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    server = evws.Server()
    http = evws.wsgi.serve(create_app(server), args.host, args.port)
    print(f"Flask on http://{args.host}:{http.port}/ (WebSocket ws://{args.host}:{http.port}/ws)",
          file=sys.stderr, flush=True)
    try:
        evws.get_loop().run()
    except KeyboardInterrupt:
        pass
    finally:
        http.close()


if __name__ == "__main__":
    main()
