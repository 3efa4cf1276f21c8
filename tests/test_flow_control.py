"""Flow control (issue 4): ``buffered_amount``, ``high_water``/``low_water``, ``drain``.

Real socketpairs with small kernel buffers, so the server's own queue fills
after a few KiB; every wait is bounded by ``run_until``'s timeout.
"""

from __future__ import annotations

import socket
import time

import pytest

import evws
from evws.connection import DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER, Connection
from evws.protocol.websocket import WebSocketProtocol
from evws.reactor.stream import Stream
from tests import wire
from tests.conftest import TIMEOUT, Peer, run_until

SMALL_BUFFER = 16 * 1024


def small_buffers(*socks: socket.socket) -> None:
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)


def connect(loop: evws.Loop, **options) -> tuple[Connection, Peer]:  # type: ignore[no-untyped-def]
    server = evws.Server(loop=loop, ping_interval=None, **options)
    ours, theirs = socket.socketpair()
    small_buffers(ours, theirs)
    peer = Peer(loop, theirs)
    cv = server.establish(ours)
    peer.send(wire.upgrade_request())
    conn = cv.recv(timeout=TIMEOUT)
    peer.read_response_head()
    return conn, peer


def send_until_blocked(loop: evws.Loop, peer: Peer, data: bytes, on_turn) -> int:  # type: ignore[no-untyped-def]
    """Send ``data`` over and over until the server has stopped reading for 20
    turns in a row; return how many bytes went out (the last copy may be cut)."""
    total = 0
    blocked = 0
    view = memoryview(data)
    deadline = time.monotonic() + TIMEOUT
    while blocked < 20:
        assert time.monotonic() < deadline, "the server never stopped reading"
        try:
            n = peer.sock.send(view)
        except BlockingIOError:
            n = 0
        if n:
            blocked = 0
            total += n
            view = view[n:] or memoryview(data)
        else:
            blocked += 1
        loop.run_once(0.005)
        on_turn()
    return total


def test_defaults_and_buffered_amount(loop):
    conn, peer = connect(loop)
    assert (conn.high_water, conn.low_water) == (DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER) == (65536, 16384)
    assert conn.buffered_amount == 0
    conn.send(b"x" * 10)  # the kernel takes it at once
    assert conn.buffered_amount == 0
    conn.send(b"y" * 200_000)  # more than the socket buffers hold
    assert 0 < conn.buffered_amount <= 200_000 + 10
    assert conn.buffered_amount == conn.stream.buffered_amount
    peer.close()


def test_a_client_that_sends_but_never_reads_is_held_at_high_water_plus_one_message(loop):
    high, low = 32 * 1024, 8 * 1024
    conn, peer = connect(loop, high_water=high, low_water=low)
    echoed = []

    @conn.on("each_message")
    def echo(c, m):
        echoed.append(len(m.body))
        c.send(m)

    message = wire.frame(wire.BINARY, b"m" * 1000)
    echo_frame = 4 + 1000  # what one answer adds to the queue
    # A batch of 40 messages per send: one server read parses many messages,
    # yet the queue may exceed the high mark by one answer only.
    highest = 0

    def watch() -> None:
        nonlocal highest
        highest = max(highest, conn.buffered_amount)

    sent = send_until_blocked(loop, peer, message * 40, watch)
    assert conn._read_paused
    assert high <= highest < high + echo_frame, highest
    # Input the server read but did not parse waits in the protocol, unanswered.
    total = sent // len(message)  # complete messages sent
    assert len(echoed) < total
    # Now the client reads: everything is answered, in order, nothing lost.
    got = 0

    def all_echoes() -> bool:
        nonlocal got
        frames, peer.buffer = wire.parse_frames(peer.buffer)
        for fin, opcode, payload in frames:
            assert (fin, opcode, payload) == (True, wire.BINARY, b"m" * 1000)
            got += 1
        return got >= total
    peer.pump(all_echoes)
    assert got == total == len(echoed)
    assert not conn._read_paused and not conn.finished
    peer.close()


def test_a_producer_paced_by_drain_delivers_everything_in_order(loop):
    high, low = 48 * 1024, 12 * 1024
    conn, peer = connect(loop, high_water=high, low_water=low)
    count = 400
    size = 3000
    sent = 0
    drains = 0
    highest = 0

    def pump(c: Connection) -> None:
        nonlocal sent
        while c.buffered_amount < c.high_water and sent < count:
            c.send(sent.to_bytes(4, "big") * (size // 4))
            sent += 1

    @conn.on("drain")
    def on_drain(c):
        nonlocal drains
        drains += 1
        # low_water reached, not necessarily empty
        assert c.buffered_amount <= c.low_water
        pump(c)

    pump(conn)
    assert sent < count  # it really had to wait
    got = []
    deadline = time.monotonic() + TIMEOUT
    while len(got) < count:
        assert time.monotonic() < deadline, f"got {len(got)} of {count}"
        # A slow reader: a few KiB per turn.
        try:
            peer.buffer += peer.sock.recv(4096)
        except BlockingIOError:
            pass
        frames, peer.buffer = wire.parse_frames(peer.buffer)
        got += [int.from_bytes(p[:4], "big") for _, _, p in frames]
        loop.run_once(0.001)
        highest = max(highest, conn.buffered_amount)
    assert got == list(range(count))
    assert drains >= 2
    assert highest < high + size + 4
    peer.close()


def test_drain_fires_once_per_crossing_and_not_without_one(loop):
    conn, peer = connect(loop, high_water=20_000, low_water=5_000)
    drains = []
    conn.on("drain", lambda c: drains.append(c.buffered_amount))
    conn.send(b"a" * 100)  # never near the high mark
    for _ in range(5):
        loop.run_once(0)
    assert drains == []
    conn.send(b"b" * 300_000)  # far above
    assert conn._read_paused
    peer.pump(lambda: len(peer.buffer) >= 300_000 + 100 + 2 + 10)
    for _ in range(5):
        loop.run_once(0)
    assert len(drains) == 1 and drains[0] <= 5_000
    assert not conn._read_paused
    peer.close()


def test_reading_resumes_and_held_input_is_answered_after_drain(loop):
    # One read holds ten messages; the first answer already crosses the high
    # mark, so the other nine wait in the protocol until the queue drains.
    conn, peer = connect(loop, high_water=1, low_water=0)
    answered = []

    @conn.on("each_message")
    def big_answer(c, m):
        answered.append(m.body)
        c.send(m.body * 100_000)

    peer.send(b"".join(wire.frame(wire.BINARY, bytes([i])) for i in range(10)))
    run_until(loop, lambda: answered)
    for _ in range(5):
        loop.run_once(0)
    assert answered == [b"\x00"]
    frames = peer.read_frames(10)
    assert [p[:1] for _, _, p in frames] == [bytes([i]) for i in range(10)]
    assert [len(p) for _, _, p in frames] == [100_000] * 10
    assert answered == [bytes([i]) for i in range(10)]
    peer.close()


def test_flow_control_can_be_switched_off(loop):
    conn, peer = connect(loop, high_water=None)
    conn.send(b"z" * 300_000)
    assert conn.buffered_amount > 0 and not conn._read_paused
    assert conn.low_water is None
    peer.close()


@pytest.mark.parametrize("high,low", [(100, 200), (100, -1)])
def test_bad_marks_are_refused(loop, high, low):
    a, b = socket.socketpair()
    try:
        with pytest.raises(ValueError):
            Connection(Stream(a, loop), WebSocketProtocol(), loop=loop, high_water=high, low_water=low)
    finally:
        a.close()
        b.close()
