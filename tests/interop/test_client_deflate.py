"""permessage-deflate on the evws *client* (RFC 7692), checked on the wire.

Three kinds of peer: the evws server and the ``websockets`` server, each
seen through a recording TCP tap so the test reads the frames both ways
(RSV1, sizes, and payloads inflated here with ``zlib``, not with evws), and
a raw server scripted byte by byte for what a well-behaved server never does
(a compression bomb, RSV1 on a continuation frame) or does rarely (small
windows, context kept across messages).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import zlib

import pytest

import evws
from evws.protocol.deflate import DeflateConfig
from tests import wire
from tests.conftest import TIMEOUT, run_until
from tests.test_client import RawServer, answer_101, client_frames, read_request

TAIL = b"\x00\x00\xff\xff"
RSV1 = 0x40


# -- a recording tap ---------------------------------------------------------------


class Tap:
    """A TCP relay on 127.0.0.1 that records what passes in each direction.

    Plain blocking sockets in two threads, independent of evws's reactor, so
    what it records is exactly what went over the wire.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.to_server = bytearray()
        self.to_client = bytearray()
        self.threads: list[threading.Thread] = []
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        server = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=TIMEOUT)
        client.settimeout(None)
        server.settimeout(None)
        self.sockets += [client, server]
        for src, dst, record in ((client, server, self.to_server), (server, client, self.to_client)):
            thread = threading.Thread(target=self._pump, args=(src, dst, record), daemon=True)
            thread.start()
            self.threads.append(thread)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, record: bytearray) -> None:
        try:
            while data := src.recv(65536):
                record += data
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for thread in self.threads:
            thread.join(TIMEOUT)
        for sock in self.sockets:
            sock.close()


def frames_of(data: bytes, masked: bool) -> list[tuple[bool, int, int, bytes]]:
    """The frames after the HTTP head: [(fin, rsv bits, opcode, unmasked payload)]."""
    _, sep, data = bytes(data).partition(b"\r\n\r\n")
    assert sep
    frames, pos = [], 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert bool(b1 & 0x80) == masked
        n, pos = b1 & 0x7F, pos + 2
        if n == 126:
            n, pos = struct.unpack_from("!H", data, pos)[0], pos + 2
        elif n == 127:
            n, pos = struct.unpack_from("!Q", data, pos)[0], pos + 8
        key = data[pos:pos + 4] if masked else b""
        pos += len(key)
        payload = data[pos:pos + n]
        assert len(payload) == n, "truncated frame"
        frames.append((bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F, wire.xor(payload, key) if masked else payload))
        pos += n
    return frames


def data_messages(frames, window_bits: int = 15, takeover: bool = True) -> list[tuple[bool, int, bytes]]:
    """Reassemble data messages: [(compressed, wire size, inflated payload)].

    Inflates with one decompressor for the whole direction (context takeover)
    unless ``takeover`` is false; a window smaller than the sender used makes
    zlib fail ("invalid distance too far back").
    """
    out, inflater = [], zlib.decompressobj(-window_bits)
    current: list = []
    for fin, rsv, opcode, payload in frames:
        if opcode >= 8:
            continue
        if opcode != wire.CONT:
            current = [rsv & RSV1, bytearray()]
        else:
            assert rsv == 0, "RSV1 on a continuation frame"
        current[1] += payload
        if fin:
            compressed, body = current
            if compressed:
                if not takeover:
                    inflater = zlib.decompressobj(-window_bits)
                plain = inflater.decompress(bytes(body) + TAIL)
            else:
                plain = bytes(body)
            out.append((bool(compressed), len(body), plain))
    return out


def exchange(loop, conn, messages):
    """Send each message, wait for all echoes; return their bodies."""
    got = []
    conn.on("each_message", lambda c, m: got.append(m.body))
    for message in messages:
        conn.send(message)
    run_until(loop, lambda: len(got) == len(messages))
    conn.close()
    run_until(loop, lambda: conn.finished)
    return got


def as_bytes(message) -> bytes:
    return message.encode() if isinstance(message, str) else bytes(message)


# -- evws client <-> evws server ------------------------------------------------------

REPEAT = "compress me please " * 500


