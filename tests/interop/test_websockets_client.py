"""A real third-party client (the ``websockets`` sync client) against the evws echo server."""

from __future__ import annotations

import pytest

from tests.servers import example_server

client = pytest.importorskip("websockets.sync.client")
exceptions = pytest.importorskip("websockets.exceptions")

TIMEOUT = 10


@pytest.fixture(scope="module")
def echo_port():
    with example_server("echo_server.py", "--max-payload-size", "0") as port:
        yield port


def connect(port, **kw):
    return client.connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT, close_timeout=TIMEOUT,
                          max_size=None, compression=None, **kw)


def test_text_and_binary(echo_port):
    with connect(echo_port) as ws:
        ws.send("héllo")
        assert ws.recv(timeout=TIMEOUT) == "héllo"
        ws.send(b"\x00\x01\xff")
        assert ws.recv(timeout=TIMEOUT) == b"\x00\x01\xff"


def test_one_mebibyte(echo_port):
    payload = bytes(range(256)) * 4096
    with connect(echo_port) as ws:
        ws.send(payload)
        assert ws.recv(timeout=TIMEOUT) == payload
        text = "é" * (1 << 19)
        ws.send(text)
        assert ws.recv(timeout=TIMEOUT) == text


def test_fragmented(echo_port):
    with connect(echo_port) as ws:
        ws.send(["frag", "men", "ted"])
        assert ws.recv(timeout=TIMEOUT) == "fragmented"
        ws.send([b"a" * 70000, b"b"])
        assert ws.recv(timeout=TIMEOUT) == b"a" * 70000 + b"b"


def test_ping(echo_port):
    with connect(echo_port) as ws:
        pong = ws.ping(b"are you there")
        assert pong.wait(TIMEOUT)


@pytest.mark.parametrize("code, reason", [(1000, ""), (1001, "going away"), (4000, "custom")])
def test_close_codes_are_echoed(echo_port, code, reason):
    with connect(echo_port) as ws:
        ws.send("x")
        assert ws.recv(timeout=TIMEOUT) == "x"
        ws.close(code, reason)
        assert ws.close_code == code
        assert ws.protocol.close_rcvd.code == code


def test_limit_is_enforced_with_1009():
    with example_server("echo_server.py", "--max-payload-size", "1000") as port:
        with connect(port) as ws:
            ws.send(b"x" * 1001)
            with pytest.raises(exceptions.ConnectionClosedError):
                ws.recv(timeout=TIMEOUT)
            assert ws.protocol.close_rcvd.code == 1009
