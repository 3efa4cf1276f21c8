"""Cancelling a connect in flight (``cv.cancel()``), at every step, over loopback.

The peers that never get anywhere are plain sockets *outside* the evws loop,
so that after a cancel ``loop.pending()`` must be exactly empty and the
process's descriptors exactly what they were before the connect:

- TCP still connecting: a listener made with ``listen(0)`` whose one backlog
  slot is taken, so the kernel drops the next SYN and the connect stays open;
- TLS, HTTP upgrade, proxy ``CONNECT`` pending: a listener that is never
  accepted -- the kernel completes the TCP handshake, the client's first
  bytes sit unread, no answer ever comes.
"""

from __future__ import annotations

import errno
import gc
import os
import select
import socket
import ssl

import pytest

import evws
from evws.reconnect import ReconnectPolicy
from tests.conftest import TIMEOUT, run_until


def open_fds() -> int:
    gc.collect()  # an earlier test's garbage must not count here
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def silent():
    """A loopback listener nobody accepts on: connects succeed, nothing is ever answered."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def black_hole():
    """A loopback port where a TCP connect stays in progress: its backlog is full."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            filler.connect_ex(("127.0.0.1", port))
            if not select.select([], [filler], [], 1.0)[1]:
                break  # this one stays connecting: the backlog is full
        else:
            pytest.skip("the listen backlog never filled")
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


def turns(loop, n=5):
    """A few loop turns, so that the connect gets as far as it can."""
    for _ in range(n):
        loop.run_once(0.01)


def cancel_and_check(loop, cv, fds_before, stage):
    """Cancel ``cv`` now; it croaks ConnectCancelled naming ``stage``, nothing is left."""
    assert not cv.ready and cv.cancellable
    assert cv.cancel() is True
    assert cv.ready and not cv.cancellable
    with pytest.raises(evws.ConnectCancelled, match=stage):
        cv.recv(timeout=0)
    assert loop.pending() == []
    assert open_fds() == fds_before
    assert cv.cancel() is False  # too late: nothing happens
    turns(loop, 2)
    assert loop.pending() == [] and open_fds() == fds_before


def test_cancel_while_tcp_connects(loop, black_hole):
    fds = open_fds()
    cv = evws.connect(f"ws://127.0.0.1:{black_hole}/", loop=loop, timeout=30)
    turns(loop)
    assert not cv.ready and loop.pending()  # a write watcher and the timeout
    cancel_and_check(loop, cv, fds, "connecting")


def test_cancel_during_the_tls_handshake(loop, silent):
    fds = open_fds()
    cv = evws.connect(f"wss://127.0.0.1:{silent}/", loop=loop, timeout=30,
                      ssl_context=ssl.create_default_context())
    turns(loop)
    cancel_and_check(loop, cv, fds, "TLS handshake")


def test_cancel_while_waiting_for_the_http_answer(loop, silent):
    fds = open_fds()
    cv = evws.connect(f"ws://127.0.0.1:{silent}/", loop=loop, timeout=30)
    turns(loop)
    cancel_and_check(loop, cv, fds, "handshake answer")


def test_cancel_while_the_proxy_has_not_answered_connect(loop, silent):
    fds = open_fds()
    cv = evws.connect("ws://example.invalid/", proxy=f"http://127.0.0.1:{silent}",
                      loop=loop, timeout=30)
    turns(loop)
    cancel_and_check(loop, cv, fds, "proxy")


def test_cancel_while_connecting_to_the_proxy(loop, black_hole):
    fds = open_fds()
    cv = evws.connect("ws://example.invalid/", proxy=f"http://127.0.0.1:{black_hole}",
                      loop=loop, timeout=30)
    turns(loop)
    cancel_and_check(loop, cv, fds, "proxy")


