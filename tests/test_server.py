"""Server.establish / establish_wsgi over real socketpairs: the handshake contract of shared/API.md."""

from __future__ import annotations

import socket

import pytest

import evws
from tests import wire
from tests.conftest import TIMEOUT, Peer, establish_raw, open_connection, run_until


def expect_rejection(loop, server, data: bytes, status: int) -> evws.HandshakeError:
    cv, ours, peer = establish_raw(loop, server, data)
    with pytest.raises(evws.HandshakeError) as info:
        cv.recv(timeout=TIMEOUT)
    err = info.value
    assert err.status == status, err
    assert err.response.startswith(f"HTTP/1.1 {status} ".encode()), err.response
    # The socket is left open and untouched: the caller can still answer on it.
    ours.sendall(err.response)
    peer.pump(lambda: peer.buffer.startswith(err.response))
    ours.close()
    peer.close()
    return err


class TestOpeningHandshake:
    def test_accept_key_and_headers(self, loop):
        conn, results, peer = open_connection(loop, evws.Server(loop=loop))
        assert results == ()
        # read_response_head consumed it; re-run with a fresh pair to look at the bytes
        ours, theirs = socket.socketpair()
        p = Peer(loop, theirs)
        cv = evws.Server(loop=loop).establish(ours)
        p.send(wire.upgrade_request())
        cv.recv(timeout=TIMEOUT)
        head = p.read_response_head().decode().lower()
        assert head.startswith("http/1.1 101 ")
        assert f"sec-websocket-accept: {wire.ACCEPT}".lower() in head
        assert "upgrade: websocket" in head
        assert "connection: upgrade" in head
        assert conn.request.resource_name == "/"
        assert not conn.masked

    @pytest.mark.parametrize("chunk", [1, 7, 100])
    def test_request_in_small_pieces(self, loop, chunk):
        conn, _, peer = open_connection(loop, evws.Server(loop=loop), wire.upgrade_request("/a?b=c"),
                                        chunk=chunk)
        assert conn.request.path == "/a"
        assert conn.request.query == "b=c"

    @pytest.mark.parametrize("attach", ["cb", "recv"])
    def test_frames_in_the_same_segment_as_the_request_are_delivered(self, loop, attach):
        server = evws.Server(loop=loop)
        ours, theirs = socket.socketpair()
        peer = Peer(loop, theirs)
        got = []
        cv = server.establish(ours)
        data = (wire.upgrade_request() + wire.frame(wire.TEXT, b"first")
                + wire.frame(wire.BINARY, b"\x00second"))
        peer.send(data)
        if attach == "cb":
            cv.cb(lambda cv: cv.recv().on("each_message", lambda c, m: got.append(m)))
            run_until(loop, lambda: cv.ready)
        else:
            conn = cv.recv(timeout=TIMEOUT)
            conn.on("each_message", lambda c, m: got.append(m))
        run_until(loop, lambda: len(got) == 2)
        assert got == [evws.Message("first"), evws.Message(b"\x00second", 2)]

    def test_peer_address_is_on_the_request(self, loop):
        listener = evws.tcp_server("127.0.0.1", 0, lambda *a: accepted.append(a), loop=loop)
        accepted: list = []
        client = socket.create_connection(("127.0.0.1", listener.port), timeout=TIMEOUT)
        run_until(loop, lambda: accepted)
        sock, host, port = accepted[0]
        cv = evws.Server(loop=loop).establish(sock)
        client.sendall(wire.upgrade_request())
        conn = cv.recv(timeout=TIMEOUT)
        assert conn.request.peer[:2] == (host, port) == client.getsockname()[:2]
        client.close()
        listener.close()


