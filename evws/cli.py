"""The command line: ``python -m evws serve`` and ``python -m evws connect URL``.

In the spirit of ``python -m websockets`` and ``websocat``: a quick server to
point a browser or a client at, and an interactive client to poke at any
WebSocket server. Both run on the evws loop like any evws program, which
makes them small end-to-end examples too.

Conventions, so that the commands compose in shell pipelines: *data* (the
messages received) goes to stdout, one message per line; *progress and
errors* go to stderr, always prefixed ``evws:``. Logging of the library
itself (``logging.getLogger("evws")``) is silent unless ``--verbose``.

``connect`` reads stdin on the loop (``loop.io(stdin, "r", ...)``, the fd
made non-blocking for the run and restored afterwards), so typing, pasting
and piping all work while messages arrive. A regular file or ``/dev/null``
as stdin cannot be watched by epoll; it is then read a chunk per loop turn
(reading a file never blocks for long). EOF on stdin closes the connection
with 1000 and the command exits once the closing handshake is over.

``connect --reconnect`` runs the same session over :func:`evws.reconnecting`
(the default :class:`~evws.ReconnectPolicy`): each connect, disconnect and
scheduled retry is a line on stderr, and lines read from stdin while
disconnected wait for the next connection. ``--proxy URL`` / ``--no-proxy``
override the proxy variables, ``--max-redirects N`` bounds redirects. Ctrl-C
while connecting cancels the connect (``cv.cancel()``) instead of raising
``KeyboardInterrupt`` out of a blocking wait.

``serve --workers N`` runs the same server in N processes under
:mod:`evws.workers` (each with its own ``SO_REUSEPORT`` listener on one port
the supervisor reserved); the "listening" line is printed once every worker
is ready, and the supervisor's events go to stderr.

``serve --broadcast --redis URL`` broadcasts through an :class:`evws.Hub` on a
:class:`evws.RedisBroker` instead of the process's own connection list: every
client of every worker (and of every other ``serve`` on that Redis and room)
gets every message once, the sender included, in the same order. Redis must
answer at start-up (the command exits 1 otherwise, saying why); a later
outage is reported on stderr, one line when Redis goes and one when it is
back, and the broker reconnects on its own while the server keeps serving
(a worker started during the outage too).
``--worker-header`` adds ``X-Evws-Worker: PID`` to each handshake response,
to see which process a client landed on (``connect`` prints it).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from . import __version__
from .brokers.redis_broker import RedisBroker
from .brokers.redis_link import parse_redis_url
from .client import connect as ws_connect
from .client import parse_url
from .connection import Connection
from .errors import (
    BrokerError,
    BrokerUnavailable,
    ConnectCancelled,
    ConnectionClosed,
    HandshakeError,
    ProxyError,
    WebSocketError,
)
from .hub import Hub
from .message import Message
from .options import DEFAULTS
from .protocol.http import TOKEN
from .proxy import parse_proxy_url
from .reactor.allocator import keep_freed_memory
from .reactor.condvar import CondVar
from .reactor.loop import Handle, IoWatcher, Loop, get_loop
from .reconnect import reconnecting
from .server import Server
from .workers import WorkerContext, reserve_port
from .workers import run as run_workers

__all__ = ["build_parser", "console_main", "main"]

log = logging.getLogger("evws.cli")

PROG = "python -m evws"

#: how much of stdin one read takes
READ_SIZE = 65536

#: lines ``connect --reconnect`` keeps while disconnected (sent once connected again)
WAITING_LINES = 1000

#: the handshake response field ``--worker-header`` adds: the serving process's pid
WORKER_HEADER = "X-Evws-Worker"

#: seconds ``serve --redis`` gives Redis to answer at start-up (a refusal
#: ends the wait at once; see ``RedisBroker.wait_connected``)
REDIS_START_TIMEOUT = 10.0


def _err(text: str) -> None:
    """Progress and errors: stderr, prefixed, flushed at once (tests read it live).

    One ``write`` per line: ``print`` writes the text and the newline
    separately, and with ``--workers`` several processes share this stderr,
    so their lines could interleave mid-line.
    """
    sys.stderr.write(f"evws: {text}\n")
    sys.stderr.flush()


# -- the parser -----------------------------------------------------------------


def _payload_size(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _worker_count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _url_checked_by(parse: Callable[[str], Any], error: type[Exception]) -> Callable[[str], str]:
    """An argparse ``type``: the URL as given, once ``parse`` accepted it (its error as usage)."""
    def check(text: str) -> str:
        try:
            parse(text)
        except error as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    return check


_redis_url = _url_checked_by(parse_redis_url, BrokerError)
_proxy_url = _url_checked_by(parse_proxy_url, ProxyError)


def _redirect_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"wants a whole number >= 0, not {text!r}")
    return value


def _subprotocol_name(text: str) -> str:
    if not TOKEN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not a subprotocol name (an HTTP token): {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m evws`` parser, with the ``serve`` and ``connect`` subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="log evws's debug messages to stderr")
    common.add_argument("--max-payload-size", type=_payload_size, default=1 << 20, metavar="BYTES",
                        help="largest message accepted, all fragments together; larger ones "
                             "close the connection with 1009 (default 1048576; 0 = no limit)")
    common.add_argument("--no-compression", action="store_true",
                        help="do not negotiate permessage-deflate (RFC 7692)")

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="evws command line: a WebSocket server and an interactive WebSocket client. "
                    "Data goes to stdout, progress and errors to stderr.",
        epilog=f"Run '{PROG} COMMAND --help' for the options of each command.")
    parser.add_argument("--version", action="version", version=f"evws {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve", parents=[common], help="run an echo (or broadcast) WebSocket server",
        description="Run a WebSocket server that echoes every message back to its sender "
                    "(text as text, binary as binary), or with --broadcast sends it to every "
                    "connected client, the sender included (with --redis: every client of every "
                    "process sharing the Redis room). The URL to connect to is printed "
                    "on stderr once listening. SIGINT/SIGTERM close every connection with 1001 "
                    "and exit.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1; '' or 0.0.0.0 for all)")
    serve.add_argument("--port", type=int, default=8765,
                       help="port to listen on (default 8765; 0 picks a free port)")
    serve.add_argument("--unix", metavar="PATH",
                       help="listen on this Unix-domain socket instead of --host/--port (a "
                            "stale socket file is replaced, the file is removed on exit); "
                            "clients connect with unix_socket=PATH")
    serve.add_argument("--broadcast", action="store_true",
                       help="send each message to every connected client instead of echoing it")
    serve.add_argument("--workers", type=_worker_count, default=0, metavar="N",
                       help="run N worker processes on the port (SO_REUSEPORT), supervised: "
                            "a worker that dies or hangs is replaced, SIGTERM/SIGINT stop them "
                            "all (close 1001), SIGHUP restarts them one by one (close 1012). "
                            "With --broadcast a message reaches the clients of its own worker "
                            "only, unless --redis is given (default 0: one process, no "
                            "supervisor)")
    serve.add_argument("--redis", type=_redis_url, metavar="URL",
                       help="with --broadcast: broadcast through Redis pub/sub "
                            "(redis://[[user]:password@]host[:port][/db], an IP address or "
                            "localhost), so the clients of every worker, and of every other "
                            "server on that Redis and room, get every message once; needs "
                            "hiredis (pip install 'evws[redis]')")
    serve.add_argument("--room", metavar="NAME",
                       help="with --redis: the room (Redis channel evws:room:NAME) the servers "
                            "share (default 'broadcast'; Redis pub/sub ignores the db number, "
                            "so unrelated servers on one Redis need different rooms)")
    serve.add_argument("--worker-header", action="store_true",
                       help=f"add '{WORKER_HEADER}: PID' (the serving process) to each "
                            "handshake response, to see how clients spread over the workers")
    serve.add_argument("--tls-cert", metavar="PEM",
                       help="certificate chain (PEM) for wss://; may hold the key too")
    serve.add_argument("--tls-key", metavar="PEM", help="private key (PEM), if not in --tls-cert")
    serve.add_argument("--subprotocol", action="append", default=[], metavar="NAME",
                       type=_subprotocol_name,
                       help="subprotocol to accept when a client offers it (repeatable, in "
                            "this server's order of preference: the first one given that the "
                            "client offers wins)")
    serve.add_argument("--malloc-defaults", action="store_true",
                       help="keep the C allocator's defaults; without this flag serve lets glibc "
                            "keep up to 64 MiB of freed heap for reuse (evws.keep_freed_memory), "
                            "so large messages do not fault their pages in again each time")
    serve.add_argument("--require-subprotocol", action="store_true",
                       help="refuse (HTTP 400) a client that offers none of the --subprotocol "
                            "names (needs at least one --subprotocol)")

    conn = commands.add_parser(
        "connect", parents=[common], help="connect to a WebSocket server interactively",
        description="Connect to a ws:// or wss:// URL. Each line read on stdin is sent as one "
                    "message (without its line ending); each message received is printed on "
                    "stdout, text as is and binary as hexadecimal, one message per line. EOF "
                    "on stdin (Ctrl-D) closes the connection with 1000. Exit status: 0 after "
                    "a clean closing handshake, 1 when the connection failed or ended abnormally, "
                    "2 for a usage error. The proxy variables apply as for any HTTP client: "
                    "https_proxy for wss://, http_proxy for ws://, no_proxy.")
    conn.add_argument("url", help="ws:// or wss:// URL")
    conn.add_argument("--binary", action="store_true",
                      help="send lines as binary messages (the line's bytes) instead of text")
    conn.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                      help="extra field for the handshake request (repeatable)")
    conn.add_argument("--subprotocol", action="append", default=[], metavar="NAME",
                      help="subprotocol to offer, in order of preference (repeatable)")
    conn.add_argument("--origin", help="Origin field of the handshake request")
    conn.add_argument("--cafile", metavar="PEM",
                      help="CA certificate(s) to trust for wss:// instead of the system's")
    conn.add_argument("--insecure", action="store_true",
                      help="wss:// without verifying the server's certificate or host name")
    conn.add_argument("--unix", metavar="PATH",
                      help="connect to this Unix-domain socket; the URL still gives Host and "
                           "the path (ws://localhost/)")
    conn.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                      help="time allowed to open the connection (default 10)")
    proxy = conn.add_mutually_exclusive_group()
    proxy.add_argument("--proxy", metavar="URL", type=_proxy_url, default=True,
                       help="tunnel through this HTTP proxy (http://[user:pass@]host:port) with "
                            "CONNECT, whatever the environment says (default: the proxy "
                            "variables decide)")
    proxy.add_argument("--no-proxy", dest="proxy", action="store_const", const=None,
                       help="connect directly, ignoring the proxy variables")
    conn.add_argument("--max-redirects", type=_redirect_count, default=DEFAULTS.max_redirects,
                      metavar="N",
                      help="most handshake redirects (301, 302, 303, 307, 308) followed "
                           f"(default {DEFAULTS.max_redirects}; 0: a redirect is a refusal)")
    conn.add_argument("--reconnect", action="store_true",
                      help="keep the connection: when it ends or a connect fails, connect again "
                           "after a growing delay (1 s doubling to 60 s, with jitter), saying so "
                           "on stderr; lines read while disconnected wait (at most 1000) and go "
                           "out once connected again. EOF (once what was read is sent) or Ctrl-C "
                           "ends it (exit 0); a refusal that retrying cannot fix (a 4xx) exits 1")
    # Usage errors found after parsing are reported by the command's own parser
    # (its usage line, not the top level's).
    serve.set_defaults(command_parser=serve)
    conn.set_defaults(command_parser=conn)
    return parser


def _parse_headers(parser: argparse.ArgumentParser, values: Sequence[str]) -> list[tuple[str, str]]:
    headers = []
    for value in values:
        name, colon, rest = value.partition(":")
        if not colon or not name.strip():
            parser.error(f"--header wants 'Name: value', not {value!r}")
        headers.append((name.strip(), rest.strip()))
    return headers


def _setup_logging(verbose: bool) -> None:
    """The CLI is an application: it may configure logging (the library never does)."""
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        evws_log = logging.getLogger("evws")
        evws_log.addHandler(handler)
        evws_log.setLevel(logging.DEBUG)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    command_parser: argparse.ArgumentParser = args.command_parser
    if args.command == "serve":
        if args.redis and not args.broadcast:
            command_parser.error("--redis needs --broadcast: an echo server has nothing to share "
                         "between processes")
        if args.room is not None and not args.redis:
            command_parser.error("--room needs --redis")
        if args.room is not None and not args.room:
            command_parser.error("--room wants a non-empty name")
        if args.require_subprotocol and not args.subprotocol:
            command_parser.error("--require-subprotocol needs at least one --subprotocol")
        if args.unix and args.workers:
            command_parser.error("--unix and --workers cannot be combined (the workers share a "
                                 "TCP port with SO_REUSEPORT)")
        if not args.malloc_defaults:
            keep_freed_memory()  # a program's choice, so made here (workers inherit it)
        return serve(args)
    headers = _parse_headers(command_parser, args.header)
    if args.unix and isinstance(args.proxy, str):
        command_parser.error("--unix and --proxy cannot be combined (a Unix socket is local)")
    return connect(args, headers)


# -- serve ------------------------------------------------------------------------


def _url_host(host: str) -> str:
    if not host or host in ("0.0.0.0", "::"):
        return "127.0.0.1" if host != "::" else "[::1]"
    return f"[{host}]" if ":" in host else host


def _make_server(args: argparse.Namespace, loop: Loop) -> Server:
    """The ``serve`` server: subprotocols, payload limit, compression and TLS from ``args``.

    Raises:
        OSError, ValueError: the TLS files cannot be used.
    """
    worker_header: bool = args.worker_header

    def handshake(request: Any, response: Any) -> Any:
        response.headers.set(WORKER_HEADER, str(os.getpid()))
        return response

    return Server(handshake=handshake if worker_header else None,
                  subprotocols=args.subprotocol, require_subprotocol=args.require_subprotocol,
                  max_payload_size=args.max_payload_size or None,
                  compression=None if args.no_compression else "deflate",
                  ssl_cert_file=args.tls_cert, ssl_key_file=args.tls_key, loop=loop)


def _room(args: argparse.Namespace) -> str:
    return args.room or "broadcast"


def _open_hub(url: str, loop: Loop, *, required: bool, prefix: str = "",
              timeout: float = REDIS_START_TIMEOUT) -> Hub:
    """A :class:`Hub` on a :class:`RedisBroker`, once Redis answered (or failed to).

    Runs ``loop`` until both connections are up, giving up at the first
    failed attempt (:meth:`RedisBroker.wait_connected`). ``required`` (the
    start-up check, and a single process): that failure is final, the
    caller exits saying why. Otherwise (a worker, started after the check
    passed: a replacement, or a rolling restart, while Redis is down) the
    worker says so in one line and serves anyway; the broker reconnects on
    its own and the room works again once Redis is back. Dying instead would
    only make the supervisor restart it into the same outage until it gave
    up on the whole server.

    Raises:
        BrokerError: ``required`` and Redis did not answer; the message says why.
        ImportError: hiredis is not installed.
    """
    broker = RedisBroker(url, loop=loop)
    hub = Hub(broker, loop=loop)
    try:
        broker.wait_connected(timeout)
    except BrokerError as exc:
        if required:
            hub.close()
            raise
        _err(f"{prefix}{exc}; serving anyway, broadcasts wait until Redis is back")
    return hub


def _report_redis_health(hub: Hub, prefix: str = "") -> None:
    """Say on stderr when Redis goes away and comes back (the broker reconnects itself).

    One line per change of state: the hub emits ``unhealthy`` and ``healthy``
    only when its broker's state changes, not for each reconnect attempt.
    """
    hub.on("unhealthy", lambda _hub, error: _err(
        f"{prefix}Redis connection lost ({error}); broadcasts wait until it is back"))
    hub.on("healthy", lambda _hub: _err(f"{prefix}Redis connection back"))


def _accept_callback(server: Server, broadcast: bool, hub: Hub | None = None,
                     room: str = "broadcast") -> Callable[[Any, str, int], None]:
    """The ``tcp_server`` callback: handshake, then echo (or broadcast) every message.

    With ``hub``, a broadcast goes through it (every member of ``room`` in
    every process, once, back from the broker) instead of straight to this
    server's connections.
    """

    def on_message(conn: Connection, message: Message) -> None:
        targets = server.connections if broadcast else (conn,)
        for target in targets:
            if target.is_write_open:
                try:
                    target.send(message)
                except ConnectionClosed:  # closing between the check and the send
                    pass

    def on_hub_message(conn: Connection, message: Message) -> None:
        assert hub is not None
        try:
            hub.publish(room, message)
        except BrokerUnavailable as exc:
            # Redis has been down for long enough that the queue is full:
            # tell the sender rather than drop its message silently.
            log.warning("broadcast refused: %s", exc)
            if conn.is_write_open:
                conn.close(1013, "broadcast unavailable, try again later")

    def on_accept(sock: Any, peer_host: str, peer_port: int) -> None:
        def established(cv: CondVar) -> None:
            try:
                conn = cv.recv_all()[0]
            except HandshakeError as exc:
                # Port probes connect and leave without a request: routine.
                log.debug("handshake with %s:%s failed: %s", peer_host, peer_port, exc)
                if server.ssl_context is None and exc.response:
                    try:
                        sock.send(exc.response)
                    except OSError:
                        pass
                sock.close()
                return
            log.info("connection from %s:%s", peer_host, peer_port)
            if hub is not None:
                try:
                    hub.join(conn, room)  # left again when conn finishes
                except ConnectionClosed:  # already gone
                    return
                conn.on("each_message", on_hub_message)
            else:
                conn.on("each_message", on_message)
            conn.on("finish", lambda conn: log.info(
                "connection from %s:%s finished (%s)", peer_host, peer_port, conn.close_code))

        server.establish(sock).cb(established)

    return on_accept


def _listening(args: argparse.Namespace, tls: bool, port: int, workers: int = 0) -> None:
    scheme = "wss" if tls else "ws"
    mode = "broadcast" if args.broadcast else "echo"
    if args.unix:
        _err(f"{mode} server listening on unix:{args.unix} ({scheme}://localhost/ with "
             f"unix_socket={args.unix!r})")
        return
    details = []
    if workers:
        details.append(f"{workers} worker process{'es' if workers > 1 else ''}")
    if args.redis:
        address = parse_redis_url(args.redis)
        details.append(f"through Redis at {address.host}:{address.port}, room {_room(args)!r}")
    elif args.broadcast and workers > 1:
        details.append("a broadcast reaches the clients of its own worker only")
    detail = f" ({'; '.join(details)})" if details else ""
    _err(f"{mode} server listening on {scheme}://{_url_host(args.host)}:{port}/{detail}")


def serve(args: argparse.Namespace, loop: Loop | None = None) -> int:
    """``serve``: echo or broadcast until SIGINT/SIGTERM; returns the exit status."""
    if args.workers:
        return _serve_workers(args)
    loop = loop or get_loop()
    try:
        server = _make_server(args, loop)
    except (OSError, ValueError) as exc:
        _err(f"cannot set up TLS: {exc}")
        return 1
    hub = None
    if args.redis:
        try:
            hub = _open_hub(args.redis, loop, required=True)
        except (BrokerError, ImportError) as exc:
            _err(_redis_problem(exc))
            return 1
        _report_redis_health(hub)
    try:
        accept = _accept_callback(server, args.broadcast, hub, _room(args))
        try:
            if args.unix:
                listener = server.listen_unix(args.unix, accept)
            else:
                listener = server.listen(args.host or None, args.port, accept)
        except OSError as exc:
            where = f"unix:{args.unix}" if args.unix else f"{args.host or '*'}:{args.port}"
            _err(f"cannot listen on {where}: {exc}")
            return 1
        _listening(args, server.ssl_context is not None, listener.port)

        def stop(signum: int) -> None:
            _err(f"signal {signum}: closing connections")
            server.shutdown(code=1001, reason="server shutting down", timeout=5).cb(
                lambda _cv: loop.stop())

        watchers = [loop.signal(signal.SIGINT, stop), loop.signal(signal.SIGTERM, stop)]
        try:
            loop.run()
        finally:
            for watcher in watchers:
                watcher.cancel()
            listener.close()
    finally:
        if hub is not None:
            hub.close()
    return 0


def _redis_problem(exc: BaseException) -> str:
    if isinstance(exc, ImportError):
        return "--redis needs hiredis: pip install 'evws[redis]'"
    return str(exc)


#: seconds a stopping worker has before SIGKILL; its server gets 80% (as the
#: single process's 5 s shutdown timeout)
WORKER_GRACEFUL_TIMEOUT = 6.25


def _serve_workers(args: argparse.Namespace) -> int:
    """``serve --workers N``: the same server in N supervised processes on one port."""
    # Refuse bad TLS files and an unreachable Redis here, once, rather than
    # in a crash loop of workers.
    check_loop = Loop()
    try:
        tls = _make_server(args, check_loop).ssl_context is not None
        if args.redis:
            _open_hub(args.redis, check_loop, required=True).close()
    except (OSError, ValueError) as exc:
        _err(f"cannot set up TLS: {exc}")
        return 1
    except (BrokerError, ImportError) as exc:
        _err(_redis_problem(exc))
        return 1
    finally:
        check_loop.close()
    try:
        reservation = reserve_port(args.host or None, args.port)
    except OSError as exc:
        _err(f"cannot listen on {args.host or '*'}:{args.port}: {exc}")
        return 1
    port = reservation.getsockname()[1]
    if not args.verbose:  # with --verbose the evws logger already prints them
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("evws: %(message)s"))
        workers_log = logging.getLogger("evws.workers")
        workers_log.addHandler(handler)
        workers_log.setLevel(logging.INFO)

    def worker(ctx: WorkerContext) -> None:
        reservation.close()  # the supervisor's; each worker binds its own listener
        server = _make_server(args, ctx.loop)
        hub = None
        if args.redis:
            # Ready (and so "listening") once this worker's broadcasts work, or
            # Redis failed to answer: it then serves, and joins in when Redis is back.
            prefix = f"worker {ctx.index} (pid {ctx.pid}): "
            hub = _open_hub(args.redis, ctx.loop, required=False, prefix=prefix)
            _report_redis_health(hub, prefix)
            ctx.on_stop(lambda code, reason: hub.close())
        ctx.listen(server, args.host or None, port,
                   _accept_callback(server, args.broadcast, hub, _room(args)))

    try:
        return run_workers(worker, args.workers, graceful_timeout=WORKER_GRACEFUL_TIMEOUT,
                           on_ready=lambda: _listening(args, tls, port, args.workers))
    finally:
        reservation.close()


# -- connect ----------------------------------------------------------------------


def _client_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if args.cafile:
        return ssl.create_default_context(cafile=args.cafile)
    return None


class LineReader:
    """Feeds complete lines of a file descriptor to ``on_line``, then ``on_eof``.

    Watched with ``loop.io`` when the fd can be (terminals, pipes, sockets);
    polled a chunk per loop turn otherwise (regular files, ``/dev/null``:
    epoll refuses them, and reading them never blocks for long).
    """

    def __init__(self, loop: Loop, fd: int, on_line: Callable[[bytes], None],
                 on_eof: Callable[[], None]) -> None:
        self.loop = loop
        self.fd = fd
        self.on_line = on_line
        self.on_eof = on_eof
        self.pending = bytearray()
        self.watcher: IoWatcher | None = None
        self.handle: Handle | None = None
        self.done = False
        self.was_blocking: bool | None = None

    def start(self) -> None:
        try:
            self.was_blocking = os.get_blocking(self.fd)
            os.set_blocking(self.fd, False)
        except OSError:
            self.was_blocking = None
        try:
            self.watcher = self.loop.io(self.fd, "r", self.readable)
        except (OSError, ValueError):
            self.handle = self.loop.call_soon(self.poll)

    def poll(self) -> None:
        self.handle = None
        self.readable()
        if not self.done:
            self.handle = self.loop.call_soon(self.poll)

    def readable(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("reading fd %d failed: %r", self.fd, exc)
            data = b""
        if not data:
            self.stop()
            if self.pending:
                line = bytes(self.pending)
                self.pending.clear()
                self.on_line(line)
            self.on_eof()
            return
        self.pending += data
        *lines, rest = bytes(self.pending).split(b"\n")
        self.pending[:] = rest
        for line in lines:
            if self.done:  # on_line may stop us
                return
            self.on_line(line[:-1] if line.endswith(b"\r") else line)

    def stop(self) -> None:
        """Stop reading and give the fd its blocking mode back."""
        if self.done:
            return
        self.done = True
        if self.watcher is not None:
            self.watcher.cancel()
            self.watcher = None
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if self.was_blocking is not None:
            try:
                os.set_blocking(self.fd, self.was_blocking)
            except OSError:
                pass


def _show(message: Message, out: TextIO) -> None:
    """One message, one line: text as is, binary in hex."""
    out.write((message.decoded_body if message.is_text else message.body.hex()) + "\n")
    out.flush()


def _refusal_body(body: bytes, limit: int = 200) -> str:
    """A refusal's body for the error line: the server's reason, on one line, cut at ``limit``."""
    text = " ".join(body.decode("utf-8", "replace").split())
    if not text:
        return ""
    return f" ({text[:limit]}{'...' if len(text) > limit else ''})"


def connect(args: argparse.Namespace, headers: list[tuple[str, str]],
            loop: Loop | None = None) -> int:
    """``connect``: stdin lines out, messages in; returns the exit status."""
    loop = loop or get_loop()
    try:
        parse_url(args.url)
    except ValueError as exc:
        _err(str(exc))
        return 2
    options: dict[str, Any] = dict(
        subprotocols=args.subprotocol or None, headers=headers or None, origin=args.origin,
        ssl_context=_client_context(args), max_payload_size=args.max_payload_size or None,
        compression=None if args.no_compression else "deflate", timeout=args.timeout,
        unix_socket=args.unix, proxy=args.proxy, max_redirects=args.max_redirects, loop=loop)
    if args.reconnect:
        return _connect_reconnecting(args, options, loop)
    return _connect_once(args, options, loop)


def _cannot_connect(url: str, exc: BaseException) -> None:
    if isinstance(exc, HandshakeError):
        _err(f"cannot connect to {url}: {exc}{_refusal_body(exc.body)}")
    else:
        _err(f"cannot connect to {url}: {exc.__class__.__name__}: {exc}")


def _connected(url: str, conn: Connection) -> None:
    """The "connected" line: subprotocol, extensions and ``serve --worker-header``'s pid."""
    details = []
    if conn.subprotocol:
        details.append(f"subprotocol {conn.subprotocol}")
    response = getattr(conn, "response", None)  # the server's 101 head
    extensions = response.headers.get("Sec-WebSocket-Extensions") if response else None
    if extensions:
        details.append(f"extensions {extensions}")
    worker = response.headers.get(WORKER_HEADER) if response else None
    if worker:  # serve --worker-header
        details.append(f"worker pid {worker}")
    _err(f"connected to {url}" + (f" ({', '.join(details)})" if details else ""))


