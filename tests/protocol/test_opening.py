"""The opening handshake as the CONNECTING state of ServerProtocol / ClientProtocol.

No sockets: bytes in, events and bytes out, fed whole, byte by byte, and with
the first frame right behind the head (it must be parsed once OPEN, from the
same buffer).
"""

from __future__ import annotations

import pytest

from evws.errors import HandshakeError
from evws.protocol.client import ClientProtocol
from evws.protocol.deflate import DeflateConfig
from evws.protocol.events import (
    HandshakeFailed,
    MessageReceived,
    RequestReceived,
    ResponseReceived,
)
from evws.protocol.handshake import Response
from evws.protocol.server import ServerProtocol
from evws.protocol.websocket import CLOSED, CONNECTING, OPEN
from tests import wire

FIRST_FRAME = wire.frame(wire.TEXT, b"hello")


def feed(protocol, data: bytes, how: str) -> list:
    """Feed ``data`` whole or byte by byte; return the events of CONNECTING."""
    events = []
    if how == "bytewise":
        for i in range(len(data)):
            protocol.receive_data(data[i:i + 1])
            events += protocol.events_received()
    else:
        protocol.receive_data(data)
        events += protocol.events_received()
    return events


HOWS = ["whole", "bytewise"]


# -- server ------------------------------------------------------------------------


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("trailing", [b"", FIRST_FRAME], ids=["head-only", "with-frame"])
def test_server_request_then_frames_from_the_same_buffer(how, trailing):
    proto = ServerProtocol()
    assert proto.state is CONNECTING and not proto.input_open
    events = feed(proto, wire.upgrade_request("/chat?x=1") + trailing, how)
    assert [type(e) for e in events] == [RequestReceived]
    request, response = events[0].request, events[0].response
    assert request.path == "/chat" and request.query == "x=1" and response.status == 101
    assert proto.request is request
    assert proto.data_to_send() == []  # nothing is written before the application answers
    proto.accept(response)
    assert proto.state is OPEN and proto.input_open
    out = proto.data_to_send()
    assert out[0].startswith(b"HTTP/1.1 101 ") and wire.ACCEPT.encode() in out[0]
    messages = proto.events_received()
    if trailing:
        assert messages == [MessageReceived(1, b"hello")]
    else:
        assert messages == []
        proto.receive_data(FIRST_FRAME)
        assert proto.events_received() == [MessageReceived(1, b"hello")]


@pytest.mark.parametrize("how", HOWS)
def test_server_bad_request_fails_with_a_ready_answer(how):
    proto = ServerProtocol()
    events = feed(proto, wire.upgrade_request(version="8"), how)
    assert [type(e) for e in events] == [HandshakeFailed]
    error = events[0].error
    assert error.status == 426 and b"Sec-WebSocket-Version: 13" in error.response
    assert proto.state is CLOSED and proto.data_to_send() == []
    proto.receive_data(FIRST_FRAME)  # ignored from now on
    assert proto.events_received() == []
    proto.reject(error.response)  # the I/O layer chose to answer
    assert proto.data_to_send() == [error.response, b""]


def test_server_head_too_large_is_431_before_buffering_more():
    proto = ServerProtocol(max_handshake_size=256)
    proto.receive_data(b"GET / HTTP/1.1\r\nX: " + b"a" * 1000)
    (event,) = proto.events_received()
    assert isinstance(event, HandshakeFailed) and event.error.status == 431


def test_server_eof_before_the_head_is_complete():
    proto = ServerProtocol()
    proto.receive_data(b"GET / HTTP/1.1\r\n")
    proto.receive_eof()
    (event,) = proto.events_received()
    assert isinstance(event, HandshakeFailed) and event.error.status == 400
    assert b"400" in event.error.response


def test_server_negotiates_deflate_in_the_default_response():
    proto = ServerProtocol(deflate_config=DeflateConfig())
    proto.receive_data(wire.upgrade_request(
        extra="Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"))
    (event,) = proto.events_received()
    assert event.response.extensions == "permessage-deflate"
    proto.accept(event.response)
    assert proto.deflate is not None and proto.allowed_rsv_bits


