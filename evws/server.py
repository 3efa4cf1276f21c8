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
from typing import Any, Callable, Mapping, Optional, Tuple, Union

from .connection import Connection
from .errors import HandshakeError
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
        max_fragments: most frames in one message (``None`` = no limit).
        max_handshake_size: largest request head accepted (431 beyond).
        handshake_timeout: seconds a client has to send its request.
        close_timeout: seconds to wait for the peer to finish a closing handshake.
        loop: the :class:`~evws.reactor.loop.Loop` to run on (default: ``get_loop()``).
    """

    def __init__(
        self,
        handshake: Optional[HandshakeCallback] = None,
        validator: Optional[Validator] = None,
        *,
        max_payload_size: Optional[int] = 1 << 20,
        max_fragments: Optional[int] = None,
        max_handshake_size: int = 16384,
        handshake_timeout: Optional[float] = 10.0,
        close_timeout: float = 10.0,
        loop: Optional[Loop] = None,
    ) -> None:
        self.handshake = handshake
        self.validator = validator
        self.max_payload_size = max_payload_size
        self.max_fragments = max_fragments
        self.max_handshake_size = max_handshake_size
        self.handshake_timeout = handshake_timeout
        self.close_timeout = close_timeout
        self.loop = loop or get_loop()
        self._connections: set[Connection] = set()

    # -- public entry points ---------------------------------------------

    def establish(self, sock: socket.socket) -> CondVar:
        """Run the opening handshake on ``sock``.

        Returns a CondVar that yields ``(connection, *handshake_results)`` or
        croaks with a :class:`HandshakeError`.
        """
        cv = CondVar(self.loop)
        _RequestReader(self, sock, cv).start()
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
        leftover = environ.get("evws.leftover", b"")
        self._accept(sock, request, leftover, cv)
        return cv

    def shutdown(self, code: int = 1001, reason: str = "",
                 timeout: Optional[float] = None) -> CondVar:
        """Close every connection this server established; the CondVar is ready when all finished."""
        cv = CondVar(self.loop)
        cv.begin()
        for conn in list(self._connections):
            cv.begin()
            conn._internal_finish.append(lambda _conn: cv.end())
            conn.close(code, reason)
        if timeout is not None:
            def expire() -> None:
                for conn in list(self._connections):
                    conn.stream.abort()
            self.loop.timer(timeout, expire)
        cv.end()
        return cv

    @property
    def connections(self) -> frozenset[Connection]:
        """The live connections this server established."""
        return frozenset(self._connections)

    # -- the handshake, once the request is known ---------------------------

    def _accept(self, sock: socket.socket, request: Request, leftover: bytes, cv: CondVar) -> None:
        """Check the request, ask the user, answer 101 and build the Connection."""
        try:
            check_request(request)
            response, results = self._negotiate(request)
            response_bytes, subprotocol = _render(response)
        except HandshakeError as exc:
            cv.croak(exc)
            return
        protocol = WebSocketProtocol(Side.SERVER, max_payload_size=self.max_payload_size,
                                     max_fragments=self.max_fragments)
        stream = Stream(sock, self.loop)
        conn = Connection(stream, protocol, loop=self.loop, close_timeout=self.close_timeout,
                          subprotocol=subprotocol, request=request)
        stream.write(response_bytes)
        self._connections.add(conn)
        conn._internal_finish.append(self._connections.discard)
        cv.send(conn, *results)
        # NOTES.md: frames that came with the request are delivered on a later
        # turn, so handlers attached in cv.cb() or after cv.recv() see them.
        self.loop.call_soon(conn._start, leftover)

    def _negotiate(self, request: Request) -> Tuple[Union[Response, RawResponse], tuple]:
        default = default_response(request)
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
        except (BlockingIOError, InterruptedError):
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