class TestRejections:
    def test_malformed_request_is_400(self, loop):
        expect_rejection(loop, evws.Server(loop=loop), b"GARBAGE\r\n\r\n", 400)

    def test_missing_key_is_400(self, loop):
        data = wire.upgrade_request().replace(b"Sec-WebSocket-Key", b"X-Key")
        expect_rejection(loop, evws.Server(loop=loop), data, 400)

    def test_other_version_is_426(self, loop):
        err = expect_rejection(loop, evws.Server(loop=loop), wire.upgrade_request(version="8"), 426)
        assert b"\r\nsec-websocket-version: 13\r\n" in err.response.lower()

    def test_oversized_head_is_431_without_reading_it_all(self, loop):
        server = evws.Server(loop=loop, max_handshake_size=1024)
        data = b"GET / HTTP/1.1\r\n" + b"X-Filler: " + b"a" * 4000 + b"\r\n"
        err = expect_rejection(loop, server, data, 431)
        assert err.status == 431

    def test_eof_before_the_request_croaks(self, loop):
        ours, theirs = socket.socketpair()
        cv = evws.Server(loop=loop).establish(ours)
        theirs.sendall(b"GET / HTTP/1.1\r\n")
        theirs.close()
        with pytest.raises(evws.HandshakeError):
            cv.recv(timeout=TIMEOUT)
        ours.close()

    def test_handshake_timeout(self, loop):
        ours, theirs = socket.socketpair()
        cv = evws.Server(loop=loop, handshake_timeout=0.2).establish(ours)
        theirs.sendall(b"GET / HTTP/1.1\r\n")
        with pytest.raises(evws.HandshakeError) as info:
            cv.recv(timeout=TIMEOUT)
        assert info.value.status == 408
        ours.close()
        theirs.close()


class TestHandshakeCallback:
    def test_extra_results_come_out_of_recv(self, loop):
        def handshake(request, response):
            return response, "a", 2
        conn, results, _ = open_connection(loop, evws.Server(handshake=handshake, loop=loop))
        assert results == ("a", 2)
        assert isinstance(conn, evws.Connection)

    def test_response_alone(self, loop):
        server = evws.Server(handshake=lambda req, res: res, loop=loop)
        _, results, _ = open_connection(loop, server)
        assert results == ()

    def test_subprotocol_is_agreed(self, loop):
        def handshake(request, response):
            assert request.subprotocols == ["chat", "superchat"]
            response.subprotocol = "superchat"
            return response
        req = wire.upgrade_request(extra="Sec-WebSocket-Protocol: chat, superchat\r\n")
        ours, theirs = socket.socketpair()
        peer = Peer(loop, theirs)
        cv = evws.Server(handshake=handshake, loop=loop).establish(ours)
        peer.send(req)
        conn = cv.recv(timeout=TIMEOUT)
        head = peer.read_response_head().lower()
        assert b"\r\nsec-websocket-protocol: superchat\r\n" in head
        assert conn.subprotocol == "superchat"

    def test_raw_response_is_written_verbatim(self, loop):
        raw = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Accept: {wire.ACCEPT}\r\nX-Custom: yes\r\n\r\n")
        ours, theirs = socket.socketpair()
        peer = Peer(loop, theirs)
        cv = evws.Server(handshake=lambda req, res: (raw, 42), loop=loop).establish(ours)
        peer.send(wire.upgrade_request())
        conn, extra = cv.recv(timeout=TIMEOUT)
        assert extra == 42
        assert peer.read_response_head() == raw.encode()
        conn.send("still works")
        assert peer.read_frames(1) == [(True, wire.TEXT, b"still works")]

    def test_returning_none_is_an_error(self, loop):
        server = evws.Server(handshake=lambda req, res: None, loop=loop)
        cv, ours, peer = establish_raw(loop, server, wire.upgrade_request())
        with pytest.raises(evws.HandshakeError):
            cv.recv(timeout=TIMEOUT)
        ours.close()

    def test_raising_rejects_with_the_original_reachable(self, loop):
        def handshake(request, response):
            raise ValueError("Invalid format")
        err = expect_rejection(loop, evws.Server(handshake=handshake, loop=loop),
                               wire.upgrade_request(), 403)
        assert isinstance(err.__cause__, ValueError)
        assert "Invalid format" in str(err)

    def test_handshake_wins_over_validator(self, loop):
        server = evws.Server(handshake=lambda req, res: (res, "h"), validator=lambda req: "v",
                             loop=loop)
        _, results, _ = open_connection(loop, server)
        assert results == ("h",)


class TestValidator:
    @pytest.mark.parametrize("returned, expected", [
        (None, ()), ("one", ("one",)), (("a", "b"), ("a", "b")), (0, (0,)),
    ])
    def test_results(self, loop, returned, expected):
        _, results, _ = open_connection(loop, evws.Server(validator=lambda req: returned, loop=loop))
        assert results == expected

    def test_raising_rejects(self, loop):
        def validator(request):
            raise RuntimeError("nope")
        err = expect_rejection(loop, evws.Server(validator=validator, loop=loop),
                               wire.upgrade_request(), 403)
        assert isinstance(err.__cause__, RuntimeError)


