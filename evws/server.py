"""``Server``: turns accepted sockets into WebSocket connections.

Modelled on AnyEvent::WebSocket::Server. The server does not listen: it is
handed a socket (from :func:`evws.tcp_server`, a WSGI server, a socketpair...)
and runs the opening handshake on it, without blocking the loop.

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
from typing import Any, Callable, Mapping, MutableMapping, Optional, Tuple, Union

from .connection import Connection
from .errors import HandshakeError
from .protocol.deflate import DeflateConfig, DeflateParams, negotiate_server, params_from_response
from .protocol.handshake import (
    Request,
    Response,
    check_request,
    default_response,
    parse_request,
)
from .protocol.http import Headers, RequestHead, RequestHeadParser, ResponseHeadParser, http_error
from .protocol.websocket import Side, WebSocketProtocol
from .reactor.condvar import CondVar
from .reactor.loop import Loop, get_loop
from .reactor.stream import Stream
from .reactor.tls import server_context, tls_handshake, wrap_server

__all__ = ["Server"]

log = logging.getLogger("evws.server")

HandshakeCallback = Callable[[Request, Response], Any]
Validator = Callable[[Request], Any]
RawResponse = Union[str, bytes]

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
        self.handshake = handshake
        self.validator = validator
        self.max_payload_size = max_payload_size
        self.max_fragments = max_fragments
        self.max_handshake_size = max_handshake_size
        self.handshake_timeout = handshake_timeout
        self.close_timeout = close_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.high_water = high_water
        self.low_water = low_water
        self._listeners: list[Any] = []
        self._shutting_down = False
        #: "deflate" (permessage-deflate, RFC 7692, when the client offers it) or None
        self.compression = compression
        self.deflate_config = deflate_config or DeflateConfig()
        self.loop = loop or get_loop()
        self._connections: set[Connection] = set()

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
            _RequestReader(self, sock, cv).start()
        else:
            self._establish_tls(sock, cv)
        return cv

    def _establish_tls(self, sock: socket.socket, cv: CondVar) -> None:
        """TLS handshake on the loop, then the usual request reader on the TLS socket."""
        try:
            tls_sock = wrap_server(sock, self.ssl_context)  # type: ignore[arg-type]
        except (OSError, ValueError) as exc:
            cv.croak(_chained(HandshakeError(f"cannot start TLS: {exc}", status=400), exc))
            return
        tls_up = False

        def tls_done(shake: CondVar) -> None:
            nonlocal tls_up
            try:
                shake.recv()
            except OSError as exc:
                tls_sock.close()
                status = 408 if isinstance(exc, TimeoutError) else 400
                cv.croak(_chained(HandshakeError(f"TLS handshake failed: {exc}", status=status), exc))
                return
            tls_up = True
            _RequestReader(self, tls_sock, cv).start()

        def on_ready(ready: CondVar) -> None:
            # The caller cannot answer on a detached socket: do it here.
            error = ready._error
            if tls_up and isinstance(error, HandshakeError):
                stream = Stream(tls_sock, self.loop, linger=1.0)
                if error.response:
                    stream.write(error.response)
                stream.close()

        cv.cb(on_ready)
        tls_handshake(tls_sock, self.loop, timeout=self.handshake_timeout).cb(tls_done)

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
        leftover = environ.get("evws.leftover", b"")
        # This CondVar is ready before we return, so a cv.cb(fn) made by the
        # caller runs on the next turn: deliver early frames one turn later.
        self._accept(sock, request, leftover, cv, start_turns=2)
        if cv._error is None and isinstance(environ, MutableMapping):
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
            conn._add_finish_hook(lambda _conn: cv.end())
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

    # -- the handshake, once the request is known ---------------------------

    def _accept(self, sock: socket.socket, request: Request, leftover: bytes, cv: CondVar,
                start_turns: int = 1) -> None:
        """Check the request, ask the user, answer 101 and build the Connection.

        ``start_turns``: how many loop turns after ``cv`` is ready the
        connection starts reading (and delivers ``leftover``).
        """
        try:
            if self._shutting_down:
                raise http_error(503, "server shutting down")
            check_request(request)
            response, results = self._negotiate(request)
            response_bytes, subprotocol = _render(response)
        except HandshakeError as exc:
            cv.croak(exc)
            return
        protocol = WebSocketProtocol(Side.SERVER, max_payload_size=self.max_payload_size,
                                     max_fragments=self.max_fragments,
                                     deflate=self._agreed_deflate(response, response_bytes))
        stream = Stream(sock, self.loop)
        conn = Connection(stream, protocol, loop=self.loop, close_timeout=self.close_timeout,
                          subprotocol=subprotocol, request=request,
                          ping_interval=self.ping_interval, ping_timeout=self.ping_timeout,
                          high_water=self.high_water, low_water=self.low_water)
        stream.write(response_bytes)
        self._connections.add(conn)
        conn._registry = self._connections  # left in Connection._finish
        cv.send(conn, *results)
        # NOTES.md: frames that came with the request are delivered on a later
        # turn, so handlers attached in cv.cb() or after cv.recv() see them.
        start: Callable[..., Any] = conn._start
        for _ in range(start_turns - 1):
            start = partial(self.loop.call_soon, start)
        self.loop.call_soon(start, leftover)

    def _negotiate(self, request: Request) -> Tuple[Union[Response, RawResponse], Tuple[Any, ...]]:
        default = default_response(request)
        if self.compression == "deflate":
            # RFC 7692 7.1: accept the first acceptable offer, decline the rest.
            # (peek: reading request.extensions would keep the list on every
            # connection's request; see Request)
            offers = Request.extensions.peek(request)
            default.extensions, _ = negotiate_server(offers, self.deflate_config)
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


    def _agreed_deflate(self, response: Union[Response, RawResponse],
                        response_bytes: bytes) -> Optional[DeflateParams]:
        """The permessage-deflate parameters the written response agrees to.

        What the client reads is what is in effect: the ``extensions`` of a
        ``Response`` (the callback may have cleared it), or the
        ``Sec-WebSocket-Extensions`` header of a raw response.
        """
        value: Union[str, list[str], None]
        if isinstance(response, Response):
            value = response.extensions
        else:
            try:
                head = ResponseHeadParser().feed(response_bytes)
            except HandshakeError:
                return None
            value = head.headers.get_all("Sec-WebSocket-Extensions") if head is not None else None
        return params_from_response(value, self.deflate_config)


class _RequestReader:
    """Reads the request head from a socket without blocking the loop."""

    __slots__ = ("server", "sock", "cv", "parser", "watcher", "timer")

    def __init__(self, server: Server, sock: socket.socket, cv: CondVar) -> None:
        self.server = server
        self.sock = sock
        self.cv = cv
        self.parser = RequestHeadParser(max_size=server.max_handshake_size)
        self.watcher: Any = None
        self.timer: Any = None

    def start(self) -> None:
        try:
            self.sock.setblocking(False)
        except OSError as exc:
            self._fail(HandshakeError(f"unusable socket: {exc}", status=400))
            return
        loop = self.server.loop
        self.watcher = loop.io(self.sock, "r", self._on_readable)
        if self.server.handshake_timeout is not None:
            self.timer = loop.timer(self.server.handshake_timeout, self._on_timeout)

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
            if data and isinstance(self.sock, ssl.SSLSocket):
                # select() cannot see what OpenSSL already decrypted: take it now.
                while pending := self.sock.pending():
                    data += self.sock.recv(pending)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(HandshakeError(f"connection error during the handshake: {exc}", status=400))
            return
        if not data:
            self._fail(HandshakeError("connection closed before the handshake request was complete",
                                      status=400, response=http_error(400, "incomplete request").response))
            return
        try:
            head = self.parser.feed(data)
            if head is None:
                return
            request = parse_request(head)
            request.peer = _peer_of(self.sock)
        except HandshakeError as exc:
            self._fail(exc)
            return
        self._stop()
        self.server._accept(self.sock, request, self.parser.leftover, self.cv)

    def _on_timeout(self) -> None:
        self.timer = None
        self._fail(HandshakeError(
            f"no complete request within {self.server.handshake_timeout} s",
            status=408, response=http_error(408, "request timeout").response))

    def _fail(self, exc: HandshakeError) -> None:
        self._stop()
        log.debug("handshake failed: %s", exc)
        self.cv.croak(exc)

    def _stop(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            self.watcher = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _chained(error: HandshakeError, cause: BaseException) -> HandshakeError:
    """``error`` with ``cause`` as its ``__cause__`` (``raise ... from`` for croak)."""
    error.__cause__ = cause
    return error


def _call_user(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a handshake/validator callback; turn what it raises into a 403 rejection."""
    try:
        return fn(*args)
    except HandshakeError:
        raise
    except Exception as exc:
        raise HandshakeError(f"handshake rejected: {exc}", status=403,
                             response=http_error(403, "forbidden").response) from exc


def _render(response: Union[Response, RawResponse]) -> Tuple[bytes, Optional[str]]:
    """The bytes to write for a handshake response, and the subprotocol it agrees to."""
    if isinstance(response, Response):
        try:
            return response.to_bytes(), response.subprotocol
        except ValueError as exc:
            raise HandshakeError(f"invalid handshake response: {exc}", status=500,
                                 response=http_error(500, "server error").response) from exc
    if isinstance(response, str):
        response = response.encode("utf-8")
    if isinstance(response, (bytes, bytearray)):
        return bytes(response), _raw_subprotocol(bytes(response))
    raise HandshakeError(
        f"the handshake callback returned {type(response).__name__}, not a Response, str or bytes",
        status=500, response=http_error(500, "server error").response)


def _raw_subprotocol(raw: bytes) -> Optional[str]:
    """Read Sec-WebSocket-Protocol back out of a raw response, if it parses."""
    try:
        head = ResponseHeadParser().feed(raw)
    except HandshakeError:
        return None
    return head.headers.get("Sec-WebSocket-Protocol") if head is not None else None


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

