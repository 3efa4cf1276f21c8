"""Property tests (hypothesis) of the handshake and frame parsers.

Two properties, for each parser:

- arbitrary bytes, split at arbitrary points, never raise anything but evws'
  own errors (and the frame parser raises nothing at all: it turns a
  protocol error into a ConnectionFailed event and a Close frame);
- valid input split anywhere parses to the same result as the input fed
  whole.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evws.errors import HandshakeError, WebSocketError
from evws.protocol.events import ConnectionFailed, ConnectionLost, MessageReceived
from evws.protocol.handshake import check_request, parse_request
from evws.protocol.http import RequestHeadParser, ResponseHeadParser
from evws.protocol.websocket import CLIENT, SERVER, WebSocketProtocol

SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length, sorted)."""
    if not data:
        return [data]
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])] or [data]


cuts = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12)

# Bytes that look a little like HTTP, so the parser gets past the first line.
http_ish = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b"\r\n", b"\r\n\r\n", b"\n", b"\r", b":", b" ", b"\t",
                         b"GET / HTTP/1.1", b"HTTP/1.1 101 Switching", b"Host: x",
                         b"Upgrade: websocket", b"Connection: Upgrade", b"\x00", b"\xff",
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                         b"Sec-WebSocket-Version: 13", b"Content-Length: 1"]),
    ),
    max_size=30,
).map(b"".join)


def feed_head(parser, chunks):
    """Feed chunks until a head comes out; return (head, leftover) or raise."""
    for i, chunk in enumerate(chunks):
        head = parser.feed(chunk)
        if head is not None:
            return head, parser.leftover + b"".join(chunks[i + 1:])
    return None, b""


