"""``broadcast``: one message to many connections, encoded into a frame once.

Why: sending a message to a 1,000-member room with ``conn.send`` builds the
same frame header and payload 1,000 times. A server-side frame without
permessage-deflate is the same bytes for every connection (the server never
masks), so :func:`prepare` serialises it once and every such member gets
those bytes. A batch of several messages becomes one buffer, so a member
gets them with one syscall, and so do several broadcasts of one loop turn:
the plain-socket members get their frames at the end of the loop's turn, all of
the turn's in one ``send`` each, from one C loop over the members
(``evws.reactor.stream.write_each(..., soon=True)``). A publisher whose one
read holds several messages -- the common case under load -- costs the
kernel one ``send`` per member instead of one per member and message.
Connections that cannot share frames -- a
client side (each frame masked with a fresh key) or one with deflate (its own
compression context) -- fall back to their ordinary ``conn.send``.

Slow members: a member that does not read would make its output queue grow
without bound, one copy of every message. So before each write the member's
backlog (``conn.stream.backlog``: the bytes its kernel buffer refused; what is
only held until the end of the turn does not count) is compared with its
``high_water`` (64 KiB by default), and a member at or past it gets the
``policy``:

``"close"`` (the default)
    the member is closed with 1013 (Try Again Later): it stops costing
    memory, and it learns that it missed messages (a silently skipped member
    cannot tell). Its close frame is queued behind what it still holds;
    ``close_timeout`` bounds how long that may take.
``"skip"``
    the member does not get this message and stays connected; later messages
    reach it once its queue fell below ``high_water``. For feeds where the
    latest value replaces the previous ones (prices, positions).

Either way a member holds at most ``high_water`` plus one turn's broadcasts, and no other
member waits for it: writes never block, the check is per member. A member
whose ``high_water`` is ``None`` (flow control off) is never slow.
"""

from __future__ import annotations

import logging
from typing import Iterable, NamedTuple, Union

from .connection import Connection, send_prepared_each
from .errors import ConnectionClosed
from .message import Message
from .protocol.frames import SEPARATE_PAYLOAD as _SEPARATE_PAYLOAD
from .protocol.frames import frame_header

__all__ = ["broadcast", "prepare", "Prepared", "BroadcastResult", "SLOW_CLOSE_CODE"]

log = logging.getLogger("evws.broadcast")

#: The close code for a member closed by the ``"close"`` policy (RFC 6455 7.4.1
#: registry: 1013 Try Again Later, a temporary condition on the server side).
SLOW_CLOSE_CODE = 1013

_POLICIES = ("close", "skip")


Broadcastable = Union[str, bytes, bytearray, memoryview, Message]


class Prepared:
    """One or more messages serialised once as unmasked, uncompressed frames.

    ``chunks`` is what a connection that ``accepts_prepared`` gets;
    ``messages`` (``(opcode, payload)`` pairs) is what the others get, one
    ``send`` each. Build it with :func:`prepare`.
    """

    __slots__ = ("chunks", "messages")

    def __init__(self, chunks: tuple[bytes, ...], messages: tuple[tuple[int, bytes], ...]) -> None:
        self.chunks = chunks
        self.messages = messages

    def __len__(self) -> int:
        return len(self.messages)

    def __repr__(self) -> str:
        size = sum(len(c) for c in self.chunks)
        return f"<evws.Prepared {len(self.messages)} message(s), {size} bytes>"


def _opcode_and_payload(message: Broadcastable) -> tuple[int, bytes]:
    if isinstance(message, str):
        return 1, message.encode("utf-8")
    if isinstance(message, Message):
        if message.opcode not in (1, 2):
            raise ValueError("only text and binary messages can be broadcast")
        return message.opcode, message.body
    if isinstance(message, (bytes, bytearray, memoryview)):
        return 2, bytes(message)
    raise TypeError(f"cannot broadcast {type(message).__name__}: use str, bytes or Message")


