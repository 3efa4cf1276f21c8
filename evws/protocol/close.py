"""Close codes and the payload of a Close frame (RFC 6455 sections 5.5.1, 7.4).

A Close frame's payload is either empty, or a 2-byte big-endian status code
followed by a UTF-8 reason; the whole payload is at most 125 bytes because
control frames are (5.5).
"""

from __future__ import annotations

import enum
import struct

from ..errors import ProtocolError
from .utf8 import validate_utf8

__all__ = [
    "CloseCode",
    "is_valid_close_code",
    "parse_close",
    "serialize_close",
    "MAX_CLOSE_REASON_BYTES",
]

# 125 bytes of control-frame payload minus the 2-byte code.
MAX_CLOSE_REASON_BYTES = 123

_CODE = struct.Struct("!H")


class CloseCode(enum.IntEnum):
    """Status codes defined by RFC 6455 section 7.4.1 (and the IANA registry)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    RESERVED = 1004
    NO_STATUS_RCVD = 1005  # never on the wire: "no code was in the frame"
    ABNORMAL_CLOSURE = 1006  # never on the wire: "no Close frame at all"
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015  # never on the wire


# 7.4.1: 1004, 1005, 1006 and 1015 are reserved and MUST NOT be sent; 1016-2999
# are reserved for future RFCs (none assigned for use by peers here); 3000-3999
# are registered with IANA and 4000-4999 are private, both usable.
_VALID_BELOW_3000 = frozenset(range(1000, 1004)) | frozenset(range(1007, 1015))


def is_valid_close_code(code: int) -> bool:
    """Tell whether ``code`` may appear in a Close frame on the wire."""
    return code in _VALID_BELOW_3000 or 3000 <= code <= 4999


def parse_close(payload: bytes | bytearray | memoryview) -> tuple[int, str]:
    """Read a received Close frame's payload.

    Returns:
        ``(code, reason)``; ``(1005, "")`` for an empty payload (7.1.5: "If this
        Close control frame contains no status code, _The WebSocket Connection
        Close Code_ is considered to be 1005").

    Raises:
        ProtocolError: a 1-byte payload, or a code not valid on the wire (1002).
        InvalidUTF8: the reason is not UTF-8 (1007).
    """
    n = len(payload)
    if n == 0:
        return 1005, ""
    if n == 1:
        raise ProtocolError("close frame payload of 1 byte")
    (code,) = _CODE.unpack_from(payload)
    if not is_valid_close_code(code):
        raise ProtocolError(f"invalid close code {code}")
    return code, validate_utf8(payload[2:])


def serialize_close(code: int | None, reason: str = "") -> bytes:
    """Build the payload of a Close frame to send.

    Args:
        code: the status code; ``None`` or 1005 mean "no code", an empty payload.
        reason: a short text; at most 123 bytes once encoded as UTF-8.

    Raises:
        ValueError: the code may not be sent, a reason comes without a code, or
            the payload would exceed 125 bytes. Nothing is truncated: cutting a
            reason could split a UTF-8 sequence, and the caller should know.
    """
    if code is None or code == CloseCode.NO_STATUS_RCVD:
        if reason:
            raise ValueError("a close reason needs a close code")
        return b""
    if not is_valid_close_code(code):
        raise ValueError(f"close code {code} may not be sent")
    data = reason.encode("utf-8")
    if len(data) > MAX_CLOSE_REASON_BYTES:
        raise ValueError(
            f"close reason is {len(data)} bytes; at most {MAX_CLOSE_REASON_BYTES} fit"
        )
    return _CODE.pack(code) + data
