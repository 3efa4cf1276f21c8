"""Hardening: timeouts, graceful shutdown and hostile input, over real sockets.

Each hostile input gets its RFC answer (an HTTP 4xx/5xx or a close code) and
the memory it can make evws hold is bounded by configured limits, never by a
size the attacker claims.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

import evws
from tests import wire
from tests.conftest import TIMEOUT, Peer, establish_raw, open_connection, run_until
from tests.servers import ROOT


def rejected(loop, server, data: bytes, status: int) -> evws.HandshakeError:
    cv, ours, peer = establish_raw(loop, server, data)
    with pytest.raises(evws.HandshakeError) as info:
        cv.recv(timeout=TIMEOUT)
    err = info.value
    assert err.status == status, err
    if err.response:
        assert err.response.startswith(f"HTTP/1.1 {status} ".encode())
    ours.close()
    peer.close()
    return err


def close_code_of(frame) -> int:
    assert frame[1] == wire.CLOSE, frame
    return struct.unpack("!H", frame[2][:2])[0]


def finished(conn):
    seen = []
    conn.on("finish", lambda c: seen.append(c.close_code))
    return seen


# -- timeouts -------------------------------------------------------------------


class TestTimeouts:
    def test_one_byte_per_interval_client_is_dropped(self, loop):
        """handshake_timeout is a deadline for the whole request, not an idle timer."""
        server = evws.Server(loop=loop, handshake_timeout=0.3)
        ours, theirs = socket.socketpair()
        request = wire.upgrade_request()
        sent = [0]

        def trickle():  # one byte every 20 ms: always "active", never done in time
            if sent[0] < len(request):
                theirs.send(request[sent[0]:sent[0] + 1])
                sent[0] += 1
        ticker = loop.timer(0.02, trickle, interval=0.02)
        start = time.monotonic()
        cv = server.establish(ours)
        with pytest.raises(evws.HandshakeError) as info:
            cv.recv(timeout=TIMEOUT)
        elapsed = time.monotonic() - start
        ticker.cancel()
        assert info.value.status == 408
        assert info.value.response.startswith(b"HTTP/1.1 408 ")
        assert 0.25 <= elapsed < 2.0
        assert 0 < sent[0] < len(request)
        ours.close()
        theirs.close()

    def test_close_timeout_when_the_peer_reads_nothing(self, loop):
        """Our Close cannot even be written (the peer reads nothing): still finished in time."""
        server = evws.Server(loop=loop, close_timeout=0.3, ping_interval=None)
        conn, _, peer = open_connection(loop, server)
        seen = finished(conn)
        conn.send(b"x" * (8 << 20))  # far more than the socket buffers hold
        assert conn.stream.buffered_amount > 0
        start = time.monotonic()
        conn.close()
        run_until(loop, lambda: seen, timeout=3)
        assert time.monotonic() - start < 2.0
        assert seen == [1006]
        peer.close()

    def test_close_timeout_when_the_peer_never_answers_a_received_close(self, loop):
        """Client side of 7.1.1: after the Close handshake, the server must end TCP."""
        a, b = socket.socketpair()
        proto = evws.connection.WebSocketProtocol(evws.connection.Side.CLIENT)
        stream = evws.reactor.Stream(a, loop)
        conn = evws.Connection(stream, proto, loop=loop, close_timeout=0.2, ping_interval=None)
        seen = finished(conn)
        conn._start()
        b.sendall(wire.frame(wire.CLOSE, wire.close_payload(1000), mask=None))
        run_until(loop, lambda: seen, timeout=3)  # the server never closes TCP
        assert seen == [1000]
        b.close()


# -- graceful shutdown ------------------------------------------------------------


def tcp_peer(loop, port):
    cv = evws.reactor.tcp_connect("127.0.0.1", port, loop)
    sock = cv.recv(timeout=TIMEOUT)
    return Peer(loop, sock)


class TestShutdown:
    def test_stops_accepting_flushes_then_closes_with_1001(self, loop):
        server = evws.Server(loop=loop, ping_interval=None)
        conns = []

        def on_accept(sock, host, port):
            server.establish(sock).cb(lambda cv: conns.append(cv.recv()))
        listener = server.listen("127.0.0.1", 0, on_accept)
        port = listener.port
        peer = tcp_peer(loop, port)
        peer.send(wire.upgrade_request())
        assert peer.read_response_head().startswith(b"HTTP/1.1 101 ")
        run_until(loop, lambda: conns)
        big = os.urandom(3 << 20)
        conns[0].send(big)  # queued (larger than the socket buffers) ...
        conns[0].send("last words")
        cv = server.shutdown(code=1001, reason="bye")  # ... and must come out before the Close
        assert listener.closed
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
        frames = peer.read_frames(3, timeout=TIMEOUT)
        assert [f[1] for f in frames] == [wire.BINARY, wire.TEXT, wire.CLOSE]
        assert frames[0][2] == big and frames[1][2] == b"last words"
        assert frames[2][2] == wire.close_payload(1001, b"bye")
        peer.send(wire.frame(wire.CLOSE, wire.close_payload(1001)))
        cv.recv(timeout=TIMEOUT)
        assert conns[0].close_code == 1001 and server.connections == frozenset()
        peer.close()

    def test_handshake_completing_after_shutdown_is_refused(self, loop):
        server = evws.Server(loop=loop)
        ours, theirs = socket.socketpair()
        peer = Peer(loop, theirs)
        cv = server.establish(ours)
        peer.send(wire.upgrade_request()[:20])
        loop.run_once(0)
        server.shutdown().recv(timeout=TIMEOUT)  # nothing live: ready at once
        peer.send(wire.upgrade_request()[20:])
        with pytest.raises(evws.HandshakeError) as info:
            cv.recv(timeout=TIMEOUT)
        assert info.value.status == 503
        ours.close()
        peer.close()

    def test_timeout_aborts_stragglers(self, loop):
        server = evws.Server(loop=loop, close_timeout=30, ping_interval=None)
        silent = [open_connection(loop, server) for _ in range(2)]
        polite_conn, _, polite = open_connection(loop, server)
        start = time.monotonic()
        cv = server.shutdown(timeout=0.3)
        assert close_code_of(polite.read_frames(1)[0]) == 1001
        polite.send(wire.frame(wire.CLOSE, wire.close_payload(1001)))
        run_until(loop, lambda: polite_conn.finished)
        assert not cv.ready
        cv.recv(timeout=TIMEOUT)
        assert 0.25 <= time.monotonic() - start < 2.0
        assert polite_conn.close_code == 1001
        assert [conn.close_code for conn, _, _ in silent] == [1006, 1006]
        assert server.connections == frozenset()
        for _, _, peer in silent + [(None, None, polite)]:
            peer.close()

    def test_sigterm_stops_echo_server_promptly_with_a_client_connected(self):
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "echo_server.py"),
                                 "--port", "0"], stderr=subprocess.PIPE, text=True, env=env)
        try:
            line = proc.stderr.readline()
            port = int(line.rsplit(":", 1)[1].strip("/\n"))
            sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            sock.sendall(wire.upgrade_request())
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(4096)
            head, _, data = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            sock.sendall(wire.frame(wire.TEXT, b"hello"))
            while len(wire.parse_frames(data)[0]) < 1:
                data += sock.recv(4096)
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            while len(wire.parse_frames(data)[0]) < 2:
                chunk = sock.recv(4096)
                assert chunk, "EOF before the Close frame"
                data += chunk
            frames, _ = wire.parse_frames(data)
            assert frames[0] == (True, wire.TEXT, b"hello")
            assert close_code_of(frames[1]) == 1001
            sock.sendall(wire.frame(wire.CLOSE, wire.close_payload(1001)))
            assert proc.wait(timeout=TIMEOUT) == 0
            assert time.monotonic() - start < 3.0
            sock.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()


# -- hostile handshakes ---------------------------------------------------------


class TestHostileHandshake:
    def test_header_flood_is_400(self, loop):
        flood = "".join(f"X-Flood-{i}: a\r\n" for i in range(500))
        err = rejected(loop, evws.Server(loop=loop), wire.upgrade_request(extra=flood), 400)
        assert "too many" in str(err)

    def test_header_bytes_flood_is_431_and_buffering_is_bounded(self, loop):
        server = evws.Server(loop=loop, max_handshake_size=4096)
        cv, ours, peer = establish_raw(loop, server, b"GET / HTTP/1.1\r\n")
        sent = 0
        # An endless stream of small fields: the parser keeps at most max_size.
        while not cv.ready and sent < (1 << 20):
            peer.send(b"X-A: b\r\n" * 64)
            sent += 512
            loop.run_once(0)
        with pytest.raises(evws.HandshakeError) as info:
            cv.recv(timeout=TIMEOUT)
        assert info.value.status == 431
        assert sent < 64 * 1024  # refused soon after the limit, not after the whole flood
        ours.close()
        peer.close()

    def test_huge_header_line_is_431(self, loop):
        line = "X-Huge: " + "a" * 40000 + "\r\n"
        rejected(loop, evws.Server(loop=loop), wire.upgrade_request(extra=line), 431)

    @pytest.mark.parametrize("extra", [
        "Content-Length: 5\r\n",
        "Transfer-Encoding: chunked\r\n",
        "Content-Length: 0\r\nContent-Length: 5\r\n",
    ])
    def test_body_on_the_upgrade_request_is_400(self, loop, extra):
        data = wire.upgrade_request(extra=extra) + b"hello"
        err = rejected(loop, evws.Server(loop=loop), data, 400)
        assert "body" in str(err)

    def test_duplicated_key_is_400(self, loop):
        data = wire.upgrade_request(extra="Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n")
        err = rejected(loop, evws.Server(loop=loop), data, 400)
        assert "more than one Sec-WebSocket-Key" in str(err)

    @pytest.mark.parametrize("raw", [
        b"X-Name: caf\xc3\xa9\r\n",     # UTF-8 in a value
        b"X-Caf\xc3\xa9: yes\r\n",      # ... in a name
        b"X-Nul: a\x00b\r\n",           # a control byte
        b"X-Bare: a\rb\r\n",            # a lone CR inside a value
    ])
    def test_non_ascii_or_control_bytes_in_headers_are_400(self, loop, raw):
        data = wire.upgrade_request().replace(b"\r\n\r\n", b"\r\n" + raw + b"\r\n")
        rejected(loop, evws.Server(loop=loop), data, 400)

    def test_non_ascii_request_target_is_400(self, loop):
        data = wire.upgrade_request().replace(b"GET / ", b"GET /caf\xc3\xa9 ")
        rejected(loop, evws.Server(loop=loop), data, 400)

    @pytest.mark.parametrize("how", ["header", "cookie", "subprotocol", "not_a_str"])
    def test_response_splitting_from_request_data_is_refused_before_writing(self, loop, how):
        from urllib.parse import unquote

        def handshake(request, response):
            # Request data a callback might echo; percent-decoding makes CR/LF.
            value = unquote(request.query)
            if how == "header":
                response.headers["X-Echo"] = value
            elif how == "cookie":
                response.cookies["session"] = value
            elif how == "subprotocol":
                response.subprotocol = value
            else:
                response.headers = {"X-Count": 3}  # a plain dict with a non-str value
            return response
        server = evws.Server(loop=loop, handshake=handshake)
        path = "/?a%0d%0aSet-Cookie:%20admin=1%0d%0a%0d%0a<script>"
        cv, ours, peer = establish_raw(loop, server, wire.upgrade_request(path))
        with pytest.raises(evws.HandshakeError) as info:
            cv.recv(timeout=TIMEOUT)
        assert info.value.status == 500
        assert info.value.response.startswith(b"HTTP/1.1 500 ")
        ours.close()
        peer.pump(lambda: peer.eof)
        assert peer.buffer == b""  # not a byte was written before the refusal
        peer.close()


# -- hostile frames -------------------------------------------------------------


def raw_header(first: int, length_field: bytes) -> bytes:
    return bytes([first]) + length_field + wire.MASK


class TestHostileFrames:
    def test_64_bit_length_with_the_top_bit_set_is_1002(self, loop):
        conn, _, peer = open_connection(loop, evws.Server(loop=loop))
        seen = finished(conn)
        peer.send(raw_header(0x82, bytes([0x80 | 127]) + struct.pack("!Q", 1 << 63)))
        frames = peer.read_until_eof()
        assert close_code_of(frames[-1]) == 1002
        run_until(loop, lambda: seen)
        assert seen == [1006]
        peer.close()

    @pytest.mark.parametrize("limit, code", [(1 << 20, 1009), (4096, 1009)])
    def test_claimed_length_of_2_63_minus_1_fails_at_once(self, loop, limit, code):
        conn, _, peer = open_connection(loop, evws.Server(loop=loop, max_payload_size=limit))
        peer.send(raw_header(0x82, bytes([0x80 | 127]) + struct.pack("!Q", (1 << 63) - 1)))
        frames = peer.read_until_eof(timeout=2)  # from the header alone, no payload sent
        assert close_code_of(frames[-1]) == code
        peer.close()

    def test_endless_continuation_frames_hit_max_fragments(self, loop):
        server = evws.Server(loop=loop, max_fragments=1000)
        conn, _, peer = open_connection(loop, server)
        seen = finished(conn)
        empty_cont = wire.frame(wire.CONT, b"", fin=False)
        peer.send(wire.frame(wire.TEXT, b"a", fin=False) + empty_cont * 998)
        loop.run_once(0)
        assert not seen
        peer.send(empty_cont * 10)
        frames = peer.read_until_eof()
        assert close_code_of(frames[-1]) == 1009
        run_until(loop, lambda: seen)
        peer.close()

    def test_default_max_fragments_passes_autobahn_9_3_1(self, loop):
        """4 MiB in 64-byte fragments (65536 frames) must still be accepted by default."""
        server = evws.Server(loop=loop, max_payload_size=None)
        assert server.max_fragments >= 65536
        conn, _, peer = open_connection(loop, server)
        got = []
        conn.on("each_message", lambda c, m: got.append(m.body))
        zero = b"\0\0\0\0"  # a zero mask key leaves the payload as it is
        chunk = b"x" * 64
        first = bytes([0x02, 0x80 | 64]) + zero + chunk
        middle = bytes([0x00, 0x80 | 64]) + zero + chunk
        last = bytes([0x80, 0x80 | 64]) + zero + chunk
        peer.send(first + middle * 65534 + last)
        run_until(loop, lambda: got, timeout=20)
        assert got == [b"x" * (4 << 20)]
        assert not conn.finished
        conn.close()
        peer.close()

    def test_ping_flood_without_reading_is_bounded_by_high_water(self, loop):
        limit = 64 * 1024
        server = evws.Server(loop=loop, high_water=limit, ping_interval=None)
        ours, theirs = socket.socketpair()
        for s in (ours, theirs):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        peer = Peer(loop, theirs)
        cv = server.establish(ours)
        peer.send(wire.upgrade_request())
        conn = cv.recv(timeout=TIMEOUT)
        peer.read_response_head()
        ping = wire.frame(wire.PING, b"p" * 125)
        batch = ping * 64
        pings = 0
        high = 0
        blocked_turns = 0
        deadline = time.monotonic() + TIMEOUT
        # Flood until the server stops reading (our sends stay blocked).
        while blocked_turns < 20:
            assert time.monotonic() < deadline, "the server never stopped reading"
            try:
                n = theirs.send(batch)
            except BlockingIOError:
                n = 0
            if n:
                pings += n  # bytes; converted below
                blocked_turns = 0
                if n < len(batch):
                    # finish the partial ping so frames stay whole
                    rest = batch[n:n + (len(ping) - n % len(ping)) % len(ping)]
                    while rest:
                        try:
                            k = theirs.send(rest)
                            rest = rest[k:]
                            pings += k
                        except BlockingIOError:
                            loop.run_once(0.01)
            else:
                blocked_turns += 1
            loop.run_once(0.005)
            high = max(high, conn.stream.buffered_amount)
        assert conn._read_paused
        # queued output stays within the limit plus one pong: parsing pauses too
        assert high <= limit + len(ping), high
        assert pings // len(ping) > 1000  # it really was a flood
        # Now read: the server resumes and every ping gets its pong, none lost.
        sent = pings // len(ping)
        count = 0

        def all_pongs():
            nonlocal count
            frames, rest = wire.parse_frames(peer.buffer)
            peer.buffer = rest
            count += sum(1 for f in frames if f[1] == wire.PONG)
            return count >= sent
        peer.pump(all_pongs, timeout=TIMEOUT)
        assert count == sent and not conn.finished
        assert not conn._read_paused
        conn.close()
        peer.close()


# -- the Origin check example (cross-site WebSocket hijacking) ----------------------


class TestOriginCheckExample:
    ALLOWED = "https://app.example.com"

    def _handshake(self, port, origin):
        extra = f"Origin: {origin}\r\n" if origin is not None else ""
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(wire.upgrade_request(extra=extra))
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            if data.startswith(b"HTTP/1.1 101 "):
                sock.sendall(wire.frame(wire.TEXT, b"hi"))
                data = data.partition(b"\r\n\r\n")[2]
                while not wire.parse_frames(data)[0]:
                    data += sock.recv(4096)
                return 101, wire.parse_frames(data)[0][0][2]
            return int(data.split(b" ", 2)[1]), data

    def test_allowed_foreign_and_missing_origins(self):
        from tests.servers import example_server
        with example_server("origin_check.py", "--allow-origin", self.ALLOWED) as port:
            assert self._handshake(port, self.ALLOWED) == (101, b"hi")
            assert self._handshake(port, "HTTPS://APP.EXAMPLE.COM") == (101, b"hi")
            for hostile in ("https://evil.example", "https://app.example.com.evil.net",
                            "http://app.example.com", "null"):
                status, body = self._handshake(port, hostile)
                assert status == 403, hostile
            # no Origin: not a browser, accepted unless --require-origin
            assert self._handshake(port, None) == (101, b"hi")

    def test_require_origin(self):
        from tests.servers import example_server
        with example_server("origin_check.py", "--allow-origin", self.ALLOWED,
                            "--require-origin") as port:
            assert self._handshake(port, None)[0] == 403
            assert self._handshake(port, self.ALLOWED) == (101, b"hi")
