"""``Server``: turns accepted sockets into WebSocket connections.

Modelled on AnyEvent::WebSocket::Server. The server does not listen: it is
handed a socket (from :func:`evws.tcp_server`, a WSGI server, a socketpair...)
and runs the opening handshake on it, without blocking the loop.

Thin by design: the handshake is parsed and checked by the sans-I/O
:class:`~evws.protocol.server.ServerProtocol` and driven by the one
:class:`~evws.Connection` driver (also the client's); what is left here is
the server's policy -- its options, the user's ``handshake``/``validator``
callbacks, TLS, and the set of live connections for :meth:`Server.shutdown`.

On any handshake failure the establish CondVar croaks with a
:class:`~evws.errors.HandshakeError` whose ``status`` and ready ``response``
the caller may write back; the socket is left open and untouched beyond what
was read, as in the original, so the caller decides what to answer.
"""

from __future__ import annotations

import logging
import socket
import ssl
from functools import partial
from typing import Any, Callable, Iterable, Mapping, MutableMapping, Optional, Tuple, Union

from .connection import Connection
from .errors import HandshakeError
from .options import Options, deflate_config_of
from .protocol.deflate import DeflateConfig
from .protocol.handshake import Request, Response, choose_subprotocol, parse_request
from .protocol.http import TOKEN, Headers, RequestHead, http_error
from .protocol.server import RawResponse, ServerProtocol
from .reactor.condvar import CondVar
from .reactor.loop import Loop, get_loop
from .reactor.stream import Stream
from .reactor.tls import server_context, start_tls

__all__ = ["Server"]

log = logging.getLogger("evws.server")

HandshakeCallback = Callable[[Request, Response], Any]
Validator = Callable[[Request], Any]

#: environ keys where WSGI servers expose the client socket (evws's own first)
WSGI_SOCKET_KEYS = ("evws.socket", "gunicorn.socket", "werkzeug.socket")


