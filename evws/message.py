"""``Message``: one WebSocket message as the user sees it.

Modelled on AnyEvent::WebSocket::Message. The body is always ``bytes`` on the
object, whatever it was built from, so that handlers never have to guess; the
text view is ``decoded_body``.
"""

from __future__ import annotations

from typing import Union

from .protocol.frames import Opcode

__all__ = ["Message"]

BodyLike = Union[str, bytes, bytearray, memoryview]


class Message:
    """A complete message: ``body`` (bytes) and ``opcode`` (1 text, 2 binary, ...)."""

    __slots__ = ("body", "opcode")

    def __init__(self, body: BodyLike = b"", opcode: int = Opcode.TEXT) -> None:
        if isinstance(body, str):
            body = body.encode("utf-8")
        elif not isinstance(body, bytes):
            body = bytes(body)
        self.body: bytes = body
        self.opcode: int = int(opcode)

    @property
    def decoded_body(self) -> str:
        """The body decoded as UTF-8 (text messages were validated on arrival)."""
        return self.body.decode("utf-8")

    @property
    def is_text(self) -> bool:
        return self.opcode == Opcode.TEXT

    @property
    def is_binary(self) -> bool:
        return self.opcode == Opcode.BINARY

    @property
    def is_ping(self) -> bool:
        return self.opcode == Opcode.PING

    @property
    def is_pong(self) -> bool:
        return self.opcode == Opcode.PONG

    @property
    def is_close(self) -> bool:
        return self.opcode == Opcode.CLOSE

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self.body == other.body and self.opcode == other.opcode

    def __hash__(self) -> int:
        return hash((self.body, self.opcode))

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 32 else self.body[:29] + b"..."
        return f"Message({body!r}, opcode={self.opcode})"
