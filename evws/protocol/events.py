"""Events emitted by ``WebSocketProtocol`` (drained with ``events_received()``).

The first three come from the opening handshake, while a ``ServerProtocol``
or ``ClientProtocol`` is CONNECTING: ``RequestReceived`` (server: a valid
request, with the 101 that would accept it), ``ResponseReceived`` (client:
the server's 101 checked out, the connection is OPEN) and ``HandshakeFailed``
(either side: the handshake cannot succeed; nothing else follows). The rest
come from an OPEN connection.

They are small frozen value objects so that the API layer can dispatch on the
type with ``isinstance`` or ``match`` and never share mutable state with the
parser. ``ConnectionLost`` is always the last event and is emitted exactly once
per connection, on every path; the API layer hangs its ``finish`` on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from ..errors import HandshakeError
    from .handshake import Request, Response
    from .http import ResponseHead

__all__ = [
    "RequestReceived",
    "ResponseReceived",
    "HandshakeFailed",
    "MessageReceived",
    "PingReceived",
    "PongReceived",
    "CloseReceived",
    "ConnectionFailed",
    "ConnectionLost",
]


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """Server, CONNECTING: a request that passed the RFC 6455 4.2.1 checks.

    ``response`` is the 101 that accepts it, with the extensions the protocol
    negotiated; the application may change it (or answer otherwise) and
    hands its choice to ``ServerProtocol.accept``.
    """

    request: Request
    response: Response


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """Client, CONNECTING -> OPEN: the server's 101 checked out."""

    response: ResponseHead


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """The opening handshake failed; ``error.status`` tells how.

    On a server, ``error.response`` is the ready HTTP answer (the I/O layer
    decides whether to write it: ``ServerProtocol.reject``). On a client,
    ``error`` carries the refusal's status, headers and body.
    """

    error: HandshakeError


def _short(data: bytes, limit: int = 32) -> str:
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit]!r}...[{len(data)} bytes]"


class MessageReceived(NamedTuple):
    """A complete TEXT (1) or BINARY (2) message; text is already valid UTF-8.

    A named tuple rather than a frozen dataclass like the other events: one
    is built per message, and a frozen dataclass's ``__init__`` goes through
    ``object.__setattr__`` per field (2.5x slower). It is just as immutable.
    """

    opcode: int
    payload: bytes

    def __str__(self) -> str:
        return f"MessageReceived(opcode={self.opcode}, payload={_short(self.payload)})"


@dataclass(frozen=True, slots=True)
class PingReceived:
    """A Ping arrived; the matching Pong was already queued (unless closing)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    """A Pong arrived (solicited or not, RFC 6455 5.5.3)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The peer's Close frame arrived; ``code`` is 1005 if it carried none."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """The peer broke the protocol; we sent Close ``code`` and ended TCP.

    ``error`` is the ``ProtocolError`` (or subclass) that describes what the
    peer did.
    """

    code: int
    reason: str
    error: Exception


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """The connection is finished from the protocol's point of view.

    ``code``/``reason`` are what the peer's Close frame said; 1006 and "" if no
    Close frame was received (RFC 6455 7.1.5).
    """

    code: int
    reason: str
