"""Keepalive: ping_interval / ping_timeout on Connection, driven through Server(...).

Short intervals (0.05-0.2 s) keep these fast; every wait is bounded.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

import evws
from evws.connection import DEFAULT_PING_INTERVAL, DEFAULT_PING_TIMEOUT
from tests import wire
from tests.conftest import TIMEOUT, open_connection, reset, run_until


def finished_log(conn):
    seen = []
    conn.on("finish", lambda c: seen.append(c.close_code))
    return seen


def active_timers(loop):
    return [t for _, _, t in loop._timers if t.active]


def answer_pings(peer, frames):
    """Answer each Ping in ``frames`` with a masked Pong carrying its payload."""
    for _, opcode, payload in frames:
        if opcode == wire.PING:
            peer.send(wire.frame(wire.PONG, payload))


def test_defaults_are_those_of_websockets():
    server = evws.Server(loop=evws.Loop())
    assert (server.ping_interval, server.ping_timeout) == (20.0, 20.0)
    assert (DEFAULT_PING_INTERVAL, DEFAULT_PING_TIMEOUT) == (20.0, 20.0)


def test_pings_have_unique_payloads_and_pongs_give_latency(loop):
    server = evws.Server(loop=loop, ping_interval=0.05, ping_timeout=1.0)
    conn, _, peer = open_connection(loop, server)
    assert conn.latency is None
    payloads = []
    for _ in range(3):
        frames = peer.read_frames(1, timeout=2)
        assert [f[1] for f in frames] == [wire.PING]
        payloads.append(frames[0][2])
        answer_pings(peer, frames)
        run_until(loop, lambda: conn._ping_payload is None, timeout=2)
        assert conn.latency is not None and 0 <= conn.latency < 1.0
    assert len(set(payloads)) == 3 and all(payloads)
    assert conn.is_write_open and not conn.finished
    conn.close()


def test_peer_that_stops_answering_is_failed_with_1011(loop):
    server = evws.Server(loop=loop, ping_interval=0.05, ping_timeout=0.15)
    conn, _, peer = open_connection(loop, server)
    seen = finished_log(conn)
    start = time.monotonic()
    frames = peer.read_frames(2, timeout=3)  # the Ping, never answered, then the Close
    assert [f[1] for f in frames] == [wire.PING, wire.CLOSE]
    assert struct.unpack("!H", frames[1][2][:2])[0] == 1011
    run_until(loop, lambda: seen, timeout=3)
    assert time.monotonic() - start < 2.0
    assert seen == [1006]  # no Close came back: 1006 for us, 1011 was what we sent
    assert isinstance(conn.close_error, TimeoutError)
    assert conn.protocol.close_sent[0] == 1011
    peer.pump(lambda: peer.eof, timeout=3)  # and TCP is closed at once, not after close_timeout
    peer.close()
    run_until(loop, lambda: conn.stream.closed)
    assert active_timers(loop) == []


def test_unsolicited_or_wrong_pong_is_ignored(loop):
    server = evws.Server(loop=loop, ping_interval=0.05, ping_timeout=0.2)
    conn, _, peer = open_connection(loop, server)
    seen = finished_log(conn)
    peer.send(wire.frame(wire.PONG, b"heartbeat"))  # unsolicited: ignored, no error
    ping = peer.read_frames(1, timeout=2)[0]
    assert ping[1] == wire.PING
    peer.send(wire.frame(wire.PONG, ping[2] + b"x"))  # not the payload we sent
    run_until(loop, lambda: seen, timeout=3)
    assert conn.latency is None
    assert conn.protocol.close_sent[0] == 1011


def test_user_ping_and_its_pong_do_not_count(loop):
    server = evws.Server(loop=loop, ping_interval=None)
    conn, _, peer = open_connection(loop, server)
    conn.send(evws.Message(b"mine", opcode=wire.PING))
    assert peer.read_frames(1) == [(True, wire.PING, b"mine")]
    peer.send(wire.frame(wire.PONG, b"mine"))
    peer.send(wire.frame(wire.TEXT, b"after"))
    got = []
    conn.on("each_message", lambda c, m: got.append(m.body))
    run_until(loop, lambda: got)
    assert conn.latency is None and not conn.finished


def test_none_disables_keepalive(loop):
    server = evws.Server(loop=loop, ping_interval=None)
    conn, _, peer = open_connection(loop, server)
    assert conn._keepalive is None
    deadline = time.monotonic() + 0.3  # several would-be intervals of the other tests
    while time.monotonic() < deadline:
        loop.run_once(0.02)
    peer._pull()
    assert peer.buffer == b"" and not conn.finished
    conn.close()


def test_ping_timeout_none_pings_but_never_fails(loop):
    server = evws.Server(loop=loop, ping_interval=0.05, ping_timeout=None)
    conn, _, peer = open_connection(loop, server)
    frames = peer.read_frames(1, timeout=2)
    assert frames[0][1] == wire.PING
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        loop.run_once(0.02)
    assert not conn.finished
    peer._pull()
    # one Ping outstanding at a time: nothing more was sent while it is unanswered
    assert wire.parse_frames(peer.buffer)[0] == []


def test_no_ping_after_close_started(loop):
    server = evws.Server(loop=loop, ping_interval=0.05, ping_timeout=5, close_timeout=0.5)
    conn, _, peer = open_connection(loop, server)
    conn.close(1000)
    frames = peer.read_until_eof(timeout=3)
    assert [f[1] for f in frames] == [wire.CLOSE]


@pytest.mark.parametrize("how", ["peer_close", "our_close", "eof", "rst", "handler_error"])
def test_every_teardown_path_cancels_the_timers(loop, how):
    server = evws.Server(loop=loop, ping_interval=0.05, ping_timeout=0.5, close_timeout=1)
    conn, _, peer = open_connection(loop, server)
    seen = finished_log(conn)
    answer_pings(peer, peer.read_frames(1, timeout=2))  # keepalive is running
    if how == "peer_close":
        peer.send(wire.frame(wire.CLOSE, wire.close_payload(1000)))
    elif how == "our_close":
        conn.close()
        peer.read_frames(1)
        peer.send(wire.frame(wire.CLOSE, wire.close_payload(1000)))
    elif how == "eof":
        peer.sock.shutdown(socket.SHUT_WR)
    elif how == "rst":
        reset(peer.sock)
    else:
        def boom(c, m):
            raise ValueError("boom")
        conn.on("each_message", boom)
        peer.send(wire.frame(wire.TEXT, b"x"))
    run_until(loop, lambda: seen)
    assert len(seen) == 1
    assert conn._keepalive is None and conn._pong_timer is None and conn._close_timer is None
    if how != "rst":
        peer.close()  # so the server's lingering close sees EOF at once
    run_until(loop, lambda: conn.stream.closed)
    assert active_timers(loop) == []


def test_keepalive_with_a_real_client_over_tcp(loop):
    """websockets answers our Pings by itself: latency gets measured, nothing fails."""
    sync_client = pytest.importorskip("websockets.sync.client")
    server = evws.Server(loop=loop, ping_interval=0.05, ping_timeout=0.5)
    conns = []

    def on_accept(sock, host, port):
        server.establish(sock).cb(lambda cv: conns.append(cv.recv()))

    listener = server.listen("127.0.0.1", 0, on_accept)
    result = {}

    def client():
        with sync_client.connect(f"ws://127.0.0.1:{listener.port}/", open_timeout=TIMEOUT,
                                 ping_interval=None) as ws:
            ws.recv(timeout=TIMEOUT)  # wait for the server's go-ahead
            result["ok"] = True

    thread = threading.Thread(target=client)
    thread.start()
    try:
        run_until(loop, lambda: conns and conns[0].latency is not None, timeout=3)
        first = conns[0].latency
        run_until(loop, lambda: conns[0].latency != first, timeout=3)  # measured again
        conns[0].send("go")
        run_until(loop, lambda: not thread.is_alive(), timeout=TIMEOUT)
    finally:
        thread.join(TIMEOUT)
        listener.close()
    assert result == {"ok": True}
    run_until(loop, lambda: conns[0].finished)
    assert conns[0].close_code == 1000


def test_connections_share_one_ticker_that_stops_with_the_last(loop):
    """One timer per loop and interval pings them all (issue 4: no timer per idle connection)."""
    server = evws.Server(loop=loop, ping_interval=0.08, ping_timeout=1.0)
    opened = [open_connection(loop, server) for _ in range(3)]
    run_until(loop, lambda: all(conn._keepalive is not None for conn, _, _ in opened))
    assert len(active_timers(loop)) == 1
    ticker = opened[0][0]._keepalive
    assert all(conn._keepalive is ticker for conn, _, _ in opened) and ticker.members == 3
    for conn, _, peer in opened:  # each one still gets its own Pings, answered or not
        frames = peer.read_frames(1, timeout=2)
        assert frames[0][1] == wire.PING
        answer_pings(peer, frames)
        run_until(loop, lambda conn=conn: conn.latency is not None, timeout=2)
    for conn, _, peer in opened:
        conn.close()
        peer.read_frames(1)
        peer.send(wire.frame(wire.CLOSE, wire.close_payload(1000)))
        run_until(loop, lambda conn=conn: conn.finished)
        peer.close()
    assert ticker.members == 0
    run_until(loop, lambda: all(conn.stream.closed for conn, _, _ in opened))
    assert active_timers(loop) == []


def test_first_ping_comes_within_one_interval(loop):
    server = evws.Server(loop=loop, ping_interval=0.2, ping_timeout=1.0)
    first, _, _ = open_connection(loop, server)
    run_until(loop, lambda: first._keepalive is not None)  # the ticker runs
    later = time.monotonic() + 0.05
    run_until(loop, lambda: time.monotonic() > later)  # the next one joins mid-period
    conn, _, peer = open_connection(loop, server)
    run_until(loop, lambda: conn._keepalive is not None)
    start = time.monotonic()
    assert peer.read_frames(1, timeout=2)[0][1] == wire.PING
    elapsed = time.monotonic() - start
    assert 0.2 * (7 / 8) - 0.03 <= elapsed <= 0.2 + 0.1
    conn.close()
    first.close()