class Server:
    """Runs the server side of the opening handshake and builds connections.

    Args:
        handshake: ``handshake(request, default_response)`` returns the
            response (a :class:`Response`, or a complete raw HTTP response as
            ``str``/``bytes``), or a tuple ``(response, *other_results)``.
            Raising rejects the request (403 unless it raised a
            :class:`HandshakeError` of its own).
        validator: ``validator(request)`` returns the other results (a tuple
            for several, a value for one, ``None`` for none) or raises to
            reject. Ignored when ``handshake`` is given.
        max_payload_size: largest message accepted, all fragments together
            (default 1 MiB; ``None`` = no limit). Larger ones close with 1009.
        max_fragments: most frames in one message (default 131072, twice
            what Autobahn's 4 MiB-in-64-byte-fragments case sends; 1009
            beyond; ``None`` = no limit). Bounds the per-fragment overhead
            an attacker can make a message cost.
        max_handshake_size: largest request head accepted (431 beyond).
        handshake_timeout: seconds a client has to send its request.
        close_timeout: seconds to wait for the peer to finish a closing handshake.
        ping_interval: seconds between keepalive Pings (default 20; ``None``
            disables keepalive). See :class:`~evws.connection.Connection`.
        ping_timeout: seconds a keepalive Ping may wait for its Pong before the
            connection fails with 1011 (default 20; ``None``: never).
        high_water: bytes queued for a peer from which evws stops reading
            (and parsing) its input (default 64 KiB; ``None``: never).
        low_water: queued bytes at which reading resumes and the
            connection emits ``drain`` (default 16 KiB).
        loop: the :class:`~evws.reactor.loop.Loop` to run on (default: ``get_loop()``).
        ssl_cert_file: PEM certificate chain; turns TLS on (as in the
            original's last release). It may hold the private key too.
        ssl_key_file: PEM private key, when not in ``ssl_cert_file``.
        ssl_context: a ready server ``ssl.SSLContext`` instead of the files.
        compression: ``"deflate"`` (default) accepts a client's
            permessage-deflate offer (RFC 7692); ``None`` declines it.
        deflate_config: a :class:`~evws.protocol.deflate.DeflateConfig`
            (window sizes, context takeover, level); default ``DeflateConfig()``.
        options: a ready :class:`~evws.Options` instead of the limit, timeout,
            keepalive, flow-control and compression keywords above (which
            are then ignored); shared by every connection of this server.
        subprotocols: the subprotocols this server speaks, in its order of
            preference: the first one the client offers is chosen (the
            client's order does not matter).
        require_subprotocol: refuse (HTTP 400, the body naming what this
            server speaks) a client that offers none of ``subprotocols``;
            by default it is accepted without a subprotocol.

    The order in which a request is decided: the protocol checks it (400,
    426...); a server shutting down refuses it (503); the subprotocol is
    chosen from ``subprotocols`` -- or, with ``require_subprotocol`` and no
    match, the request is refused (400) before any callback runs; then
    ``handshake`` (or ``validator``) sees the request and the default
    response with ``subprotocol`` already set, and may change it (to another
    offered one, or ``None``) or reject the request.

    The agreed extension is the ``extensions`` of the default response handed
    to ``handshake``: set it to ``None`` there to refuse compression. A raw
    response has compression only if its ``Sec-WebSocket-Extensions`` says so.

    With TLS, :meth:`establish` takes a plain accepted socket and runs the TLS
    handshake on the loop before the HTTP one (``handshake_timeout`` bounds
    each). Wrapping detaches ``sock`` (closing it is then a no-op, sending on
    it fails), so on a failed handshake evws itself answers the HTTP error
    over TLS, if TLS was up, and closes the connection.
    """

    def __init__(
        self,
        handshake: Optional[HandshakeCallback] = None,
        validator: Optional[Validator] = None,
        *,
        max_payload_size: Optional[int] = 1 << 20,
        max_fragments: Optional[int] = 1 << 17,
        max_handshake_size: int = 16384,
        handshake_timeout: Optional[float] = 10.0,
        close_timeout: float = 10.0,
        ping_interval: Optional[float] = 20.0,
        ping_timeout: Optional[float] = 20.0,
        high_water: Optional[int] = 64 * 1024,
        low_water: Optional[int] = 16 * 1024,
        loop: Optional[Loop] = None,
        ssl_key_file: Optional[str] = None,
        ssl_cert_file: Optional[str] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        compression: Optional[str] = "deflate",
        deflate_config: Optional[DeflateConfig] = None,
        options: Optional[Options] = None,
        subprotocols: Iterable[str] = (),
        require_subprotocol: bool = False,
    ) -> None:
        if compression not in ("deflate", None):
            raise ValueError(f"compression must be 'deflate' or None, not {compression!r}")
        if ssl_context is not None and (ssl_cert_file or ssl_key_file):
            raise ValueError("give ssl_context or ssl_cert_file/ssl_key_file, not both")
        if ssl_key_file and not ssl_cert_file:
            raise ValueError("ssl_key_file needs ssl_cert_file")
        if ssl_cert_file:
            ssl_context = server_context(ssl_cert_file, ssl_key_file)
        #: the server's ``ssl.SSLContext``, or None for plain TCP
        self.ssl_context = ssl_context
        #: the subprotocols spoken, in order of preference (see ``subprotocols``)
        self.subprotocols = _checked_subprotocols(subprotocols)
        if require_subprotocol and not self.subprotocols:
            raise ValueError("require_subprotocol needs subprotocols")
        #: refuse a client that offers none of :attr:`subprotocols` (HTTP 400)
        self.require_subprotocol = require_subprotocol
        self.handshake = handshake
        self.validator = validator
        #: "deflate" (permessage-deflate, RFC 7692, when the client offers it) or None
        self.compression = compression
        self.deflate_config = deflate_config or DeflateConfig()
        if options is not None:
            # A ready Options (connection_pair's, say) instead of the keywords.
            self.compression = None if options.deflate is None else "deflate"
            self.deflate_config = options.deflate or self.deflate_config
        #: the settings every connection of this server shares (see :class:`~evws.Options`)
        self.options = options or Options(
            max_payload_size=max_payload_size, max_fragments=max_fragments,
            max_handshake_size=max_handshake_size, handshake_timeout=handshake_timeout,
            close_timeout=close_timeout, ping_interval=ping_interval, ping_timeout=ping_timeout,
            high_water=high_water, low_water=low_water,
            deflate=deflate_config_of(compression, self.deflate_config))
        self.loop = loop or get_loop()
        self._listeners: list[Any] = []
        self._shutting_down = False
        self._connections: set[Connection] = set()
        # One bound method for every connection's finish hook (~64 bytes each otherwise).
        self._untrack = self._connections.discard

    # The options, as the attributes they always were.
    max_payload_size = property(lambda self: self.options.max_payload_size)
    max_fragments = property(lambda self: self.options.max_fragments)
    max_handshake_size = property(lambda self: self.options.max_handshake_size)
    handshake_timeout = property(lambda self: self.options.handshake_timeout)
    close_timeout = property(lambda self: self.options.close_timeout)
    ping_interval = property(lambda self: self.options.ping_interval)
    ping_timeout = property(lambda self: self.options.ping_timeout)
    high_water = property(lambda self: self.options.high_water)
    low_water = property(lambda self: self.options.low_water)

    # -- public entry points ---------------------------------------------

    def establish(self, sock: socket.socket) -> CondVar:
        """Run the opening handshake on ``sock``.

        Returns a CondVar that yields ``(connection, *handshake_results)`` or
        croaks with a :class:`HandshakeError`. With TLS (see the class
        docstring) a failed TLS handshake croaks a ``HandshakeError`` whose
        ``__cause__`` is the ``ssl.SSLError`` (408 when it timed out).
        """
        cv = CondVar(self.loop)
        if self.ssl_context is None:
            self._open(sock, cv)
            return cv

        def tls_done(tls: CondVar) -> None:
            error = tls.error
            if error is None:
                self._open(tls.recv(), cv, answer_errors=True)
                return
            status = 408 if isinstance(error, TimeoutError) else 400
            failure = HandshakeError(f"TLS handshake failed: {error}", status=status)
            failure.__cause__ = error
            cv.croak(failure)

        start_tls(sock, self.ssl_context, self.loop, server_side=True,
                  timeout=self.options.handshake_timeout).cb(tls_done)
        return cv

    def establish_wsgi(self, environ: Mapping[str, Any],
                       sock: Optional[socket.socket] = None) -> CondVar:
        """Take over a WSGI request that asks for a WebSocket upgrade.

        The request head was already read by the WSGI server, so the handshake
        is built from ``environ``; the raw socket comes from ``sock`` or from
        the environ (``evws.socket``, ``gunicorn.socket``, ``werkzeug.socket``).
        """
        cv = CondVar(self.loop)
        if sock is None:
            sock = next((environ[k] for k in WSGI_SOCKET_KEYS if environ.get(k) is not None), None)
        if sock is None:
            cv.croak(HandshakeError(
                "no socket: pass sock= or run under a server that puts it in the environ",
                status=500, response=http_error(500, "no socket in the WSGI environ").response))
            return cv
        try:
            request = parse_request(_head_from_environ(environ))
            request.peer = _peer_of(sock)
        except HandshakeError as exc:
            cv.croak(exc)
            return cv
        # This CondVar is ready before we return, so a cv.cb(fn) made by the
        # caller runs on the next turn: deliver early frames one turn later.
        self._open(sock, cv, request=request, leftover=environ.get("evws.leftover", b""),
                   start_turns=2)
        if cv.error is None and isinstance(environ, MutableMapping):
            # The socket belongs to the Connection now: evws.wsgi lets go of it.
            environ["evws.upgraded"] = True
        return cv

    def listen(self, host: Optional[str], port: int,
               fn: Callable[[socket.socket, str, int], Any], **options: Any) -> Any:
        """:func:`evws.tcp_server` on this server's loop, remembered for :meth:`shutdown`.

        ``fn(sock, peer_host, peer_port)`` is the usual accept callback (it
        calls :meth:`establish`). Returns the :class:`~evws.TcpServer` guard;
        :meth:`shutdown` closes it, so no new connection is accepted.
        """
        from .reactor.tcp import tcp_server
        listener = tcp_server(host, port, fn, loop=self.loop, **options)
        self._listeners.append(listener)
        return listener

    def listen_unix(self, path: str, fn: Callable[[socket.socket, str, int], Any],
                    **options: Any) -> Any:
        """:func:`evws.unix_server` on this server's loop, remembered for :meth:`shutdown`.

        The Unix-socket twin of :meth:`listen`: ``fn(sock, peer, 0)`` calls
        :meth:`establish` as usual; ``options`` are :func:`~evws.unix_server`'s
        (``mode=0o660``, ``backlog``). The socket file is removed when the
        listener closes (on :meth:`shutdown` too).
        """
        from .reactor.tcp import unix_server
        listener = unix_server(path, fn, loop=self.loop, **options)
        self._listeners.append(listener)
        return listener

    def shutdown(self, code: int = 1001, reason: str = "",
                 timeout: Optional[float] = None) -> CondVar:
        """Stop accepting and close every live connection; the CondVar is ready when all finished.

        The listeners made by :meth:`listen` are closed, handshakes that
        complete from now on croak (503), and each connection sends what it
        had queued, then a Close frame with ``code`` and ``reason``, and
        finishes when the peer answers. After ``timeout`` seconds (``None``:
        only each connection's ``close_timeout``) the stragglers are aborted.
        """
        self._shutting_down = True
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        cv = CondVar(self.loop)
        timer: Any = None

        def done(_cv: CondVar) -> None:
            if timer is not None:
                timer.cancel()
            cv.send()
        cv.begin(done)
        for conn in list(self._connections):
            cv.begin()
            conn.add_finish_hook(lambda _conn: cv.end())
            conn.close(code, reason)
        if timeout is not None and not cv.ready:
            def expire() -> None:
                for conn in list(self._connections):
                    log.debug("shutdown timeout: aborting %r", conn)
                    conn.stream.abort()
            timer = self.loop.timer(timeout, expire)
        cv.end()
        return cv

    @property
    def connections(self) -> frozenset[Connection]:
        """The live connections this server established."""
        return frozenset(self._connections)

    # -- one connection ---------------------------------------------------------

    def _open(self, sock: socket.socket, cv: CondVar, *, answer_errors: bool = False,
              request: Optional[Request] = None, leftover: bytes = b"",
              start_turns: int = 1) -> None:
        """A ServerProtocol and a Stream on ``sock``, driven by a Connection."""
        options = self.options
        try:
            stream = Stream(sock, self.loop)
        except OSError as exc:
            cv.croak(HandshakeError(f"unusable socket: {exc}", status=400))
            return
        protocol = ServerProtocol(max_handshake_size=options.max_handshake_size,
                                  deflate_config=options.deflate,
                                  max_payload_size=options.max_payload_size,
                                  max_fragments=options.max_fragments)
        peer = _peer_of(sock)
        if request is not None:
            protocol.receive_request(request, leftover)
        timeout = options.handshake_timeout
        Connection.opening(
            stream, protocol, options, loop=self.loop, cv=cv,
            timeout=timeout if request is None else None,
            negotiate=partial(self._negotiate, peer=peer), on_open=self._track,
            answer_errors=answer_errors,
            start_turns=start_turns,
            timeout_error=lambda: HandshakeError(
                f"no complete request within {timeout} s",
                status=408, response=http_error(408, "request timeout").response),
            lost_error=lambda exc: HandshakeError(
                f"connection error during the handshake: {exc}", status=400))

    def _track(self, conn: Connection) -> None:
        """A connection opened: keep it in :attr:`connections` until it finishes."""
        self._connections.add(conn)
        conn.add_finish_hook(self._untrack)

    def _negotiate(self, request: Request, default: Response, *,
                   peer: Any = None) -> Tuple[Union[Response, RawResponse], Tuple[Any, ...]]:
        """The server's answer to a valid request: the user's callback decides."""
        if request.peer is None:
            request.peer = peer
        if self._shutting_down:
            raise http_error(503, "server shutting down")
        if self.subprotocols:
            default.subprotocol = choose_subprotocol(Request.subprotocols.peek(request),
                                                     self.subprotocols)
            if default.subprotocol is None and self.require_subprotocol:
                raise http_error(400, "no acceptable subprotocol: this server speaks "
                                      f"{', '.join(self.subprotocols)}")
        if self.handshake is not None:
            result = _call_user(self.handshake, request, default)
            if result is None:
                raise HandshakeError("the handshake callback returned None instead of a response",
                                     status=500, response=http_error(500, "server error").response)
            if isinstance(result, tuple):
                if not result:
                    raise HandshakeError("the handshake callback returned an empty tuple",
                                         status=500, response=http_error(500, "server error").response)
                return result[0], tuple(result[1:])
            return result, ()
        if self.validator is not None:
            result = _call_user(self.validator, request)
            if result is None:
                return default, ()
            return default, result if isinstance(result, tuple) else (result,)
        return default, ()


