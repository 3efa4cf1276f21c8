"""Connection over real socketpairs: frames, fragmentation, limits, closing, events.

The peer's bytes are built by hand in tests/wire.py; what the server sends is
split by the test's own parser.
"""

from __future__ import annotations

import logging
import struct

import pytest

import evws
from tests import wire
from tests.conftest import open_connection, run_until


@pytest.fixture
def server(loop):
    return evws.Server(loop=loop, close_timeout=1.0)


def echo_pair(loop, server):
    conn, _, peer = open_connection(loop, server)
    conn.on("each_message", lambda c, m: c.send(m))
    return conn, peer


def record(conn):
    """Attach recorders for every event; return the dict of lists."""
    seen = {"message": [], "finish": [], "parse_error": []}
    conn.on("each_message", lambda c, m: seen["message"].append(m))
    conn.on("finish", lambda c: seen["finish"].append(c))
    conn.on("parse_error", lambda c, text: seen["parse_error"].append(text))
    return seen


def expect_failure(loop, peer, seen, code: int):
    """The server must send a close with ``code`` and then end TCP; finish fires once."""
    frames = peer.read_until_eof()
    assert frames[-1][1] == wire.CLOSE, frames
    assert struct.unpack("!H", frames[-1][2][:2])[0] == code
    run_until(loop, lambda: seen["finish"])
    assert len(seen["finish"]) == 1
    return frames


class TestMessages:
    def test_text_and_binary_echo(self, loop, server):
        conn, peer = echo_pair(loop, server)
        peer.send(wire.frame(wire.TEXT, "héllo".encode()) + wire.frame(wire.BINARY, b"\x00\xff"))
        assert peer.read_frames(2) == [(True, wire.TEXT, "héllo".encode()),
                                       (True, wire.BINARY, b"\x00\xff")]

    @pytest.mark.parametrize("size, form", [(0, 0), (125, 0), (126, 2), (65535, 2), (65536, 8),
                                            (70000, 8), (5, 2), (5, 8)])
    def test_lengths(self, loop, server, size, form):
        conn, peer = echo_pair(loop, server)
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        peer.send(wire.frame(wire.BINARY, payload, length_bytes=form))
        assert peer.read_frames(1) == [(True, wire.BINARY, payload)]

    def test_one_mebibyte(self, loop, server):
        conn, peer = echo_pair(loop, server)
        payload = bytes(range(256)) * 4096
        peer.send(wire.frame(wire.BINARY, payload))
        assert peer.read_frames(1, timeout=20)[0][2] == payload

    def test_fragmented_with_ping_between(self, loop, server):
        conn, peer = echo_pair(loop, server)
        peer.send(wire.frame(wire.TEXT, b"frag", fin=False)
                  + wire.frame(wire.PING, b"p!")
                  + wire.frame(wire.CONT, b"men", fin=False)
                  + wire.frame(wire.CONT, b"ted"))
        assert peer.read_frames(2) == [(True, wire.PONG, b"p!"), (True, wire.TEXT, b"fragmented")]

    def test_every_ping_gets_a_pong(self, loop, server):
        conn, peer = echo_pair(loop, server)
        peer.send(b"".join(wire.frame(wire.PING, bytes([i])) for i in range(5)))
        assert peer.read_frames(5) == [(True, wire.PONG, bytes([i])) for i in range(5)]

    def test_send_message_objects_and_types(self, loop, server):
        conn, _, peer = open_connection(loop, server)
        conn.send("t")
        conn.send(b"b")
        conn.send(bytearray(b"ba"))
        conn.send(memoryview(b"mv"))
        conn.send(evws.Message(b"m", 2))
        conn.send(evws.Message(b"x", 9))
        assert peer.read_frames(6) == [(True, 1, b"t"), (True, 2, b"b"), (True, 2, b"ba"),
                                       (True, 2, b"mv"), (True, 2, b"m"), (True, 9, b"x")]
        with pytest.raises(TypeError):
            conn.send(42)

    def test_send_close_message_is_refused(self, loop, server):
        conn, _, peer = open_connection(loop, server)

        class Sub(evws.Message):
            __slots__ = ()

        class Text(str):
            pass

        for message in (evws.Message(b"\x03\xe8", 8), Sub(b"", 8)):
            with pytest.raises(ValueError, match="Connection.close"):
                conn.send(message)
        conn.send(Sub(b"s", 2))
        conn.send(Text("sub"))
        assert peer.read_frames(2) == [(True, 2, b"s"), (True, 1, b"sub")]

    def test_large_write_does_not_block_the_loop(self, loop, server):
        conn, _, peer = open_connection(loop, server)
        payload = b"z" * (8 << 20)
        conn.send(payload)  # returns at once although the peer reads nothing yet
        assert conn.stream.buffered_amount > 0
        got = peer.read_frames(1, timeout=20)
        assert got[0][2] == payload


