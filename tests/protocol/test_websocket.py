"""WebSocketProtocol, grouped by RFC 6455 section.

Frames are built by hand here (``frame``/``sframe`` below, with a naive XOR),
never with evws's own serializer. Inputs are fed three ways through the
``feed`` fixture: all at once, one byte at a time, and followed by the first
byte of a next frame, which must stay buffered without effect.
"""

from __future__ import annotations

import os
import struct
import time
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evws.errors import ConnectionClosed, InvalidUTF8, PayloadTooBig, ProtocolError
from evws.protocol import websocket as ws_module
from evws.protocol.deflate import DeflateParams
from evws.protocol.events import (
    CloseReceived,
    ConnectionFailed,
    ConnectionLost,
    MessageReceived,
    PingReceived,
    PongReceived,
)
from evws.protocol.websocket import (
    CLIENT,
    CLOSED,
    CLOSING,
    OPEN,
    SERVER,
    Side,
    State,
    WebSocketProtocol,
)

KEY = b"\x37\xfa\x21\x3d"
EOF = "EOF"


# --------------------------------------------------------------------- helpers


def xor(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


def frame(opcode, payload=b"", *, fin=True, rsv=0, key=KEY, length_bits=None):
    """A frame as a client sends it (masked with ``key`` unless None)."""
    b0 = opcode | (0x80 if fin else 0) | rsv
    n = len(payload)
    bits = length_bits or (7 if n < 126 else 16 if n < 65536 else 64)
    m = 0x80 if key is not None else 0
    if bits == 7:
        head = struct.pack("!BB", b0, m | n)
    elif bits == 16:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if key is None:
        return head + payload
    return head + key + xor(payload, key)


def sframe(opcode, payload=b"", **kw):
    """A frame as a server sends it (unmasked)."""
    return frame(opcode, payload, key=None, **kw)


def close_payload(code, reason=b""):
    return struct.pack("!H", code) + reason


def decode_output(chunks):
    """Parse what the protocol queued: [(opcode, payload, fin, mask_key), ..., EOF]."""
    out = []
    buf = b""
    for chunk in chunks:
        if chunk == b"":
            assert buf == b"", "EOF queued in the middle of a frame"
            out.append(EOF)
            continue
        assert EOF not in out, "data queued after EOF"
        buf += chunk
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n, p = b1 & 0x7F, 2
            if n == 126:
                (n,) = struct.unpack_from("!H", buf, 2)
                p = 4
            elif n == 127:
                (n,) = struct.unpack_from("!Q", buf, 2)
                p = 10
            key = None
            if b1 & 0x80:
                key = buf[p : p + 4]
                p += 4
            if len(buf) < p + n:
                break
            payload = buf[p : p + n]
            if key is not None:
                payload = xor(payload, key)
            out.append((b0 & 0x0F, payload, bool(b0 & 0x80), key))
            buf = buf[p + n :]
    assert buf == b""
    return out


def drain(p):
    """All events the protocol has: it pauses after each message, so ask until empty."""
    events = []
    while batch := p.events_received():
        events += batch
    return events


def frames_out(p):
    """Output frames without keys: [(opcode, payload, fin), ..., EOF]."""
    return [f if f == EOF else f[:3] for f in decode_output(p.data_to_send())]


@pytest.fixture(params=["whole", "bytewise", "trailing"])
def feed(request):
    """feed(p, data) -> events, feeding ``data`` in the parametrized way.

    "trailing" sends the first bytes of a following Pong frame along with
    ``data``; they must not change the events. The rest of that Pong is sent
    next, and it must then arrive (unless input has stopped being read).
    """

    def feed(p, data):
        if request.param == "whole":
            p.receive_data(data)
        elif request.param == "bytewise":
            for i in range(len(data)):
                p.receive_data(data[i : i + 1])
        else:
            tail = frame(10, b"tail", key=KEY if p.side == SERVER else None)
            p.receive_data(data + tail[:3])
            events = drain(p)
            p.receive_data(tail[3:])
            expected = [PongReceived(b"tail")] if p.close_code is None else []
            assert drain(p) == expected
            return events
        return drain(p)

    return feed


def server(**kw):
    return WebSocketProtocol(SERVER, **kw)


def client(**kw):
    return WebSocketProtocol(CLIENT, **kw)


def assert_failed(p, events, code):
    """The protocol failed with ``code``: event, close frame, then EOF."""
    assert isinstance(events[-2], ConnectionFailed), events
    assert events[-2].code == code
    assert isinstance(events[-2].error, ProtocolError)
    assert events[-2].error.close_code == code
    assert events[-1] == ConnectionLost(1006, "")
    out = decode_output(p.data_to_send())
    assert out[-1] == EOF
    opcode, payload, fin, key = out[-2]
    assert (opcode, fin) == (8, True)
    assert payload[:2] == struct.pack("!H", code)
    assert (key is not None) == (p.side == CLIENT)
    assert p.state == CLOSED
    assert p.close_code == 1006
    assert p.close_sent[0] == code
    assert not p.close_expected()
    # Once failed, input is ignored and nothing more happens.
    p.receive_data(frame(1, b"late"))
    p.receive_eof()
    assert drain(p) == []
    assert p.data_to_send() == []


# ----------------------------------------------------------------------- tests


class TestConstruction:
    def test_defaults(self):
        p = WebSocketProtocol()
        assert p.side == SERVER == Side.SERVER == 0
        assert p.state == OPEN == State.OPEN == 1
        assert (CLOSING, CLOSED, CLIENT) == (2, 3, 1)
        assert p.max_payload_size == 1 << 20
        assert p.max_fragments is None
        assert p.close_code is None and p.close_reason is None and p.close_sent is None
        assert not p.close_expected()
        assert drain(p) == [] and p.data_to_send() == []

    def test_side_as_int(self):
        assert WebSocketProtocol(1).side is CLIENT

    def test_drains_reset(self):
        p = server()
        p.receive_data(frame(2, b"x"))
        p.send_binary(b"y")
        assert len(drain(p)) == 1 and drain(p) == []
        assert len(p.data_to_send()) == 1 and p.data_to_send() == []


class TestMasking:
    """RFC 6455 5.1 and 5.3."""

    def test_server_accepts_masked_frames(self, feed):
        p = server()
        assert feed(p, frame(1, b"Hello")) == [MessageReceived(1, b"Hello")]

    def test_server_rejects_unmasked_frames(self, feed):
        p = server()
        events = feed(p, sframe(1, b"Hello"))
        assert_failed(p, events, 1002)

    def test_server_sends_unmasked(self):
        p = server()
        p.send_text("Hello")
        p.send_binary(b"\x00\x01")
        p.send_ping(b"p")
        p.send_pong(b"q")
        p.send_close(1000)
        assert p.data_to_send() == [
            b"\x81\x05Hello", b"\x82\x02\x00\x01", b"\x89\x01p", b"\x8a\x01q", b"\x88\x02\x03\xe8",
        ]

    def test_client_accepts_unmasked_frames(self, feed):
        p = client()
        assert feed(p, sframe(2, b"\xff\x00")) == [MessageReceived(2, b"\xff\x00")]

    def test_client_rejects_masked_frames(self, feed):
        p = client()
        events = feed(p, frame(2, b"x"))
        assert_failed(p, events, 1002)

    def test_client_masks_every_frame_with_a_fresh_key(self, monkeypatch):
        keys = [bytes([i, i + 1, 0xF0, 0x0F]) for i in range(0, 40, 4)]
        given_keys = iter(keys)
        monkeypatch.setattr(ws_module.os, "urandom", lambda n: next(given_keys))
        p = client()
        p.send_text("Hello")
        p.send_binary(b"", fin=False)
        p.send_continuation(b"more", fin=True)
        p.send_ping(b"ping")
        p.send_pong(b"")
        p.receive_data(sframe(9, b"auto"))  # answered with a pong
        p.send_close(1001, "bye")
        chunks = p.data_to_send()
        assert chunks[0] == b"\x81\x85" + keys[0] + xor(b"Hello", keys[0])
        out = decode_output(chunks)
        assert out == [
            (1, b"Hello", True, keys[0]),
            (2, b"", False, keys[1]),
            (0, b"more", True, keys[2]),
            (9, b"ping", True, keys[3]),
            (10, b"", True, keys[4]),
            (10, b"auto", True, keys[5]),
            (8, close_payload(1001, b"bye"), True, keys[6]),
        ]

    def test_client_close_echo_and_failure_close_are_masked(self):
        p = client()
        p.receive_data(sframe(8, close_payload(1000)))
        (echo,) = decode_output(p.data_to_send())
        assert echo[3] is not None and echo[:2] == (8, close_payload(1000))
        p2 = client()
        p2.receive_data(b"\x83\x00")  # reserved opcode
        out = decode_output(p2.data_to_send())
        assert out[0][3] is not None and out[0][1] == close_payload(1002)[:2] + out[0][1][2:]

    def test_real_random_keys_differ(self):
        p = client()
        for _ in range(4):
            p.send_binary(b"same")
        keys = {f[3] for f in decode_output(p.data_to_send())}
        assert len(keys) == 4  # a 6 * 2**-32 chance of a false failure

    def test_mask_key_continues_across_split_payload(self):
        # The payload of one frame split at every offset modulo 4.
        payload = bytes(range(1, 40))
        data = frame(2, payload)
        for cut in range(6, len(data)):
            p = server()
            p.receive_data(data[:cut])
            p.receive_data(data[cut:])
            assert drain(p) == [MessageReceived(2, payload)]


class TestLengths:
    """RFC 6455 5.2: 7-, 16- and 64-bit payload lengths."""

    @pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
    def test_minimal_encodings(self, size):
        payload = os.urandom(size)
        for p, data in ((server(), frame(2, payload)), (client(), sframe(2, payload))):
            p.receive_data(data)
            assert drain(p) == [MessageReceived(2, payload)]

    @pytest.mark.parametrize("bits", [16, 64])
    def test_non_minimal_encodings_are_accepted(self, feed, bits):
        p = server()
        assert feed(p, frame(1, b"short", length_bits=bits)) == [MessageReceived(1, b"short")]

    def test_64_bit_length_with_top_bit_set(self, feed):
        p = server(max_payload_size=None)
        data = b"\x82\xff" + struct.pack("!Q", 1 << 63) + KEY
        assert_failed(p, feed(p, data), 1002)

    @pytest.mark.parametrize(
        "size, head",
        [
            (0, b"\x82\x00"),
            (125, b"\x82\x7d"),
            (126, b"\x82\x7e\x00\x7e"),
            (65535, b"\x82\x7e\xff\xff"),
            (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
        ],
    )
    def test_outgoing_lengths(self, size, head):
        p = server()
        payload = os.urandom(size)
        p.send_binary(payload)
        assert b"".join(p.data_to_send()) == head + payload

    def test_large_outgoing_payload_is_not_copied_with_its_header(self):
        p = server()
        payload = os.urandom(100_000)
        p.send_binary(payload)
        chunks = p.data_to_send()
        assert chunks == [b"\x82\x7f" + struct.pack("!Q", 100_000), payload]
        assert chunks[1] is payload

    @pytest.mark.parametrize("opcode", [1, 2])
    @pytest.mark.parametrize(
        "size, length",
        [
            (0, b"\x00"),
            (125, b"\x7d"),
            (126, b"\x7e\x00\x7e"),
            (4095, b"\x7e\x0f\xff"),
            (4096, b"\x7e\x10\x00"),
            (16383, b"\x7e\x3f\xff"),
            (16384, b"\x7e\x40\x00"),
            (65535, b"\x7e\xff\xff"),
            (65536, b"\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
        ],
    )
    def test_send_message_short_path_headers(self, opcode, size, length):
        # send_message's echo path builds headers itself; from 16 KiB
        # (SEPARATE_PAYLOAD) on the payload is its own chunk (the I/O layer
        # gathers the two).
        p = server()
        payload = b"a" * size
        p.send_message(payload, opcode)
        chunks = p.data_to_send()
        assert b"".join(chunks) == bytes([0x80 | opcode]) + length + payload
        if size >= 16384:
            assert len(chunks) == 2 and chunks[1] is payload
        else:
            assert len(chunks) == 1
        assert all(chunks)  # no empty chunk that could be mistaken for EOF

    def test_memoryview_and_bytearray_payloads(self):
        p = server()
        p.send_binary(memoryview(b"abc"))
        p.send_binary(bytearray(b"d" * 5000))
        assert b"".join(p.data_to_send()) == (
            b"\x82\x03abc" + b"\x82\x7e\x13\x88" + b"d" * 5000
        )


class TestReservedBitsAndOpcodes:
    """RFC 6455 5.2: RSV1-3 and unknown opcodes fail with 1002."""

    @pytest.mark.parametrize("bit", [0x40, 0x20, 0x10])
    def test_reserved_bits(self, feed, bit):
        p = server()
        assert_failed(p, feed(p, frame(1, b"x", rsv=bit)), 1002)

    def test_extension_hook_allows_rsv1(self):
        p = server()
        p.allowed_rsv_bits = 0x40
        p.receive_data(frame(2, b"z", rsv=0x40))
        assert drain(p) == [MessageReceived(2, b"z")]
        p.receive_data(frame(2, b"z", rsv=0x20))
        assert_failed(p, drain(p), 1002)

    @pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
    def test_unknown_opcodes(self, feed, opcode):
        p = server()
        assert_failed(p, feed(p, frame(opcode, b"")), 1002)

    def test_error_after_valid_frames_keeps_their_events(self, feed):
        p = server()
        events = feed(p, frame(1, b"a") + frame(9, b"p") + frame(5))
        assert events[:2] == [MessageReceived(1, b"a"), PingReceived(b"p")]
        out = frames_out(p)
        assert out[0] == (10, b"p", True)
        assert out[1][0] == 8 and out[1][1][:2] == b"\x03\xea" and out[2] == EOF


class TestControlFrames:
    """RFC 6455 5.5."""

    def test_ping_is_answered_with_the_same_payload(self, feed):
        p = server()
        assert feed(p, frame(9, b"are you there")) == [PingReceived(b"are you there")]
        assert p.data_to_send() == [b"\x8a\x0dare you there"]

    def test_empty_ping(self, feed):
        p = server()
        assert feed(p, frame(9)) == [PingReceived(b"")]
        assert p.data_to_send() == [b"\x8a\x00"]

    def test_pong(self, feed):
        p = server()
        assert feed(p, frame(10, b"beat")) == [PongReceived(b"beat")]
        assert p.data_to_send() == []

    def test_125_byte_control_payload(self, feed):
        p = server()
        assert feed(p, frame(9, b"x" * 125)) == [PingReceived(b"x" * 125)]

    @pytest.mark.parametrize("opcode", [8, 9, 10])
    def test_control_payload_over_125(self, feed, opcode):
        p = server()
        assert_failed(p, feed(p, frame(opcode, b"x" * 126)), 1002)

    @pytest.mark.parametrize("opcode", [8, 9, 10])
    def test_fragmented_control_frame(self, feed, opcode):
        p = server()
        assert_failed(p, feed(p, frame(opcode, b"", fin=False)), 1002)

    def test_control_frames_interleaved_in_a_message(self, feed):
        p = server()
        data = (
            frame(1, b"fir", fin=False)
            + frame(9, b"1")
            + frame(0, b"st ", fin=False)
            + frame(10, b"2")
            + frame(0, b"msg")
        )
        assert feed(p, data) == [
            PingReceived(b"1"), PongReceived(b"2"), MessageReceived(1, b"first msg"),
        ]
        assert p.data_to_send() == [b"\x8a\x011"]

    def test_send_oversized_control_payload(self):
        p = server()
        with pytest.raises(ValueError):
            p.send_ping(b"x" * 126)
        with pytest.raises(ValueError):
            p.send_pong(b"x" * 126)
        p.send_ping("é" * 62)  # str is encoded: 124 bytes
        assert p.data_to_send() == [b"\x89\x7c" + "é".encode() * 62]


class TestFragmentation:
    """RFC 6455 5.4."""

    def test_three_fragments(self, feed):
        p = server()
        data = frame(2, b"ab", fin=False) + frame(0, b"", fin=False) + frame(0, b"cd")
        assert feed(p, data) == [MessageReceived(2, b"abcd")]

    def test_text_split_inside_a_character(self, feed):
        p = server()
        euro = "€".encode()
        data = frame(1, euro[:1], fin=False) + frame(0, euro[1:2], fin=False) + frame(0, euro[2:])
        assert feed(p, data) == [MessageReceived(1, euro)]

    def test_continuation_without_a_message(self, feed):
        p = server()
        assert_failed(p, feed(p, frame(0, b"x")), 1002)

    def test_continuation_after_a_complete_message(self, feed):
        p = server()
        events = feed(p, frame(1, b"done") + frame(0, b"x"))
        assert events[0] == MessageReceived(1, b"done")
        assert_failed(p, events, 1002)

    @pytest.mark.parametrize("opcode", [1, 2])
    def test_new_message_inside_a_message(self, feed, opcode):
        p = server()
        assert_failed(p, feed(p, frame(2, b"a", fin=False) + frame(opcode, b"b")), 1002)

    def test_max_fragments(self, feed):
        p = server(max_fragments=3)
        data = frame(2, b"a", fin=False) + frame(0, b"b", fin=False) + frame(0, b"c")
        assert feed(p, data) == [MessageReceived(2, b"abc")]
        data = frame(2, b"a", fin=False) + frame(0, b"b", fin=False) + frame(0, b"c", fin=False)
        assert feed(p, data) == []
        events = feed(p, frame(0, b"d"))
        assert isinstance(events[0].error, PayloadTooBig)
        assert_failed(p, events, 1009)

    def test_send_fragmented(self):
        p = server()
        p.send_text("Hel", fin=False)
        p.send_ping(b"")  # control frames may be interleaved
        p.send_continuation("l", fin=False)
        p.send_continuation(b"o", fin=True)
        p.send_binary(b"next")
        assert p.data_to_send() == [
            b"\x01\x03Hel", b"\x89\x00", b"\x00\x01l", b"\x80\x01o", b"\x82\x04next",
        ]

    def test_send_rules(self):
        p = server()
        with pytest.raises(RuntimeError):
            p.send_continuation(b"x", fin=True)
        p.send_binary(b"a", fin=False)
        with pytest.raises(RuntimeError):
            p.send_text("b")
        with pytest.raises(RuntimeError):
            p.send_message(b"b", 2)
        p.send_continuation(b"c", fin=True)
        assert p.data_to_send() == [b"\x02\x01a", b"\x80\x01c"]


class TestUtf8:
    """RFC 6455 8.1: invalid text fails with 1007, as early as possible."""

    def test_valid_text(self, feed):
        p = server()
        text = "κόσμε €😀".encode()
        assert feed(p, frame(1, text)) == [MessageReceived(1, text)]

    def test_invalid_text(self, feed):
        p = server()
        events = feed(p, frame(1, b"abc\xff"))
        assert isinstance(events[0].error, InvalidUTF8)
        assert_failed(p, events, 1007)

    def test_binary_is_not_validated(self, feed):
        p = server()
        assert feed(p, frame(2, b"\xff\xfe")) == [MessageReceived(2, b"\xff\xfe")]

    def test_fails_in_the_first_fragment(self, feed):
        p = server()
        # The final fragment never arrives: the error is found anyway.
        assert_failed(p, feed(p, frame(1, b"ok\xf4\x90", fin=False)), 1007)

    def test_surrogate_fails_in_the_first_fragment(self, feed):
        p = server()
        assert_failed(p, feed(p, frame(1, b"ok\xed\xa0", fin=False)), 1007)

    def test_fails_in_the_middle_of_a_frame(self):
        p = server()
        data = frame(1, b"ab\xc0" + b"z" * 50)
        p.receive_data(data[:10])  # header + "ab\xc0" + a little
        assert_failed(p, drain(p), 1007)

    def test_truncated_at_the_end_of_the_message(self, feed):
        p = server()
        data = frame(1, b"a\xe2\x82", fin=False) + frame(0, b"")
        assert_failed(p, feed(p, data), 1007)

    def test_fragment_boundaries_inside_characters(self, feed):
        p = server()
        text = "😀".encode() * 3
        data = b"".join(
            frame(1 if i == 0 else 0, text[i : i + 5], fin=i + 5 >= len(text))
            for i in range(0, len(text), 5)
        )
        assert feed(p, data) == [MessageReceived(1, text)]


class TestLimits:
    """max_payload_size (whole message) and its check before buffering."""

    def test_at_the_limit(self, feed):
        p = server(max_payload_size=10)
        assert feed(p, frame(2, b"x" * 10)) == [MessageReceived(2, b"x" * 10)]

    def test_over_the_limit(self, feed):
        p = server(max_payload_size=10)
        events = feed(p, frame(2, b"x" * 11))
        assert isinstance(events[0].error, PayloadTooBig)
        assert_failed(p, events, 1009)

    def test_header_alone_fails(self):
        p = server()
        # A header claiming 2**62 bytes fails before any payload byte arrives.
        p.receive_data(b"\x82\xff" + struct.pack("!Q", 1 << 62) + KEY)
        assert_failed(p, drain(p), 1009)

    def test_limit_counts_all_fragments(self, feed):
        p = server(max_payload_size=10)
        data = frame(2, b"x" * 6, fin=False) + frame(0, b"y" * 5, fin=False)
        assert_failed(p, feed(p, data), 1009)

    def test_fragments_up_to_the_limit(self, feed):
        p = server(max_payload_size=10)
        data = frame(1, b"x" * 6, fin=False) + frame(0, b"y" * 4)
        data += frame(2, b"z" * 10)  # the budget is per message
        assert feed(p, data) == [MessageReceived(1, b"xxxxxxyyyy"), MessageReceived(2, b"z" * 10)]

    def test_no_limit(self):
        p = server(max_payload_size=None)
        payload = os.urandom(2 << 20)
        p.receive_data(frame(2, payload, key=b"\0\0\0\0"))
        assert drain(p) == [MessageReceived(2, payload)]

    def test_control_frames_do_not_count(self, feed):
        p = server(max_payload_size=3)
        data = frame(2, b"ab", fin=False) + frame(9, b"pingpayload") + frame(0, b"c")
        assert feed(p, data) == [PingReceived(b"pingpayload"), MessageReceived(2, b"abc")]


class TestClosingServer:
    """RFC 6455 5.5.1, 7.1: closing handshake, server side."""

    def test_client_initiates(self, feed):
        p = server()
        events = feed(p, frame(8, close_payload(1000, b"bye")))
        assert events == [CloseReceived(1000, "bye"), ConnectionLost(1000, "bye")]
        assert p.data_to_send() == [b"\x88\x02\x03\xe8", b""]  # code echoed, then end TCP
        assert p.state == CLOSED
        assert (p.close_code, p.close_reason, p.close_sent) == (1000, "bye", (1000, ""))
        assert not p.close_expected()
        p.receive_eof()  # the client's EOF follows: already finished
        assert drain(p) == [] and p.data_to_send() == []

    def test_received_code_is_echoed(self, feed):
        p = server()
        feed(p, frame(8, close_payload(4321)))
        assert p.data_to_send() == [b"\x88\x02\x10\xe1", b""]

    def test_empty_close_is_answered_with_an_empty_close(self, feed):
        p = server()
        assert feed(p, frame(8)) == [CloseReceived(1005, ""), ConnectionLost(1005, "")]
        assert p.data_to_send() == [b"\x88\x00", b""]
        assert p.close_code == 1005 and p.close_sent == (None, "")

    def test_server_initiates(self, feed):
        p = server()
        p.send_close(1001, "going away")
        assert p.data_to_send() == [b"\x88\x0c\x03\xe9going away"]
        assert p.state == CLOSING and p.close_expected()
        assert p.close_sent == (1001, "going away")
        events = feed(p, frame(8, close_payload(1001)))
        assert events == [CloseReceived(1001, ""), ConnectionLost(1001, "")]
        assert p.data_to_send() == [b""]  # no second close frame
        assert p.state == CLOSED and not p.close_expected()

    def test_messages_still_arrive_after_our_close(self, feed):
        p = server()
        p.send_close()
        p.data_to_send()
        events = feed(p, frame(1, b"late") + frame(9, b"p"))
        assert events == [MessageReceived(1, b"late"), PingReceived(b"p")]
        assert p.data_to_send() == []  # no pong after our close frame

    def test_input_after_close_is_discarded(self, feed):
        p = server()
        events = feed(p, frame(8, close_payload(1000)) + frame(1, b"ignored") + b"\xff\xff")
        assert events == [CloseReceived(1000, ""), ConnectionLost(1000, "")]
        p.receive_data(frame(1, b"still ignored"))
        assert drain(p) == []

    def test_close_discards_a_partial_message(self, feed):
        p = server()
        events = feed(p, frame(1, b"part", fin=False) + frame(8, close_payload(1000)))
        assert events == [CloseReceived(1000, ""), ConnectionLost(1000, "")]

    def test_one_byte_close_payload(self, feed):
        p = server()
        assert_failed(p, feed(p, frame(8, b"\x03")), 1002)

    @pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000])
    def test_invalid_close_code(self, feed, code):
        p = server()
        assert_failed(p, feed(p, frame(8, close_payload(code))), 1002)

    def test_bad_utf8_reason(self, feed):
        p = server()
        assert_failed(p, feed(p, frame(8, close_payload(1000, b"\xc3"))), 1007)

    def test_send_after_close_raises(self):
        p = server()
        p.send_close(1000)
        for send in (
            lambda: p.send_text("x"),
            lambda: p.send_binary(b"x"),
            lambda: p.send_message(b"x", 2),
            lambda: p.send_ping(),
            lambda: p.send_pong(),
            lambda: p.send_close(),
        ):
            with pytest.raises(ConnectionClosed):
                send()

    def test_send_after_peer_close_raises(self):
        p = server()
        p.receive_data(frame(8, close_payload(1001, b"x")))
        with pytest.raises(ConnectionClosed) as info:
            p.send_text("x")
        assert (info.value.code, info.value.reason) == (1001, "x")

    def test_send_close_validates(self):
        p = server()
        with pytest.raises(ValueError):
            p.send_close(1006)
        with pytest.raises(ValueError):
            p.send_close(1000, "x" * 124)
        assert p.state == OPEN and p.close_sent is None and p.data_to_send() == []
        p.send_close(None)
        assert p.data_to_send() == [b"\x88\x00"] and p.close_sent == (None, "")


class TestClosingClient:
    """RFC 6455 7.1.1: the client waits for the server to close TCP."""

    def test_server_initiates(self, feed):
        p = client()
        events = feed(p, sframe(8, close_payload(1000, b"done")))
        assert events == [CloseReceived(1000, "done")]
        assert frames_out(p) == [(8, close_payload(1000), True)]  # echo, no EOF
        assert p.state == CLOSING and p.close_expected()
        p.receive_data(sframe(1, b"discarded"))
        p.receive_eof()
        assert drain(p) == [ConnectionLost(1000, "done")]
        assert p.data_to_send() == [b""]
        assert p.state == CLOSED and not p.close_expected()

    def test_client_initiates(self, feed):
        p = client()
        p.send_close(3000, "app")
        assert frames_out(p) == [(8, close_payload(3000, b"app"), True)]
        assert p.close_expected()
        events = feed(p, sframe(8, close_payload(3000)))
        assert events == [CloseReceived(3000, "")]
        assert p.data_to_send() == []
        assert p.state == CLOSING and p.close_expected()
        p.receive_eof()
        assert drain(p) == [ConnectionLost(3000, "")]
        assert p.data_to_send() == [b""]
        p.receive_eof()
        assert drain(p) == []

    def test_empty_close(self, feed):
        p = client()
        assert feed(p, sframe(8)) == [CloseReceived(1005, "")]
        assert frames_out(p) == [(8, b"", True)]


class TestEOF:
    def test_eof_without_close(self):
        for p in (server(), client()):
            p.receive_eof()
            assert drain(p) == [ConnectionLost(1006, "")]
            assert p.data_to_send() == [b""]
            assert (p.state, p.close_code, p.close_reason) == (CLOSED, 1006, "")
            p.receive_eof()
            p.receive_data(frame(1, b"x"))
            assert drain(p) == [] and p.data_to_send() == []
            with pytest.raises(ConnectionClosed):
                p.send_text("x")

    def test_eof_mid_message(self):
        p = server()
        p.receive_data(frame(1, b"ab", fin=False) + frame(0, b"cdef")[:9])
        assert drain(p) == []
        p.receive_eof()
        assert drain(p) == [ConnectionLost(1006, "")]

    def test_eof_after_our_close(self):
        p = server()
        p.send_close()
        p.receive_eof()
        assert drain(p) == [ConnectionLost(1006, "")]
        assert frames_out(p) == [(8, b"\x03\xe8", True), EOF]


class TestFail:
    """RFC 6455 7.1.7: _Fail the WebSocket Connection_."""

    def test_fail(self):
        p = server()
        p.fail(1011, "handler raised")
        assert drain(p) == [ConnectionLost(1006, "")]  # no ConnectionFailed
        assert p.data_to_send() == [b"\x88\x10\x03\xf3handler raised", b""]
        assert p.state == CLOSED and p.close_sent == (1011, "handler raised")
        p.fail(1011)
        p.receive_eof()
        assert drain(p) == [] and p.data_to_send() == []
        with pytest.raises(ConnectionClosed):
            p.send_binary(b"x")

    def test_fail_after_our_close_sends_no_second_close(self):
        p = server()
        p.send_close(1000)
        p.fail(1011)
        assert p.data_to_send() == [b"\x88\x02\x03\xe8", b""]
        assert drain(p) == [ConnectionLost(1006, "")]

    def test_client_fail_does_not_wait_for_the_server(self):
        p = client()
        p.fail(1002)
        assert frames_out(p) == [(8, b"\x03\xea", True), EOF]
        assert drain(p) == [ConnectionLost(1006, "")]

    def test_client_fail_while_waiting_for_eof(self):
        p = client()
        p.receive_data(sframe(8, close_payload(1000)))
        p.fail(1011)  # e.g. the close timer ran out
        assert drain(p) == [CloseReceived(1000, ""), ConnectionLost(1000, "")]
        assert frames_out(p) == [(8, b"\x03\xe8", True), EOF]

    def test_fail_validates_before_changing_anything(self):
        p = server()
        with pytest.raises(ValueError):
            p.fail(1006)
        assert p.state == OPEN and p.data_to_send() == [] and drain(p) == []

    def test_long_error_reasons_are_clipped(self):
        p = server()
        p.receive_data(frame(2, b"x" * 100))
        p.max_payload_size = 1
        p.receive_data(frame(2, b"x" * 100))
        out = frames_out(p)
        assert len(out[0][1]) <= 125


class TestConnectionLostOnce:
    """ConnectionLost is emitted exactly once and last, on every path."""

    PATHS = {
        "server: peer closes": (SERVER, lambda p: p.receive_data(frame(8, close_payload(1000)))),
        "server: we close": (SERVER, lambda p: (p.send_close(), p.receive_data(frame(8)))),
        "server: EOF": (SERVER, lambda p: p.receive_eof()),
        "server: we close, EOF": (SERVER, lambda p: (p.send_close(), p.receive_eof())),
        "server: protocol error": (SERVER, lambda p: p.receive_data(b"\x81\x00")),
        "server: fail": (SERVER, lambda p: p.fail(1011)),
        "client: peer closes": (
            CLIENT, lambda p: (p.receive_data(sframe(8, close_payload(1000))), p.receive_eof()),
        ),
        "client: we close": (
            CLIENT, lambda p: (p.send_close(), p.receive_data(sframe(8)), p.receive_eof()),
        ),
        "client: EOF": (CLIENT, lambda p: p.receive_eof()),
        "client: protocol error": (CLIENT, lambda p: p.receive_data(frame(1, b""))),
        "client: close then fail": (
            CLIENT, lambda p: (p.receive_data(sframe(8)), p.fail(1011)),
        ),
    }

    @pytest.mark.parametrize("path", PATHS)
    def test_once(self, path):
        side, run = self.PATHS[path]
        p = WebSocketProtocol(side)
        run(p)
        events = drain(p)
        # Everything that may still happen afterwards.
        p.receive_eof()
        p.receive_data(frame(1, b"x") + sframe(1, b"x"))
        p.fail(1011)
        p.receive_eof()
        events += drain(p)
        lost = [e for e in events if isinstance(e, ConnectionLost)]
        assert len(lost) == 1 and events[-1] is lost[0]
        assert p.state == CLOSED
        out = p.data_to_send()
        assert out.count(b"") == 1 and out[-1] == b""


class TestLinearCost:
    """No quadratic work on trickling or heavily fragmented input."""

    def test_byte_by_byte_keeps_the_buffer_small(self):
        p = server()
        data = b"".join(
            [frame(1, b"a" * 200, fin=False), frame(9, b"x" * 125), frame(0, b"b" * 70000)]
        )
        largest = 0
        for i in range(len(data)):
            p.receive_data(data[i : i + 1])
            largest = max(largest, len(p._buf))
        assert largest <= 2 + 4 + 125  # at most one incomplete control frame
        assert drain(p) == [
            PingReceived(b"x" * 125), MessageReceived(1, b"a" * 200 + b"b" * 70000),
        ]

    def test_32_mib_in_1_kib_fragments(self):
        size, piece = 32 << 20, 1024
        chunk = os.urandom(piece)
        zero = b"\0\0\0\0"  # a valid key that leaves the payload as it is
        first = frame(2, chunk, fin=False, key=zero)
        middle = frame(0, chunk, fin=False, key=zero)
        last = frame(0, chunk, key=zero)
        data = first + middle * (size // piece - 2) + last
        p = server(max_payload_size=None)
        start = time.perf_counter()
        view = memoryview(data)
        for i in range(0, len(data), 65536):
            p.receive_data(view[i : i + 65536])
        elapsed = time.perf_counter() - start
        (event,) = drain(p)
        assert len(event.payload) == size and event.payload[-piece:] == chunk
        # Linear work takes well under a second here; a quadratic join or
        # buffer shift per fragment would take minutes.
        assert elapsed < 5


class TestSendMessage:
    def test_data_opcodes(self):
        p = server()
        p.send_message(b"t", 1)
        p.send_message(b"b", 2)
        assert p.data_to_send() == [b"\x81\x01t", b"\x82\x01b"]

    def test_control_opcodes(self):
        p = server()
        p.send_message(b"p", 9)
        p.send_message(b"q", 10)
        p.send_message(close_payload(1001, b"r"), 8)
        assert p.data_to_send() == [b"\x89\x01p", b"\x8a\x01q", b"\x88\x03\x03\xe9r"]
        assert p.close_sent == (1001, "r") and p.state == CLOSING

    def test_empty_close_message(self):
        p = server()
        p.send_message(b"", 8)
        assert p.data_to_send() == [b"\x88\x00"]

    @pytest.mark.parametrize("payload, opcode", [(b"x", 0), (b"x", 3), (b"\x03", 8),
                                                 (b"\x03\xee", 8), (b"x" * 126, 9)])
    def test_refused(self, payload, opcode):
        p = server()
        with pytest.raises(ValueError):
            p.send_message(payload, opcode)
        assert p.data_to_send() == [] and p.state == OPEN


class TestEchoRoundTrip:
    def test_client_and_server_talk(self):
        c, s = client(), server()

        def pump():
            for src, dst in ((c, s), (s, c)):
                for chunk in src.data_to_send():
                    if chunk:
                        dst.receive_data(chunk)
                    else:
                        dst.receive_eof()

        c.send_text("héllo")
        c.send_binary(b"\x00" * 70000)
        pump()
        for event in drain(s):
            s.send_message(event.payload, event.opcode)
        pump()
        assert drain(c) == [
            MessageReceived(1, "héllo".encode()), MessageReceived(2, b"\x00" * 70000),
        ]
        c.send_close(1000, "bye")
        pump()
        assert drain(s) == [CloseReceived(1000, "bye"), ConnectionLost(1000, "bye")]
        pump()  # the server's echo and EOF reach the client
        assert drain(c) == [CloseReceived(1000, ""), ConnectionLost(1000, "")]
        assert (c.state, s.state) == (CLOSED, CLOSED)


# A valid client-to-server stream and the events it must produce however it is split.
STREAM = b"".join(
    [
        frame(1, "κό".encode()[:3], fin=False),
        frame(9, b"ping"),
        frame(0, "κό".encode()[3:] + b"!", fin=True),
        frame(2, os.urandom(300)),
        frame(10, b""),
        frame(2, b"", fin=False),
        frame(0, b"x" * 70000, fin=True),
        frame(8, close_payload(1000, b"end")),
    ]
)


def _reference_events():
    p = server()
    p.receive_data(STREAM)
    return drain(p), p.data_to_send()


REFERENCE = _reference_events()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=30))
def test_random_split_points_yield_the_same_events(cuts):
    p = server()
    events, out = [], []
    bounds = [0, *sorted(cuts), len(STREAM)]
    for a, b in zip(bounds, bounds[1:]):
        p.receive_data(STREAM[a:b])
        events += drain(p)
        out += p.data_to_send()
    assert (events, out) == REFERENCE
    assert len(events) == 7 and events[-1] == ConnectionLost(1000, "end")


