"""The WebSocket frame format (RFC 6455 section 5.2).

::

     0               1               2               3
    +-+-+-+-+-------+-+-------------+-------------------------------+
    |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
    |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
    |N|V|V|V|       |S|             |   (if payload len==126/127)   |
    | |1|2|3|       |K|             |                               |
    +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
    |     Extended payload length continued, if payload len == 127  |
    + - - - - - - - - - - - - - - - +-------------------------------+
    |                               |Masking-key, if MASK set to 1  |
    +-------------------------------+-------------------------------+
    | Masking-key (continued)       |          Payload Data         |
    +-------------------------------- - - - - - - - - - - - - - - - +

This module knows the layout and the rules that hold for every frame whatever
the connection's state (reserved bits, opcodes, control-frame limits). Rules
that depend on the side (which direction is masked) or on earlier frames
(fragmentation, size limits) live in ``websocket.py``.

There is no ``Frame`` object on the receive path on purpose: the core parses a
header into a plain tuple and slices the payload straight out of its buffer,
which keeps a small echo round trip cheap.
"""

from __future__ import annotations

import enum
import os
import struct
from typing import Any, Callable, TypeVar

from ..errors import InvalidUTF8, ProtocolError
from ..speedups import c_function
from .mask import apply_mask
from .utf8 import check_utf8

_Event = TypeVar("_Event", bound=tuple[Any, ...])

__all__ = [
    "Opcode",
    "CONTROL_OPCODES",
    "DATA_OPCODES",
    "MAX_CONTROL_PAYLOAD",
    "RSV1",
    "RSV2",
    "RSV3",
    "SEPARATE_PAYLOAD",
    "frame_header",
    "parse_header",
    "serialize_frame",
    "simple_frame",
    "simple_message",
]


class Opcode(enum.IntEnum):
    """Frame opcodes (5.2); 3-7 and 11-15 are reserved."""

    CONTINUATION = 0
    TEXT = 1
    BINARY = 2
    CLOSE = 8
    PING = 9
    PONG = 10


DATA_OPCODES = frozenset({0, 1, 2})
CONTROL_OPCODES = frozenset({8, 9, 10})
# Indexed by opcode: True for the six opcodes RFC 6455 defines.
_KNOWN_OPCODE = tuple(op in DATA_OPCODES or op in CONTROL_OPCODES for op in range(16))

# 5.5: "All control frames MUST have a payload length of 125 bytes or less".
MAX_CONTROL_PAYLOAD = 125

# Outgoing payloads at least this long are written as a chunk of their own
# after their header (one sendmsg gathers the two, Stream.writev) instead of
# being copied into one buffer with it. Below it the copy is cheaper than the
# gather: at 4 KiB a joined frame and one send cost ~0.5 us less server CPU
# per echo than header and payload through sendmsg (benchmarks/PROFILE.md,
# phases 3 and 13); a one-buffer frame also lets a broadcast take the C loop
# of sends. Above it copying costs more than it saves.
SEPARATE_PAYLOAD = 16384

RSV1 = 0x40
RSV2 = 0x20
RSV3 = 0x10

_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_HDR2 = struct.Struct("!BB")
_HDR4 = struct.Struct("!BBH")
_HDR10 = struct.Struct("!BBQ")


def parse_header(
    data: bytes | bytearray, pos: int = 0, allowed_rsv: int = 0
) -> tuple[bool, int, int, int, bytes | None, int] | None:
    """Parse the frame header that starts at ``data[pos]``.

    The checks that need only the first two bytes run before anything else, so
    a bad frame fails as soon as those bytes arrive.

    Args:
        data: the receive buffer.
        pos: where the header starts.
        allowed_rsv: the RSV bits (``RSV1 | RSV2 | RSV3`` mask) that a
            negotiated extension gave a meaning to; any other set bit fails.

    Returns:
        ``None`` if the header is not complete yet, else
        ``(fin, opcode, rsv, length, mask_key_or_None, payload_start)``.

    Raises:
        ProtocolError: a reserved bit or opcode is used, a control frame is
            fragmented or longer than 125 bytes, or a 64-bit length has its
            most significant bit set (all 1002).
    """
    avail = len(data) - pos
    if avail < 2:
        return None
    b0 = data[pos]
    b1 = data[pos + 1]
    rsv = b0 & 0x70
    opcode = b0 & 0x0F
    length = b1 & 0x7F
    # 5.2: "MUST be 0 unless an extension is negotiated that defines meanings
    # for non-zero values ... the receiving endpoint MUST _Fail the WebSocket
    # Connection_."
    if rsv & ~allowed_rsv:
        raise ProtocolError(f"reserved bits set (0x{rsv:02x})")
    # 5.2: "If an unknown opcode is received, the receiving endpoint MUST _Fail
    # the WebSocket Connection_."
    if not _KNOWN_OPCODE[opcode]:
        raise ProtocolError(f"reserved opcode {opcode}")
    if opcode >= 8:
        # 5.5: "All control frames MUST have a payload length of 125 bytes or
        # less and MUST NOT be fragmented."
        if length > MAX_CONTROL_PAYLOAD:
            raise ProtocolError("control frame payload longer than 125 bytes")
        if not b0 & 0x80:
            raise ProtocolError("fragmented control frame")
    p = pos + 2
    if length == 126:
        if avail < 4:
            return None
        (length,) = _U16.unpack_from(data, p)
        p += 2
    elif length == 127:
        if avail < 10:
            return None
        (length,) = _U64.unpack_from(data, p)
        # 5.2: "the most significant bit MUST be 0".
        if length >> 63:
            raise ProtocolError("64-bit payload length with the top bit set")
        p += 8
    # Non-minimal length encodings are accepted: 5.2 says the minimal number of
    # bytes MUST be used when sending, but asks nothing of the receiver.
    if b1 & 0x80:
        if len(data) < p + 4:
            return None
        key = bytes(data[p : p + 4])
        p += 4
    else:
        key = None
    return bool(b0 & 0x80), opcode, rsv, length, key, p