@pytest.fixture
def evws_echo(loop):
    """An evws echo server (compression on by default); yields (port, connections)."""
    server = evws.Server(loop=loop, max_payload_size=None)
    conns: list = []

    def on_accept(sock, host, port):
        def established(cv):
            conn = cv.recv()
            conns.append(conn)
            conn.on("each_message", lambda c, m: c.send(m))
        server.establish(sock).cb(established)

    listener = evws.tcp_server("127.0.0.1", 0, on_accept, loop=loop)
    yield listener.port, conns
    listener.close()


def test_evws_client_and_server_agree_and_compress_both_ways(loop, evws_echo):
    port, conns = evws_echo
    tap = Tap(port)
    try:
        conn = evws.connect(f"ws://127.0.0.1:{tap.port}/", loop=loop).recv(timeout=TIMEOUT)
        run_until(loop, lambda: conns)
        assert conn.protocol.deflate is not None
        assert conn.protocol.deflate == conns[0].protocol.deflate   # both ends agreed the same
        assert conn.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
        messages = [REPEAT, REPEAT, b"\x00" * 200000, os.urandom(5000), "", b"tiny"]
        assert exchange(loop, conn, messages) == [as_bytes(m) for m in messages]
    finally:
        tap.close()
    request = bytes(tap.to_server).partition(b"\r\n\r\n")[0].decode()
    assert "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits" in request
    for direction, masked in ((tap.to_server, True), (tap.to_client, False)):
        seen = data_messages(frames_of(direction, masked))
        assert [plain for _, _, plain in seen] == [as_bytes(m) for m in messages]
        assert all(compressed for compressed, _, _ in seen)   # RSV1 on every data message
        sizes = [size for _, size, _ in seen]
        assert sizes[0] < len(REPEAT) // 20
        assert sizes[1] < sizes[0]          # the second copy refers back to the first
        assert sizes[2] < 1000


def test_compression_off_on_either_end_means_plain_frames(loop, evws_echo):
    port, conns = evws_echo
    tap = Tap(port)
    try:
        conn = evws.connect(f"ws://127.0.0.1:{tap.port}/", loop=loop,
                            compression=None).recv(timeout=TIMEOUT)
        assert conn.protocol.deflate is None
        assert exchange(loop, conn, [REPEAT]) == [REPEAT.encode()]
    finally:
        tap.close()
    assert b"Sec-WebSocket-Extensions" not in bytes(tap.to_server)
    for direction, masked in ((tap.to_server, True), (tap.to_client, False)):
        assert data_messages(frames_of(direction, masked)) == [(False, len(REPEAT), REPEAT.encode())]


def test_client_no_context_takeover_resets_the_client_compressor(loop, evws_echo):
    port, conns = evws_echo
    tap = Tap(port)
    config = DeflateConfig(client_no_context_takeover=True, client_max_window_bits=10)
    try:
        conn = evws.connect(f"ws://127.0.0.1:{tap.port}/", loop=loop,
                            compression=config).recv(timeout=TIMEOUT)
        run_until(loop, lambda: conns)
        params = conns[0].protocol.deflate
        assert params.client_no_context_takeover and params.client_max_window_bits == 10
        spread = os.urandom(3000) * 3       # repeats 3000 bytes apart: beyond a 1 KiB window
        assert exchange(loop, conn, [REPEAT, REPEAT, spread]) == [REPEAT.encode()] * 2 + [spread]
    finally:
        tap.close()
    # Inflating each message alone, with a 1 KiB window, must work.
    seen = data_messages(frames_of(tap.to_server, True), window_bits=10, takeover=False)
    assert [plain for _, _, plain in seen] == [REPEAT.encode()] * 2 + [spread]
    assert seen[0][1] == seen[1][1]         # no reference to the previous message
    assert seen[2][1] > 9000                # the 3000-byte repeats were out of reach


# -- evws client <-> websockets server -------------------------------------------------

sync_server = pytest.importorskip("websockets.sync.server")
pmd = pytest.importorskip("websockets.extensions.permessage_deflate")


