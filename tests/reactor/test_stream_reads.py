"""Stream.read_line / read_exactly (AnyEvent::Handle push_read) over real sockets."""

from __future__ import annotations

import socket
import struct

import pytest

import evws
from evws.reactor import Stream
from tests.conftest import run_until


def send_all(loop, sock: socket.socket, data: bytes) -> None:
    """Send everything, running the loop (bounded) while the buffer is full."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            run_until(loop, lambda: True)
            loop.run_once(0.01)


@pytest.fixture
def pair(loop):
    a, b = socket.socketpair()
    closed: list[Exception | None] = []
    stream = Stream(a, loop, on_close=closed.append)
    b.setblocking(False)
    yield stream, b, closed
    stream.abort()
    b.close()


def test_lines_in_order_across_and_within_chunks(loop, pair):
    stream, peer, _ = pair
    got: list[bytes] = []
    for _ in range(4):
        stream.read_line(got.append)
    peer.send(b"one\ntw")
    run_until(loop, lambda: len(got) == 1)
    peer.send(b"o\nthree\nfour\nextra")
    run_until(loop, lambda: len(got) == 4)
    assert got == [b"one", b"two", b"three", b"four"]
    assert stream.read_buffer == b"extra"  # no request, no on_data: it waits


def test_crlf_separator_split_between_reads(loop, pair):
    stream, peer, _ = pair
    got: list[bytes] = []
    stream.read_line(got.append, b"\r\n")
    stream.read_line(got.append, b"\r\n")
    peer.send(b"HELO x\r")
    for _ in range(5):
        loop.run_once(0.01)
    assert got == []
    peer.send(b"\nline with \n inside\r\n")
    run_until(loop, lambda: len(got) == 2)
    assert got == [b"HELO x", b"line with \n inside"]


def test_length_prefixed_records_with_read_exactly(loop, pair):
    stream, peer, _ = pair
    records: list[bytes] = []

    def header(data: bytes) -> None:
        (length,) = struct.unpack("!I", data)
        stream.read_exactly(length, body)

    def body(data: bytes) -> None:
        records.append(data)
        if len(records) < 3:
            stream.read_exactly(4, header)

    stream.read_exactly(4, header)
    payloads = [b"", b"x" * 100000, b"last"]
    wire = b"".join(struct.pack("!I", len(p)) + p for p in payloads)
    for i in range(0, len(wire), 7001):  # arbitrary chunking
        send_all(loop, peer, wire[i:i + 7001])
    run_until(loop, lambda: len(records) == 3)
    assert records == payloads


def test_callbacks_never_run_inside_the_request_call(loop, pair):
    stream, peer, _ = pair
    got: list[bytes] = []
    stream.read_line(got.append)
    peer.send(b"a\nb\n")
    run_until(loop, lambda: got == [b"a"])
    stream.read_line(got.append)  # "b" is buffered already
    assert got == [b"a"]
    loop.run_once(0)
    assert got == [b"a", b"b"]


def test_requests_take_the_data_then_on_data_gets_the_rest(loop, pair):
    stream, peer, _ = pair
    chunks: list[bytes] = []
    stream.on_data = chunks.append
    stream.start_reading()
    peer.send(b"raw1")
    run_until(loop, lambda: chunks == [b"raw1"])
    lines: list[bytes] = []
    stream.read_line(lines.append)
    peer.send(b"head")
    for _ in range(3):
        loop.run_once(0.01)
    assert chunks == [b"raw1"], "on_data must not see data while a request waits"
    peer.send(b"er\nbody bytes")
    run_until(loop, lambda: len(chunks) == 2)
    assert lines == [b"header"]
    assert chunks == [b"raw1", b"body bytes"]
    assert stream.on_data == chunks.append  # the user's callback is back
    peer.send(b"more")
    run_until(loop, lambda: len(chunks) == 3)
    assert chunks[2] == b"more"


def test_without_on_data_reading_pauses_between_requests(loop, pair):
    stream, peer, _ = pair
    got: list[bytes] = []
    stream.read_line(got.append)
    peer.send(b"first\n" + b"x" * 1000)
    run_until(loop, lambda: got == [b"first"])
    assert stream._rw is None, "nobody wants data: the stream stops reading"
    peer.send(b"\nsecond\n")
    for _ in range(3):
        loop.run_once(0.01)
    stream.read_line(got.append)
    stream.read_line(got.append)
    run_until(loop, lambda: len(got) == 3)
    assert got == [b"first", b"x" * 1000, b"second"]


def test_line_over_max_size_fails_the_stream(loop, pair):
    stream, peer, closed = pair
    got: list[bytes] = []
    stream.read_line(got.append, max_size=100)
    peer.send(b"y" * 100 + b"\n")  # exactly max_size: fine
    run_until(loop, lambda: len(got) == 1)
    stream.read_line(got.append, max_size=100)
    peer.send(b"z" * 50)
    for _ in range(3):
        loop.run_once(0.01)
    assert not closed
    peer.send(b"z" * 60)  # 110 bytes, no newline
    run_until(loop, lambda: bool(closed))
    assert isinstance(closed[0], evws.LineTooLong)
    assert isinstance(closed[0], evws.WebSocketError) and isinstance(closed[0], ValueError)
    assert stream.closed and got == [b"y" * 100]


def test_long_line_in_tiny_pieces(loop, pair):
    stream, peer, _ = pair
    got: list[bytes] = []
    stream.read_line(got.append, b"\r\n", max_size=1 << 20)
    line = bytes(range(32, 127)) * 50
    for i in range(0, len(line), 97):
        peer.send(line[i:i + 97])
        loop.run_once(0)
    peer.send(b"\r")
    loop.run_once(0)
    peer.send(b"\n")
    run_until(loop, lambda: bool(got))
    assert got == [line]


def test_eof_leaves_unmet_requests_and_the_partial_line(loop, pair):
    stream, peer, _ = pair
    got: list[bytes] = []
    eofs: list[bytes] = []
    stream.on_eof = lambda: eofs.append(stream.read_buffer)
    stream.read_line(got.append)
    stream.read_line(got.append)
    peer.send(b"whole\npartial")
    peer.shutdown(socket.SHUT_WR)
    run_until(loop, lambda: bool(eofs))
    assert got == [b"whole"] and eofs == [b"partial"]


def test_exception_in_a_read_callback_is_isolated(loop, pair, caplog):
    stream, peer, _ = pair
    got: list[bytes] = []
    stream.read_line(lambda line: 1 / 0)
    stream.read_line(got.append)
    peer.send(b"a\nb\n")
    run_until(loop, lambda: bool(got))
    assert got == [b"b"]
    assert "exception in read callback" in caplog.text


def test_bad_requests(loop, pair):
    stream, _, _ = pair
    with pytest.raises(ValueError):
        stream.read_line(print, b"")
    with pytest.raises(ValueError):
        stream.read_line(print, max_size=0)
    with pytest.raises(ValueError):
        stream.read_exactly(-1, print)
    stream.close()
    with pytest.raises(BrokenPipeError):
        stream.read_line(print)


def test_a_stream_without_requests_is_untouched(loop, pair):
    stream, peer, _ = pair
    chunks: list[bytes] = []
    stream.on_data = chunks.append
    stream.start_reading()
    peer.send(b"hello")
    run_until(loop, lambda: bool(chunks))
    assert stream._rq is None and stream.on_data == chunks.append
    assert stream.read_buffer == b""


def test_zero_length_read(loop, pair):
    stream, _, _ = pair
    got: list[bytes] = []
    stream.read_exactly(0, got.append)
    loop.run_once(0)
    loop.run_once(0)
    assert got == [b""]
