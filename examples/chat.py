#!/usr/bin/env python3
"""Chat room: one port serves the page (HTTP) and the room (WebSocket on /ws).

Every message a browser sends is broadcast to everyone in the room, the sender
included: text as text, binary as binary. The page is a plain WSGI app run by
``evws.wsgi.serve`` on the evws loop; ``/ws`` is upgraded with
``server.establish_wsgi(environ)``. The room is an ``evws.Hub`` room. Start it
and open http://127.0.0.1:8000/ in two browser tabs::

    python3 examples/chat.py --port 8000

Across processes: ``--workers N`` runs N supervised worker processes on the
port (see ``evws.workers``; each binds its own ``SO_REUSEPORT`` listener) and
``--redis URL`` puts the room on Redis (``evws.RedisBroker``), so browsers on
different workers, or on other machines' chat servers, are in one room::

    python3 examples/chat.py --port 8000 --workers 2 --redis redis://127.0.0.1:6379/0

Without ``--redis`` each worker would have a room of its own, so more than one
worker is refused. Redis must answer at start-up (the chat exits 1 at the first
failed attempt, saying why); if it goes away later, every worker keeps serving
(one started meanwhile too), logs ``Redis connection lost`` and ``Redis
connection back``, and the room spans the workers again once Redis is back.
The first message on each WebSocket is the server's welcome, "you are on
worker PID", which the page shows apart from the chat.
SIGTERM/Ctrl-C closes every connection with 1001, SIGHUP restarts the workers
one by one (their connections close with 1012).
"""

import argparse
import logging
import os
import sys
from http import HTTPStatus

import evws
import evws.workers
import evws.wsgi
from evws.brokers.redis_link import parse_redis_url

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
// window.chat is also what the browser test drives: connect(), send(), received, ready, worker.
const chat = window.chat = { received: [], ready: null, socket: null, worker: null };
const log = document.getElementById("log");

function show(text, cls) {
  const p = document.createElement("p");
  p.textContent = text;
  if (cls) p.className = cls;
  log.appendChild(p);
  log.scrollTop = log.scrollHeight;
}

// The first message on each socket is the server's welcome, "you are on worker PID":
// chat.worker gets the pid, and chat.ready resolves (with the extensions) once it came.
chat.connect = () => {
  const old = chat.socket;
  if (old) { old.onmessage = old.onclose = old.onerror = null; old.close(); }
  chat.worker = null;
  chat.ready = new Promise((resolve, reject) => {
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
    const ws = chat.socket = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => show("connected", "status");
    ws.onerror = () => reject(new Error("WebSocket error"));
    ws.onclose = (e) => show("disconnected (" + e.code + ")", "status");
    ws.onmessage = (e) => {
      if (chat.worker === null) {
        chat.worker = Number(/([0-9]+)$/.exec(e.data)[1]);
        show(e.data, "status");
        resolve(ws.extensions);
      } else if (typeof e.data === "string") {
        chat.received.push({ type: "text", data: e.data });
        show(e.data.length > 200 ? e.data.slice(0, 200) + "... (" + e.data.length + " chars)" : e.data);
      } else {
        const bytes = Array.from(new Uint8Array(e.data));
        chat.received.push({ type: "binary", data: bytes });
        show("[binary, " + bytes.length + " bytes]");
      }
    };
  });
  return chat.ready;
};
chat.connect();

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


ROOM = "chat"

#: seconds the chat waits for Redis at start-up (a refusal ends the wait at once)
REDIS_TIMEOUT = 5.0


def open_hub(url, loop, required=True, timeout=REDIS_TIMEOUT):
    """The room's Hub: in this process only, or on Redis once it answered.

    ``required`` (the start-up check, or a single process): Redis must
    answer, and the first failed attempt (refused, AUTH refused...) raises
    ``BrokerError`` saying why. A worker (started after that check passed,
    e.g. replacing one that died while Redis is down) logs the failure and
    serves anyway: its broker reconnects on its own, and the room spans the
    workers again once Redis is back.
    """
    if url is None:
        return evws.Hub(loop=loop)
    broker = evws.RedisBroker(url, loop=loop)
    hub = evws.Hub(broker, loop=loop)
    try:
        broker.wait_connected(timeout)
    except evws.BrokerError as exc:
        if required:
            hub.close()
            raise
        log.warning("%s; serving anyway, the room waits until Redis is back", exc)
    hub.on("unhealthy", lambda hub, error: log.warning("Redis connection lost: %s", error))
    hub.on("healthy", lambda hub: log.info("Redis connection back"))
    return hub