def frame_header(
    opcode: int,
    length: int,
    *,
    fin: bool = True,
    mask_key: bytes | None = None,
    rsv1: bool = False,
) -> bytes:
    """Build a frame header for a payload of ``length`` bytes.

    Uses the shortest length encoding, as 5.2 requires of senders.
    """
    b0 = opcode | (0x80 if fin else 0) | (RSV1 if rsv1 else 0)
    m = 0x80 if mask_key is not None else 0
    if length < 126:
        head = _HDR2.pack(b0, m | length)
    elif length < 0x10000:
        head = _HDR4.pack(b0, m | 126, length)
    else:
        head = _HDR10.pack(b0, m | 127, length)
    if mask_key is not None:
        return head + mask_key
    return head


def serialize_frame(
    opcode: int,
    payload: bytes | bytearray | memoryview,
    *,
    fin: bool = True,
    mask: bool = False,
    rsv1: bool = False,
) -> bytes:
    """Build a whole frame.

    Args:
        opcode: an ``Opcode`` value.
        payload: the application data.
        fin: False for every fragment of a message but the last.
        mask: True on the client side; a fresh key comes from ``os.urandom``
            for every frame (5.3: the key "MUST be derived from a strong source
            of entropy").
        rsv1: set RSV1 (permessage-deflate marks a compressed message so).

    Raises:
        ValueError: a control frame longer than 125 bytes or not final.
    """
    length = len(payload)
    if opcode >= 8 and (length > MAX_CONTROL_PAYLOAD or not fin):
        raise ValueError("control frames must be final and at most 125 bytes")
    if mask:
        key = os.urandom(4)
        return frame_header(opcode, length, fin=fin, mask_key=key, rsv1=rsv1) + (
            apply_mask(payload, key)
        )
    return frame_header(opcode, length, fin=fin, rsv1=rsv1) + bytes(payload)


def _py_simple_frame(data: bytes, pos: int, limit: int | None) -> tuple[int, bytes, int] | None:
    """Decode the commonest frame a server receives, whole, in one step.

    If ``data[pos:]`` starts with a complete final TEXT or BINARY frame,
    masked, with no RSV bit and a 7- or 16-bit length of at most ``limit``
    bytes (``None``: no limit), return ``(opcode, unmasked payload, stop)``
    where ``stop`` is the index just past the frame. Otherwise return
    ``None``: the caller parses the frame the general way (``parse_header``),
    which also reports what is wrong with it. No error is raised here.

    Why: a small echo is dominated by per-frame Python steps; this is the
    receive path's short cut (``evws._speedups.simple_frame`` when built).
    """
    if limit is not None and limit < 0:
        raise ValueError("simple_frame: negative limit")
    end = len(data)
    if pos < 0 or end - pos < 2:
        return None
    b0 = data[pos]
    b1 = data[pos + 1]
    if (b0 != 0x82 and b0 != 0x81) or b1 < 0x80:
        return None
    if b1 < 0xFE:
        start = pos + 6
        stop = start + b1 - 0x80
    elif b1 == 0xFE and end - pos >= 4:
        start = pos + 8
        stop = start + (data[pos + 2] << 8 | data[pos + 3])
    else:
        return None
    if stop > end or (limit is not None and stop - start > limit):
        return None
    return b0 & 0x0F, apply_mask(data[start:stop], data[start - 4:start]), stop


simple_frame: Callable[[bytes, int, int | None], tuple[int, bytes, int] | None] = (
    c_function("simple_frame") or _py_simple_frame)


def _py_simple_message(data: bytes, pos: int, limit: int | None,
                       event_type: type[_Event]) -> tuple[_Event, int] | None:
    """:func:`simple_frame`'s frame as the protocol's event, in one step.

    Returns ``(event, stop)`` where ``event`` is ``event_type`` (a tuple
    subclass: ``MessageReceived``) holding ``(opcode, payload)``, or
    ``None`` when :func:`simple_frame` would -- and also for a TEXT payload
    that is not valid UTF-8, which the general path then reports.

    Why: the receive short cut of ``WebSocketProtocol`` in one call, with no
    3-tuple to unpack and no ``tuple.__new__`` call
    (``evws._speedups.simple_message`` when built; benchmarks/PROFILE.md,
    phase 8).
    """
    if not (isinstance(event_type, type) and issubclass(event_type, tuple)):
        raise TypeError("simple_message: event_type must be a tuple type")
    frame = _py_simple_frame(data, pos, limit)
    if frame is None:
        return None
    opcode, payload, stop = frame
    if opcode == 1:
        try:
            check_utf8(payload)
        except InvalidUTF8:
            return None
    return tuple.__new__(event_type, (opcode, payload)), stop


simple_message: Callable[[bytes, int, int | None, type[Any]], tuple[Any, int] | None] = (
    c_function("simple_message") or _py_simple_message)
