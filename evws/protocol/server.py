"""``ServerProtocol``: the server end from its first byte, sans I/O.

The opening handshake is the CONNECTING state of the same state machine
that then parses frames, as in ``websockets``: the request head is parsed
from the input, checked (RFC 6455 4.2.1) and offered to the application as
a ``RequestReceived`` event carrying the 101 that would accept it (with
permessage-deflate negotiated, RFC 7692 7.1); the application answers with
:meth:`ServerProtocol.accept` (the 101, or another response, edited or raw)
or :meth:`ServerProtocol.reject`. Bytes that came after the head are the
first frames: they stay in the protocol's buffer and are parsed once the
connection is OPEN, by the first ``events_received()`` call.

Why the answer is the application's and not the protocol's: a handshake
callback (AnyEvent::WebSocket::Server's ``handshake``) may pick a
subprotocol, set cookies or refuse the request, and on a plain socket the
original leaves a refused request's socket to the caller, so the protocol
never writes an error answer unless told to (:meth:`reject`).
"""

from __future__ import annotations

import logging
from typing import Union

from ..errors import HandshakeError
from .deflate import DeflateConfig, negotiate_server, params_from_response
from .events import HandshakeFailed, RequestReceived
from .handshake import Request, Response, check_request, default_response, parse_request
from .http import DEFAULT_MAX_SIZE, RequestHeadParser, ResponseHeadParser, http_error
from .websocket import CLOSED, CONNECTING, OPEN, SERVER, WebSocketProtocol

__all__ = ["ServerProtocol", "RawResponse"]

_log = logging.getLogger("evws.protocol")

#: A complete HTTP response written by the application itself.
RawResponse = Union[str, bytes]


