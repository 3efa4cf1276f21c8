"""No quadratic work: large messages cost time linear in their size and peak
memory under 2.5x their size (issue 4).

No timing asserts: linear time is checked by counting work -- every payload
byte goes through the unmasking function exactly once, in at most one call per
frame or read -- and memory with ``tracemalloc``'s peak while the message is
received. The wire bytes are built before tracing starts, so the peak counts
only what evws allocates (and the finished message, which it must hold).

Sizes: 8 MiB by default; the 64 MiB variants of the issue are marked slow.
"""

from __future__ import annotations

import time
import tracemalloc

import pytest

import evws
from evws.protocol import websocket
from evws.protocol.events import MessageReceived
from tests import wire
from tests.conftest import open_connection, run_until

MiB = 1 << 20
FRAGMENT = 1024
SIZES = [8 * MiB, pytest.param(64 * MiB, marks=pytest.mark.slow)]
KEY = b"\x5a\xc3\x0f\x96"


class MaskCounter:
    """Wraps the protocol's two unmasking functions, counting calls and bytes.

    ``apply_mask(data, key)`` unmasks a whole frame held in the input;
    ``unmask_into(out, pos, data, start, stop, key, keypos)`` unmasks the part
    of a frame that one read brought straight into the message buffer.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.bytes = 0
        self._apply = websocket.apply_mask
        self._into = websocket.unmask_into
        monkeypatch.setattr(websocket, "apply_mask", self.apply_mask)
        monkeypatch.setattr(websocket, "unmask_into", self.unmask_into)

    def apply_mask(self, data, key):  # type: ignore[no-untyped-def]
        self.calls += 1
        self.bytes += len(data)
        return self._apply(data, key)

    def unmask_into(self, out, pos, data, start, stop, key, keypos):  # type: ignore[no-untyped-def]
        self.calls += 1
        self.bytes += stop - start
        return self._into(out, pos, data, start, stop, key, keypos)


def fragmented(opcode: int, fragment: bytes, count: int) -> bytes:
    """One message of ``count`` masked fragments, all carrying ``fragment``.

    The same key and payload make every continuation frame identical, so the
    wire bytes are one frame repeated (cheap to build by hand at 64 MiB).
    """
    first = wire.frame(opcode, fragment, fin=False, mask=KEY)
    middle = wire.frame(wire.CONT, fragment, fin=False, mask=KEY)
    last = wire.frame(wire.CONT, fragment, fin=True, mask=KEY)
    return first + middle * (count - 2) + last


def one_frame(opcode: int, size: int) -> tuple[bytes, bytes]:
    """A single masked frame of ``size`` bytes and its payload (a repeated block)."""
    block = bytes(range(256)) * 4 if opcode == wire.BINARY else b"evws scaling 01\n" * 64
    payload = block * (size // len(block))
    head = wire.frame(opcode, b"", mask=KEY)[:1]
    head += bytes([0x80 | 127]) + size.to_bytes(8, "big") + KEY
    # Masking a repeated 1 KiB block gives a repeated masked block (1024 % 4 == 0).
    return head + wire.xor(block, KEY) * (size // len(block)), payload


def feed(proto: websocket.WebSocketProtocol, data: bytes, step: int) -> list[MessageReceived]:
    """Feed ``data`` in ``step``-byte reads (as a socket would), draining events."""
    got = []
    view = memoryview(data)
    for i in range(0, len(data), step):
        proto.receive_data(view[i:i + step])
        while events := proto.events_received():
            got += [e for e in events if isinstance(e, MessageReceived)]
    return got


def traced_peak(fn):  # type: ignore[no-untyped-def]
    """Run ``fn()``; return its result and the peak of traced memory meanwhile."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.mark.parametrize("size", SIZES)
def test_text_in_1k_fragments_through_the_protocol(monkeypatch, size):
    fragment = b"0123456789abcdef" * (FRAGMENT // 16)
    count = size // FRAGMENT
    data = fragmented(wire.TEXT, fragment, count)
    counter = MaskCounter(monkeypatch)
    proto = websocket.WebSocketProtocol(max_payload_size=None)
    got, peak = traced_peak(lambda: feed(proto, data, 256 * 1024))
    assert len(got) == 1 and got[0].opcode == wire.TEXT
    assert len(got[0].payload) == size
    assert got[0].payload[:FRAGMENT] == fragment and got[0].payload[-FRAGMENT:] == fragment
    # Linear work: each byte unmasked once; a frame is split at most at one read boundary.
    assert counter.bytes == size
    assert counter.calls <= count + len(data) // (256 * 1024) + 1
    assert peak < 2.5 * size, f"peak {peak / size:.2f}x the message size"


@pytest.mark.parametrize("size", SIZES)
def test_one_frame_in_1k_reads_through_the_protocol(monkeypatch, size):
    data, payload = one_frame(wire.BINARY, size)
    counter = MaskCounter(monkeypatch)
    proto = websocket.WebSocketProtocol(max_payload_size=None)
    got, peak = traced_peak(lambda: feed(proto, data, FRAGMENT))
    assert [(m.opcode, len(m.payload)) for m in got] == [(wire.BINARY, size)]
    assert got[0].payload == payload
    assert counter.bytes == size
    assert counter.calls <= len(data) // FRAGMENT + 1
    assert peak < 2.5 * size, f"peak {peak / size:.2f}x the message size"


def test_leftover_input_stays_bounded_when_trickling(monkeypatch):
    # Byte by byte: what the protocol keeps between reads must not grow with
    # the message (that would make each read copy more: quadratic time).
    size = 16 * 1024
    data, payload = one_frame(wire.TEXT, size)
    counter = MaskCounter(monkeypatch)
    proto = websocket.WebSocketProtocol(max_payload_size=None)
    got = []
    kept = 0
    for i in range(len(data)):
        proto.receive_data(data[i:i + 1])
        kept = max(kept, len(proto._buf))
        while events := proto.events_received():
            got += events
    assert [e.payload for e in got if isinstance(e, MessageReceived)] == [payload]
    assert kept <= 14  # at most an incomplete frame header
    assert counter.bytes == size and counter.calls == size


def test_trickled_message_memory_stays_under_2_5x():
    size = 64 * 1024
    data, payload = one_frame(wire.BINARY, size)
    proto = websocket.WebSocketProtocol(max_payload_size=None)
    got, peak = traced_peak(lambda: feed(proto, data, 1))
    assert got[0].payload == payload
    assert peak < 2.5 * size, f"peak {peak / size:.2f}x the message size"


@pytest.mark.parametrize("size", SIZES)
def test_binary_in_1k_fragments_through_a_connection(loop, monkeypatch, size):
    data = fragmented(wire.BINARY, bytes(range(256)) * 4, size // FRAGMENT)
    server = evws.Server(max_payload_size=None, loop=loop)
    conn, _, peer = open_connection(loop, server)
    counter = MaskCounter(monkeypatch)
    got: list[int] = []

    @conn.on("each_message")
    def collect(connection, message):
        got.append(len(message.body))

    def transfer() -> None:
        # Like Peer.send, with a deadline fit for 64 MiB on a slow machine.
        view = memoryview(data)
        deadline = time.monotonic() + 120
        while view:
            try:
                view = view[peer.sock.send(view):]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail("could not send the message within 120 s")
                loop.run_once(0.01)
        run_until(loop, lambda: bool(got), timeout=60)

    try:
        _, peak = traced_peak(transfer)
    finally:
        peer.close()
    assert got == [size]
    assert counter.bytes == size
    assert peak < 2.5 * size, f"peak {peak / size:.2f}x the message size"
