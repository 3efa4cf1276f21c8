#!/usr/bin/env python3
"""Chat room: one port serves the page (HTTP) and the room (WebSocket on /ws).

Every message a browser sends is broadcast to everyone in the room, the sender
included: text as text, binary as binary. The page is a plain WSGI app run by
``evws.wsgi.serve`` on the evws loop; ``/ws`` is upgraded with
``server.establish_wsgi(environ)``. Start it and open http://127.0.0.1:8000/
in two browser tabs::

    python3 examples/chat.py --port 8000

``--workers N`` runs N supervised worker processes on the port (see
``evws.workers``; each binds its own ``SO_REUSEPORT`` listener). Each worker
has its own room: two browsers that land on different workers do not see each
other's messages. SIGTERM/Ctrl-C closes every connection with 1001, SIGHUP
restarts the workers one by one (their connections close with 1012).
"""

import argparse
import logging
import sys
from http import HTTPStatus

import evws
import evws.workers
import evws.wsgi

log = logging.getLogger("chat")

PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>evws chat</title>
<style>
  body { font-family: sans-serif; max-width: 40em; margin: 2em auto; }
  #log { border: 1px solid #ccc; height: 20em; overflow-y: auto; padding: .5em; }
  #log p { margin: .2em 0; }
  .status { color: #888; }
</style>
</head>
<body>
<h1>evws chat</h1>
<div id="log"></div>
<form id="form"><input id="text" autocomplete="off" size="50" autofocus>
<button>Send</button></form>
<script>
"use strict";
// window.chat is also what the browser test drives: send(), received, ready.
const chat = window.chat = { received: [], ready: null, socket: null };
const log = document.getElementById("log");

function show(text, cls) {
  const p = document.createElement("p");
  p.textContent = text;
  if (cls) p.className = cls;
  log.appendChild(p);
  log.scrollTop = log.scrollHeight;
}

chat.ready = new Promise((resolve, reject) => {
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  const ws = chat.socket = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { show("connected", "status"); resolve(ws.extensions); };
  ws.onerror = () => reject(new Error("WebSocket error"));
  ws.onclose = (e) => show("disconnected (" + e.code + ")", "status");
  ws.onmessage = (e) => {
    if (typeof e.data === "string") {
      chat.received.push({ type: "text", data: e.data });
      show(e.data.length > 200 ? e.data.slice(0, 200) + "... (" + e.data.length + " chars)" : e.data);
    } else {
      const bytes = Array.from(new Uint8Array(e.data));
      chat.received.push({ type: "binary", data: bytes });
      show("[binary, " + bytes.length + " bytes]");
    }
  };
});

chat.send = (data) => chat.socket.send(data);

document.getElementById("form").onsubmit = (e) => {
  e.preventDefault();
  const input = document.getElementById("text");
  if (input.value) chat.send(input.value);
  input.value = "";
};
</script>
</body>
</html>
"""


def make_app(server):
    """The WSGI application: the page on /, the room on /ws."""
    room = set()

    def join(connection):
        room.add(connection)

        @connection.on("each_message")
        def broadcast(connection, message):
            for member in list(room):
                try:
                    member.send(message)
                except evws.ConnectionClosed:
                    room.discard(member)

        connection.on("finish", room.discard)

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/ws":
            # The request is already read, so the CondVar is ready at once: recv()
            # does not block, and handlers attached now see even the first frames.
            try:
                connection = server.establish_wsgi(environ).recv()
            except evws.HandshakeError as exc:  # not a valid upgrade: answer over HTTP
                log.debug("bad upgrade request: %s", exc)
                status = HTTPStatus(exc.status or 400)
                start_response(f"{status.value} {status.phrase}", [("Content-Type", "text/plain")])
                return [str(exc).encode()]
            join(connection)
            return []  # ignored: the socket belongs to the connection now
        if path == "/" and environ["REQUEST_METHOD"] in ("GET", "HEAD"):
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                      ("Cache-Control", "no-store")])
            return [PAGE]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    return app


def serve_worker(ctx, host, port, reservation):
    """One worker of ``--workers N``: the page and its own room, on its own listener."""
    reservation.close()  # the supervisor's port reservation; this worker listens itself
    server = evws.Server(max_payload_size=1 << 20, loop=ctx.loop)
    http = evws.wsgi.WSGIServer(make_app(server), loop=ctx.loop)
    http.listener = evws.tcp_server(host, port, http.handle, loop=ctx.loop, reuse_port=True)
    ctx.add_server(server)  # stop: close the room's connections (1001, or 1012 on SIGHUP)
    ctx.on_stop(lambda code, reason: http.close())  # and the page's listener


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    parser.add_argument("--workers", type=int, default=0,
                        help="worker processes on the port, each with its own room "
                             "(default 0: one process)")
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def announce(port, detail=""):
        print(f"chat on http://{args.host}:{port}/ (WebSocket ws://{args.host}:{port}/ws){detail}",
              file=sys.stderr, flush=True)

    if args.workers:
        logging.getLogger("evws.workers").setLevel(logging.INFO)
        reservation = evws.workers.reserve_port(args.host, args.port)
        port = reservation.getsockname()[1]
        status = evws.run_workers(
            lambda ctx: serve_worker(ctx, args.host, port, reservation), args.workers,
            on_ready=lambda: announce(port, f" with {args.workers} workers, one room each"))
        reservation.close()
        sys.exit(status)

    server = evws.Server(max_payload_size=1 << 20)
    http = evws.wsgi.serve(make_app(server), args.host, args.port)
    announce(http.port)
    try:
        evws.get_loop().run()
    except KeyboardInterrupt:
        pass
    finally:
        http.close()


if __name__ == "__main__":
    main()