def prepare(messages: Iterable[Broadcastable | tuple[int, bytes]]) -> Prepared:
    """Serialise messages once into frames that many connections can share.

    Each item is a ``str`` (text), bytes-like (binary), a text or binary
    :class:`Message`, or an ``(opcode, payload)`` pair. Small frames are
    joined into one buffer; large payloads stay separate chunks (no copy).

    Raises:
        TypeError / ValueError: an item that is not a text or binary message.
    """
    pairs: list[tuple[int, bytes]] = []
    chunks: list[bytes] = []
    small: list[bytes] = []
    for item in messages:
        if type(item) is tuple:
            opcode, payload = item
            if opcode not in (1, 2):
                raise ValueError("only text and binary messages can be broadcast")
            payload = bytes(payload)
        else:
            opcode, payload = _opcode_and_payload(item)  # type: ignore[arg-type]
        pairs.append((opcode, payload))
        head = frame_header(opcode, len(payload))
        if len(payload) < _SEPARATE_PAYLOAD:
            small.append(head)
            small.append(payload)
        else:
            small.append(head)
            chunks.append(b"".join(small))
            small = []
            chunks.append(payload)
    if small:
        chunks.append(b"".join(small))
    return Prepared(tuple(chunks), tuple(pairs))


class BroadcastResult(NamedTuple):
    """What :func:`broadcast` did: members written to, skipped as slow, closed as slow.

    ``slow`` lists the members that were skipped or closed, in order.
    """

    sent: int
    skipped: int
    closed: int
    slow: tuple[Connection, ...] = ()


def broadcast(
    connections: Iterable[Connection],
    message: Broadcastable | Prepared,
    *,
    policy: str = "close",
) -> BroadcastResult:
    """Send one message (or a :class:`Prepared` batch) to many connections, encoded once.

    Connections that are closing or finished are passed over (not counted).
    A member at or past its ``high_water`` mark gets ``policy``: ``"close"``
    (close it with 1013, the default) or ``"skip"`` (it misses this
    message); see the module docstring for why. Never raises for a member's
    sake: a member that went away meanwhile is passed over.

    Raises:
        ValueError: an unknown ``policy``, or a message that is neither text
            nor binary.
    """
    if policy not in _POLICIES:
        raise ValueError(f"policy must be one of {_POLICIES}, not {policy!r}")
    prepared = message if isinstance(message, Prepared) else prepare((message,))
    chunks = prepared.chunks
    # One buffer (the usual batch of small messages): the members that take
    # shared frames are written together at the end, one C loop of sends
    # (send_prepared_each); a member's order of frames is unchanged, as
    # nothing else is written to it in between.
    together: list[Connection] | None = [] if len(chunks) == 1 else None
    close = policy == "close"
    sent = skipped = closed = 0
    slow: list[Connection] = []
    for conn in connections:
        if not conn.is_write_open:
            continue
        high = conn.high_water
        # backlog: what the kernel refused; bytes only held until the end of
        # the turn (the frames of this turn's earlier broadcasts) do not count.
        if high is not None and conn.stream.backlog >= high:
            if close:
                log.debug("%r is %d bytes behind: closing it with %d",
                          conn, conn.stream.backlog, SLOW_CLOSE_CODE)
                conn.close(SLOW_CLOSE_CODE, "too slow: messages were dropped")
                closed += 1
            else:
                skipped += 1
            slow.append(conn)
            continue
        try:
            if conn.accepts_prepared:
                if together is not None:
                    together.append(conn)
                    continue
                conn.send_prepared(chunks)
            else:
                for opcode, payload in prepared.messages:
                    conn.send(Message(payload, opcode))
        except ConnectionClosed:
            continue
        sent += 1
    if together:
        # Sent at the end of this loop turn, with the frames of every other
        # broadcast of this turn: one send per member per turn.
        sent += len(send_prepared_each(together, chunks[0], soon=True))
    return BroadcastResult(sent, skipped, closed, tuple(slow))
