"""The evws client over loopback TCP: against an evws server, and against a
hand-scripted raw server whose bytes are built here (so a bug in evws's own
serializer cannot hide one in its parser)."""

from __future__ import annotations

import base64
import os
import socket
import struct
import subprocess
import sys
import time

import pytest

import evws
from evws.client import parse_url
from tests import wire
from tests.conftest import TIMEOUT, Peer, reset, run_until
from tests.servers import ROOT, example_server

# -- helpers --------------------------------------------------------------------


class RawServer:
    """A listening socket whose accepted peers the test scripts byte by byte."""

    def __init__(self, loop: evws.Loop, family: int = socket.AF_INET, host: str = "127.0.0.1"):
        self.loop = loop
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.peers: list[Peer] = []

    def accept(self) -> Peer:
        got: list[socket.socket] = []

        def accepted() -> bool:
            try:
                got.append(self.sock.accept()[0])
            except BlockingIOError:
                return False
            return True
        run_until(self.loop, accepted)
        peer = Peer(self.loop, got[0])
        self.peers.append(peer)
        return peer

    def close(self) -> None:
        for peer in self.peers:
            peer.close()
        self.sock.close()


@pytest.fixture
def raw(loop):
    server = RawServer(loop)
    yield server
    server.close()


def read_request(peer: Peer) -> tuple[str, dict[str, str]]:
    """The request head a client sent: (request line, {lower name: value})."""
    head = peer.read_response_head().decode("ascii")
    lines = head.split("\r\n")
    fields = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    return lines[0], fields