class TestEvents:
    def test_next_message_fires_once_and_rearms_for_the_following(self, loop, server):
        conn, _, peer = open_connection(loop, server)
        got = []

        def first(c, m):
            got.append(("first", m.body))
            c.on("next_message", lambda c, m: got.append(("second", m.body)))
        conn.on("next_message", first)
        peer.send(b"".join(wire.frame(wire.TEXT, x) for x in (b"1", b"2", b"3")))
        run_until(loop, lambda: len(got) >= 2)
        loop.run_once(0.05)
        assert got == [("first", b"1"), ("second", b"2")]

    def test_remove_listener(self, loop, server):
        conn, _, peer = open_connection(loop, server)
        got = []

        def handler(c, m):
            got.append(m.body)
        conn.on("each_message", handler)
        peer.send(wire.frame(wire.TEXT, b"a"))
        run_until(loop, lambda: got)
        conn.remove_listener("each_message", handler)
        marker = []
        conn.on("each_message", lambda c, m: marker.append(m))
        peer.send(wire.frame(wire.TEXT, b"b"))
        run_until(loop, lambda: marker)
        assert got == [b"a"]

    def test_raising_handler_closes_with_1011_only_that_connection(self, loop, server, caplog):
        bad, _, bad_peer = open_connection(loop, server)
        good, good_peer = echo_pair(loop, server)
        seen = record(bad)

        def boom(c, m):
            raise RuntimeError("handler bug")
        bad.on("each_message", boom)
        with caplog.at_level(logging.ERROR, logger="evws"):
            bad_peer.send(wire.frame(wire.TEXT, b"x"))
            frames = bad_peer.read_frames(1)
        assert frames[0][1] == wire.CLOSE and frames[0][2][:2] == struct.pack("!H", 1011)
        assert any("handler bug" in r.getMessage() or (r.exc_info and "handler bug" in str(r.exc_info[1]))
                   for r in caplog.records)
        assert seen["parse_error"] == []
        good_peer.send(wire.frame(wire.TEXT, b"still here"))
        assert good_peer.read_frames(1) == [(True, wire.TEXT, b"still here")]
        bad_peer.send(wire.frame(wire.CLOSE, wire.close_payload(1011)))
        run_until(loop, lambda: seen["finish"])

    def test_raising_finish_listener_is_logged(self, loop, server, caplog):
        conn, _, peer = open_connection(loop, server)
        conn.on("finish", lambda c: 1 / 0)
        peer.close()
        with caplog.at_level(logging.ERROR, logger="evws"):
            run_until(loop, lambda: conn.finished)
        assert any(r.exc_info and isinstance(r.exc_info[1], ZeroDivisionError) for r in caplog.records)