def _closed(conn: Connection) -> None:
    reason = f" {conn.close_reason!r}" if conn.close_reason else ""
    error = f": {conn.close_error}" if conn.close_error else ""
    _err(f"connection closed: {conn.close_code}{reason}{error}")


class _Output:
    """Messages to stdout; a reader that went away (EPIPE) ends the command."""

    def __init__(self) -> None:
        self.broken_pipe = False

    def show(self, conn: Connection, message: Message, stop: Callable[[], None]) -> None:
        try:
            _show(message, sys.stdout)
        except BrokenPipeError:  # whoever read our stdout left: so do we
            self.broken_pipe = True
            stop()

    def silence(self) -> None:
        """Keep the interpreter's own complaint about the closed stdout quiet."""
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _connect_once(args: argparse.Namespace, options: dict[str, Any], loop: Loop) -> int:
    """One connection: ends with it (exit 0 after a clean closing handshake)."""
    connecting: list[CondVar] = []

    def interrupted_connecting(signum: int) -> None:
        if connecting and connecting[0].cancel():  # Ctrl-C while connecting: give up
            _err("interrupted while connecting")

    # Watched before the first SYN goes out: no KeyboardInterrupt out of a blocking wait.
    sigint = loop.signal(signal.SIGINT, interrupted_connecting)
    try:
        connecting.append(ws_connect(args.url, **options))
        conn = connecting[0].recv()
    except ConnectCancelled:
        return 1
    except (OSError, WebSocketError, ValueError) as exc:
        _cannot_connect(args.url, exc)
        return 1
    finally:
        sigint.cancel()
    _connected(args.url, conn)
    output = _Output()

    def close() -> None:
        if conn.is_write_open:
            conn.close(1000)

    def on_line(line: bytes) -> None:
        if conn.is_write_open:
            conn.send(line if args.binary else line.decode("utf-8", "replace"))

    reader = LineReader(loop, sys.stdin.fileno(), on_line, close) if sys.stdin else None

    def on_finish(conn: Connection) -> None:
        if reader is not None:
            reader.stop()
        _closed(conn)
        loop.stop()

    def interrupted(signum: int) -> None:
        # Ctrl-C: close politely as EOF does; a second one gives up at once.
        if conn.is_write_open:
            _err("interrupted: closing")
            conn.close(1000)
        else:
            conn.stream.abort()

    conn.on("each_message", lambda conn, message: output.show(conn, message, close))
    conn.on("finish", on_finish)
    if reader is None:
        close()
    else:
        reader.start()
    sigint = loop.signal(signal.SIGINT, interrupted)
    try:
        loop.run()
    finally:
        sigint.cancel()
        if reader is not None:
            reader.stop()
    if output.broken_pipe:
        output.silence()
        return 1
    # Clean: a closing handshake took place (1006 means the TCP connection
    # ended without one) and nothing failed.
    return 0 if conn.close_error is None and conn.close_code != 1006 else 1