class TestHandshakeParser:
    @SETTINGS
    @given(data=st.one_of(st.binary(max_size=600), http_ish), cuts=cuts,
           max_size=st.integers(min_value=16, max_value=4096))
    def test_arbitrary_bytes_raise_only_handshake_errors(self, data, cuts, max_size):
        for parser in (RequestHeadParser(max_size=max_size, max_headers=8),
                       ResponseHeadParser(max_size=max_size, max_headers=8)):
            try:
                head, _ = feed_head(parser, split(data, cuts))
                if head is not None and isinstance(parser, RequestHeadParser):
                    check_request(parse_request(head))
            except HandshakeError as exc:
                assert 400 <= exc.status < 500
            # anything else propagates and fails the test

    token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-",
                    min_size=1, max_size=12)
    value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                    max_size=30).map(str.strip)

    @SETTINGS
    @given(path=st.text(alphabet="abc/?=&%0123456789", max_size=20),
           fields=st.lists(st.tuples(token, value), max_size=10),
           trailing=st.binary(max_size=50), cuts=cuts)
    def test_valid_request_split_anywhere_parses_the_same(self, path, fields, trailing, cuts):
        lines = [f"GET /{path} HTTP/1.1", "Host: example.com", "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                 "Sec-WebSocket-Version: 13"]
        lines += [f"X-{name}: {val}" for name, val in fields]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + trailing
        whole, whole_rest = feed_head(RequestHeadParser(), [data])
        parts, parts_rest = feed_head(RequestHeadParser(), split(data, cuts))
        assert whole is not None and parts == whole and parts_rest == whole_rest == trailing
        request = parse_request(parts)
        check_request(request)
        assert request.resource_name == f"/{path}"
        assert [(n, v) for n, v in request.headers.items() if n.startswith("X-")] == \
            [(f"X-{n}", v) for n, v in fields]


# -- frames ------------------------------------------------------------------------


def drain(proto, out):
    """Collect events until the protocol has no more (it pauses after each message)."""
    while True:
        events = proto.events_received()
        if not events:
            return
        out.extend(events)


def run_protocol(side, chunks, **options):
    proto = WebSocketProtocol(side, **options)
    events = []
    sent = []
    for chunk in chunks:
        proto.receive_data(chunk)  # must never raise
        drain(proto, events)
        sent += proto.data_to_send()
    proto.receive_eof()
    drain(proto, events)
    sent += proto.data_to_send()
    return events, sent


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR with the repeated key, as one big integer (fast enough for 70 kB)."""
    n = len(payload)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes, fin: bool, key: bytes | None) -> bytes:
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    bit = 0x80 if key is not None else 0
    if n < 126:
        head = struct.pack("!BB", first, bit | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, bit | 127, n)
    return head + (key + mask(payload, key) if key is not None else payload)


@st.composite
def conversations(draw):
    """Valid client->server bytes: messages (maybe fragmented, pings between
    fragments), then perhaps a Close; and the messages they must parse to."""
    messages = []
    data = b""
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        opcode = draw(st.sampled_from([1, 2]))
        if opcode == 1:
            payload = draw(st.text(max_size=300)).encode("utf-8")
        else:
            payload = draw(st.binary(max_size=300))
        size = draw(st.sampled_from([0, 1, 125, 126, 300, 70000])) if draw(st.booleans()) else None
        if size == 70000:  # the 64-bit length form
            payload = b"x" * 70000 if opcode == 2 else ("é" * 35000).encode()
        elif size is not None:
            payload = (payload * (size // max(len(payload), 1) + 1))[:size] if payload else b""
            if opcode == 1:
                payload = payload.decode("utf-8", "ignore").encode("utf-8")
        pieces = draw(st.integers(min_value=1, max_value=4))
        bounds = sorted(draw(st.lists(st.integers(0, len(payload)), min_size=pieces - 1,
                                      max_size=pieces - 1)))
        parts = [payload[a:b] for a, b in zip([0] + bounds, bounds + [len(payload)])]
        for i, part in enumerate(parts):
            key = draw(st.binary(min_size=4, max_size=4))
            data += frame(opcode if i == 0 else 0, part, i == len(parts) - 1, key)
            if i < len(parts) - 1 and draw(st.booleans()):
                data += frame(9, draw(st.binary(max_size=125)), True,
                              draw(st.binary(min_size=4, max_size=4)))
        messages.append((opcode, payload))
    if draw(st.booleans()):
        data += frame(8, struct.pack("!H", 1000) + b"bye", True, b"\x01\x02\x03\x04")
    return data, messages


class TestFrameParser:
    @SETTINGS
    @given(data=st.binary(max_size=400), cuts=cuts, side=st.sampled_from([SERVER, CLIENT]),
           limit=st.sampled_from([None, 0, 10, 1 << 20]), fragments=st.sampled_from([None, 1, 3]))
    def test_arbitrary_bytes_never_raise(self, data, cuts, side, limit, fragments):
        events, sent = run_protocol(side, split(data, cuts), max_payload_size=limit,
                                    max_fragments=fragments)
        # It always ends, exactly once, and a failure is a typed evws error.
        assert sum(isinstance(e, ConnectionLost) for e in events) == 1
        assert isinstance(events[-1], ConnectionLost)
        for event in events:
            if isinstance(event, ConnectionFailed):
                assert isinstance(event.error, WebSocketError)
                assert event.code in (1002, 1007, 1009)
        assert sent[-1] == b""  # and TCP is ended

    @SETTINGS
    @given(conversation=conversations(), cuts=cuts)
    def test_valid_frames_split_anywhere_give_the_same_messages(self, conversation, cuts):
        data, messages = conversation
        whole, whole_sent = run_protocol(SERVER, [data], max_payload_size=None)
        parts, parts_sent = run_protocol(SERVER, split(data, cuts), max_payload_size=None)
        got = [(e.opcode, e.payload) for e in parts if isinstance(e, MessageReceived)]
        assert got == messages
        assert parts == whole
        assert b"".join(parts_sent) == b"".join(whole_sent)
        assert not any(isinstance(e, ConnectionFailed) for e in parts)