class ServerProtocol(WebSocketProtocol):
    """The server side of one connection, handshake included.

    Args:
        max_handshake_size: largest request head (431 beyond).
        deflate_config: what permessage-deflate parameters this server
            agrees to, or ``None`` to decline every offer.
        max_payload_size, max_fragments: as :class:`WebSocketProtocol`.

    Attributes (besides those of :class:`WebSocketProtocol`):
        request: the :class:`Request` once its head was parsed, else ``None``.
        subprotocol: the subprotocol the accepted response agreed to.
    """

    __slots__ = ("request", "subprotocol", "_head_parser", "_deflate_config", "_early",
                 "_answered")

    def __init__(
        self,
        *,
        max_handshake_size: int = DEFAULT_MAX_SIZE,
        deflate_config: DeflateConfig | None = None,
        max_payload_size: int | None = 1 << 20,
        max_fragments: int | None = None,
    ) -> None:
        super().__init__(SERVER, max_payload_size=max_payload_size, max_fragments=max_fragments)
        self.state = CONNECTING
        self._fast_out = False  # no frame before the handshake is done (_check_open)
        self._input_closed = True  # the head parser has the input until accept()
        self.request: Request | None = None
        self.subprotocol: str | None = None
        self._head_parser: RequestHeadParser | None = RequestHeadParser(max_size=max_handshake_size)
        self._deflate_config = deflate_config
        self._early = b""  # bytes after the head: the first frames
        self._answered = False  # accept() or reject() was called

    # -- input in CONNECTING ---------------------------------------------------

    def _receive_handshake(self, data: bytes | bytearray | memoryview) -> None:
        parser = self._head_parser
        if parser is None:
            # The head is in; what follows before accept() is frames.
            if self.request is not None:
                self._early += bytes(data)
            return
        try:
            head = parser.feed(bytes(data))
            if head is None:
                return
            request = parse_request(head)
        except HandshakeError as exc:
            self._failed(exc)
            return
        self._head_parser = None
        self.receive_request(request, parser.leftover)

    def _handshake_eof(self) -> None:
        if self.request is None:
            self._failed(HandshakeError(
                "connection closed before the handshake request was complete",
                status=400, response=http_error(400, "incomplete request").response))
        else:
            # The client gave up while the application was deciding.
            self._failed(HandshakeError("connection closed during the handshake", status=400))

    def receive_request(self, request: Request, leftover: bytes = b"") -> None:
        """Take a request whose head was parsed elsewhere (a WSGI server's environ).

        ``leftover``: bytes the client sent after the head (frames). Emits
        ``RequestReceived`` for a valid request, ``HandshakeFailed`` otherwise.
        """
        if self.state is not CONNECTING or self.request is not None:
            raise RuntimeError("the request was already received")
        self._head_parser = None
        self.request = request
        self._early = leftover
        try:
            check_request(request)
        except HandshakeError as exc:
            self._failed(exc)
            return
        response = default_response(request)
        if self._deflate_config is not None:
            # RFC 7692 7.1: accept the first acceptable offer, decline the rest.
            # (peek: reading request.extensions would store the list on every
            # connection's request; see Request)
            offers = Request.extensions.peek(request)
            response.extensions, _ = negotiate_server(offers, self._deflate_config)
        self._events.append(RequestReceived(request, response))

    # -- the application's answer ----------------------------------------------

    def accept(self, response: Response | RawResponse) -> None:
        """Answer the request with ``response`` and open the connection.

        A :class:`Response` (usually the one ``RequestReceived`` carried,
        edited) is serialized; a ``str``/``bytes`` is written as it is. What
        the client will read is what is in effect: the extensions and
        subprotocol of the ``Response``, or those of the raw response's
        ``Sec-WebSocket-Extensions``/``-Protocol`` fields. (The status is
        the application's business, as in the original: use :meth:`reject`
        to refuse.)

        Raises:
            HandshakeError: 500 with a ready answer, for a response that cannot
                be serialized (CR/LF in a field, a 101 without a key...) or
                is not a Response, str or bytes. The state does not change.
            RuntimeError: no request is waiting for an answer.
        """
        if self.state is not CONNECTING or self.request is None:
            raise RuntimeError("no request is waiting for an answer")
        data, subprotocol, extensions = _render(response)
        self._answered = True
        self.subprotocol = subprotocol
        self.pending_output.append(data)
        # Raw responses may agree to deflate even when offers are declined.
        self._configure(params_from_response(extensions, self._deflate_config or DeflateConfig()))
        self._deflate_config = None
        self.state = OPEN
        self._input_closed = False
        if self._debug:
            _log.debug("= OPEN")
        if self._early:
            # The first frames: parsed by the next events_received() call.
            self.pending_input, self._rest_pos = self._early, 0
            self._early = b""

    def reject(self, response: bytes) -> None:
        """Answer with ``response`` (an error, e.g. ``HandshakeError.response``),
        then end TCP; the connection is CLOSED and emits nothing more.

        Also after ``HandshakeFailed``: the protocol refused the request, the
        I/O layer decides to answer it.

        Raises:
            RuntimeError: the request was answered already.
        """
        if self._answered:
            raise RuntimeError("the request was answered already")
        self._answered = True
        if response:
            self.pending_output.append(bytes(response))
        self._end_tcp()
        self._close_unopened()

    # -- helpers -----------------------------------------------------------------

    def _failed(self, error: HandshakeError) -> None:
        self._events.append(HandshakeFailed(error))
        self._close_unopened()

    def _close_unopened(self) -> None:
        # Never opened: no ConnectionLost (there is no WebSocket to lose).
        self._head_parser = None
        self._early = b""
        self._lost = True
        self.state = CLOSED


def _render(response: Response | RawResponse) -> tuple[bytes, str | None, str | list[str] | None]:
    """The bytes of a response, with the subprotocol and extensions it agrees to."""
    if isinstance(response, Response):
        try:
            data = response.to_bytes()
        except ValueError as exc:
            raise HandshakeError(f"invalid handshake response: {exc}", status=500,
                                 response=http_error(500, "server error").response) from exc
        return data, response.subprotocol, response.extensions
    if isinstance(response, str):
        response = response.encode("utf-8")
    if not isinstance(response, (bytes, bytearray)):
        raise HandshakeError(
            f"the handshake callback returned {type(response).__name__}, "
            "not a Response, str or bytes",
            status=500, response=http_error(500, "server error").response)
    data = bytes(response)
    try:
        head = ResponseHeadParser().feed(data)
    except HandshakeError:
        head = None
    if head is None:
        return data, None, None
    return (data, head.headers.get("Sec-WebSocket-Protocol"),
            head.headers.get_all("Sec-WebSocket-Extensions"))