class TestProtocolErrors:
    @pytest.mark.parametrize("data, code", [
        (wire.frame(wire.TEXT, b"unmasked", mask=None), 1002),
        (wire.frame(wire.TEXT, b"x", rsv=4), 1002),
        (wire.frame(wire.TEXT, b"x", rsv=1), 1002),
        (wire.frame(3, b"x"), 1002),
        (wire.frame(11, b"x"), 1002),
        (wire.frame(wire.PING, b"x" * 126), 1002),
        (wire.frame(wire.PING, b"x", fin=False), 1002),
        (wire.frame(wire.CONT, b"x"), 1002),
        (wire.frame(wire.TEXT, b"a", fin=False) + wire.frame(wire.TEXT, b"b"), 1002),
        (wire.frame(wire.TEXT, b"\xff"), 1007),
        (wire.frame(wire.CLOSE, b"\x03"), 1002),
        *[(wire.frame(wire.CLOSE, wire.close_payload(c)), 1002)
          for c in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)],
        (wire.frame(wire.CLOSE, wire.close_payload(1000, b"\xff")), 1007),
    ])
    def test_fails_with_close_code(self, loop, server, data, code):
        conn, _, peer = open_connection(loop, server)
        seen = record(conn)
        peer.send(data)
        expect_failure(loop, peer, seen, code)
        assert len(seen["parse_error"]) == 1
        assert seen["message"] == []
        assert conn.close_error is not None

    def test_invalid_utf8_fails_before_the_message_ends(self, loop, server):
        conn, _, peer = open_connection(loop, server)
        seen = record(conn)
        peer.send(wire.frame(wire.TEXT, b"ok \xce", fin=False) + wire.frame(wire.CONT, b"\xff", fin=False))
        expect_failure(loop, peer, seen, 1007)  # no final fragment was ever sent

    def test_payload_too_big_from_the_header_alone(self, loop):
        server = evws.Server(loop=loop, max_payload_size=1000)
        conn, _, peer = open_connection(loop, server)
        seen = record(conn)
        head = struct.pack("!BBQ", 0x82, 0x80 | 127, 1 << 40) + wire.MASK
        peer.send(head)  # no payload follows: the header must be enough
        expect_failure(loop, peer, seen, 1009)

    def test_payload_limit_counts_the_whole_message(self, loop):
        server = evws.Server(loop=loop, max_payload_size=1000)
        conn, _, peer = open_connection(loop, server)
        seen = record(conn)
        peer.send(wire.frame(wire.BINARY, b"a" * 600, fin=False) + wire.frame(wire.CONT, b"b" * 600))
        expect_failure(loop, peer, seen, 1009)

    def test_payload_limit_none_is_unlimited(self, loop):
        server = evws.Server(loop=loop, max_payload_size=None)
        conn, peer = echo_pair(loop, server)
        assert conn.max_payload_size is None
        payload = b"q" * (2 << 20)
        peer.send(wire.frame(wire.BINARY, payload))
        assert peer.read_frames(1, timeout=20)[0][2] == payload


class TestClosing:
    @pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012,
                                      1013, 1014, 3000, 4999])
    def test_valid_close_codes_are_echoed(self, loop, server, code):
        conn, _, peer = open_connection(loop, server)
        peer.send(wire.frame(wire.CLOSE, wire.close_payload(code)))
        assert peer.read_until_eof() == [(True, wire.CLOSE, wire.close_payload(code))]
        run_until(loop, lambda: conn.finished)
        assert conn.close_code == code

    def test_peer_close_is_echoed_then_tcp_closed(self, loop, server):
        conn, _, peer = open_connection(loop, server)
        seen = record(conn)
        peer.send(wire.frame(wire.CLOSE, wire.close_payload(1001, b"going")))
        frames = peer.read_until_eof()
        assert frames == [(True, wire.CLOSE, wire.close_payload(1001))] or \
            frames == [(True, wire.CLOSE, wire.close_payload(1001, b"going"))]
        run_until(loop, lambda: seen["finish"])
        assert conn.close_code == 1001 and conn.close_reason == "going"
        assert conn.close_error is None
        assert len(seen["finish"]) == 1 and seen["parse_error"] == []

    def test_close_without_code(self, loop, server):
        conn, _, peer = open_connection(loop, server)
        seen = record(conn)
        peer.send(wire.frame(wire.CLOSE))
        frames = peer.read_until_eof()
        assert frames == [(True, wire.CLOSE, b"")]
        run_until(loop, lambda: seen["finish"])
        assert conn.close_code == 1005

    def test_server_close_flushes_queued_messages_first(self, loop, server):
        conn, _, peer = open_connection(loop, server)
        seen = record(conn)
        big = b"m" * (4 << 20)
        conn.send(big)
        conn.send("last words")
        conn.close(4000, "done")
        with pytest.raises(evws.ConnectionClosed):
            conn.send("too late")
        frames = peer.read_frames(3, timeout=20)
        assert [f[1] for f in frames] == [wire.BINARY, wire.TEXT, wire.CLOSE]
        assert frames[0][2] == big
        assert frames[2][2] == wire.close_payload(4000, b"done")
        peer.send(wire.frame(wire.CLOSE, wire.close_payload(4000)))
        peer.read_until_eof()
        run_until(loop, lambda: seen["finish"])
        assert conn.close_code == 4000 and len(seen["finish"]) == 1

    def test_peer_that_never_answers_is_dropped_after_close_timeout(self, loop):
        server = evws.Server(loop=loop, close_timeout=0.3)
        conn, _, peer = open_connection(loop, server)
        seen = record(conn)
        conn.close()
        assert peer.read_frames(1)[0][1] == wire.CLOSE
        run_until(loop, lambda: seen["finish"], timeout=3)
        assert conn.close_code == 1006
        peer.pump(lambda: peer.eof)

    def test_eof_without_close_is_1006(self, loop, server):
        conn, _, peer = open_connection(loop, server)
        seen = record(conn)
        peer.sock.shutdown(2)
        run_until(loop, lambda: seen["finish"])
        assert conn.close_code == 1006
        assert len(seen["finish"]) == 1

    def test_data_after_close_is_ignored(self, loop, server):
        conn, _, peer = open_connection(loop, server)
        seen = record(conn)
        peer.send(wire.frame(wire.CLOSE, wire.close_payload(1000)) + wire.frame(wire.TEXT, b"late"))
        peer.read_until_eof()
        run_until(loop, lambda: seen["finish"])
        assert seen["message"] == []

    def test_close_twice_and_finish_once(self, loop, server):
        conn, _, peer = open_connection(loop, server)
        seen = record(conn)
        conn.close()
        conn.close(1001)
        peer.read_frames(1)
        peer.send(wire.frame(wire.CLOSE, wire.close_payload(1000)))
        run_until(loop, lambda: seen["finish"])
        loop.run_once(0.05)
        assert len(seen["finish"]) == 1
        assert not conn.is_read_open and not conn.is_write_open