def _checked_subprotocols(subprotocols: Iterable[str]) -> tuple[str, ...]:
    """``subprotocols`` as a tuple of tokens (RFC 6455 4.1: each is a token).

    Raises:
        TypeError: a plain string (which would be taken letter by letter).
        ValueError: a name that is not an HTTP token, or a repeated one.
    """
    if isinstance(subprotocols, (str, bytes)):
        raise TypeError(f"subprotocols must be a list of names, not {subprotocols!r}")
    names = tuple(subprotocols)
    for name in names:
        if not isinstance(name, str) or not TOKEN.fullmatch(name):
            raise ValueError(f"a subprotocol must be an HTTP token, not {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"subprotocols repeats a name: {', '.join(names)}")
    return names


def _call_user(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a handshake/validator callback; turn what it raises into a 403 rejection."""
    try:
        return fn(*args)
    except HandshakeError:
        raise
    except Exception as exc:
        raise HandshakeError(f"handshake rejected: {exc}", status=403,
                             response=http_error(403, "forbidden").response) from exc


def _head_from_environ(environ: Mapping[str, Any]) -> RequestHead:
    """Rebuild the request head a WSGI server already parsed (PEP 3333 keys)."""
    headers = Headers()
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers.add(key[5:].replace("_", "-").title(), value)
    if environ.get("CONTENT_TYPE"):
        headers.add("Content-Type", environ["CONTENT_TYPE"])
    if environ.get("CONTENT_LENGTH"):
        headers.add("Content-Length", environ["CONTENT_LENGTH"])
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    # PEP 3333 strings are latin-1 decoded bytes; re-encode to get the raw path back.
    target = path.encode("latin-1", "replace").decode("utf-8", "replace") or "/"
    if environ.get("QUERY_STRING"):
        target += "?" + environ["QUERY_STRING"]
    return RequestHead(
        method=environ.get("REQUEST_METHOD", "GET"),
        target=target,
        version=environ.get("SERVER_PROTOCOL", "HTTP/1.1"),
        headers=headers,
    )


def _peer_of(sock: socket.socket) -> Optional[Any]:
    try:
        return sock.getpeername()
    except OSError:
        return None

