"""Tests for evws.reactor.stream over real socketpairs and loopback TCP."""

from __future__ import annotations

import array
import select
import socket
import struct
import time

import pytest

from evws.reactor.loop import Loop
from evws.reactor.stream import Stream
from tests.conftest import TIMEOUT, reset, run_until


def counting_bytes(n_words: int) -> bytes:
    """Big-endian 32-bit counters: any loss, duplicate or reorder shows."""
    words = array.array("I", range(n_words))
    if struct.pack("=I", 1) != struct.pack(">I", 1):
        words.byteswap()
    return words.tobytes()


@pytest.fixture
def tcp_pair():
    """(ours, theirs): two connected loopback TCP sockets."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    theirs = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
    ours, _ = listener.accept()
    listener.close()
    yield ours, theirs
    ours.close()
    theirs.close()


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


class Recorder:
    """Collects every stream callback."""

    def __init__(self, stream: Stream) -> None:
        self.data = bytearray()
        self.eofs = 0
        self.closes: list[Exception | None] = []
        self.drains = 0
        stream.on_data = self.data.extend
        stream.on_eof = self.on_eof
        stream.on_close = self.closes.append
        stream.on_drain = self.on_drain

    def on_eof(self) -> None:
        self.eofs += 1

    def on_drain(self) -> None:
        self.drains += 1


class SlowReader:
    """The peer: reads at most ``chunk`` bytes per loop turn until EOF."""

    def __init__(self, loop: Loop, sock: socket.socket, chunk: int = 65536) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.chunk = chunk
        self.data = bytearray()
        self.eof = False
        self.watcher = loop.io(sock, "r", self._read)

    def _read(self) -> None:
        try:
            got = self.sock.recv(self.chunk)
        except BlockingIOError:
            return
        if not got:
            self.eof = True
            self.watcher.cancel()
        self.data += got


class TestReading:
    def test_data_delivered_after_start_reading(self, loop, pair):
        a, b = pair
        s = Stream(a, loop)
        rec = Recorder(s)
        b.sendall(b"hello")
        loop.run_once(0.05)
        assert rec.data == b""  # not started yet
        s.start_reading()
        run_until(loop, lambda: rec.data == b"hello")
        assert not a.getblocking()

    def test_read_size_bounds_each_read(self, loop, pair):
        a, b = pair
        chunks = []
        s = Stream(a, loop, on_data=chunks.append, read_size=3)
        s.start_reading()
        b.sendall(b"abcdefgh")
        run_until(loop, lambda: b"".join(chunks) == b"abcdefgh")
        assert max(len(c) for c in chunks) <= 3

    def test_eof_once_and_reading_stops(self, loop, pair):
        a, b = pair
        s = Stream(a, loop)
        rec = Recorder(s)
        s.start_reading()
        b.sendall(b"last")
        b.shutdown(socket.SHUT_WR)
        run_until(loop, lambda: rec.eofs)
        for _ in range(3):
            loop.run_once(0)
        assert rec.eofs == 1
        assert rec.data == b"last"
        assert rec.closes == []  # the owner decides
        assert not s.closed
        s.close()
        assert rec.closes == [None]
        assert s.closed

    def test_eof_without_handler_closes(self, loop, pair):
        a, b = pair
        closes = []
        s = Stream(a, loop, on_close=closes.append)
        s.start_reading()
        b.shutdown(socket.SHUT_WR)
        run_until(loop, lambda: closes)
        assert closes == [None] and s.closed

    def test_pause_and_resume(self, loop, pair):
        a, b = pair
        s = Stream(a, loop)
        rec = Recorder(s)
        s.start_reading()
        s.pause_reading()
        b.sendall(b"held")
        assert select.select([a], [], [], TIMEOUT)[0]  # data is really there
        for _ in range(3):
            loop.run_once(0)
        assert rec.data == b""
        s.resume_reading()
        run_until(loop, lambda: rec.data == b"held")

    def test_peer_reset_closes_with_error_once(self, loop, tcp_pair):
        ours, theirs = tcp_pair
        s = Stream(ours, loop)
        rec = Recorder(s)
        s.start_reading()
        reset(theirs)
        run_until(loop, lambda: rec.closes)
        for _ in range(3):
            loop.run_once(0)
        assert len(rec.closes) == 1
        assert isinstance(rec.closes[0], ConnectionResetError)
        assert rec.eofs == 0
        assert s.closed


class TestWriting:
    def test_large_write_to_slow_reader_intact_and_in_order(self, loop, tcp_pair):
        ours, theirs = tcp_pair
        s = Stream(ours, loop)
        rec = Recorder(s)
        payload = counting_bytes(2 * 1024 * 1024)  # 8 MiB
        reader = SlowReader(loop, theirs, chunk=64 * 1024)
        step = len(payload) // 8
        for i in range(0, len(payload), step):
            s.write(payload[i:i + step])
        assert 0 < s.buffered_amount <= len(payload)
        run_until(loop, lambda: len(reader.data) >= len(payload), timeout=10)
        assert reader.data == payload
        assert s.buffered_amount == 0
        assert rec.drains == 1
        assert rec.closes == []

    def test_buffered_amount_tracks_what_the_kernel_did_not_take(self, loop, pair):
        a, b = pair
        s = Stream(a, loop)
        assert s.write(b"x" * 10) == 0  # went straight out: write returns what is queued
        assert s.buffered_amount == 0
        big = b"y" * (4 * 1024 * 1024)
        queued = s.write(big)
        assert queued == s.buffered_amount
        assert 0 < queued < len(big)
        assert s.write(b"z" * 5) == queued + 5
        assert s.write(b"") == queued + 5
        assert s.buffered_amount == queued + 5
        reader = SlowReader(loop, b)
        run_until(loop, lambda: len(reader.data) == 10 + len(big) + 5)
        assert s.buffered_amount == 0
        assert reader.data.endswith(b"y" * 100 + b"z" * 5)

    def test_queued_bytearray_is_copied(self, loop, pair):
        a, b = pair
        s = Stream(a, loop)
        s.write(b"\0" * (4 * 1024 * 1024))  # fill the socket buffer
        assert s.buffered_amount
        buf = bytearray(b"original")
        s.write(buf)
        buf[:] = b"CHANGED!!"  # resizing would fail on a pinned buffer
        reader = SlowReader(loop, b)
        run_until(loop, lambda: reader.data.endswith(b"original"))

    def test_memoryview_of_other_item_size(self, loop, pair):
        a, b = pair
        s = Stream(a, loop)
        s.write(memoryview(array.array("H", [0x4142, 0x4344])))
        reader = SlowReader(loop, b)
        run_until(loop, lambda: len(reader.data) == 4)
        assert reader.data == array.array("H", [0x4142, 0x4344]).tobytes()

    def test_shutdown_write_after_flush(self, loop, pair):
        a, b = pair
        s = Stream(a, loop)
        payload = counting_bytes(512 * 1024)
        s.write(payload)
        s.shutdown_write()
        assert not s.closed
        with pytest.raises(BrokenPipeError):
            s.write(b"more")
        reader = SlowReader(loop, b)
        run_until(loop, lambda: reader.eof)
        assert reader.data == payload

    def test_send_error_reported_once_on_next_turn(self, loop, tcp_pair):
        ours, theirs = tcp_pair
        s = Stream(ours, loop)
        rec = Recorder(s)
        reset(theirs)
        assert select.select([ours], [], [], TIMEOUT)[0]  # the RST arrived
        s.write(b"into the void")
        assert s.closed
        assert rec.closes == []  # not re-entering the writer
        loop.run_once(0)
        assert len(rec.closes) == 1
        assert isinstance(rec.closes[0], OSError)
        with pytest.raises(BrokenPipeError):
            s.write(b"again")


class CountingSocket(socket.socket):
    """A socket that counts its ``send``/``sendmsg`` calls."""

    sends = 0
    sendmsgs = 0

    def send(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        self.sends += 1
        return super().send(*args, **kwargs)

    def sendmsg(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        self.sendmsgs += 1
        return super().sendmsg(*args, **kwargs)


@pytest.fixture
def counting_pair():
    a, b = socket.socketpair()
    ours = CountingSocket(a.family, a.type, fileno=a.detach())
    yield ours, b
    ours.close()
    b.close()


@pytest.mark.skipif(not hasattr(socket.socket, "sendmsg"), reason="no sendmsg here")
class TestWritev:
    def test_header_and_payload_leave_in_one_syscall(self, loop, counting_pair):
        ours, theirs = counting_pair
        s = Stream(ours, loop)
        s.writev([b"\x82\x7e\x10\x00", b"p" * 4096])
        assert (ours.sendmsgs, ours.sends) == (1, 0)
        assert s.buffered_amount == 0
        reader = SlowReader(loop, theirs)
        run_until(loop, lambda: len(reader.data) == 4100)
        assert reader.data == b"\x82\x7e\x10\x00" + b"p" * 4096

    def test_single_chunk_is_a_plain_write(self, loop, counting_pair):
        ours, _ = counting_pair
        Stream(ours, loop).writev([b"just one"])
        assert (ours.sendmsgs, ours.sends) == (0, 1)

    def test_partial_sendmsg_queues_the_rest_in_order(self, loop, counting_pair):
        ours, theirs = counting_pair
        s = Stream(ours, loop)
        rec = Recorder(s)
        chunks = [b"head", counting_bytes(1024 * 1024), b"", b"tail" * 10, counting_bytes(1000)]
        total = sum(map(len, chunks))
        queued = s.writev(chunks)  # 4 MiB + a bit: more than a socketpair buffer takes
        assert queued == s.buffered_amount
        assert 0 < queued < total
        assert ours.sendmsgs == 1
        assert s.writev([b"after", b"wards"]) == queued + 10  # queued behind the rest, not gathered
        assert ours.sendmsgs == 1
        reader = SlowReader(loop, theirs)
        run_until(loop, lambda: len(reader.data) >= total + 10, timeout=10)
        assert reader.data == b"".join(chunks) + b"afterwards"
        assert s.buffered_amount == 0 and rec.drains == 1

    def test_closed_for_writing_raises(self, loop, pair):
        a, _ = pair
        s = Stream(a, loop)
        s.shutdown_write()
        with pytest.raises(BrokenPipeError):
            s.writev([b"a", b"b"])

    def test_send_error_reported_once_on_next_turn(self, loop, tcp_pair):
        ours, theirs = tcp_pair
        s = Stream(ours, loop)
        rec = Recorder(s)
        reset(theirs)
        assert select.select([ours], [], [], TIMEOUT)[0]  # the RST arrived
        s.writev([b"into", b"the void"])
        assert s.closed and rec.closes == []
        loop.run_once(0)
        assert len(rec.closes) == 1 and isinstance(rec.closes[0], OSError)


class TestClosing:
    def test_close_after_write_delivers_everything_then_eof(self, loop, tcp_pair):
        ours, theirs = tcp_pair
        s = Stream(ours, loop)
        rec = Recorder(s)
        payload = counting_bytes(1024 * 1024)  # 4 MiB, mostly still queued
        s.write(payload)
        s.close()
        s.close()  # idempotent
        assert not s.closed
        with pytest.raises(BrokenPipeError):
            s.write(b"late")
        reader = SlowReader(loop, theirs)
        run_until(loop, lambda: reader.eof)
        assert reader.data == payload
        assert rec.closes == []  # still draining, waiting for the peer's EOF
        theirs.shutdown(socket.SHUT_WR)
        run_until(loop, lambda: rec.closes)
        assert rec.closes == [None]
        assert rec.drains == 0
        assert s.closed and ours.fileno() == -1

    def test_close_discards_input_until_eof(self, loop, pair):
        a, b = pair
        s = Stream(a, loop)
        rec = Recorder(s)
        s.start_reading()
        s.close()
        b.sendall(b"ignored" * 1000)
        b.shutdown(socket.SHUT_WR)
        run_until(loop, lambda: rec.closes)
        assert rec.data == b""
        assert rec.closes == [None]

    def test_close_lingers_at_most_linger_seconds(self, loop, pair):
        a, b = pair
        s = Stream(a, loop, linger=0.1)
        rec = Recorder(s)
        start = time.monotonic()
        s.close()  # the peer never sends EOF
        run_until(loop, lambda: rec.closes)
        assert rec.closes == [None]
        assert 0.09 <= time.monotonic() - start < 2.0
        assert b.recv(10) == b""  # the peer saw our EOF

    def test_flush_that_cannot_finish_times_out(self, loop, pair):
        a, b = pair
        s = Stream(a, loop, linger=0.1)
        rec = Recorder(s)
        s.write(b"q" * (8 * 1024 * 1024))  # the peer never reads
        s.close()
        run_until(loop, lambda: rec.closes)
        assert len(rec.closes) == 1
        assert isinstance(rec.closes[0], TimeoutError)

    def test_close_while_paused_still_drains(self, loop, pair):
        a, b = pair
        s = Stream(a, loop)
        rec = Recorder(s)
        s.start_reading()
        s.pause_reading()
        s.close()
        b.shutdown(socket.SHUT_WR)
        run_until(loop, lambda: rec.closes)
        assert rec.closes == [None]

    def test_abort_drops_queue_and_closes_once(self, loop, pair):
        a, b = pair
        s = Stream(a, loop)
        rec = Recorder(s)
        s.write(b"w" * (4 * 1024 * 1024))
        assert s.buffered_amount
        s.abort()
        s.abort()
        s.close()
        assert rec.closes == [None]
        assert s.closed and s.buffered_amount == 0
        for _ in range(3):
            loop.run_once(0)
        assert rec.closes == [None]
        assert not loop._io  # no watcher left behind