class TestWsgi:
    def environ(self, sock, **extra):
        env = {
            "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/chat", "QUERY_STRING": "x=1",
            "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "example.com", "HTTP_UPGRADE": "websocket",
            "HTTP_CONNECTION": "Upgrade", "HTTP_SEC_WEBSOCKET_KEY": wire.KEY,
            "HTTP_SEC_WEBSOCKET_VERSION": "13",
        }
        env.update(extra)
        return env

    @pytest.mark.parametrize("key", ["evws.socket", "gunicorn.socket", "werkzeug.socket", None])
    def test_establish_wsgi(self, loop, key):
        ours, theirs = socket.socketpair()
        peer = Peer(loop, theirs)
        server = evws.Server(validator=lambda req: req.resource_name, loop=loop)
        if key is None:
            cv = server.establish_wsgi(self.environ(None), ours)
        else:
            cv = server.establish_wsgi(self.environ(None, **{key: ours}))
        conn, resource = cv.recv(timeout=TIMEOUT)
        assert resource == "/chat?x=1"
        assert f"Sec-WebSocket-Accept: {wire.ACCEPT}".encode() in peer.read_response_head()
        got = []
        conn.on("each_message", lambda c, m: got.append(m.body))
        peer.send(wire.frame(wire.TEXT, b"hi"))
        run_until(loop, lambda: got)
        assert got == [b"hi"]

    def test_frames_sent_with_the_request_reach_a_cb_attached_after_return(self, loop):
        ours, theirs = socket.socketpair()
        server = evws.Server(loop=loop)
        env = self.environ(None, **{"evws.socket": ours,
                                    "evws.leftover": wire.frame(wire.TEXT, b"early")})
        cv = server.establish_wsgi(env)
        assert cv.ready  # a WSGI view may recv() it at once
        got = []
        cv.cb(lambda cv: cv.recv().on("each_message", lambda c, m: got.append(m.body)))
        run_until(loop, lambda: got)
        assert got == [b"early"]
        assert env["evws.upgraded"] is True
        theirs.close()

    def test_no_socket_croaks(self, loop):
        with pytest.raises(evws.HandshakeError):
            evws.Server(loop=loop).establish_wsgi(self.environ(None)).recv(timeout=TIMEOUT)

    def test_bad_version_is_426(self, loop):
        ours, theirs = socket.socketpair()
        env = self.environ(None, HTTP_SEC_WEBSOCKET_VERSION="7")
        with pytest.raises(evws.HandshakeError) as info:
            evws.Server(loop=loop).establish_wsgi(env, ours).recv(timeout=TIMEOUT)
        assert info.value.status == 426
        ours.close()
        theirs.close()


class TestShutdown:
    def test_shutdown_closes_every_connection(self, loop):
        server = evws.Server(loop=loop)
        pairs = [open_connection(loop, server) for _ in range(3)]
        assert len(server.connections) == 3
        cv = server.shutdown(code=1001, reason="bye")
        for _conn, _, peer in pairs:
            frames = peer.read_frames(1)
            assert frames == [(True, wire.CLOSE, wire.close_payload(1001, b"bye"))]
            peer.send(wire.frame(wire.CLOSE, wire.close_payload(1001)))
        cv.recv(timeout=TIMEOUT)
        assert server.connections == frozenset()
        assert all(conn.finished for conn, _, _ in pairs)


def test_frames_arriving_while_the_establish_callback_runs_wait_for_its_handlers(loop):
    # Frames that arrive after the CondVar is ready but before the first turn
    # (here: while its callback runs a nested loop turn) are read, held, and
    # delivered in order once the handlers are attached.
    ours, theirs = socket.socketpair()
    peer = Peer(loop, theirs)
    got: list[bytes] = []

    def established(cv):
        conn = cv.recv()
        peer.send(wire.frame(wire.TEXT, b"one") + wire.frame(wire.TEXT, b"two"))
        for _ in range(3):
            loop.run_once(0)  # the stream reads the frames now
        conn.on("each_message", lambda c, m: got.append(m.body))

    evws.Server(loop=loop).establish(ours).cb(established)
    peer.send(wire.upgrade_request())
    run_until(loop, lambda: len(got) == 2)
    peer.send(wire.frame(wire.TEXT, b"three"))
    run_until(loop, lambda: len(got) == 3)
    assert got == [b"one", b"two", b"three"]
    peer.close()