def answer_101(peer: Peer, key: str, extra: str = "", then: bytes = b"") -> None:
    peer.send((
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {wire.accept_for(key)}\r\n{extra}\r\n").encode() + then)


def client_frames(peer: Peer, count: int) -> list[tuple[bool, int, bytes, bytes]]:
    got: list = []

    def enough() -> bool:
        frames, rest = wire.parse_client_frames(peer.buffer)
        got.extend(frames)
        peer.buffer = rest
        return len(got) >= count or peer.eof
    peer.pump(enough)
    assert len(got) >= count, f"wanted {count} frames, got {got}"
    return got


def raw_connect(loop, raw, url_tail="/", **options):
    """Connect the client to the raw server; return (cv, peer, request line, fields)."""
    cv = evws.connect(f"ws://127.0.0.1:{raw.port}{url_tail}", loop=loop, compression=None,
                      **options)
    peer = raw.accept()
    line, fields = read_request(peer)
    return cv, peer, line, fields


def raw_connection(loop, raw, then: bytes = b"", **options):
    cv, peer, _, fields = raw_connect(loop, raw, **options)
    answer_101(peer, fields["sec-websocket-key"], then=then)
    return cv.recv(timeout=TIMEOUT), peer


def collect(conn):
    messages, finished = [], []
    conn.on("each_message", lambda c, m: messages.append(m))
    conn.on("finish", lambda c: finished.append(c))
    return messages, finished


@pytest.fixture
def echo(loop):
    """An evws echo server on 127.0.0.1; yields its port."""
    server = evws.Server(loop=loop, max_payload_size=None)

    def on_accept(sock, host, port):
        def established(cv):
            try:
                conn = cv.recv()
            except evws.HandshakeError:
                sock.close()
                return
            conn.on("each_message", lambda c, m: c.send(m))
        server.establish(sock).cb(established)

    listener = evws.tcp_server("127.0.0.1", 0, on_accept, loop=loop)
    yield listener.port
    listener.close()


# -- against the evws server ------------------------------------------------------


def test_text_and_binary_round_trip(loop, echo):
    conn = evws.connect(f"ws://127.0.0.1:{echo}/", loop=loop).recv(timeout=TIMEOUT)
    assert isinstance(conn, evws.Connection) and conn.masked
    messages, _ = collect(conn)
    conn.send("héllo")
    conn.send(b"\x00\xff")
    conn.send(bytes(range(256)) * 1024)
    run_until(loop, lambda: len(messages) == 3)
    assert messages[0].is_text and messages[0].decoded_body == "héllo"
    assert messages[1].is_binary and messages[1].body == b"\x00\xff"
    assert messages[2].body == bytes(range(256)) * 1024


@pytest.mark.parametrize("code, reason", [(1000, ""), (1001, "going away"), (4000, "custom")])
def test_close_codes_against_evws_server(loop, echo, code, reason):
    conn = evws.connect(f"ws://127.0.0.1:{echo}/", loop=loop).recv(timeout=TIMEOUT)
    _, finished = collect(conn)
    conn.close(code, reason)
    run_until(loop, lambda: finished)
    assert conn.close_code == code  # the server echoed it
    assert conn.close_error is None
    assert conn.stream.closed


def test_client_uses_the_default_loop():
    # No loop= anywhere: connect, Server and tcp_server share get_loop().
    server = evws.Server()

    def on_accept(sock, host, port):
        server.establish(sock).cb(lambda cv: cv.recv().on("each_message",
                                                            lambda c, m: c.send(m)))
    listener = evws.tcp_server("127.0.0.1", 0, on_accept)
    try:
        conn = evws.Client(timeout=TIMEOUT).connect(f"ws://127.0.0.1:{listener.port}/").recv(
            timeout=TIMEOUT)
        got = []
        conn.on("each_message", lambda c, m: got.append(m.body))
        conn.send("x")
        run_until(evws.get_loop(), lambda: got)
        assert got == [b"x"]
        conn.close()
        run_until(evws.get_loop(), lambda: conn.finished)
    finally:
        listener.close()


def test_subprotocol_and_handshake_results(loop):
    seen = []

    def handshake(request, response):
        seen.append(request)
        response.subprotocol = "chat.v2"
        return response

    server = evws.Server(handshake=handshake, loop=loop)
    listener = evws.tcp_server("127.0.0.1", 0, lambda s, h, p: server.establish(s), loop=loop)
    try:
        conn = evws.connect(f"ws://127.0.0.1:{listener.port}/room/7?user=ann", loop=loop,
                            subprotocols=["chat.v1", "chat.v2"], origin="http://example.com",
                            headers={"X-Token": "t0k"}).recv(timeout=TIMEOUT)
    finally:
        listener.close()
    assert conn.subprotocol == "chat.v2"
    request = seen[0]
    assert request.resource_name == "/room/7?user=ann"
    assert (request.path, request.query) == ("/room/7", "user=ann")
    assert request.subprotocols == ["chat.v1", "chat.v2"]
    assert request.origin == "http://example.com"
    assert request.headers["X-Token"] == "t0k"
    assert request.host == f"127.0.0.1:{listener.port}"
    assert conn.response.status == 101


# -- against a scripted server: the wire -------------------------------------------


def test_request_on_the_wire(loop, raw):
    cv, peer, line, fields = raw_connect(loop, raw, "/a/b?x=1&y=%20")
    assert line == "GET /a/b?x=1&y=%20 HTTP/1.1"
    assert fields["host"] == f"127.0.0.1:{raw.port}"
    assert fields["upgrade"].lower() == "websocket"
    assert "upgrade" in fields["connection"].lower()
    assert fields["sec-websocket-version"] == "13"
    assert "sec-websocket-extensions" not in fields  # compression=None
    assert len(base64.b64decode(fields["sec-websocket-key"])) == 16
    answer_101(peer, fields["sec-websocket-key"])
    assert cv.recv(timeout=TIMEOUT).masked


def test_every_frame_masked_with_a_fresh_key(loop, raw):
    conn, peer = raw_connection(loop, raw)
    for i in range(8):
        conn.send(f"m{i}")
    frames = client_frames(peer, 8)
    assert [f[3] for f in frames] == [f"m{i}".encode() for i in range(8)]
    assert all(f[0] and f[1] == wire.TEXT for f in frames)
    assert len({f[2] for f in frames}) >= 7  # 8 random keys; a repeat is ~1e-8 likely


def test_frames_with_the_101_are_delivered_after_cb(loop, raw):
    cv, peer, _, fields = raw_connect(loop, raw)
    first = wire.frame(wire.TEXT, b"early", mask=None) + wire.frame(wire.BINARY, b"\x01", mask=None)
    answer_101(peer, fields["sec-websocket-key"], then=first)
    got = []
    cv.cb(lambda cv: cv.recv().on("each_message", lambda c, m: got.append(m.body)))
    run_until(loop, lambda: len(got) == 2)
    assert got == [b"early", b"\x01"]


def test_fragmented_message_from_server(loop, raw):
    conn, peer = raw_connection(loop, raw)
    messages, _ = collect(conn)
    peer.send(wire.frame(wire.TEXT, b"fra", fin=False, mask=None)
              + wire.frame(wire.PING, b"p", mask=None)  # a control frame in between
              + wire.frame(wire.CONT, "gmé".encode(), fin=False, mask=None)
              + wire.frame(wire.CONT, b"nted", mask=None))
    run_until(loop, lambda: messages)
    assert messages[0].decoded_body == "fragménted"
    pong = client_frames(peer, 1)[0]
    assert pong[1] == wire.PONG and pong[3] == b"p"


def test_ping_from_client_and_pong_answer(loop, raw):
    conn, peer = raw_connection(loop, raw)
    conn.send(evws.Message(b"are you there", opcode=wire.PING))
    fin, opcode, _, payload = client_frames(peer, 1)[0]
    assert (fin, opcode, payload) == (True, wire.PING, b"are you there")


def test_masked_frame_from_server_fails_with_1002(loop, raw):
    conn, peer = raw_connection(loop, raw)
    errors, (_, finished) = [], collect(conn)
    conn.on("parse_error", lambda c, text: errors.append(text))
    peer.send(wire.frame(wire.TEXT, b"masked", mask=wire.MASK))
    frames = client_frames(peer, 1)
    assert frames[0][1] == wire.CLOSE and frames[0][3][:2] == struct.pack("!H", 1002)
    run_until(loop, lambda: finished)
    assert errors


def test_server_initiated_close_client_waits_for_tcp_close(loop, raw):
    conn, peer = raw_connection(loop, raw)
    _, finished = collect(conn)
    peer.send(wire.frame(wire.CLOSE, wire.close_payload(4001, b"bye"), mask=None))
    fin, opcode, _, payload = client_frames(peer, 1)[0]
    assert opcode == wire.CLOSE and payload[:2] == struct.pack("!H", 4001)  # echoed
    # RFC 6455 7.1.1: the client waits for the server to close TCP first.
    for _ in range(20):
        loop.run_once(0.005)
    assert not finished and not peer.eof
    peer.sock.shutdown(socket.SHUT_WR)
    run_until(loop, lambda: finished)
    assert (conn.close_code, conn.close_reason) == (4001, "bye")
    peer.pump(lambda: peer.eof)


def test_client_close_times_out_when_server_never_answers(loop, raw):
    conn, peer = raw_connection(loop, raw, close_timeout=0.2)
    _, finished = collect(conn)
    conn.close(1000)
    assert client_frames(peer, 1)[0][1] == wire.CLOSE
    start = time.monotonic()
    run_until(loop, lambda: finished)
    assert 0.15 <= time.monotonic() - start < 3
    assert conn.close_code == 1006


# -- client errors ------------------------------------------------------------------


def test_refused_port_croaks_oserror(loop):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    cv = evws.connect(f"ws://127.0.0.1:{port}/", loop=loop)
    with pytest.raises(ConnectionRefusedError):
        cv.recv(timeout=TIMEOUT)


def test_timeout_against_a_listener_that_never_answers(loop, raw):
    cv = evws.connect(f"ws://127.0.0.1:{raw.port}/", loop=loop, timeout=0.3)
    peer = raw.accept()
    read_request(peer)  # the request arrives; no answer ever comes
    start = time.monotonic()
    with pytest.raises(evws.WaitTimeout) as info:
        cv.recv(timeout=TIMEOUT)
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - start < 2
    peer.pump(lambda: peer.eof)  # and the client dropped the connection


def test_non_101_keeps_status_and_body(loop, raw):
    cv, peer, _, _ = raw_connect(loop, raw)
    peer.send(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nnot for you!"
              b"TRAILING GARBAGE")
    with pytest.raises(evws.HandshakeError) as info:
        cv.recv(timeout=TIMEOUT)
    assert info.value.status == 403
    assert info.value.body == b"not for you!"
    assert info.value.headers["Content-Type"] == "text/plain"
    peer.pump(lambda: peer.eof)


def test_non_101_body_split_across_reads_and_to_eof(loop, raw):
    cv, peer, _, _ = raw_connect(loop, raw)
    peer.send(b"HTTP/1.1 503 Service Unavailable\r\n\r\nbusy, ")
    loop.run_once(0.01)
    assert not cv.ready  # no Content-Length: the body runs to EOF
    peer.send(b"come back later")
    peer.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(evws.HandshakeError) as info:
        cv.recv(timeout=TIMEOUT)
    assert (info.value.status, info.value.body) == (503, b"busy, come back later")


def test_non_101_body_is_bounded(loop, raw):
    cv, peer, _, _ = raw_connect(loop, raw, max_error_body=10)
    peer.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 100000\r\n\r\n" + b"x" * 50)
    with pytest.raises(evws.HandshakeError) as info:
        cv.recv(timeout=TIMEOUT)
    assert info.value.body == b"x" * 10


def test_wrong_accept(loop, raw):
    cv, peer, _, _ = raw_connect(loop, raw)
    answer_101(peer, wire.KEY)  # the accept for another key
    with pytest.raises(evws.HandshakeError, match="Sec-WebSocket-Accept") as info:
        cv.recv(timeout=TIMEOUT)
    assert info.value.status == 101
    peer.pump(lambda: peer.eof)


def test_unoffered_subprotocol(loop, raw):
    cv, peer, _, fields = raw_connect(loop, raw, subprotocols=["a"])
    answer_101(peer, fields["sec-websocket-key"], extra="Sec-WebSocket-Protocol: b\r\n")
    with pytest.raises(evws.HandshakeError, match="subprotocol"):
        cv.recv(timeout=TIMEOUT)


def test_subprotocol_when_none_offered(loop, raw):
    cv, peer, _, fields = raw_connect(loop, raw)
    answer_101(peer, fields["sec-websocket-key"], extra="Sec-WebSocket-Protocol: chat\r\n")
    with pytest.raises(evws.HandshakeError):
        cv.recv(timeout=TIMEOUT)


def test_unoffered_extension(loop, raw):
    cv, peer, _, fields = raw_connect(loop, raw)  # compression=None: nothing offered
    answer_101(peer, fields["sec-websocket-key"], extra="Sec-WebSocket-Extensions: x-foo\r\n")
    with pytest.raises(evws.HandshakeError, match="extension"):
        cv.recv(timeout=TIMEOUT)


def test_server_closing_mid_handshake(loop, raw):
    cv, peer, _, _ = raw_connect(loop, raw)
    peer.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n")
    peer.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(evws.HandshakeError, match="closed"):
        cv.recv(timeout=TIMEOUT)


def test_server_resetting_mid_handshake(loop, raw):
    cv, peer, _, _ = raw_connect(loop, raw)
    reset(peer.sock)
    with pytest.raises((ConnectionResetError, evws.HandshakeError)):
        cv.recv(timeout=TIMEOUT)


def test_garbage_answer(loop, raw):
    cv, peer, _, _ = raw_connect(loop, raw)
    peer.send(b"SSH-2.0-OpenSSH_9.0\r\n\r\n")
    with pytest.raises(evws.HandshakeError, match="status line"):
        cv.recv(timeout=TIMEOUT)


def test_bad_options_raise_at_once(loop):
    with pytest.raises(ValueError):
        evws.connect("http://127.0.0.1/", loop=loop)
    with pytest.raises(TypeError):
        evws.connect("ws://127.0.0.1/", loop=loop, bogus=1)
    with pytest.raises(TypeError):
        evws.Client(bogus=1)
    with pytest.raises(ValueError):
        evws.connect("ws://127.0.0.1:1/", loop=loop, compression="gzip")


@pytest.mark.parametrize("url, expected", [
    ("ws://example.com", (False, "example.com", 80, "/", "example.com")),
    ("wss://example.com/", (True, "example.com", 443, "/", "example.com")),
    ("ws://example.com:8080/a?b=c", (False, "example.com", 8080, "/a?b=c", "example.com:8080")),
    ("wss://example.com:443/x", (True, "example.com", 443, "/x", "example.com")),
    ("ws://[::1]:9000/p", (False, "::1", 9000, "/p", "[::1]:9000")),
    ("WS://[2001:db8::1]/", (False, "2001:db8::1", 80, "/", "[2001:db8::1]")),
    ("ws://10.0.0.1?q", (False, "10.0.0.1", 80, "/?q", "10.0.0.1")),
])
def test_parse_url(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize("url", ["http://x/", "ws:///path", "ws://x:99999/", "ws://x/#frag", "ws://x:abc/"])
def test_parse_url_rejects(url):
    with pytest.raises(ValueError):
        parse_url(url)


def test_basic_auth_from_userinfo(loop, raw):
    cv = evws.connect(f"ws://ann:s%3Acret@127.0.0.1:{raw.port}/", loop=loop, compression=None)
    peer = raw.accept()
    _, fields = read_request(peer)
    assert fields["authorization"] == "Basic " + base64.b64encode(b"ann:s:cret").decode()
    assert fields["host"] == f"127.0.0.1:{raw.port}"
    answer_101(peer, fields["sec-websocket-key"])
    cv.recv(timeout=TIMEOUT)


def _has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")
def test_ipv6_literal(loop):
    server = evws.Server(loop=loop)
    hosts = []

    def on_accept(sock, host, port):
        hosts.append(host)
        server.establish(sock).cb(lambda cv: cv.recv().on("each_message",
                                                            lambda c, m: c.send(m)))
    listener = evws.tcp_server("::1", 0, on_accept, loop=loop)
    try:
        conn = evws.connect(f"ws://[::1]:{listener.port}/v6", loop=loop).recv(timeout=TIMEOUT)
        got = []
        conn.on("each_message", lambda c, m: got.append(m.body))
        conn.send("six")
        run_until(loop, lambda: got)
        assert got == [b"six"] and hosts == ["::1"]
    finally:
        listener.close()


# -- examples/echo_client.py ----------------------------------------------------------


def _run_echo_client(*args: str, stdin: str | None = None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "examples" / "echo_client.py"), *args],
                          input=stdin, capture_output=True, text=True, timeout=20, env=env)


def test_echo_client_example_against_echo_server():
    with example_server("echo_server.py") as port:
        url = f"ws://127.0.0.1:{port}/"
        result = _run_echo_client(url, "hello", "wörld")
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["hello", "wörld"]
        result = _run_echo_client(url, stdin="one\ntwo\nthree")
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["one", "two", "three"]


def test_echo_client_example_reports_connect_failure():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    result = _run_echo_client(f"ws://127.0.0.1:{port}/", "x")
    assert result.returncode == 1
    assert "cannot connect" in result.stderr


def test_client_names_are_exported():
    for name in ("Client", "connect", "connection_pair"):
        assert name in evws.__all__ and hasattr(evws, name)