class TestEventsAndLogging:
    def test_events_are_frozen_values(self):
        event = MessageReceived(1, b"x")
        with pytest.raises(AttributeError):
            event.payload = b"y"
        assert event == MessageReceived(1, b"x")
        assert "...[1000 bytes]" in str(MessageReceived(2, b"z" * 1000))

    def test_debug_log_when_enabled_at_creation(self, caplog):
        caplog.set_level("DEBUG", logger="evws.protocol")
        p = server()
        p.receive_data(frame(1, b"a", fin=False) + frame(9, b"p") + frame(0, b"b"))
        drain(p)  # parsing pauses after the Ping and after the message
        p.send_text("x")
        p.receive_data(frame(8, close_payload(1000)))
        drain(p)
        lines = [r.getMessage() for r in caplog.records if r.name == "evws.protocol"]
        assert "< TEXT fin=0 1 bytes" in lines
        assert "< PING b'p'" in lines
        assert "> PONG fin=1 1 bytes" in lines
        assert "> EOF" in lines and "= CLOSED" in lines
        assert all(r.levelname == "DEBUG" for r in caplog.records)

    def test_no_log_when_disabled_at_creation(self, caplog):
        caplog.set_level("INFO", logger="evws.protocol")
        p = server()
        caplog.set_level("DEBUG", logger="evws.protocol")  # too late: the flag is cached
        p.receive_data(frame(1, b"a") + frame(5))
        assert [r for r in caplog.records if r.name == "evws.protocol"] == []