class WsEcho:
    """websockets.sync.server echo in a thread; records each connection's extensions."""

    def __init__(self, **options) -> None:
        self.extensions: list = []

        def handler(ws):
            self.extensions.append(list(ws.protocol.extensions))
            for message in ws:
                ws.send(message)

        self.server = sync_server.serve(handler, "127.0.0.1", 0, max_size=None, **options)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(TIMEOUT)


@pytest.fixture
def ws_echo():
    servers: list[WsEcho] = []

    def start(**options) -> WsEcho:
        servers.append(WsEcho(**options))
        return servers[-1]
    yield start
    for server in servers:
        server.close()


def test_websockets_server_compresses_both_ways_with_the_evws_client(loop, ws_echo):
    server = ws_echo()
    tap = Tap(server.port)
    messages = [REPEAT, REPEAT, b"\x00" * 300000, bytes(range(256)) * 400, "héllo"]
    try:
        conn = evws.connect(f"ws://127.0.0.1:{tap.port}/", loop=loop).recv(timeout=TIMEOUT)
        assert conn.protocol.deflate is not None
        assert exchange(loop, conn, messages) == [as_bytes(m) for m in messages]
        assert conn.close_code == 1000 and conn.close_error is None
    finally:
        tap.close()
    run_until(loop, lambda: server.extensions)
    (extension,) = server.extensions[0]
    assert isinstance(extension, pmd.PerMessageDeflate)
    for direction, masked in ((tap.to_server, True), (tap.to_client, False)):
        seen = data_messages(frames_of(direction, masked))
        assert [plain for _, _, plain in seen] == [as_bytes(m) for m in messages]
        assert all(compressed for compressed, _, _ in seen[:4])
        assert seen[2][1] < 1000


@pytest.mark.parametrize("config", [
    DeflateConfig(server_no_context_takeover=True, client_no_context_takeover=True),
    DeflateConfig(server_max_window_bits=9, client_max_window_bits=10),
    DeflateConfig(server_max_window_bits=9, client_max_window_bits=8),  # websockets cannot use 8 itself
    DeflateConfig(level=1, mem_level=5),
], ids=["no-takeover", "small-windows", "window-8", "level-1"])
def test_evws_client_offers_honoured_by_websockets(loop, ws_echo, config):
    server = ws_echo()
    conn = evws.connect(f"ws://127.0.0.1:{server.port}/", loop=loop,
                        compression=config).recv(timeout=TIMEOUT)
    params = conn.protocol.deflate
    assert params is not None
    assert params.server_no_context_takeover == config.server_no_context_takeover
    if config.server_max_window_bits:
        assert params.server_max_window_bits == config.server_max_window_bits
    run_until(loop, lambda: server.extensions)   # the handler runs in the server's thread
    (extension,) = server.extensions[0]
    assert extension.remote_no_context_takeover == config.client_no_context_takeover
    spread = os.urandom(3000) * 3
    messages = [REPEAT, REPEAT, spread, os.urandom(300) * 50, "x"]
    assert exchange(loop, conn, messages) == [as_bytes(m) for m in messages]


def test_websockets_server_declining_compression(loop, ws_echo):
    server = ws_echo(compression=None)
    conn = evws.connect(f"ws://127.0.0.1:{server.port}/", loop=loop).recv(timeout=TIMEOUT)
    assert conn.protocol.deflate is None
    assert "Sec-WebSocket-Extensions" not in conn.response.headers
    assert exchange(loop, conn, [REPEAT, b"\x01" * 1000]) == [REPEAT.encode(), b"\x01" * 1000]
    run_until(loop, lambda: server.extensions)
    assert server.extensions == [[]]


# -- evws client <-> a scripted server ------------------------------------------------


@pytest.fixture
def raw(loop):
    server = RawServer(loop)
    yield server
    server.close()


def deflate_connection(loop, raw, answer="permessage-deflate", **options):
    cv = evws.connect(f"ws://127.0.0.1:{raw.port}/", loop=loop, **options)
    peer = raw.accept()
    _, fields = read_request(peer)
    assert fields["sec-websocket-extensions"].startswith("permessage-deflate")
    answer_101(peer, fields["sec-websocket-key"], f"Sec-WebSocket-Extensions: {answer}\r\n")
    conn = cv.recv(timeout=TIMEOUT)
    messages = []
    conn.on("each_message", lambda c, m: messages.append(m))
    return conn, peer, messages


