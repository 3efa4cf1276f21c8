"""``ClientProtocol``: the client end from its first byte, sans I/O.

The request is built when the protocol is made (so a bad header fails at
once) and is the first thing :meth:`data_to_send` returns. In CONNECTING the
input is the server's answer (RFC 6455 4.1):

- a 101 that checks out (``Sec-WebSocket-Accept``, the subprotocol and the
  permessage-deflate answer to our offer) emits ``ResponseReceived`` and opens
  the connection; bytes after the head are the first frames and are parsed
  by the next ``events_received()`` call;
- another status is a refusal: its body is read (per ``Content-Length``, to
  EOF otherwise, at most ``max_error_body`` bytes), then ``HandshakeFailed``
  carries the status, headers and body;
- a 101 that does not check out, a malformed or oversized head, or EOF
  before the head is complete: ``HandshakeFailed`` at once.

The I/O layer closes TCP gracefully after a refusal (the answer was read
whole) and drops it otherwise (4.1: "_Fail the WebSocket Connection_"):
:attr:`ClientProtocol.refused` tells which.
"""

from __future__ import annotations

import logging
from typing import Iterable

from ..errors import HandshakeError
from .deflate import DeflateConfig, accept_client, client_offer
from .events import HandshakeFailed, ResponseReceived
from .handshake import build_request, check_response, generate_key
from .http import DEFAULT_MAX_SIZE, HeadersLike, ResponseHead, ResponseHeadParser
from .websocket import CLIENT, CLOSED, CONNECTING, OPEN, WebSocketProtocol

__all__ = ["ClientProtocol"]

_log = logging.getLogger("evws.protocol")


class ClientProtocol(WebSocketProtocol):
    """The client side of one connection, handshake included.

    Args:
        host: the ``Host`` value (with ``:port`` when not the default).
        resource: ``/path?query``.
        subprotocols: offered, in order of preference.
        origin, headers: the ``Origin`` field and extra fields, if any.
        deflate_config: offer permessage-deflate with these parameters
            (``None``: no offer).
        key: the ``Sec-WebSocket-Key`` (default: a fresh random one).
        max_handshake_size: largest response head accepted.
        max_error_body: most bytes of a refusal's body kept.
        max_payload_size, max_fragments: as :class:`WebSocketProtocol`.

    Raises:
        ValueError: a resource not starting with "/", or CR/LF or other
            control bytes in a field.

    Attributes (besides those of :class:`WebSocketProtocol`):
        response: the server's answer head once read (any status), else ``None``.
        subprotocol: the subprotocol the server chose, once OPEN.
        key: the key sent.
    """

    __slots__ = ("response", "subprotocol", "key", "_offered", "_deflate_config",
                 "_head_parser", "_body", "_body_wanted", "_max_error_body")

    def __init__(
        self,
        host: str,
        resource: str = "/",
        *,
        subprotocols: Iterable[str] = (),
        origin: str | None = None,
        headers: HeadersLike = (),
        deflate_config: DeflateConfig | None = None,
        key: str | None = None,
        max_handshake_size: int = DEFAULT_MAX_SIZE,
        max_error_body: int = 65536,
        max_payload_size: int | None = 1 << 20,
        max_fragments: int | None = None,
    ) -> None:
        super().__init__(CLIENT, max_payload_size=max_payload_size, max_fragments=max_fragments)
        self.state = CONNECTING
        self._fast_out = False  # no frame before the handshake is done (_check_open)
        self._input_closed = True  # the head parser has the input until the 101
        self.key = key or generate_key()
        self._offered = list(subprotocols)
        self._deflate_config = deflate_config
        self.response: ResponseHead | None = None
        self.subprotocol: str | None = None
        self._head_parser: ResponseHeadParser | None = ResponseHeadParser(max_size=max_handshake_size)
        self._body = bytearray()
        self._body_wanted: int | None = None  # None: the body ends at EOF
        self._max_error_body = max_error_body
        extensions = None if deflate_config is None else client_offer(deflate_config)
        self.pending_output.append(build_request(host, resource, self.key, subprotocols=self._offered,
                                       extensions=extensions, origin=origin, headers=headers))

    @property
    def refused(self) -> bool:
        """True when the server answered with a status other than 101 (a refusal)."""
        return self.response is not None and self.response.status != 101

    def refusal(self) -> HandshakeError | None:
        """The refusal as read so far (status, headers, the body received), or
        ``None`` before a refusal's head. For an I/O layer whose patience ran out
        while the body was still coming: the refusal is the news."""
        if not self.refused:
            return None
        head = self.response
        assert head is not None
        limit = self._max_error_body
        wanted = len(self._body) if self._body_wanted is None else self._body_wanted
        return HandshakeError(
            f"server refused the WebSocket handshake: {head.status} {head.reason}".rstrip(),
            status=head.status, body=bytes(self._body[:min(wanted, limit)]), headers=head.headers)

    # -- input in CONNECTING ---------------------------------------------------

    def _receive_handshake(self, data: bytes | bytearray | memoryview) -> None:
        if self.response is not None:  # reading a refusal's body
            self._take_body(bytes(data))
            return
        parser = self._head_parser
        assert parser is not None
        try:
            head = parser.feed(bytes(data))
        except HandshakeError as exc:
            self._failed(exc)
            return
        if head is None:
            return
        self.response = head
        self._head_parser = None
        if head.status != 101:
            lengths = head.headers.get_all("Content-Length")
            if len(lengths) == 1 and lengths[0].strip().isdigit():
                self._body_wanted = int(lengths[0].strip())
            elif head.status in (204, 304) or 100 <= head.status < 200:
                self._body_wanted = 0
            self._take_body(parser.leftover)
            return
        try:
            self.subprotocol, extensions = check_response(
                head, self.key, subprotocols_offered=self._offered,
                extensions_offered=self._deflate_config is not None)
            params = None
            if self._deflate_config is not None:
                params = accept_client(extensions, self._deflate_config)
        except HandshakeError as exc:
            self._failed(exc)
            return
        self._configure(params)
        self.state = OPEN
        self._input_closed = False
        if self._debug:
            _log.debug("= OPEN")
        if parser.leftover:
            # The first frames: parsed by the next events_received() call.
            self.pending_input, self._rest_pos = parser.leftover, 0
        self._events.append(ResponseReceived(head))

    def _take_body(self, data: bytes) -> None:
        self._body += data
        limit = self._max_error_body
        wanted = limit if self._body_wanted is None else min(self._body_wanted, limit)
        if len(self._body) >= wanted:
            self._refused()

    def _handshake_eof(self) -> None:
        if self.refused:
            self._refused()  # a body delimited by EOF, or cut short: keep what came
            return
        self._failed(HandshakeError("server closed the connection before its handshake answer "
                                    "was complete", status=400))

    def _refused(self) -> None:
        error = self.refusal()
        assert error is not None
        self._failed(error)

    def _failed(self, error: HandshakeError) -> None:
        self._events.append(HandshakeFailed(error))
        # Never opened: no ConnectionLost (there is no WebSocket to lose).
        self._head_parser = None
        self._lost = True
        self.state = CLOSED
