"""evws.connection_pair(): two handshaken Connections over a socketpair, no TCP."""

from __future__ import annotations

import socket

import pytest

import evws
from tests.conftest import TIMEOUT, run_until


def test_pair_exchanges_messages_both_ways(loop):
    server_side, client_side = evws.connection_pair(loop=loop)
    assert not server_side.masked and client_side.masked
    assert server_side.stream.sock.family == socket.AF_UNIX  # no TCP at all
    to_server, to_client = [], []
    server_side.on("each_message", lambda c, m: to_server.append(m.decoded_body))
    client_side.on("each_message", lambda c, m: to_client.append(m.body))
    client_side.send("from client")
    server_side.send(b"from server")
    run_until(loop, lambda: to_server and to_client)
    assert to_server == ["from client"] and to_client == [b"from server"]


def test_unit_testing_a_handler(loop):
    """The headline use: drive a real handler through a real connection."""
    def install_handler(conn):
        @conn.on("each_message")
        def shout(conn, message):
            if message.decoded_body == "quit":
                conn.close(4000, "asked to")
            else:
                conn.send(message.decoded_body.upper())

    server_side, client_side = evws.connection_pair(loop=loop)
    install_handler(server_side)
    replies, finished = [], []
    client_side.on("each_message", lambda c, m: replies.append(m.decoded_body))
    client_side.on("finish", lambda c: finished.append(c))
    client_side.send("hi")
    run_until(loop, lambda: replies)
    client_side.send("quit")
    run_until(loop, lambda: finished and server_side.finished)
    assert replies == ["HI"]
    assert client_side.close_code == 4000 and client_side.close_reason == "asked to"


def test_options_reach_both_ends(loop):
    def handshake(request, response):
        response.subprotocol = request.subprotocols[-1]
        return response

    server_side, client_side = evws.connection_pair(
        loop=loop, handshake=handshake, subprotocols=["a", "b"], max_payload_size=100,
        resource="/chat?room=1")
    assert server_side.subprotocol == client_side.subprotocol == "b"
    assert server_side.request.resource_name == "/chat?room=1"
    assert server_side.max_payload_size == client_side.max_payload_size == 100
    errors = []
    server_side.on("parse_error", lambda c, text: errors.append(text))
    client_side.send(b"x" * 101)
    run_until(loop, lambda: client_side.finished)
    assert client_side.close_code == 1009 and errors


def test_rejected_handshake_raises_and_cleans_up(loop):
    def handshake(request, response):
        raise ValueError("no")

    with pytest.raises(evws.HandshakeError) as info:
        evws.connection_pair(loop=loop, handshake=handshake, timeout=TIMEOUT)
    assert info.value.status == 403
    assert loop.pending() == []


def test_rejected_handshake_leaves_no_stale_watcher(loop):
    """Regression: the refused pair closed the client's socket while its Stream was still
    closing (watching the fd, its linger timer running); the next socket given that fd
    number could not be watched ("fd N already has an active 'r' watcher")."""
    def handshake(request, response):
        raise ValueError("no")

    for _ in range(3):
        with pytest.raises(evws.HandshakeError):
            evws.connection_pair(loop=loop, handshake=handshake, timeout=TIMEOUT)
        assert loop.pending() == []
    server_side, client_side = evws.connection_pair(loop=loop)  # the same fd numbers again
    client_side.close()
    run_until(loop, lambda: client_side.finished and server_side.finished)
    assert client_side.close_code == 1000


def test_pair_from_inside_a_callback_is_refused(loop):
    errors = []

    def inside():
        try:
            evws.connection_pair(loop=loop)
        except evws.RecursiveWaitError as exc:
            errors.append(exc)
    loop.call_soon(inside)
    run_until(loop, lambda: errors)


def test_pair_on_the_default_loop():
    server_side, client_side = evws.connection_pair()
    got = []
    server_side.on("each_message", lambda c, m: got.append(m.body))
    client_side.send(b"default")
    run_until(evws.get_loop(), lambda: got)
    client_side.close()
    run_until(evws.get_loop(), lambda: client_side.finished and server_side.finished)
    assert client_side.close_code == 1000


@pytest.mark.parametrize("compression", ["deflate", None])
def test_compression_negotiated_or_not(loop, compression):
    server_side, client_side = evws.connection_pair(loop=loop, compression=compression)
    assert (client_side.protocol.deflate is not None) == (compression is not None)
    assert (server_side.protocol.deflate is not None) == (compression is not None)
    got = []
    server_side.on("each_message", lambda c, m: got.append(m.body))
    client_side.send(b"a" * 100000)
    run_until(loop, lambda: got)
    assert got == [b"a" * 100000]


def test_deflate_config_reaches_the_offer(loop):
    from evws.protocol.deflate import DeflateConfig
    config = DeflateConfig(client_no_context_takeover=True, server_max_window_bits=10)
    server_side, client_side = evws.connection_pair(loop=loop, compression=config)
    assert "server_max_window_bits=10" in server_side.request.headers["Sec-WebSocket-Extensions"]
    params = client_side.protocol.deflate
    assert params.client_no_context_takeover and params.server_max_window_bits == 10