class TestOneMessageAtATime:
    """Parsing pauses after each complete message until its events are taken."""

    def test_answer_to_message_one_precedes_the_failure_frame_two_causes(self):
        p = server()
        p.receive_data(frame(1, b"Hello") + frame(1, b"x", rsv=2) + frame(9, b"p"))
        assert p.events_received() == [MessageReceived(1, b"Hello")]
        assert p.data_to_send() == []  # nothing decided about frame two yet
        p.send_message(b"Hello", 1)  # the application's echo
        events = drain(p)
        assert [type(e) for e in events] == [ConnectionFailed, ConnectionLost]
        out = frames_out(p)
        assert out[0] == (1, b"Hello", True)
        assert out[1][0] == 8 and out[1][1][:2] == struct.pack("!H", 1002)
        assert out[2:] == [EOF]

    def test_many_messages_in_one_input_come_one_batch_each(self):
        p = server()
        p.receive_data(b"".join(frame(2, bytes([i])) for i in range(5)))
        batches = []
        while batch := p.events_received():
            batches.append(batch)
        assert batches == [[MessageReceived(2, bytes([i]))] for i in range(5)]

    def test_input_fed_before_the_events_were_taken_is_kept_in_order(self):
        p = server()
        p.receive_data(frame(2, b"a") + frame(2, b"b"))
        p.receive_data(frame(2, b"c"))
        assert drain(p) == [MessageReceived(2, b"a"), MessageReceived(2, b"b"),
                            MessageReceived(2, b"c")]

    def test_eof_after_unread_messages_delivers_them_first(self):
        p = server()
        p.receive_data(frame(2, b"a") + frame(2, b"b"))
        p.receive_eof()
        assert drain(p) == [MessageReceived(2, b"a"), MessageReceived(2, b"b"),
                            ConnectionLost(1006, "")]

    def test_fragmented_message_then_bad_continuation(self):
        # Autobahn 5.15: the complete message is answered before the failure.
        p = server()
        p.receive_data(frame(1, b"frag1", fin=False) + frame(0, b"frag2")
                       + frame(0, b"frag3", fin=False) + frame(1, b"frag4"))
        assert p.events_received() == [MessageReceived(1, b"frag1frag2")]
        assert p.data_to_send() == []
        events = drain(p)
        assert isinstance(events[0], ConnectionFailed) and events[0].code == 1002