def test_cancel_a_redirect_hop(loop, silent):
    """The first server redirects to the silent one; the second hop is the one cancelled."""
    redirector = socket.socket()
    redirector.bind(("127.0.0.1", 0))
    redirector.listen(4)
    redirector.setblocking(False)
    try:
        fds = open_fds()
        cv = evws.connect(f"ws://127.0.0.1:{redirector.getsockname()[1]}/", loop=loop,
                          timeout=30)
        accepted = []

        def accept():
            try:
                accepted.append(redirector.accept()[0])
            except BlockingIOError:
                pass
            return bool(accepted)
        run_until(loop, accept)
        peer = accepted[0]
        peer.setblocking(False)
        request = []

        def read():
            try:
                request.append(peer.recv(4096))
            except BlockingIOError:
                pass
            return b"\r\n\r\n" in b"".join(request)
        run_until(loop, read)
        peer.sendall(b"HTTP/1.1 302 Found\r\nLocation: ws://127.0.0.1:%d/\r\n"
                     b"Content-Length: 0\r\n\r\n" % silent)
        peer.close()
        # Wait until the first hop's socket is gone and the second is waiting for its answer.
        run_until(loop, lambda: open_fds() == fds + 1 and any(
            isinstance(g, evws.reactor.loop.Timer) for g in loop.pending()))
        turns(loop)
        assert not cv.ready
        cancel_and_check(loop, cv, fds, "handshake answer")
    finally:
        redirector.close()


def test_cancel_with_an_error_of_ones_own(loop, silent):
    cv = evws.connect(f"ws://127.0.0.1:{silent}/", loop=loop, timeout=30)
    turns(loop)
    mine = evws.ConnectCancelled("shutting down")
    assert cv.cancel(mine)
    assert cv.error is mine
    assert loop.pending() == []


def test_cancel_after_the_connection_opened_does_nothing(loop):
    server = evws.Server(loop=loop)
    listener = evws.tcp_server("127.0.0.1", 0, lambda s, h, p: server.establish(s), loop=loop)
    try:
        cv = evws.connect(f"ws://127.0.0.1:{listener.port}/", loop=loop)
        conn = cv.recv(timeout=TIMEOUT)
        assert cv.cancel() is False
        assert not conn.finished
        conn.close()
        run_until(loop, lambda: conn.finished and not server.connections)
    finally:
        listener.close()


def test_tcp_connect_cancel_croaks_cancelled(loop, black_hole):
    fds = open_fds()
    cv = evws.tcp_connect("127.0.0.1", black_hole, loop, timeout=30)
    turns(loop)
    assert cv.cancel()
    with pytest.raises(evws.Cancelled) as info:
        cv.recv(timeout=0)
    assert not isinstance(info.value, evws.ConnectCancelled)  # the reactor's own
    assert loop.pending() == [] and open_fds() == fds


def test_unix_connect_cancel_while_the_backlog_is_full(loop, tmp_path):
    path = str(tmp_path / "full.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    fillers = []
    try:
        for _ in range(64):
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            if filler.connect_ex(path) in (errno.EAGAIN, errno.EWOULDBLOCK):
                break
        else:
            pytest.skip("the backlog never filled")
        fds = open_fds()
        cv = evws.connect("ws://localhost/", unix_socket=path, loop=loop, timeout=30)
        turns(loop)
        assert not cv.ready and loop.pending()  # the retry timer
        cancel_and_check(loop, cv, fds, "connecting")
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_a_condvar_without_a_canceller_refuses_cancel(loop):
    cv = evws.CondVar(loop)
    assert not cv.cancellable
    with pytest.raises(RuntimeError, match="cannot be cancelled"):
        cv.cancel()
    assert not cv.ready
    cv.send(1)
    assert cv.cancel() is False


def test_reconnecting_close_while_connecting_finishes_at_once(loop, black_hole):
    fds = open_fds()
    client = evws.reconnecting(f"ws://127.0.0.1:{black_hole}/", ReconnectPolicy(), loop=loop,
                               timeout=30)
    finished = []
    client.on("finish", finished.append)
    turns(loop)
    assert not client.finished
    client.close()
    assert finished == [None] and client.finished
    assert loop.pending() == [] and open_fds() == fds


def test_reconnecting_close_while_the_handshake_waits(loop, silent):
    fds = open_fds()
    client = evws.reconnecting(f"ws://127.0.0.1:{silent}/", ReconnectPolicy(), loop=loop,
                               timeout=30)
    events = []
    for name in ("connect", "reconnect", "finish"):
        client.on(name, lambda *args, name=name: events.append(name))
    turns(loop)
    client.close()
    assert events == ["finish"]
    assert loop.pending() == [] and open_fds() == fds