def make_app(server, hub=None):
    """The WSGI application: the page on /, the room on /ws (``hub``: in-process by default)."""
    if hub is None:
        hub = evws.Hub(loop=server.loop)

    def publish(connection, message):
        try:
            hub.publish(ROOM, message)  # every member gets it back from the broker, once
        except evws.BrokerUnavailable as exc:  # Redis down for long, its queue full
            log.warning("message refused: %s", exc)
            connection.close(1013, "chat unavailable, try again later")

    def join(connection):
        # Sent before joining, so it is the first message the page gets.
        connection.send(f"you are on worker {os.getpid()}")
        hub.join(connection, ROOM)  # left again when the connection finishes
        connection.on("each_message", publish)

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


def serve_worker(ctx, host, port, reservation, redis):
    """One worker of ``--workers N``: the page and the room, on its own listener."""
    reservation.close()  # the supervisor's port reservation; this worker listens itself
    hub = open_hub(redis, ctx.loop, required=False)  # serves even while Redis is down
    server = evws.Server(max_payload_size=1 << 20, loop=ctx.loop)
    http = evws.wsgi.WSGIServer(make_app(server, hub), loop=ctx.loop)
    http.listener = evws.tcp_server(host, port, http.handle, loop=ctx.loop, reuse_port=True)
    ctx.add_server(server)  # stop: close the room's connections (1001, or 1012 on SIGHUP)

    def stop(code, reason):  # besides the server: the page's listener, and the hub's Redis links
        http.close()
        hub.close()

    ctx.on_stop(stop)


def redis_url(text):
    try:
        parse_redis_url(text)
    except evws.BrokerError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    parser.add_argument("--workers", type=int, default=0,
                        help="worker processes on the port (default 0: one process); more "
                             "than one needs --redis, for the room to span them")
    parser.add_argument("--redis", type=redis_url, metavar="URL",
                        help="put the room on Redis (redis://host[:port][/db]; needs "
                             "pip install 'evws[redis]'), shared by every worker and server")
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    args = parser.parse_args()
    if args.workers > 1 and not args.redis:
        parser.error(f"--workers {args.workers} without --redis: each worker would have a room of "
                     "its own, and browsers on different workers would not see each other's "
                     "messages; add --redis redis://127.0.0.1:6379/0 (or use one worker)")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    log.setLevel(logging.INFO)  # the chat's own lines: Redis lost, Redis back
    if not args.verbose:  # ... say it once; the broker's own account is for --verbose
        logging.getLogger("evws.redis").setLevel(logging.ERROR)
    where = ""
    if args.redis:
        address = parse_redis_url(args.redis)
        where = f", the room on Redis at {address.host}:{address.port}"

    def redis_check(loop):
        """Open the room's hub on ``loop``; exit 1 saying why if Redis does not answer."""
        try:
            return open_hub(args.redis, loop)
        except (evws.BrokerError, ImportError) as exc:
            print(f"chat: {exc}", file=sys.stderr)
            sys.exit(1)

    def announce(port, detail=""):
        print(f"chat on http://{args.host}:{port}/ (WebSocket ws://{args.host}:{port}/ws){detail}",
              file=sys.stderr, flush=True)

    if args.workers:
        if args.redis:  # said once here rather than in a crash loop of workers
            check_loop = evws.Loop()
            try:
                redis_check(check_loop).close()
            finally:
                check_loop.close()
        logging.getLogger("evws.workers").setLevel(logging.INFO)
        reservation = evws.workers.reserve_port(args.host, args.port)
        port = reservation.getsockname()[1]
        status = evws.run_workers(
            lambda ctx: serve_worker(ctx, args.host, port, reservation, args.redis), args.workers,
            on_ready=lambda: announce(
                port, f" with {args.workers} worker{'s' if args.workers > 1 else ''}{where}"))
        reservation.close()
        sys.exit(status)

    hub = redis_check(evws.get_loop())
    server = evws.Server(max_payload_size=1 << 20)
    http = evws.wsgi.serve(make_app(server, hub), args.host, args.port)
    announce(http.port, where)
    try:
        evws.get_loop().run()
    except KeyboardInterrupt:
        pass
    finally:
        http.close()
        hub.close()


if __name__ == "__main__":
    main()