# ------------------------------------------------------- permessage-deflate

RSV1 = 0x40
HELLO = bytes.fromhex("f248cdc9c90700")  # RFC 7692 7.2.3.1, "Hello" compressed


def deflate_payload(data: bytes, wbits: int = 15) -> bytes:
    """A message payload compressed with plain zlib, tail stripped (RFC 7692 7.2.1)."""
    c = zlib.compressobj(wbits=-wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def raw_frames(chunks):
    """[(rsv, opcode, fin, payload)] of what a protocol queued (rsv as 0x70 bits)."""
    data = b"".join(chunks)
    out = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        n, p = b1 & 0x7F, pos + 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, p)
            p += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, p)
            p += 8
        key = None
        if b1 & 0x80:
            key, p = data[p:p + 4], p + 4
        payload = data[p:p + n]
        out.append((b0 & 0x70, b0 & 0x0F, bool(b0 & 0x80),
                    xor(payload, key) if key else payload))
        pos = p + n
    return out


def inflate_all(payload: bytes, wbits: int = 15) -> bytes:
    return zlib.decompressobj(-wbits).decompress(payload + b"\x00\x00\xff\xff")


class TestPermessageDeflate:
    """RFC 7692 on the wire: RSV1 rules, inflation bounds, UTF-8, sending."""

    def test_rfc_example_frames(self, feed):
        p = server(deflate=DeflateParams())
        # 7.2.3.1 unfragmented, then the same split over two frames.
        data = frame(1, HELLO, rsv=RSV1)
        data += frame(1, HELLO[:3], rsv=RSV1, fin=False) + frame(0, HELLO[3:])
        assert feed(p, data) == [MessageReceived(1, b"Hello")] * 2

    def test_uncompressed_messages_still_pass(self, feed):
        p = server(deflate=DeflateParams())
        data = frame(1, b"plain") + frame(2, HELLO, rsv=RSV1) + frame(2, b"x", fin=False) + frame(0, b"y")
        assert feed(p, data) == [MessageReceived(1, b"plain"), MessageReceived(2, b"Hello"),
                                 MessageReceived(2, b"xy")]

    def test_shared_window_across_messages(self, feed):
        p = server(deflate=DeflateParams())
        # 7.2.3.2: the second "Hello" refers back into the first message.
        data = frame(1, HELLO, rsv=RSV1) + frame(1, bytes.fromhex("f200110000"), rsv=RSV1)
        assert feed(p, data) == [MessageReceived(1, b"Hello")] * 2

    def test_client_no_context_takeover_resets_the_window(self):
        p = server(deflate=DeflateParams(client_no_context_takeover=True))
        p.receive_data(frame(1, HELLO, rsv=RSV1) + frame(1, HELLO, rsv=RSV1))
        assert drain(p) == [MessageReceived(1, b"Hello")] * 2

    def test_rsv1_on_a_continuation_fails(self, feed):
        p = server(deflate=DeflateParams())
        data = frame(1, HELLO[:3], rsv=RSV1, fin=False) + frame(0, HELLO[3:], rsv=RSV1)
        assert_failed(p, feed(p, data), 1002)

    def test_rsv1_on_an_uncompressed_messages_continuation_fails(self):
        p = server(deflate=DeflateParams())
        p.receive_data(frame(2, b"a", fin=False) + frame(0, b"b", rsv=RSV1))
        assert_failed(p, drain(p), 1002)

    @pytest.mark.parametrize("opcode", [8, 9, 10])
    def test_rsv1_on_a_control_frame_fails(self, opcode):
        p = server(deflate=DeflateParams())
        p.receive_data(frame(opcode, b"", rsv=RSV1))
        assert_failed(p, drain(p), 1002)

    @pytest.mark.parametrize("rsv", [0x20, 0x10, 0x60])
    def test_other_reserved_bits_still_fail(self, rsv):
        p = server(deflate=DeflateParams())
        p.receive_data(frame(1, HELLO, rsv=rsv))
        assert_failed(p, drain(p), 1002)

    def test_rsv1_without_deflate_fails(self):
        p = server()
        p.receive_data(frame(1, HELLO, rsv=RSV1))
        assert_failed(p, drain(p), 1002)

    def test_fragmented_with_interleaved_pings(self, feed):
        p = server(deflate=DeflateParams())
        text = "fragmented ünïcode text, " * 40
        payload = deflate_payload(text.encode())
        a, b = len(payload) // 3, 2 * len(payload) // 3
        data = (frame(1, payload[:a], rsv=RSV1, fin=False) + frame(9, b"p1")
                + frame(0, payload[a:b], fin=False) + frame(9, b"p2") + frame(0, payload[b:]))
        events = feed(p, data)
        assert events == [PingReceived(b"p1"), PingReceived(b"p2"), MessageReceived(1, text.encode())]
        assert [f[:2] for f in frames_out(p)] == [(10, b"p1"), (10, b"p2")]

    def test_empty_fragments(self, feed):
        p = server(deflate=DeflateParams())
        data = frame(2, b"", rsv=RSV1, fin=False) + frame(0, HELLO, fin=False) + frame(0, b"")
        assert feed(p, data) == [MessageReceived(2, b"Hello")]

    def test_invalid_utf8_after_inflation(self, feed):
        p = server(deflate=DeflateParams())
        events = feed(p, frame(1, deflate_payload(b"ok \xff\xfe"), rsv=RSV1))
        assert isinstance(events[-2].error, InvalidUTF8)
        assert_failed(p, events, 1007)

    def test_invalid_utf8_fails_before_the_message_ends(self):
        p = server(deflate=DeflateParams())
        c = zlib.compressobj(wbits=-15)
        first = c.compress(b"abc\xc0\xaf") + c.flush(zlib.Z_SYNC_FLUSH)
        p.receive_data(frame(1, first, rsv=RSV1, fin=False))
        assert_failed(p, drain(p), 1007)

    def test_utf8_split_across_inflated_pieces(self, feed):
        p = server(deflate=DeflateParams())
        c = zlib.compressobj(wbits=-15)
        one = c.compress("é".encode()[:1]) + c.flush(zlib.Z_SYNC_FLUSH)
        two = (c.compress("é".encode()[1:]) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
        data = frame(1, one, rsv=RSV1, fin=False) + frame(0, two)
        assert feed(p, data) == [MessageReceived(1, "é".encode())]

    def test_invalid_deflate_data_fails(self):
        p = server(deflate=DeflateParams())
        p.receive_data(frame(2, b"\xff\xff\xff\xff", rsv=RSV1))
        assert_failed(p, drain(p), 1002)

    def test_limit_counts_inflated_bytes(self, feed):
        p = server(max_payload_size=1000, deflate=DeflateParams())
        ok = deflate_payload(b"a" * 1000)
        assert len(ok) < 100
        assert feed(p, frame(2, ok, rsv=RSV1)) == [MessageReceived(2, b"a" * 1000)]
        p = server(max_payload_size=1000, deflate=DeflateParams())
        events = feed(p, frame(2, deflate_payload(b"a" * 1001), rsv=RSV1))
        assert isinstance(events[-2].error, PayloadTooBig)
        assert_failed(p, events, 1009)

    def test_incompressible_message_at_the_limit(self):
        # Its compressed form is a little larger than the limit: still fine.
        data = os.urandom(1000)
        payload = deflate_payload(data)
        assert len(payload) > 1000
        p = server(max_payload_size=1000, deflate=DeflateParams())
        p.receive_data(frame(2, payload, rsv=RSV1))
        assert drain(p) == [MessageReceived(2, data)]

    def test_limit_counts_all_fragments_inflated(self):
        p = server(max_payload_size=1000, deflate=DeflateParams())
        c = zlib.compressobj(wbits=-15)
        one = c.compress(b"x" * 600) + c.flush(zlib.Z_SYNC_FLUSH)
        two = (c.compress(b"y" * 600) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
        p.receive_data(frame(2, one, rsv=RSV1, fin=False) + frame(0, two))
        assert_failed(p, drain(p), 1009)

    def test_compression_bomb_is_bounded(self):
        # 100 MiB of zeros, ~100 KB compressed, against a 1 MiB limit: 1009
        # quickly, and evws never holds more than about the limit.
        import tracemalloc

        c = zlib.compressobj(wbits=-15)
        zeros = bytes(1 << 20)
        bomb = b"".join(c.compress(zeros) for _ in range(100)) + c.flush(zlib.Z_SYNC_FLUSH)
        bomb = bomb[:-4]
        assert len(bomb) < 200_000
        data = frame(2, bomb, rsv=RSV1)
        p = server(max_payload_size=1 << 20, deflate=DeflateParams())
        tracemalloc.start()
        try:
            started = time.perf_counter()
            p.receive_data(data)
            events = drain(p)
            elapsed = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert_failed(p, events, 1009)
        assert peak < 8 << 20, peak
        assert elapsed < 2.0

    def test_compression_bomb_in_small_fragments_is_bounded(self):
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        bomb = c.compress(bytes(20 << 20)) + c.flush(zlib.Z_SYNC_FLUSH)
        p = server(max_payload_size=1 << 20, deflate=DeflateParams())
        pieces = [bomb[i:i + 1000] for i in range(0, len(bomb), 1000)]
        data = frame(2, pieces[0], rsv=RSV1, fin=False) + b"".join(
            frame(0, piece, fin=False) for piece in pieces[1:])
        p.receive_data(data)
        assert_failed(p, drain(p), 1009)

    def test_header_size_is_not_checked_for_compressed_messages(self):
        # The inflated size is what counts; the header alone decides nothing.
        p = server(max_payload_size=10, deflate=DeflateParams())
        p.receive_data(b"\xc2\xfe" + struct.pack("!H", 100) + KEY)
        assert drain(p) == [] and p.state == OPEN

    def test_sent_messages_are_compressed_with_rsv1(self):
        p = server(deflate=DeflateParams())
        p.send_text("Hello")
        p.send_message(b"Hello", 2)
        p.send_binary(b"")
        p.send_ping(b"ping")
        out = raw_frames(p.data_to_send())
        # 7.2.3.1 and 7.2.3.2 (shared window), the empty message (7.2.3.6).
        assert out == [(RSV1, 1, True, HELLO), (RSV1, 2, True, bytes.fromhex("f200110000")),
                       (RSV1, 2, True, b"\x00"), (0, 9, True, b"ping")]

    def test_server_no_context_takeover_when_sending(self):
        p = server(deflate=DeflateParams(server_no_context_takeover=True))
        p.send_text("Hello")
        p.send_text("Hello")
        assert [f[3] for f in raw_frames(p.data_to_send())] == [HELLO, HELLO]

    def test_fragmented_send_sets_rsv1_on_the_first_frame_only(self):
        p = client(deflate=DeflateParams())
        text = "stream me " * 100
        p.send_text(text[:300], fin=False)
        p.send_ping(b"between")
        p.send_continuation(text[300:700], fin=False)
        p.send_continuation(text[700:], fin=True)
        out = raw_frames(p.data_to_send())
        assert [f[:3] for f in out] == [(RSV1, 1, False), (0, 9, True), (0, 0, False), (0, 0, True)]
        assert inflate_all(out[0][3] + out[2][3] + out[3][3]) == text.encode()

    def test_client_window_bits_when_sending(self):
        p = client(deflate=DeflateParams(client_max_window_bits=9))
        data = os.urandom(600) * 10
        p.send_binary(data)
        (frame_,) = raw_frames(p.data_to_send())
        assert inflate_all(frame_[3], wbits=9) == data

    @pytest.mark.parametrize("params", [
        DeflateParams(),
        DeflateParams(True, True, 8, 8),
        DeflateParams(False, True, 10, 12),
    ])
    def test_round_trip_between_two_protocols(self, params):
        s = server(deflate=params)
        c = client(deflate=params)
        messages = [(1, "héllo ".encode() * 50), (2, os.urandom(5000)), (2, b""), (1, b"x" * 70000)]
        for opcode, payload in messages:
            c.send_message(payload, opcode)
            s.send_message(payload, opcode)
        s.receive_data(b"".join(c.data_to_send()))
        c.receive_data(b"".join(s.data_to_send()))
        expected = [MessageReceived(op, data) for op, data in messages]
        assert drain(s) == expected
        assert drain(c) == expected


# ------------------------------------------------- the I/O layer's hot-path seams


def test_encode_message_hands_back_the_frame_send_message_would_queue():
    direct, queued = WebSocketProtocol(SERVER), WebSocketProtocol(SERVER)
    for payload, opcode in ((b"x" * 5, 2), (b"", 1), (b"y" * 125, 2), (b"z" * 126, 1),
                            (b"w" * 4096, 2), (b"v" * 16383, 1)):
        frame_bytes = direct.encode_message(payload, opcode)
        queued.send_message(payload, opcode)
        assert type(frame_bytes) is bytes   # one buffer below SEPARATE_PAYLOAD
        assert frame_bytes == b"".join(queued.data_to_send())
        assert not direct.pending_output and direct.data_to_send() == []
    for size in (16384, 65535, 65536, 1 << 20):
        payload = bytes(range(256)) * (size // 256) + b"t" * (size % 256)
        parts = direct.encode_message(payload, 2)
        queued.send_message(payload, 2)
        # Header and payload apart, the payload itself (not a copy), as send_message queues them.
        assert isinstance(parts, list) and parts[1] is payload
        assert parts == queued.data_to_send()
        assert decode_output(parts) == [(2, payload, True, None)]
        assert not direct.pending_output


def test_encode_message_queues_when_it_cannot_hand_the_frame_back():
    p = WebSocketProtocol(SERVER)
    p.send_ping(b"p")  # output already queued: the message must go after it
    assert p.encode_message(b"m", 2) is None
    assert decode_output(p.data_to_send()) == [(9, b"p", True, None), (2, b"m", True, None)]
    p.send_ping(b"p")
    assert p.encode_message(b"b" * 16384, 2) is None  # behind queued output: queued too, apart
    assert [len(c) for c in p.data_to_send()] == [3, 4, 16384]
    assert p.encode_message(bytearray(b"ba"), 2) is None  # not bytes: the general path
    assert decode_output(p.data_to_send()) == [(2, b"ba", True, None)]
    client = WebSocketProtocol(CLIENT)  # masked: never the short path
    assert client.encode_message(b"c", 1) is None and client.pending_output
    p.send_binary(b"first", fin=False)  # a fragmented message is being sent
    p.data_to_send()
    with pytest.raises(RuntimeError):
        p.encode_message(b"m", 2)
    p.send_continuation(b"last", fin=True)
    p.data_to_send()
    assert p.encode_message(b"m", 2) == b"\x82\x01m"  # open again
    p.send_close(1000)
    p.data_to_send()
    with pytest.raises(ConnectionClosed):
        p.encode_message(b"m", 2)


def test_pending_input_is_set_while_parsing_paused_after_a_message():
    p = WebSocketProtocol(SERVER)
    p.receive_data(frame(2, b"one") + frame(2, b"two"))
    assert p.pending_input is not None  # paused after "one"
    assert p.events_received() == [MessageReceived(2, b"one")]
    assert p.events_received() == [MessageReceived(2, b"two")]
    assert p.pending_input is None
    assert p.events_received() == []
    p.receive_data(frame(9, b"hi") + frame(1, b"t"))  # a Ping pauses too; its Pong is output
    assert p.pending_input is not None and p.pending_output
    assert p.events_received() == [PingReceived(b"hi")]
    assert p.events_received() == [MessageReceived(1, b"t")] and p.pending_input is None


def test_encode_frame_bytes_leaves_the_frames_to_the_caller_only_when_nothing_waits():
    frames = (b"\x82\x02hi", b"\x81\x01x")
    p = WebSocketProtocol(SERVER)
    assert p.encode_frame_bytes(frames) is True
    assert not p.pending_output and p.data_to_send() == []  # nothing queued: the caller writes
    p.send_ping(b"p")  # output already queued: the frames must go after it
    assert p.encode_frame_bytes(frames) is False
    assert decode_output(p.data_to_send()) == [(9, b"p", True, None), (2, b"hi", True, None),
                                               (1, b"x", True, None)]
    with pytest.raises(ValueError):
        WebSocketProtocol(CLIENT).encode_frame_bytes(frames)  # masked: never as they are
    p.send_close(1000)
    with pytest.raises(ConnectionClosed):
        p.encode_frame_bytes(frames)