def _connect_reconnecting(args: argparse.Namespace, options: dict[str, Any], loop: Loop) -> int:
    """``--reconnect``: :func:`evws.reconnecting` with the default policy, until EOF or Ctrl-C.

    Exit 0 when EOF or Ctrl-C ended it, 1 when it gave up (a refusal that
    retrying cannot fix).
    """
    # Watched before the first SYN goes out (the handler runs in a loop turn, so
    # after ``client`` below exists): Ctrl-C never raises out of the loop.
    sigint = loop.signal(signal.SIGINT, lambda signum: interrupted(signum))
    try:
        client = reconnecting(args.url, **options)
    except (OSError, WebSocketError, ValueError) as exc:
        sigint.cancel()
        _cannot_connect(args.url, exc)
        return 1
    output = _Output()
    state = {"lost": False, "eof": False}  # lost: the last event was a disconnect
    waiting: list[bytes] = []  # lines read while not connected, sent on the next connect

    def close() -> None:
        client.close(1000)

    def send(conn: Connection, line: bytes) -> None:
        conn.send(line if args.binary else line.decode("utf-8", "replace"))

    def on_line(line: bytes) -> None:
        conn = client.connection
        if conn is not None and conn.is_write_open:
            send(conn, line)
        elif len(waiting) < WAITING_LINES:
            waiting.append(line)
        else:
            _err(f"not connected and {WAITING_LINES} lines wait already: line dropped")

    def on_eof() -> None:
        # What was read still goes out: end now only if nothing waits for a connection.
        state["eof"] = True
        if not waiting or client.connection is not None:
            close()

    reader = LineReader(loop, sys.stdin.fileno(), on_line, on_eof) if sys.stdin else None

    def on_connect(conn: Connection) -> None:
        _connected(args.url, conn)
        while waiting and conn.is_write_open:
            send(conn, waiting.pop(0))
        if state["eof"]:
            close()

    def on_disconnect(conn: Connection) -> None:
        state["lost"] = True
        _closed(conn)

    def on_reconnect(attempt: int, delay: float, cause: BaseException) -> None:
        why = "" if state["lost"] else f": {cause.__class__.__name__}: {cause}"
        state["lost"] = False
        _err(f"reconnecting in {delay:.1f} s (attempt {attempt}){why}")

    def on_finish(error: BaseException | None) -> None:
        if reader is not None:
            reader.stop()
        if error is not None:
            _cannot_connect(args.url, error)
            _err("giving up")
        loop.stop()

    def interrupted(signum: int) -> None:
        conn = client.connection
        if not client.finished and conn is not None and not conn.is_write_open:
            conn.stream.abort()  # a second Ctrl-C while closing: at once
            return
        _err("interrupted: closing")
        close()

    client.on("connect", on_connect)
    client.on("disconnect", on_disconnect)
    client.on("message", lambda conn, message: output.show(conn, message, close))
    client.on("reconnect", on_reconnect)
    client.on("finish", on_finish)
    if reader is None:
        on_eof()
    else:
        reader.start()
    try:
        if not client.finished:
            loop.run()
    finally:
        sigint.cancel()
        if reader is not None:
            reader.stop()
    if output.broken_pipe:
        output.silence()
        return 1
    return 0 if client.error is None else 1


def console_main() -> None:
    """Entry point of the ``evws`` console script: exit with ``main()``'s status."""
    sys.exit(main())
