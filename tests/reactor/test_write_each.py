"""write_each: one buffer to many streams (fan-out's write), C and pure-Python send loops.

Real socketpairs and loopback TCP; each test runs with ``evws._speedups.send_each``
(when built) and with its pure-Python twin, which must behave the same.
"""

from __future__ import annotations

import select
import socket

import pytest

from evws.reactor import stream as stream_module
from evws.reactor.stream import Stream, write_each
from tests.conftest import TIMEOUT, reset, run_until
from tests.reactor.test_stream import Recorder, SlowReader, counting_bytes


def _implementations():
    yield pytest.param(stream_module._py_send_each, id="python")
    try:
        from evws._speedups import send_each
    except ImportError:
        send_each = None
    yield pytest.param(send_each, id="c", marks=pytest.mark.skipif(
        send_each is None, reason="evws._speedups is not built"))


@pytest.fixture(params=list(_implementations()))
def send_each(request, monkeypatch):
    monkeypatch.setattr(stream_module, "_send_each", request.param)
    return request.param


@pytest.fixture
def pairs():
    made: list[tuple[socket.socket, socket.socket]] = []

    def make(n: int) -> list[tuple[socket.socket, socket.socket]]:
        new = [socket.socketpair() for _ in range(n)]
        made.extend(new)
        return new

    yield make
    for a, b in made:
        a.close()
        b.close()


