"""``Options``: one frozen, checked set of settings shared by Server, Client and connection_pair."""

from __future__ import annotations

import dataclasses

import pytest

import evws
from evws.options import DEFAULTS, Options
from evws.protocol.deflate import DeflateConfig


def test_frozen_and_checked():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.close_timeout = 1.0  # type: ignore[misc]
    for bad in ({"max_payload_size": -1}, {"high_water": 10, "low_water": 20},
                {"close_timeout": -1}, {"ping_timeout": "soon"}, {"max_handshake_size": 0},
                {"deflate": "deflate"}, {"max_redirects": -1}, {"max_redirects": None}):
        with pytest.raises(ValueError):
            Options(**bad)


def test_low_water_follows_high_water():
    assert Options(high_water=4096, low_water=None).low_water == 4096
    assert Options(high_water=None).low_water is None
    assert DEFAULTS.replace(high_water=1 << 20).low_water == DEFAULTS.low_water


def test_one_source_of_defaults():
    """Server, Client and Connection read their defaults from Options."""
    server = evws.Server(loop=evws.Loop())
    assert server.options == DEFAULTS
    for name in ("max_payload_size", "max_fragments", "close_timeout", "ping_interval",
                 "ping_timeout", "high_water", "low_water", "max_handshake_size"):
        assert evws.client.DEFAULTS[name] == getattr(DEFAULTS, name), name
        assert getattr(server, name) == getattr(DEFAULTS, name), name
    assert evws.client.DEFAULTS["timeout"] == DEFAULTS.handshake_timeout
    assert evws.client.DEFAULTS["max_redirects"] == DEFAULTS.max_redirects == 10


def test_bad_server_option_raises_at_construction():
    with pytest.raises(ValueError):
        evws.Server(high_water=100, low_water=200, loop=evws.Loop())


def test_server_connections_share_its_options(loop):
    from tests.conftest import open_connection
    server = evws.Server(loop=loop, max_fragments=3, ping_interval=None, high_water=1000,
                         low_water=10)
    conn, _results, peer = open_connection(loop, server)
    assert conn.options is server.options
    assert (conn.high_water, conn.low_water, conn.ping_interval) == (1000, 10, None)
    assert conn.protocol.max_fragments == 3
    peer.sock.close()


def test_connection_pair_honours_every_option(loop):
    server_side, client_side = evws.connection_pair(
        loop, max_fragments=2, high_water=5000, low_water=100, ping_interval=None,
        compression=DeflateConfig(server_max_window_bits=10), max_error_body=10)
    try:
        for conn in (server_side, client_side):
            assert conn.protocol.max_fragments == 2
            assert (conn.high_water, conn.low_water, conn.ping_interval) == (5000, 100, None)
            assert conn.protocol.deflate is not None
            assert conn.protocol.deflate.server_max_window_bits == 10
        assert server_side.options.max_error_body == 10
        # max_fragments reaches the parser: three fragments fail with 1009.
        errors = []
        server_side.on("parse_error", lambda c, text: errors.append(text))
        proto = client_side.protocol
        proto.send_binary(b"a", fin=False)
        proto.send_continuation(b"b", fin=False)
        proto.send_continuation(b"c", fin=True)
        client_side.stream.writev(proto.data_to_send())
        from tests.conftest import run_until
        run_until(loop, lambda: server_side.finished)
        assert server_side.close_code in (1006, 1009) and errors
    finally:
        client_side.close()
        server_side.close()


def test_connection_pair_refuses_unknown_options(loop):
    with pytest.raises(TypeError):
        evws.connection_pair(loop, no_such_option=1)
