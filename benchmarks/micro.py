#!/usr/bin/env python3
"""Micro-benchmarks of evws's per-message Python work, without sockets.

    python3 benchmarks/micro.py            # table of microseconds per operation
    python3 benchmarks/micro.py --profile  # plus a cProfile of the echo path
    python3 benchmarks/micro.py --profile --size 4096 --text

Why: on loopback the kernel's send/recv cost is shared by every server, so
what evws can improve is the Python work around them. This measures that work
alone, stable even on a noisy machine:

* ``echo path``: a ``Connection`` over a stub stream (``write`` just keeps the
  bytes) receives a masked frame and the example's handler echoes it -- the
  whole per-message path except the syscalls and the loop's ``select``;
* ``server turn``: one ``Loop.run_once`` that finds the connection's socket
  readable, reads a frame through the real ``Stream`` and echoes it -- the
  echo path plus the loop and stream, with a stub socket (``recv`` returns the
  frame, ``send`` takes everything) and a stub poll (always "readable");
* ``protocol only``: ``WebSocketProtocol.receive_data`` + ``events_received``;
* ``apply_mask`` / ``Utf8Validator`` for both implementations (pure Python,
  and C when ``evws._speedups`` is built).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import evws  # noqa: E402
from evws.connection import Connection  # noqa: E402
from evws.protocol import mask, utf8  # noqa: E402
from evws.protocol.websocket import Side, WebSocketProtocol  # noqa: E402

KEY = b"\x12\x34\x56\x78"


def masked_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + KEY + mask._py_apply_mask(payload, KEY)


class StubStream:
    """Just enough of ``Stream`` for ``Connection``: writes are counted, not sent."""

    closing = closed = False
    buffered_amount = 0

    def __init__(self) -> None:
        self.on_data = self.on_eof = self.on_close = self.on_drain = None
        self.written = 0

    def write(self, data) -> int:  # type: ignore[no-untyped-def]
        self.written += len(data)
        return 0  # nothing left queued, as Stream.write reports it

    def writev(self, chunks) -> int:  # type: ignore[no-untyped-def]
        self.written += sum(map(len, chunks))
        return 0

    def start_reading(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def echo_connection() -> tuple[Connection, StubStream]:
    stream = StubStream()
    loop = evws.Loop()
    conn = Connection(stream, WebSocketProtocol(Side.SERVER, max_payload_size=None), loop=loop)  # type: ignore[arg-type]

    @conn.on("each_message")
    def echo(connection, message):  # the example's handler
        connection.send(message)

    return conn, stream


class StubSocket:
    """Stands in for the connection's socket: every ``recv`` returns ``frame``.

    ``recv``/``send`` are C callables (``dict.get``, ``len``) so that the stub
    adds no Python frame to what is measured. ``fileno`` is a real socket's,
    because the loop registers it with epoll.
    """

    def __init__(self, frame: bytes, real) -> None:  # type: ignore[no-untyped-def]
        self._real = real
        self.recv = {65536: frame}.get  # Stream reads read_size = 65536 bytes
        self.send = len

    def sendmsg(self, buffers) -> int:  # type: ignore[no-untyped-def]
        return sum(map(len, buffers))  # header + payload of a large frame, taken whole

    def fileno(self) -> int:
        return self._real.fileno()  # type: ignore[no-any-return]

    def setblocking(self, flag: bool) -> None:
        pass


def server_turn(frame: bytes):  # type: ignore[no-untyped-def]
    """A loop whose one connection always has ``frame`` to read; returns its run_once."""
    import select
    import socket

    from evws.reactor.stream import Stream

    real, _other = socket.socketpair()
    loop = evws.Loop()
    stream = Stream(StubSocket(frame, real), loop)  # type: ignore[arg-type]
    conn = Connection(stream, WebSocketProtocol(Side.SERVER, max_payload_size=None), loop=loop,
                      ping_interval=None)
    conn.on("each_message", lambda connection, message: connection.send(message))
    conn._start()
    ready = [(real.fileno(), select.EPOLLIN)]
    loop._selector.poll = lambda timeout: ready  # type: ignore[method-assign]
    server_turn.keep = (real, _other)  # type: ignore[attr-defined]

    def turn() -> None:
        loop.run_once(0)
        if conn.finished:  # a broken stub would time nothing at all
            raise RuntimeError(f"the connection ended: {conn.close_error!r}")
    return turn


def per_call(fn, number: int) -> float:  # type: ignore[no-untyped-def]
    """Best of 5 runs, microseconds per call."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", action="store_true", help="cProfile the echo path (16 B binary)")
    ap.add_argument("--size", type=int, default=16, help="message size for --profile (default 16)")
    ap.add_argument("--text", action="store_true", help="text messages for --profile")
    a = ap.parse_args()
    print(f"evws._speedups in use: mask {mask.ACCELERATED}, utf8 {utf8.ACCELERATED}")
    print("| operation | 16 B | 4 KiB | 1 MiB |\n|---|---|---|---|")
    sizes = (16, 4096, 1 << 20)
    rows = []
    for opcode, label in ((2, "binary"), (1, "text")):
        cells = []
        for size in sizes:
            payload = (b"0123456789abcdef" * (size // 16 + 1))[:size]
            data = masked_frame(opcode, payload)
            conn, _ = echo_connection()
            cells.append(per_call(lambda conn=conn, data=data: conn._on_data(data), 20000 if size < 100000 else 50))
        rows.append((f"echo path, {label} (us/message)", cells))
        cells = []
        for size in sizes:
            payload = (b"0123456789abcdef" * (size // 16 + 1))[:size]
            cells.append(per_call(server_turn(masked_frame(opcode, payload)),
                                  20000 if size < 100000 else 50))
        rows.append((f"server turn, {label} (us/message)", cells))
        cells = []
        for size in sizes:
            payload = (b"0123456789abcdef" * (size // 16 + 1))[:size]
            data = masked_frame(opcode, payload)
            proto = WebSocketProtocol(Side.SERVER, max_payload_size=None)

            def receive(proto: WebSocketProtocol = proto, data: bytes = data) -> None:
                proto.receive_data(data)
                while proto.events_received():
                    pass
            cells.append(per_call(receive, 20000 if size < 100000 else 50))
        rows.append((f"protocol only, {label} (us/message)", cells))
    impls = [("python", mask._py_apply_mask, utf8._PyUtf8Validator)]
    if mask.ACCELERATED:
        impls.append(("C", mask._c_apply_mask, utf8._CUtf8Validator))
    for name, apply_mask, validator in impls:
        blobs = [os.urandom(n) for n in sizes]
        rows.append((f"apply_mask, {name} (us)",
                     [per_call(lambda b=b, apply_mask=apply_mask: apply_mask(b, KEY),
                               20000 if len(b) < 100000 else 20) for b in blobs]))
        texts = [(b"0123456789abcdef" * (n // 16 + 1))[:n] for n in sizes]
        v = validator()
        rows.append((f"Utf8Validator.feed, {name}, ASCII (us)",
                     [per_call(lambda t=t, v=v: v.feed(t, True), 20000 if len(t) < 100000 else 20) for t in texts]))
    for label, cells in rows:
        print(f"| {label} | " + " | ".join(f"{c:,.2f}" for c in cells) + " |")

    if a.profile:
        conn, _ = echo_connection()
        data = masked_frame(1 if a.text else 2, (b"0123456789abcdef" * (a.size // 16 + 1))[:a.size])
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(200000):
            conn._on_data(data)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
