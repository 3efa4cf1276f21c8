"""permessage-deflate end to end: the evws Server's negotiation over a raw
socketpair (hand-built requests and frames), then the real ``websockets``
client, compression on, against examples/echo_server.py.
"""

from __future__ import annotations

import os
import struct
import zlib

import pytest

import evws
from evws.protocol.deflate import DeflateConfig
from tests import wire
from tests.conftest import TIMEOUT, open_connection
from tests.servers import example_server

client = pytest.importorskip("websockets.sync.client")
exceptions = pytest.importorskip("websockets.exceptions")
pmd = pytest.importorskip("websockets.extensions.permessage_deflate")

RSV1 = 0x40
HELLO = bytes.fromhex("f248cdc9c90700")  # RFC 7692 7.2.3.1


def offer(value: str = "permessage-deflate; client_max_window_bits") -> bytes:
    return wire.upgrade_request(extra=f"Sec-WebSocket-Extensions: {value}\r\n")


def extensions_header(head: bytes) -> str | None:
    for line in head.decode().split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "sec-websocket-extensions":
            return value.strip()
    return None


def echo(conn):
    conn.on("each_message", lambda c, message: c.send(message))


def read_raw_frame(peer):
    """One frame from the server as (first byte, payload); the server never masks."""
    def complete():
        buf = peer.buffer
        if len(buf) < 2:
            return False
        n, p = buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return False
            n, p = struct.unpack_from("!H", buf, 2)[0], 4
        return len(buf) >= p + n
    peer.pump(lambda: complete() or peer.eof)
    assert complete(), peer.buffer
    buf = peer.buffer
    n, p = buf[1] & 0x7F, 2
    if n == 126:
        n, p = struct.unpack_from("!H", buf, 2)[0], 4
    peer.buffer = buf[p + n:]
    return buf[0], buf[p:p + n]


def inflate(payload: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")


# ------------------------------------------------- evws.Server negotiation


class TestServerNegotiation:
    def test_offer_is_accepted_and_messages_are_compressed_both_ways(self, loop):
        conn, _, peer = open_connection(loop, evws.Server(loop=loop), offer())
        try:
            assert conn.protocol.deflate is not None
            echo(conn)
            peer.send(wire.frame(wire.TEXT, HELLO, rsv=RSV1 >> 4))
            first, payload = read_raw_frame(peer)
            assert first == 0x80 | RSV1 | wire.TEXT
            assert inflate(payload) == b"Hello"
        finally:
            peer.close()

    @pytest.mark.parametrize("server_kw, offered, expected", [
        ({}, "permessage-deflate; client_max_window_bits", "permessage-deflate"),
        ({}, "permessage-deflate; server_no_context_takeover",
         "permessage-deflate; server_no_context_takeover"),
        ({}, "x-webkit-deflate-frame", None),
        ({}, "permessage-deflate; server_max_window_bits=99", None),
        ({"compression": None}, "permessage-deflate", None),
        ({"deflate_config": DeflateConfig(server_max_window_bits=10)}, "permessage-deflate",
         "permessage-deflate; server_max_window_bits=10"),
    ])
    def test_answers(self, loop, socketpair, server_kw, offered, expected):
        ours, theirs = socketpair
        cv = evws.Server(loop=loop, **server_kw).establish(ours)
        theirs.sendall(offer(offered))
        conn = cv.recv(timeout=TIMEOUT)
        head = b""
        theirs.settimeout(TIMEOUT)
        while b"\r\n\r\n" not in head:
            loop.run_once(0.01)
            head += theirs.recv(4096)
        assert extensions_header(head) == expected
        assert (conn.protocol.deflate is not None) == (expected is not None)

    def test_no_offer_no_extension(self, loop):
        conn, _, peer = open_connection(loop, evws.Server(loop=loop))
        assert conn.protocol.deflate is None
        peer.close()

    def test_compression_off_makes_rsv1_a_protocol_error(self, loop):
        conn, _, peer = open_connection(loop, evws.Server(loop=loop, compression=None), offer())
        assert conn.protocol.deflate is None
        peer.send(wire.frame(wire.TEXT, HELLO, rsv=RSV1 >> 4))
        frames = peer.read_until_eof()
        assert frames[-1][1] == wire.CLOSE and frames[-1][2][:2] == struct.pack("!H", 1002)
        peer.close()

    def test_handshake_callback_may_refuse_compression(self, loop):
        seen = []

        def handshake(request, response):
            seen.append(response.extensions)
            response.extensions = None
            return response

        server = evws.Server(loop=loop, handshake=handshake)
        conn, _, peer = open_connection(loop, server, offer())
        assert seen == ["permessage-deflate"]
        assert conn.protocol.deflate is None
        peer.close()

    @pytest.mark.parametrize("header, compressed", [
        ("", False),
        ("Sec-WebSocket-Extensions: permessage-deflate\r\n", True),
        ("Sec-WebSocket-Extensions: permessage-deflate; bogus\r\n", False),
    ])
    def test_raw_response_decides(self, loop, header, compressed):
        raw = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Accept: {wire.ACCEPT}\r\n{header}\r\n")
        server = evws.Server(loop=loop, handshake=lambda request, response: raw)
        conn, _, peer = open_connection(loop, server, offer())
        assert (conn.protocol.deflate is not None) == compressed
        peer.close()

    def test_bad_compression_value(self, loop):
        with pytest.raises(ValueError):
            evws.Server(loop=loop, compression="gzip")


# -------------------------------------------- the websockets client, deflate on


@pytest.fixture(scope="module")
def echo_port():
    with example_server("echo_server.py", "--max-payload-size", "0") as port:
        yield port


def connect(port, **kw):
    kw.setdefault("compression", "deflate")
    return client.connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT, close_timeout=TIMEOUT,
                          max_size=None, **kw)


