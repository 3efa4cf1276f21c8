"""Hand-built wire bytes for tests, independent of evws's own encoders.

Frames and requests are assembled here with ``struct`` and literal text so
that a bug in evws's serializer cannot hide a bug in its parser.
"""

from __future__ import annotations

import base64
import hashlib
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="          # RFC 6455 section 1.3 example
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="   # ... and its answer
MASK = b"\x37\xfa\x21\x3d"                 # RFC 6455 section 5.7 example key

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0, 1, 2, 8, 9, 10


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def xor(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bytes | None = MASK,
          rsv: int = 0, length_bytes: int | None = None) -> bytes:
    """One frame. ``mask=None`` leaves it unmasked (as a server sends it).

    ``length_bytes`` forces the 0 (7-bit), 2 (16-bit) or 8 (64-bit) length form.
    """
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    form = length_bytes if length_bytes is not None else (0 if n < 126 else 2 if n < 65536 else 8)
    mask_bit = 0x80 if mask is not None else 0
    if form == 0:
        head = struct.pack("!BB", first, mask_bit | n)
    elif form == 2:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if mask is None:
        return head + payload
    return head + mask + xor(payload, mask)


def close_payload(code: int | None = 1000, reason: bytes = b"") -> bytes:
    return b"" if code is None else struct.pack("!H", code) + reason


def split_frames(data: bytes, *, masked: bool) -> tuple[list[tuple[bool, int, bytes | None, bytes]], bytes]:
    """Split whole frames off ``data``: [(fin, opcode, mask_key, unmasked payload)], leftover.

    ``masked`` says which side sent them: a client masks every frame, a server none.
    """
    frames = []
    pos = 0
    while len(data) - pos >= 2:
        b0, b1 = data[pos], data[pos + 1]
        assert bool(b1 & 0x80) == masked, "a client masks every frame, a server none"
        n = b1 & 0x7F
        head = 2
        if n == 126:
            if len(data) - pos < 4:
                break
            n = struct.unpack_from("!H", data, pos + 2)[0]
            head = 4
        elif n == 127:
            if len(data) - pos < 10:
                break
            n = struct.unpack_from("!Q", data, pos + 2)[0]
            head = 10
        key = data[pos + head:pos + head + 4] if masked else None
        start = pos + head + (4 if masked else 0)
        if len(data) - start < n:
            break
        payload = data[start:start + n]
        frames.append((bool(b0 & 0x80), b0 & 0x0F, key, xor(payload, key) if key else payload))
        pos = start + n
    return frames, data[pos:]


def parse_frames(data: bytes) -> tuple[list[tuple[bool, int, bytes]], bytes]:
    """Split unmasked (server-sent) frames: [(fin, opcode, payload)], leftover bytes."""
    frames, rest = split_frames(data, masked=False)
    return [(fin, opcode, payload) for fin, opcode, _, payload in frames], rest


def parse_client_frames(data: bytes) -> tuple[list[tuple[bool, int, bytes, bytes]], bytes]:
    """Split masked (client-sent) frames: [(fin, opcode, mask_key, payload)], leftover bytes."""
    frames, rest = split_frames(data, masked=True)
    return [(fin, opcode, key or b"", payload) for fin, opcode, key, payload in frames], rest


def upgrade_request(path: str = "/", *, key: str = KEY, host: str = "example.com",
                    version: str = "13", extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: {version}\r\n"
        f"{extra}"
        "\r\n"
    ).encode()