def read_exactly(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(TIMEOUT)
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


def nothing_more(sock: socket.socket) -> bool:
    return not select.select([sock], [], [], 0)[0]


def test_every_stream_gets_the_bytes_once(loop, pairs, send_each):
    made = pairs(20)
    streams = [Stream(a, loop) for a, _ in made]
    assert write_each(streams, b"frame bytes") == []
    for _, b in made:
        assert read_exactly(b, 11) == b"frame bytes"
        assert nothing_more(b)
    assert all(s.buffered_amount == 0 for s in streams)


def test_a_full_socket_queues_the_rest_and_says_so(loop, pairs, send_each):
    """A peer that does not read: the kernel takes part, the stream queues the rest, in order."""
    (a, b), (c, d) = pairs(2)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    full, other = Stream(a, loop), Stream(c, loop)
    data = counting_bytes(16 * 1024)  # 64 KiB: more than the small buffer holds
    queued = write_each([other, full], data)
    assert len(queued) == 1 and queued[0][0] == 1
    assert queued[0][1] == full.buffered_amount > 0
    assert other.buffered_amount == 0
    # Next time the full stream takes the general path (its queue is not empty).
    queued = write_each([full, other], b"tail")
    assert queued == [(0, full.buffered_amount)]
    reader = SlowReader(loop, b)
    run_until(loop, lambda: len(reader.data) == len(data) + 4)
    assert bytes(reader.data) == data + b"tail"
    assert read_exactly(d, len(data) + 4) == data + b"tail"


def test_a_stream_listed_twice_gets_its_copies_in_order(loop, pairs, send_each):
    """After a short send, a later listing of the same stream must not overtake the rest."""
    ((a, b),) = pairs(1)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    s = Stream(a, loop)
    first, second = counting_bytes(40000), counting_bytes(40000)[::-1]
    data = first
    queued = write_each([s, s], data)
    assert [index for index, _ in queued] == [0, 1]  # the second copy waits behind the first
    write_each([s], second)
    reader = SlowReader(loop, b)
    run_until(loop, lambda: len(reader.data) == 3 * len(data))
    assert bytes(reader.data) == first + first + second


def test_streams_closed_for_writing_are_passed_over(loop, pairs, send_each):
    (a, b), (c, d) = pairs(2)
    closed, open_ = Stream(a, loop), Stream(c, loop)
    closed.abort()
    assert write_each([closed, open_], b"x") == []
    assert read_exactly(d, 1) == b"x"


def test_a_send_error_ends_that_stream_and_no_other(loop, send_each):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(2)
    socks = []
    try:
        for _ in range(2):
            client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
            server, _ = listener.accept()
            socks.append((server, client))
        (dead, dead_peer), (alive, alive_peer) = socks
        streams = [Stream(dead, loop), Stream(alive, loop)]
        records = [Recorder(s) for s in streams]
        reset(dead_peer)
        assert select.select([dead], [], [], TIMEOUT)[0]  # the RST arrived
        assert write_each(streams, b"hello") == []
        assert streams[0].closed and not streams[1].closed
        loop.run_once(0)
        assert len(records[0].closes) == 1 and isinstance(records[0].closes[0], OSError)
        assert records[1].closes == []
        assert read_exactly(alive_peer, 5) == b"hello"
    finally:
        listener.close()
        for server, client in socks:
            server.close()
            client.close()


def test_an_empty_buffer_sends_nothing(loop, pairs, send_each):
    ((a, b),) = pairs(1)
    assert write_each([Stream(a, loop)], b"") == []
    assert nothing_more(b)


@pytest.mark.skipif(stream_module.c_function("send_each") is None,
                    reason="evws._speedups is not built")
def test_the_c_function_refuses_bad_arguments():
    from evws._speedups import send_each
    with pytest.raises(TypeError):
        send_each((1, 2), b"x")  # not a list
    with pytest.raises(TypeError):
        send_each(["3"], b"x")
    with pytest.raises(ValueError):
        send_each([-1], b"x")
    with pytest.raises(TypeError):
        send_each([1])
    # A closed fd is an error of that fd only: it is reported as short, nothing raised.
    a, b = socket.socketpair()
    gone = socket.socket()
    fd = gone.fileno()
    gone.close()
    try:
        assert send_each([a.fileno(), fd, a.fileno()], b"x") == [(1, 0)]
        assert read_exactly(b, 2) == b"xx"
    finally:
        a.close()
        b.close()


# --- soon=True: held until the next turn, one send per stream per turn ---------------------

class CountingSendEach:
    """Wraps the send loop under test and records each call (fds, data)."""

    def __init__(self, real) -> None:
        self.real = real
        self.calls: list[tuple[list[int], bytes]] = []

    def __call__(self, fds, data):
        self.calls.append((list(fds), bytes(data)))
        return self.real(fds, data)


@pytest.fixture
def counted(send_each, monkeypatch):
    counter = CountingSendEach(send_each)
    monkeypatch.setattr(stream_module, "_send_each", counter)
    return counter


def test_soon_holds_the_bytes_until_the_next_turn(loop, pairs, counted):
    made = pairs(3)
    streams = [Stream(a, loop) for a, _ in made]
    records = [Recorder(s) for s in streams]
    assert write_each(streams, b"first", soon=True) == []
    for (_, b), s in zip(made, streams):
        assert nothing_more(b)
        assert s.buffered_amount == 5 and s.backlog == 0
    loop.run_once(0)
    for (_, b), s in zip(made, streams):
        assert read_exactly(b, 5) == b"first" and nothing_more(b)
        assert s.buffered_amount == 0
    assert counted.calls == [([a.fileno() for a, _ in made], b"first")]
    # Nobody was told of held bytes (write_each does not report them): no drain news.
    assert [r.drains for r in records] == [0, 0, 0]


def test_a_turns_writes_go_out_in_one_send_per_stream_in_order(loop, pairs, counted):
    """Three broadcasts in one turn: one C loop call with the three joined, for every stream
    that got the same ones; a stream that was also written to directly gets its own bytes,
    in the order they were written."""
    made = pairs(4)
    streams = [Stream(a, loop) for a, _ in made]
    write_each(streams, b"one.", soon=True)
    write_each(streams, b"two.", soon=True)
    assert streams[3].write(b"direct.") == len(b"one.two.direct.")   # joins what is held
    assert streams[3].writev([b"v1.", b"v2."]) == len(b"one.two.direct.v1.v2.")
    write_each(streams, b"three.", soon=True)
    assert all(nothing_more(b) for _, b in made)
    loop.run_once(0)
    for _, b in made[:3]:
        assert read_exactly(b, 14) == b"one.two.three." and nothing_more(b)
    assert read_exactly(made[3][1], 27) == b"one.two.direct.v1.v2.three."
    assert sorted(len(fds) for fds, _ in counted.calls) == [1, 3]
    assert (sorted(a.fileno() for a, _ in made[:3]), b"one.two.three.") in [
        (sorted(fds), data) for fds, data in counted.calls]
    # The next turn starts over: nothing is held any more, writes go straight out.
    assert streams[0].write(b"now") == 0
    assert read_exactly(made[0][1], 3) == b"now"


def test_close_and_shutdown_send_what_is_held_first(loop, pairs, counted):
    (a, b), (c, d) = pairs(2)
    closing, shutting = Stream(a, loop), Stream(c, loop)
    Recorder(closing)
    write_each([closing, shutting], b"held", soon=True)
    closing.close()
    shutting.shutdown_write()
    assert read_exactly(b, 4) == b"held" and b.recv(1) == b""   # then EOF
    assert read_exactly(d, 4) == b"held" and d.recv(1) == b""
    loop.run_once(0)   # the flush finds nothing left to send
    assert counted.calls == []


def test_an_aborted_stream_drops_what_it_held(loop, pairs, counted):
    (a, b), (c, d) = pairs(2)
    dropped, kept = Stream(a, loop), Stream(c, loop)
    write_each([dropped, kept], b"x", soon=True)
    dropped.abort()
    loop.run_once(0)
    assert b.recv(1) == b""
    assert read_exactly(d, 1) == b"x"
    assert counted.calls == [([c.fileno()], b"x")]


def test_what_the_kernel_refuses_at_the_flush_is_queued_then_drained(loop, pairs, counted):
    (a, b), (c, d) = pairs(2)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    full, fine = Stream(a, loop), Stream(c, loop)
    records = [Recorder(full), Recorder(fine)]
    data = counting_bytes(16 * 1024)   # 64 KiB, more than the small buffer takes
    write_each([full, fine], data, soon=True)
    # write() reports the held bytes in its count: its caller hears on_drain when they are out.
    assert fine.write(b"end") == full.write(b"end") == len(data) + 3
    loop.run_once(0)
    assert full.backlog > 0 and full.buffered_amount == full.backlog
    assert records[1].drains == 1 and records[0].drains == 0   # fine: all out, so "drained"
    assert read_exactly(d, len(data) + 3) == data + b"end"
    reader = SlowReader(loop, b)
    run_until(loop, lambda: len(reader.data) == len(data) + 3 and records[0].drains == 1)
    assert bytes(reader.data) == data + b"end"


def test_a_stream_with_a_backlog_is_not_held(loop, pairs, counted):
    ((a, b),) = pairs(1)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    s = Stream(a, loop)
    data = counting_bytes(16 * 1024)
    assert s.write(data) > 0
    queued = write_each([s], b"tail", soon=True)
    assert queued == [(0, s.backlog)] and s.backlog == s.buffered_amount
    reader = SlowReader(loop, b)
    run_until(loop, lambda: len(reader.data) == len(data) + 4)
    assert bytes(reader.data) == data + b"tail"
    assert counted.calls == []


def test_held_bytes_from_a_mutable_buffer_are_copied(loop, pairs, counted):
    (a, b), (c, d) = pairs(2)
    s, other = Stream(a, loop), Stream(c, loop)
    write_each([s, other], b"h", soon=True)
    buf = bytearray(b"abc")
    s.write(buf)
    buf[:] = b"XYZ"
    loop.run_once(0)
    assert read_exactly(b, 4) == b"habc"


def test_a_closed_loop_holds_nothing_and_keeps_nothing_alive(pairs, counted):
    import evws
    (a, b), (c, d) = pairs(2)
    first = evws.Loop()
    held = Stream(a, first)
    write_each([held], b"never flushed", soon=True)
    assert stream_module._held.get(first) == [held]
    first.close()   # its turn never ended
    second = evws.Loop()
    try:
        write_each([Stream(c, second)], b"x", soon=True)
        assert first not in stream_module._held   # forgotten at the next hold
        assert nothing_more(b)   # what it held was never sent
        # A stream of a closed loop is written at once.
        late = Stream(b, first)
        assert write_each([late], b"now", soon=True) == []
        assert read_exactly(a, 3) == b"now"
        second.run_once(0)
        assert read_exactly(d, 1) == b"x"
    finally:
        second.close()


def test_write_each_now_goes_behind_what_a_stream_holds(loop, pairs, counted):
    """write_each(soon=False) to a stream holding bytes for the end of the turn joins them, in
    order, instead of overtaking them through the C loop."""
    (a, b), (c, d) = pairs(2)
    held, plain = Stream(a, loop), Stream(c, loop)
    write_each([held], b"first.", soon=True)
    # The held stream takes the general path, so its count (held bytes included) is reported.
    assert write_each([held, plain], b"second.") == [(0, 13)]
    assert read_exactly(d, 7) == b"second."   # not held: sent at once
    assert nothing_more(b)
    loop.run_once(0)
    assert read_exactly(b, 13) == b"first.second."