def agreed(ws):
    (extension,) = ws.protocol.extensions
    assert isinstance(extension, pmd.PerMessageDeflate)
    return extension


def test_default_client_negotiates_and_echoes(echo_port):
    with connect(echo_port) as ws:
        agreed(ws)
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
        for message in ["hello", "héllo " * 5000, b"\x00" * 300000, os.urandom(70000), "", b""]:
            ws.send(message)
            assert ws.recv(timeout=TIMEOUT) == message


def test_fragmented_compressed_messages(echo_port):
    with connect(echo_port) as ws:
        ws.send(["frag", "men", "ted " * 1000])
        assert ws.recv(timeout=TIMEOUT) == "fragmented " + "ted " * 999
        ws.send([b"a" * 70000, b"b"])
        assert ws.recv(timeout=TIMEOUT) == b"a" * 70000 + b"b"
        pong = ws.ping(b"still there")
        assert pong.wait(TIMEOUT)


@pytest.mark.parametrize("params", [
    dict(server_no_context_takeover=True, client_no_context_takeover=True),
    dict(server_max_window_bits=9, client_max_window_bits=10),
    dict(server_max_window_bits=15, client_max_window_bits=True),
    # 8 bits: evws compresses with a 9-bit window that a 256-byte window inflates.
    dict(server_no_context_takeover=True, server_max_window_bits=8, client_max_window_bits=9),
    dict(server_max_window_bits=8),
])
def test_negotiated_parameters(echo_port, params):
    factory = pmd.ClientPerMessageDeflateFactory(**params)
    with connect(echo_port, compression=None, extensions=[factory]) as ws:
        extension = agreed(ws)
        if params.get("server_no_context_takeover"):
            assert extension.remote_no_context_takeover
        if isinstance(params.get("server_max_window_bits"), int):
            assert extension.remote_max_window_bits == params["server_max_window_bits"]
        messages = ["repeat " * 200, "repeat " * 200, os.urandom(300) * 10, os.urandom(3000) * 5, "x"]
        for message in messages:
            ws.send(message)
            assert ws.recv(timeout=TIMEOUT) == message


def test_bomb_from_the_client_closes_with_1009():
    with example_server("echo_server.py", "--max-payload-size", "100000") as port:
        with connect(port) as ws:
            ws.send(b"\x00" * 100001)   # compresses to a few hundred bytes
            with pytest.raises(exceptions.ConnectionClosedError):
                ws.recv(timeout=TIMEOUT)
            assert ws.protocol.close_rcvd.code == 1009