class TestOrdering:
    def test_echo_of_a_message_precedes_the_failure_the_next_frame_causes(self, loop, server):
        conn, peer = echo_pair(loop, server)
        seen = record(conn)
        peer.send(wire.frame(wire.TEXT, b"Hello, world!") + wire.frame(wire.TEXT, b"x", rsv=2)
                  + wire.frame(wire.PING))
        frames = expect_failure(loop, peer, seen, 1002)
        assert frames[0] == (True, wire.TEXT, b"Hello, world!")
        assert [f[1] for f in frames] == [wire.TEXT, wire.CLOSE]  # no pong after the failure

    def test_close_after_messages_in_one_segment(self, loop, server):
        conn, peer = echo_pair(loop, server)
        seen = record(conn)
        peer.send(wire.frame(wire.TEXT, b"a") + wire.frame(wire.TEXT, b"b")
                  + wire.frame(wire.CLOSE, wire.close_payload(1000)))
        frames = peer.read_until_eof()
        assert frames == [(True, 1, b"a"), (True, 1, b"b"), (True, 8, wire.close_payload(1000))]
        run_until(loop, lambda: seen["finish"])


def test_listeners_keep_pyee_semantics(loop):
    """Connection stores listeners in its own compact mapping; pyee's API still works."""
    server_side, client_side = evws.connection_pair(loop)
    got = []

    def one(c, m):
        got.append(("one", m.body))

    def two(c, m):
        got.append(("two", m.body))
    server_side.on("each_message", one)
    server_side.on("each_message", two)
    server_side.on("each_message", one)  # again: replaces, keeps its place (pyee's dict semantics)
    server_side.once("each_message", lambda c, m: got.append(("once", m.body)))
    assert server_side.listeners("each_message")[:2] == [one, two]
    assert len(server_side.listeners("each_message")) == 3
    client_side.send(b"a")
    run_until(loop, lambda: len(got) >= 3)
    server_side.remove_listener("each_message", one)
    client_side.send(b"b")
    run_until(loop, lambda: len(got) >= 4)
    assert got == [("one", b"a"), ("two", b"a"), ("once", b"a"), ("two", b"b")]
    server_side.remove_listener("each_message", two)
    assert "each_message" not in server_side.event_names()
    server_side.remove_all_listeners()
    server_side.on("finish", lambda c: got.append("finish"))
    client_side.close()
    run_until(loop, lambda: got[-1] == "finish")