def compressed_frames(compressor, message: bytes, *pieces: int) -> list[bytes]:
    """Compress ``message`` as the server would, unmasked, split after ``pieces`` bytes."""
    data = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(TAIL)
    data = data[:-4]
    cuts = [0, *pieces, len(data)]
    parts = [data[a:b] for a, b in zip(cuts, cuts[1:])]
    return [wire.frame(wire.TEXT if i == 0 else wire.CONT, part, fin=i == len(parts) - 1,
                       mask=None, rsv=4 if i == 0 else 0) for i, part in enumerate(parts)]


def close_code_sent(peer) -> int:
    (fin, opcode, _, payload), = client_frames(peer, 1)
    assert opcode == wire.CLOSE
    return struct.unpack("!H", payload[:2])[0]


def test_server_context_takeover_and_fragments_are_inflated(loop, raw):
    conn, peer, messages = deflate_connection(loop, raw)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = REPEAT.encode()
    peer.send(b"".join(compressed_frames(compressor, first)))
    # The second copy is a back-reference into the first message (takeover),
    # sent in three fragments with RSV1 on the first only.
    second = compressed_frames(compressor, first, 1, 3)
    assert len(second) == 3
    peer.send(b"".join(second))
    run_until(loop, lambda: len(messages) == 2)
    assert [m.decoded_body for m in messages] == [REPEAT, REPEAT]


def test_client_honours_server_max_window_bits(loop, raw):
    conn, peer, _ = deflate_connection(loop, raw, "permessage-deflate; client_max_window_bits=9")
    spread = os.urandom(1000) * 4           # 1000 bytes apart: beyond a 512-byte window
    conn.send(spread)
    (fin, opcode, _, payload), = client_frames(peer, 1)
    assert fin and opcode == wire.BINARY
    assert zlib.decompressobj(-9).decompress(payload + TAIL) == spread


def test_compression_bomb_from_the_server_closes_with_1009(loop, raw):
    conn, peer, messages = deflate_connection(loop, raw, max_payload_size=100000)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    (bomb,) = compressed_frames(compressor, b"\x00" * 10_000_000)
    assert len(bomb) < 20000
    peer.send(bomb)
    assert close_code_sent(peer) == 1009
    assert not messages


def test_rsv1_on_a_continuation_frame_closes_with_1002(loop, raw):
    conn, peer, messages = deflate_connection(loop, raw)
    peer.send(wire.frame(wire.TEXT, b"abc", fin=False, mask=None)
              + wire.frame(wire.CONT, b"def", mask=None, rsv=4))
    assert close_code_sent(peer) == 1002


def test_rsv1_without_negotiation_closes_with_1002(loop, raw):
    cv = evws.connect(f"ws://127.0.0.1:{raw.port}/", loop=loop)
    peer = raw.accept()
    _, fields = read_request(peer)
    answer_101(peer, fields["sec-websocket-key"])   # the offer is declined
    conn = cv.recv(timeout=TIMEOUT)
    assert conn.protocol.deflate is None
    peer.send(wire.frame(wire.TEXT, bytes.fromhex("f248cdc9c90700"), mask=None, rsv=4))
    assert close_code_sent(peer) == 1002


@pytest.mark.parametrize("answer", [
    "permessage-deflate; server_max_window_bits=12",     # more than the offered 10
    "permessage-deflate; client_max_window_bits",         # a value is required in an answer
    "permessage-deflate, permessage-deflate",
    "permessage-deflate; unknown_parameter",
])
def test_bad_answers_fail_the_connect(loop, raw, answer):
    cv = evws.connect(f"ws://127.0.0.1:{raw.port}/", loop=loop,
                      compression=DeflateConfig(server_max_window_bits=10))
    peer = raw.accept()
    _, fields = read_request(peer)
    answer_101(peer, fields["sec-websocket-key"], f"Sec-WebSocket-Extensions: {answer}\r\n")
    with pytest.raises(evws.HandshakeError) as info:
        cv.recv(timeout=TIMEOUT)
    assert info.value.status == 101
