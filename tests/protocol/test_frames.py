"""Frame layout (RFC 6455 5.2): serialize_frame, frame_header, parse_header."""

import struct

import pytest

from evws.errors import ProtocolError
from evws.protocol import frames
from evws.protocol.frames import Opcode, frame_header, parse_header, serialize_frame


def xor(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


def test_opcodes():
    assert [(o.name, int(o)) for o in Opcode] == [
        ("CONTINUATION", 0), ("TEXT", 1), ("BINARY", 2), ("CLOSE", 8), ("PING", 9), ("PONG", 10),
    ]


class TestSerialize:
    def test_unmasked_text_rfc_example(self):
        # RFC 6455 5.7: a single-frame unmasked text message "Hello".
        assert serialize_frame(Opcode.TEXT, b"Hello") == b"\x81\x05Hello"

    def test_fragments_rfc_example(self):
        # RFC 6455 5.7: "Hel" then "lo".
        assert serialize_frame(Opcode.TEXT, b"Hel", fin=False) == b"\x01\x03Hel"
        assert serialize_frame(Opcode.CONTINUATION, b"lo") == b"\x80\x02lo"

    @pytest.mark.parametrize(
        "size, head",
        [
            (0, b"\x82\x00"),
            (125, b"\x82\x7d"),
            (126, b"\x82\x7e\x00\x7e"),
            (65535, b"\x82\x7e\xff\xff"),
            (65536, b"\x82\x7f" + struct.pack("!Q", 65536)),
        ],
    )
    def test_length_encodings_are_minimal(self, size, head):
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        assert serialize_frame(Opcode.BINARY, payload) == head + payload

    def test_masked_uses_a_fresh_urandom_key(self, monkeypatch):
        keys = iter([b"\x37\xfa\x21\x3d", b"\x01\x02\x03\x04"])
        monkeypatch.setattr(frames.os, "urandom", lambda n: next(keys))
        # RFC 6455 5.7: masked "Hello".
        assert serialize_frame(Opcode.TEXT, b"Hello", mask=True) == (
            b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
        )
        assert serialize_frame(Opcode.TEXT, b"Hello", mask=True) == (
            b"\x81\x85\x01\x02\x03\x04" + xor(b"Hello", b"\x01\x02\x03\x04")
        )

    def test_masked_keys_differ(self):
        a = serialize_frame(Opcode.BINARY, b"x" * 10, mask=True)
        b = serialize_frame(Opcode.BINARY, b"x" * 10, mask=True)
        assert a[1] == b[1] == 0x80 | 10
        assert a[2:6] != b[2:6]  # 2**-32 chance of a false failure

    def test_masked_16_bit_length(self, monkeypatch):
        monkeypatch.setattr(frames.os, "urandom", lambda n: b"\x00\xff\x00\xff")
        payload = b"a" * 300
        assert serialize_frame(Opcode.BINARY, payload, mask=True) == (
            b"\x82\xfe\x01\x2c\x00\xff\x00\xff" + xor(payload, b"\x00\xff\x00\xff")
        )

    def test_rsv1(self):
        assert serialize_frame(Opcode.TEXT, b"", rsv1=True) == b"\xc1\x00"

    def test_control_frames(self):
        assert serialize_frame(Opcode.PING, b"hi") == b"\x89\x02hi"
        assert serialize_frame(Opcode.CLOSE, b"\x03\xe8") == b"\x88\x02\x03\xe8"
        with pytest.raises(ValueError):
            serialize_frame(Opcode.PING, b"x" * 126)
        with pytest.raises(ValueError):
            serialize_frame(Opcode.PONG, b"", fin=False)

    def test_frame_header(self):
        assert frame_header(1, 5) == b"\x81\x05"
        assert frame_header(0, 5, fin=False, mask_key=b"abcd") == b"\x00\x85abcd"


class TestParseHeader:
    def test_unmasked(self):
        assert parse_header(b"\x81\x05Hello") == (True, 1, 0, 5, None, 2)

    def test_masked_at_offset(self):
        data = b"xx\x02\x83\x01\x02\x03\x04abc"
        assert parse_header(data, 2) == (False, 2, 0, 3, b"\x01\x02\x03\x04", 8)

    @pytest.mark.parametrize(
        "data, length, start",
        [
            (b"\x82\x7e\x01\x00", 256, 4),
            (b"\x82\x7f" + struct.pack("!Q", 70000), 70000, 10),
            # Non-minimal encodings are accepted.
            (b"\x82\x7e\x00\x05", 5, 4),
            (b"\x82\x7f" + struct.pack("!Q", 5), 5, 10),
        ],
    )
    def test_extended_lengths(self, data, length, start):
        assert parse_header(data) == (True, 2, 0, length, None, start)

    @pytest.mark.parametrize(
        "full",
        [
            b"\x81\x85\x01\x02\x03\x04",
            b"\x82\x7e\x01\x00",
            b"\x82\xff" + struct.pack("!Q", 70000) + b"abcd",
        ],
    )
    def test_incomplete_returns_none(self, full):
        for i in range(len(full)):
            assert parse_header(full[:i]) is None
        assert parse_header(full) is not None

    def test_top_bit_of_64_bit_length(self):
        with pytest.raises(ProtocolError):
            parse_header(b"\x82\x7f" + struct.pack("!Q", 1 << 63))
        assert parse_header(b"\x82\x7f" + struct.pack("!Q", (1 << 63) - 1))[3] == (1 << 63) - 1

    @pytest.mark.parametrize("bit", [0x40, 0x20, 0x10])
    def test_reserved_bits(self, bit):
        with pytest.raises(ProtocolError):
            parse_header(bytes([0x81 | bit, 0]))

    def test_allowed_reserved_bit(self):
        assert parse_header(b"\xc1\x00", 0, frames.RSV1) == (True, 1, 0x40, 0, None, 2)
        with pytest.raises(ProtocolError):
            parse_header(b"\xa1\x00", 0, frames.RSV1)

    @pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
    def test_reserved_opcodes(self, opcode):
        with pytest.raises(ProtocolError):
            parse_header(bytes([0x80 | opcode, 0]))

    def test_errors_need_only_two_bytes(self):
        # A control frame claiming a 16-bit length fails before the length arrives.
        with pytest.raises(ProtocolError):
            parse_header(b"\x89\x7e")

    @pytest.mark.parametrize("opcode", [8, 9, 10])
    def test_control_frame_rules(self, opcode):
        assert parse_header(bytes([0x80 | opcode, 125]))[3] == 125
        with pytest.raises(ProtocolError):
            parse_header(bytes([0x80 | opcode, 126]))
        with pytest.raises(ProtocolError):
            parse_header(bytes([opcode, 0]))  # FIN clear

    def test_bytearray_input(self):
        assert parse_header(bytearray(b"\x81\x81abcd")) == (True, 1, 0, 1, b"abcd", 6)