def test_server_declines_deflate_when_configured_off():
    proto = ServerProtocol(deflate_config=None)
    proto.receive_data(wire.upgrade_request(extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"))
    (event,) = proto.events_received()
    assert event.response.extensions is None
    proto.accept(event.response)
    assert proto.deflate is None


def test_server_accepts_a_raw_response_and_reads_its_subprotocol():
    proto = ServerProtocol()
    proto.receive_data(wire.upgrade_request(extra="Sec-WebSocket-Protocol: chat\r\n"))
    (event,) = proto.events_received()
    raw = (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Accept: {wire.ACCEPT}\r\nSec-WebSocket-Protocol: chat\r\n\r\n")
    proto.accept(raw)
    assert proto.subprotocol == "chat" and proto.data_to_send() == [raw.encode()]


def test_server_unserializable_response_is_a_500_and_changes_nothing():
    proto = ServerProtocol()
    proto.receive_data(wire.upgrade_request())
    (event,) = proto.events_received()
    bad = Response(key=event.response.key, headers={"X": "a\r\nb"})
    with pytest.raises(HandshakeError) as info:
        proto.accept(bad)
    assert info.value.status == 500 and proto.state is CONNECTING
    proto.reject(info.value.response)
    assert proto.data_to_send()[-1] == b""


def test_server_answers_once():
    proto = ServerProtocol()
    proto.receive_data(wire.upgrade_request())
    (event,) = proto.events_received()
    proto.accept(event.response)
    with pytest.raises(RuntimeError):
        proto.accept(event.response)
    with pytest.raises(RuntimeError):
        proto.reject(b"")


# -- client ------------------------------------------------------------------------


def answer_101(key: str, extra: str = "") -> bytes:
    return (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {wire.accept_for(key)}\r\n{extra}\r\n").encode()


def test_client_request_is_the_first_output():
    proto = ClientProtocol("example.com", "/chat", subprotocols=["v2", "v1"], key=wire.KEY)
    (request,) = proto.data_to_send()
    assert request.startswith(b"GET /chat HTTP/1.1\r\n")
    assert b"Sec-WebSocket-Key: " + wire.KEY.encode() in request
    assert b"Sec-WebSocket-Protocol: v2, v1" in request
    assert proto.state is CONNECTING


def test_client_bad_header_raises_at_once():
    with pytest.raises(ValueError):
        ClientProtocol("example.com", "/", headers=[("X", "a\r\nb")])


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("trailing", [b"", wire.frame(wire.TEXT, b"hi", mask=None)],
                         ids=["head-only", "with-frame"])
def test_client_101_opens_then_frames_from_the_same_buffer(how, trailing):
    proto = ClientProtocol("example.com", subprotocols=["chat"])
    proto.data_to_send()
    events = feed(proto, answer_101(proto.key, "Sec-WebSocket-Protocol: chat\r\n") + trailing, how)
    assert type(events[0]) is ResponseReceived
    assert proto.state is OPEN and proto.subprotocol == "chat" and proto.response.status == 101
    # Fed byte by byte, the frame's bytes came after the client opened.
    messages = events[1:] + proto.events_received()
    assert messages == ([MessageReceived(1, b"hi")] if trailing else [])


@pytest.mark.parametrize("how", HOWS)
def test_client_wrong_accept_fails(how):
    proto = ClientProtocol("example.com")
    events = feed(proto, answer_101("c29tZSBvdGhlciBrZXkhIQ=="), how)
    assert [type(e) for e in events] == [HandshakeFailed]
    assert "Sec-WebSocket-Accept" in str(events[0].error) and not proto.refused
    assert proto.state is CLOSED


@pytest.mark.parametrize("how", HOWS)
def test_client_refusal_with_its_body(how):
    proto = ClientProtocol("example.com")
    body = b"go away"
    answer = (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\nX-Why: test\r\n\r\n" + body)
    events = feed(proto, answer, how)
    assert [type(e) for e in events] == [HandshakeFailed]
    error = events[0].error
    assert proto.refused and error.status == 403 and error.body == body
    assert error.headers.get("X-Why") == "test"


def test_client_refusal_body_to_eof_and_bounded():
    proto = ClientProtocol("example.com", max_error_body=4)
    proto.receive_data(b"HTTP/1.1 500 Oops\r\n\r\nabcdefgh")
    (event,) = proto.events_received()
    assert event.error.status == 500 and event.error.body == b"abcd"


def test_client_refusal_so_far_for_a_timeout():
    proto = ClientProtocol("example.com")
    proto.receive_data(b"HTTP/1.1 503 Busy\r\nContent-Length: 100\r\n\r\npart")
    assert proto.events_received() == []
    error = proto.refusal()
    assert error is not None and error.status == 503 and error.body == b"part"


def test_client_eof_before_the_answer():
    proto = ClientProtocol("example.com")
    proto.receive_data(b"HTTP/1.1 101 Switching")
    proto.receive_eof()
    (event,) = proto.events_received()
    assert isinstance(event, HandshakeFailed) and event.error.status == 400
    assert proto.refusal() is None


def test_client_deflate_answer_is_checked_and_applied():
    proto = ClientProtocol("example.com", deflate_config=DeflateConfig())
    (request,) = proto.data_to_send()
    assert b"permessage-deflate" in request
    proto.receive_data(answer_101(proto.key, "Sec-WebSocket-Extensions: permessage-deflate\r\n"))
    assert [type(e) for e in proto.events_received()] == [ResponseReceived]
    assert proto.deflate is not None


def test_client_deflate_not_offered_but_answered_fails():
    proto = ClientProtocol("example.com", deflate_config=None)
    proto.receive_data(answer_101(proto.key, "Sec-WebSocket-Extensions: permessage-deflate\r\n"))
    (event,) = proto.events_received()
    assert isinstance(event, HandshakeFailed) and event.error.status == 101


def test_both_ends_talk_through_their_protocols_alone():
    """A server and a client protocol wired to each other, no I/O at all."""
    server, client = ServerProtocol(deflate_config=DeflateConfig()), ClientProtocol(
        "example.com", deflate_config=DeflateConfig())
    server.receive_data(b"".join(client.data_to_send()))
    (event,) = server.events_received()
    server.accept(event.response)
    client.receive_data(b"".join(server.data_to_send()))
    assert [type(e) for e in client.events_received()] == [ResponseReceived]
    client.send_text("compressed both ways")
    server.receive_data(b"".join(client.data_to_send()))
    assert server.events_received() == [MessageReceived(1, b"compressed both ways")]
