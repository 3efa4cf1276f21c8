"""Tests for evws.reactor.tcp: tcp_server and tcp_connect over loopback."""

from __future__ import annotations

import errno
import logging
import select
import socket
import time

import pytest

from evws.reactor.tcp import tcp_connect, tcp_server
from tests.conftest import TIMEOUT, run_until


@pytest.fixture
def accepted():
    socks: list[tuple[socket.socket, str, int]] = []
    yield socks
    for s, _, _ in socks:
        s.close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class TestServer:
    def test_port_zero_and_accept(self, loop, accepted):
        server = tcp_server("127.0.0.1", 0, lambda *a: accepted.append(a), loop=loop)
        try:
            assert server.port > 0 and server.host == "127.0.0.1"
            assert len(server.sockets) == 1
            client = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
            run_until(loop, lambda: accepted)
            sock, host, port = accepted[0]
            assert (host, port) == client.getsockname()
            assert not sock.getblocking()
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            client.sendall(b"ping")
            assert select.select([sock], [], [], TIMEOUT)[0]
            assert sock.recv(10) == b"ping"
            client.close()
        finally:
            server.close()

    def test_many_pending_connections_all_accepted(self, loop, accepted):
        server = tcp_server("127.0.0.1", 0, lambda *a: accepted.append(a), loop=loop)
        clients = []
        try:
            for _ in range(150):  # more than one accept batch
                c = socket.socket()
                c.setblocking(False)
                c.connect_ex(("127.0.0.1", server.port))
                clients.append(c)
            run_until(loop, lambda: len(accepted) == 150)
        finally:
            server.close()
            for c in clients:
                c.close()

    def test_all_interfaces(self, loop, accepted):
        server = tcp_server(None, 0, lambda *a: accepted.append(a), loop=loop)
        try:
            client = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
            run_until(loop, lambda: accepted)
            assert accepted[0][1] == "127.0.0.1"  # IPv4-mapped form undone
            client.close()
        finally:
            server.close()

    def test_close_is_idempotent_and_stops_listening(self, loop):
        server = tcp_server("127.0.0.1", 0, lambda *a: None, loop=loop)
        port = server.port
        server.close()
        server.close()
        assert server.closed
        assert all(s.fileno() == -1 for s in server.sockets)
        assert not loop._io
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)

    def test_callback_exception_logged_server_keeps_going(self, loop, accepted, caplog):
        calls = []

        def fn(sock, host, port):
            calls.append(sock)
            if len(calls) == 1:
                raise ValueError("bad callback")
            accepted.append((sock, host, port))

        server = tcp_server("127.0.0.1", 0, fn, loop=loop)
        c1 = c2 = None
        try:
            with caplog.at_level(logging.ERROR):
                c1 = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
                run_until(loop, lambda: calls)
                c2 = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
                run_until(loop, lambda: accepted)
            assert any(r.exc_info and isinstance(r.exc_info[1], ValueError)
                       for r in caplog.records)
            assert calls[0].fileno() != -1  # left alone, not closed
        finally:
            calls[0].close()
            server.close()
            for c in (c1, c2):
                if c is not None:
                    c.close()

    def test_out_of_descriptors_pauses_then_resumes(self, loop, accepted, monkeypatch, caplog):
        real_accept = socket.socket.accept
        calls = {"fail": 0, "total": 0}

        def flaky_accept(self):
            calls["total"] += 1
            if calls["fail"] == 0:
                calls["fail"] += 1
                raise OSError(errno.EMFILE, "Too many open files")
            return real_accept(self)

        server = tcp_server("127.0.0.1", 0, lambda *a: accepted.append(a), loop=loop)
        monkeypatch.setattr(socket.socket, "accept", flaky_accept)
        client = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        try:
            start = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="evws.tcp"):
                run_until(loop, lambda: accepted)
            assert time.monotonic() - start >= 0.09  # waited before retrying
            # One failure, then one success and one "would block": no spinning
            # on the still-readable listener during the pause.
            assert calls == {"fail": 1, "total": 3}
            assert any(r.levelno == logging.WARNING for r in caplog.records)
        finally:
            monkeypatch.undo()
            client.close()
            server.close()


class TestConnect:
    def test_connect_success(self, loop, accepted):
        server = tcp_server("127.0.0.1", 0, lambda *a: accepted.append(a), loop=loop)
        try:
            sock = tcp_connect("127.0.0.1", server.port, loop).recv(timeout=TIMEOUT)
            try:
                assert not sock.getblocking()
                assert sock.getpeername() == ("127.0.0.1", server.port)
                run_until(loop, lambda: accepted)
                assert accepted[0][2] == sock.getsockname()[1]
            finally:
                sock.close()
        finally:
            server.close()

    def test_connect_by_name_tries_each_address(self, loop, accepted):
        # "localhost" may resolve to ::1 first; only 127.0.0.1 listens.
        server = tcp_server("127.0.0.1", 0, lambda *a: accepted.append(a), loop=loop)
        try:
            sock = tcp_connect("localhost", server.port, loop, timeout=TIMEOUT).recv(timeout=TIMEOUT)
            sock.close()
        finally:
            server.close()

    def test_connect_refused(self, loop):
        cv = tcp_connect("127.0.0.1", closed_port(), loop, timeout=TIMEOUT)
        with pytest.raises(ConnectionRefusedError):
            cv.recv(timeout=TIMEOUT)
        assert not loop._io and not [t for t in loop._timers if t[2].active]

    def test_unknown_name_croaks(self, loop):
        cv = tcp_connect("no-such-host.invalid", 80, loop)
        with pytest.raises(OSError):
            cv.recv(timeout=TIMEOUT)

    def test_connect_timeout(self, loop):
        # A listener that never accepts, with a full accept queue: Linux then
        # drops further SYNs, so a new connect hangs until our timeout.
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):
                c = socket.socket()
                c.setblocking(False)
                c.connect_ex(("127.0.0.1", port))
                fillers.append(c)
                if not select.select([], [c], [], 0.2)[1]:
                    break  # this one hangs: the queue is full
            else:
                pytest.skip("the kernel completes every connect; cannot make one hang")
            start = time.monotonic()
            cv = tcp_connect("127.0.0.1", port, loop, timeout=0.2)
            with pytest.raises(TimeoutError) as info:
                cv.recv(timeout=TIMEOUT)
            assert 0.15 <= time.monotonic() - start < 2.0
            assert info.value.errno == errno.ETIMEDOUT
            assert not loop._io
        finally:
            for c in fillers:
                c.close()
            listener.close()
