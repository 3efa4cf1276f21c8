"""Shared fixtures: a private loop per test and a raw peer over a socketpair.

Every wait is bounded: ``Peer`` methods run the evws loop in small turns until
what they wait for arrived or ``timeout`` passed, then fail the test.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Callable

import pytest

import evws
from tests import wire

TIMEOUT = 5.0

#: what evws.connect reads from the environment (evws.proxy); cleared for every test
PROXY_VARIABLES = tuple(name for base in ("http_proxy", "https_proxy", "no_proxy")
                        for name in (base, base.upper()))


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch):
    """Loopback tests connect directly even where the developer's shell sets a proxy."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def loop():
    lp = evws.Loop()
    yield lp
    lp.close()


def run_until(loop: evws.Loop, condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Run the loop until ``condition()`` holds; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        loop.run_once(0.01)


class Peer:
    """The client end of a socketpair, speaking raw bytes built by the test."""

    def __init__(self, loop: evws.Loop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        self.sock.setblocking(False)
        self.buffer = b""
        self.eof = False

    def send(self, data: bytes) -> None:
        """Write all of ``data``, running the loop while the socket buffer is full."""
        view = memoryview(data)
        deadline = time.monotonic() + TIMEOUT
        while view:
            try:
                n = self.sock.send(view)
                view = view[n:]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail("peer could not send within the timeout")
                self.loop.run_once(0.01)

    def _pull(self) -> None:
        while not self.eof:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            except ConnectionResetError:
                self.eof = True
                return
            if not data:
                self.eof = True
                return
            self.buffer += data

    def pump(self, condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        def check() -> bool:
            self._pull()
            return condition()
        run_until(self.loop, check, timeout)

    def read_response_head(self) -> bytes:
        self.pump(lambda: b"\r\n\r\n" in self.buffer or self.eof)
        head, sep, rest = self.buffer.partition(b"\r\n\r\n")
        assert sep, f"no HTTP head, got {self.buffer!r}"
        self.buffer = rest
        return head + sep

    def read_frames(self, count: int, timeout: float = TIMEOUT) -> list[tuple[bool, int, bytes]]:
        """Wait for ``count`` complete frames from the server and return them."""
        got: list[tuple[bool, int, bytes]] = []

        def enough() -> bool:
            frames, rest = wire.parse_frames(self.buffer)
            if frames:
                got.extend(frames)
                self.buffer = rest
            return len(got) >= count or self.eof
        self.pump(enough, timeout)
        assert len(got) >= count, f"wanted {count} frames, got {got} before EOF"
        return got

    def read_until_eof(self, timeout: float = TIMEOUT) -> list[tuple[bool, int, bytes]]:
        self.pump(lambda: self.eof, timeout)
        frames, rest = wire.parse_frames(self.buffer)
        self.buffer = rest
        return frames

    def close(self) -> None:
        self.sock.close()


def establish_raw(loop: evws.Loop, server: evws.Server, data: bytes):
    """Start establish on one end of a socketpair, send ``data`` from the other.

    Returns (establish CondVar, the server's socket, the Peer).
    """
    ours, theirs = socket.socketpair()
    peer = Peer(loop, theirs)
    cv = server.establish(ours)
    peer.send(data)
    return cv, ours, peer


def open_connection(loop: evws.Loop, server: evws.Server, request: bytes = wire.upgrade_request(),
                    *, chunk: int | None = None):
    """Handshake a server over a socketpair; return (connection, results, peer)."""
    ours, theirs = socket.socketpair()
    peer = Peer(loop, theirs)
    cv = server.establish(ours)
    if chunk is None:
        peer.send(request)
    else:
        for i in range(0, len(request), chunk):
            peer.send(request[i:i + chunk])
            loop.run_once(0)
    values = cv.recv_all(timeout=TIMEOUT)
    head = peer.read_response_head()
    assert head.startswith(b"HTTP/1.1 101 "), head
    return values[0], values[1:], peer


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends a real RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.fixture
def socketpair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()
