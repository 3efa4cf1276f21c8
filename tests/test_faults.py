"""Faults: resets, broken pipes, half-closes, descriptor exhaustion, raising callbacks.

In every case: nothing escapes the loop, the other connections are untouched,
``finish`` fires exactly once with 1006 or the code received, and no file
descriptor leaks (/proc/self/fd is counted before and after). Real resets
come from ``SO_LINGER`` 0 over TCP; the other errors are injected by small
``socket.socket`` subclasses.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import subprocess
import sys
import time

import pytest

import evws
from evws.reactor.tcp import TcpServer
from tests import wire
from tests.conftest import TIMEOUT, Peer, open_connection, reset, run_until
from tests.servers import ROOT


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def watch(conn):
    """Record finish calls (and the close code seen then)."""
    seen = []
    conn.on("finish", lambda c: seen.append(c.close_code))
    return seen


def echo(conn):
    conn.on("each_message", lambda c, m: c.send(m))


def assert_echoes(loop, peer, payload=b"still here"):
    """The bystander connection works as before."""
    peer.send(wire.frame(wire.TEXT, payload))
    assert peer.read_frames(1) == [(True, wire.TEXT, payload)]


@pytest.fixture
def no_leak(loop):
    """Fail the test if descriptors opened during it are still open at the end."""
    before = fd_count()
    checks = []
    yield checks
    deadline = time.monotonic() + TIMEOUT
    while fd_count() > before and time.monotonic() < deadline:
        loop.run_once(0.01)
    assert fd_count() <= before, "file descriptors leaked"


@pytest.fixture
def tcp(loop):
    """A listening evws server on 127.0.0.1; ``connect()`` returns (conn, peer)."""
    server = evws.Server(loop=loop, ping_interval=None, close_timeout=1)
    conns = []

    def on_accept(sock, host, port):
        def established(cv):
            conn = cv.recv()
            echo(conn)
            conns.append(conn)
        server.establish(sock).cb(established)
    listener = server.listen("127.0.0.1", 0, on_accept)

    def connect():
        sock = evws.reactor.tcp_connect("127.0.0.1", listener.port, loop).recv(timeout=TIMEOUT)
        peer = Peer(loop, sock)
        n = len(conns)
        peer.send(wire.upgrade_request())
        assert peer.read_response_head().startswith(b"HTTP/1.1 101 ")
        run_until(loop, lambda: len(conns) > n)
        return conns[-1], peer
    yield connect
    listener.close()


class TestResets:
    def test_real_rst_mid_frame(self, loop, no_leak, tcp, caplog):
        bystander, other = tcp()
        conn, peer = tcp()
        seen = watch(conn)
        frame = wire.frame(wire.BINARY, b"z" * 1000)
        peer.send(frame[:500])  # half a frame ...
        loop.run_once(0.01)
        with caplog.at_level(logging.ERROR):
            reset(peer.sock)  # ... then a reset
            run_until(loop, lambda: seen)
        assert seen == [1006]
        assert isinstance(conn.close_error, ConnectionResetError)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert_echoes(loop, other)
        other.close()

    def test_real_rst_mid_write(self, loop, no_leak, tcp, caplog):
        bystander, other = tcp()
        conn, peer = tcp()
        seen = watch(conn)
        conn.send(os.urandom(16 << 20))  # far more than the socket buffers hold
        peer.pump(lambda: len(peer.buffer) > 10000)  # read a little of it
        assert conn.stream.buffered_amount > 0
        with caplog.at_level(logging.ERROR):
            reset(peer.sock)
            run_until(loop, lambda: seen)
        assert seen == [1006]
        assert isinstance(conn.close_error, (ConnectionResetError, BrokenPipeError))
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert_echoes(loop, other)
        other.close()


class FaultySocket(socket.socket):
    """A real socket whose ``send``/``recv`` fail on demand (errno injection)."""

    send_error: OSError | None = None
    recv_error: OSError | None = None

    def send(self, data, *args):
        if self.send_error is not None:
            raise self.send_error
        return super().send(data, *args)

    def recv(self, n, *args):
        if self.recv_error is not None:
            raise self.recv_error
        return super().recv(n, *args)


def faulty_pair(loop, server):
    """Handshake over a socketpair whose server end is a FaultySocket."""
    a, b = socket.socketpair()
    ours = FaultySocket(a.family, a.type, a.proto, fileno=a.detach())
    peer = Peer(loop, b)
    cv = server.establish(ours)
    peer.send(wire.upgrade_request())
    conn = cv.recv(timeout=TIMEOUT)
    peer.read_response_head()
    return conn, ours, peer


class TestInjectedErrors:
    @pytest.mark.parametrize("error", [errno.EPIPE, errno.ECONNRESET])
    def test_send_error_mid_write(self, loop, no_leak, error):
        server = evws.Server(loop=loop, ping_interval=None)
        bystander, _, other = open_connection(loop, server)
        echo(bystander)
        conn, ours, peer = faulty_pair(loop, server)
        seen = watch(conn)
        conn.send(b"a" * (4 << 20))  # partly queued
        assert conn.stream.buffered_amount > 0
        ours.send_error = OSError(error, os.strerror(error))
        peer.pump(lambda: seen)  # reading makes the socket writable: the next send fails
        assert seen == [1006]
        assert conn.close_error.errno == error
        assert_echoes(loop, other)
        peer.close()
        other.close()

    def test_send_error_on_the_first_write_is_deferred(self, loop, no_leak):
        server = evws.Server(loop=loop, ping_interval=None)
        conn, ours, peer = faulty_pair(loop, server)
        seen = watch(conn)
        ours.send_error = BrokenPipeError(errno.EPIPE, "broken pipe")
        conn.send("hello")  # must not raise into the caller, nor finish re-entrantly
        assert seen == []
        run_until(loop, lambda: seen)
        assert seen == [1006]
        with pytest.raises(evws.ConnectionClosed):
            conn.send("again")
        peer.close()

    def test_recv_error_mid_frame(self, loop, no_leak):
        server = evws.Server(loop=loop, ping_interval=None)
        conn, ours, peer = faulty_pair(loop, server)
        seen = watch(conn)
        peer.send(wire.frame(wire.TEXT, b"hello world")[:7])
        loop.run_once(0.01)
        ours.recv_error = ConnectionResetError(errno.ECONNRESET, "reset")
        peer.send(b"x")
        run_until(loop, lambda: seen)
        assert seen == [1006]
        peer.close()


class TestHalfClose:
    def test_peer_half_closes_after_messages_gets_every_echo_then_eof(self, loop, no_leak):
        server = evws.Server(loop=loop, ping_interval=None)
        conn, _, peer = open_connection(loop, server)
        echo(conn)
        seen = watch(conn)
        peer.send(b"".join(wire.frame(wire.TEXT, b"m%d" % i) for i in range(5)))
        peer.sock.shutdown(socket.SHUT_WR)  # no Close frame: 1006, but nothing lost
        frames = peer.read_until_eof()
        assert [f[2] for f in frames if f[1] == wire.TEXT] == [b"m%d" % i for i in range(5)]
        run_until(loop, lambda: seen)
        assert seen == [1006]
        peer.close()

    def test_peer_half_closes_after_its_close_frame(self, loop, no_leak):
        server = evws.Server(loop=loop, ping_interval=None)
        conn, _, peer = open_connection(loop, server)
        seen = watch(conn)
        peer.send(wire.frame(wire.CLOSE, wire.close_payload(4001, b"bye")))
        peer.sock.shutdown(socket.SHUT_WR)
        frames = peer.read_until_eof()
        assert frames == [(True, wire.CLOSE, wire.close_payload(4001))]
        run_until(loop, lambda: seen)
        assert seen == [4001] and conn.close_reason == "bye"
        peer.close()

    def test_peer_half_closes_mid_frame(self, loop, no_leak):
        server = evws.Server(loop=loop, ping_interval=None)
        conn, _, peer = open_connection(loop, server)
        seen = watch(conn)
        peer.send(wire.frame(wire.BINARY, b"q" * 300)[:100])
        peer.sock.shutdown(socket.SHUT_WR)
        peer.read_until_eof()
        run_until(loop, lambda: seen)
        assert seen == [1006]
        peer.close()


class FaultyListener(socket.socket):
    """A listening socket whose accept() fails with ``error`` until ``until``."""

    error = errno.EMFILE
    until = 0.0
    attempts = 0

    def accept(self):
        self.attempts += 1
        if time.monotonic() < self.until:
            raise OSError(self.error, os.strerror(self.error))
        return super().accept()


class TestAcceptExhaustion:
    @pytest.mark.parametrize("error", [errno.EMFILE, errno.ENFILE])
    def test_listener_backs_off_then_resumes(self, loop, no_leak, error, caplog):
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.bind(("127.0.0.1", 0))
        raw.listen(16)
        lsock = FaultyListener(raw.family, raw.type, raw.proto, fileno=raw.detach())
        lsock.error = error
        accepted = []
        listener = TcpServer(loop, [lsock], lambda s, h, p: accepted.append(s))
        lsock.until = time.monotonic() + 0.35
        client = socket.create_connection(("127.0.0.1", listener.port), timeout=TIMEOUT)
        with caplog.at_level(logging.WARNING, logger="evws.tcp"):
            run_until(loop, lambda: accepted, timeout=3)
        # 0.35 s of failures at one retry per 0.1 s: a handful of attempts, not a spin
        assert 2 <= lsock.attempts <= 10, lsock.attempts
        assert "pausing" in caplog.text
        assert len(accepted) == 1
        accepted[0].close()
        client.close()
        listener.close()

    def test_rlimit_nofile_in_a_subprocess(self):
        """The echo server with few descriptors: it neither crashes nor spins, and recovers."""
        limit = 40
        code = (
            "import resource, runpy, sys;"
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}));"
            "sys.argv = ['echo_server.py', '--port', '0'];"
            f"runpy.run_path({str(ROOT / 'examples' / 'echo_server.py')!r}, run_name='__main__')"
        )
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE,
                                text=True, env=env)
        clients = []
        try:
            line = proc.stderr.readline()
            port = int(line.rsplit(":", 1)[1].strip("/\n"))
            # More connections than the server has descriptors: the rest wait in the backlog.
            for _ in range(limit + 10):
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
            cpu0 = _cpu_seconds(proc.pid)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 0.5:  # observe it while it is out of descriptors
                assert proc.poll() is None
                time.sleep(0.05)  # only measuring CPU time, not synchronising
            used = _cpu_seconds(proc.pid) - cpu0
            assert used < 0.25, f"the server spun: {used:.2f} s CPU in 0.5 s"
            for sock in clients:  # leaving without a handshake frees the server's fds
                sock.close()
            clients.clear()
            # ... and the server serves again (a full echo over a fresh connection).
            deadline = time.monotonic() + TIMEOUT
            while True:
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
                    sock.sendall(wire.upgrade_request())
                    sock.settimeout(TIMEOUT)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = sock.recv(4096)
                        if not chunk:
                            raise ConnectionResetError
                        data += chunk
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the server did not recover"
                    time.sleep(0.05)
            assert data.startswith(b"HTTP/1.1 101 ")
            data = data.partition(b"\r\n\r\n")[2]
            sock.sendall(wire.frame(wire.TEXT, b"back"))
            while not wire.parse_frames(data)[0]:
                data += sock.recv(4096)
            assert wire.parse_frames(data)[0][0] == (True, wire.TEXT, b"back")
            sock.close()
            assert proc.poll() is None
            proc.terminate()
            assert proc.wait(timeout=TIMEOUT) == 0
            log = proc.stderr.read()
            assert "Too many open files" in log and "pausing" in log  # EMFILE really happened
            assert "Traceback" not in log
        finally:
            for sock in clients:
                sock.close()
            proc.terminate()
            try:
                proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stderr.close()


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class TestRaisingCallbacks:
    """A raising user callback costs at most its own connection, never the loop."""

    def _bystander(self, loop, server):
        conn, _, peer = open_connection(loop, server)
        echo(conn)
        return conn, peer

    @pytest.mark.parametrize("kind", ["handshake", "validator"])
    def test_handshake_and_validator(self, loop, no_leak, kind):
        def boom(*args):
            if args[0].path == "/boom":
                raise RuntimeError("user bug")
            return args[1] if kind == "handshake" else None
        server = evws.Server(loop=loop, ping_interval=None, **{kind: boom})
        conn, other = self._bystander(loop, server)
        ours, theirs = socket.socketpair()
        cv = server.establish(ours)
        theirs.sendall(wire.upgrade_request("/boom"))
        with pytest.raises(evws.HandshakeError) as info:
            cv.recv(timeout=TIMEOUT)
        assert info.value.status == 403
        assert isinstance(info.value.__cause__, RuntimeError)
        ours.close()
        theirs.close()
        assert_echoes(loop, other)
        other.close()

    def test_establish_cb(self, loop, no_leak, caplog):
        server = evws.Server(loop=loop, ping_interval=None)
        conn, other = self._bystander(loop, server)
        ours, theirs = socket.socketpair()
        peer = Peer(loop, theirs)
        got = []

        def cb(cv):
            got.append(cv.recv())
            raise RuntimeError("user bug in cb")
        with caplog.at_level(logging.ERROR):
            server.establish(ours).cb(cb)
            peer.send(wire.upgrade_request())
            run_until(loop, lambda: got)
            loop.run_once(0)
        assert "user bug in cb" in caplog.text  # logged by the loop, not raised out of it
        new = got[0]
        seen = watch(new)
        assert_echoes(loop, other)
        peer.send(wire.frame(wire.CLOSE, wire.close_payload(1000)))
        run_until(loop, lambda: seen)
        assert seen == [1000]
        peer.close()
        other.close()

    @pytest.mark.parametrize("event", ["each_message", "next_message"])
    def test_message_handlers_close_with_1011(self, loop, no_leak, event):
        server = evws.Server(loop=loop, ping_interval=None)
        conn, other = self._bystander(loop, server)
        victim, _, peer = open_connection(loop, server)
        seen = watch(victim)
        errors = []
        victim.on("parse_error", lambda c, t: errors.append(t))

        def boom(c, m):
            raise RuntimeError("user bug")
        victim.on(event, boom)
        peer.send(wire.frame(wire.TEXT, b"x"))
        frames = peer.read_until_eof()
        assert struct.unpack("!H", frames[-1][2][:2])[0] == 1011
        run_until(loop, lambda: seen)
        assert seen == [1006] and errors == []  # not a parse_error: it was our fault
        assert isinstance(victim.close_error, RuntimeError)
        assert_echoes(loop, other)
        peer.close()
        other.close()

    def test_finish_and_parse_error_listeners(self, loop, no_leak, caplog):
        server = evws.Server(loop=loop, ping_interval=None)
        conn, other = self._bystander(loop, server)
        victim, _, peer = open_connection(loop, server)
        calls = []

        def bad_parse_error(c, text):
            calls.append("parse_error")
            raise RuntimeError("user bug in parse_error")

        def bad_finish(c):
            calls.append("finish")
            raise RuntimeError("user bug in finish")
        victim.on("parse_error", bad_parse_error)
        victim.on("finish", bad_finish)
        victim.on("finish", lambda c: calls.append("second finish"))
        with caplog.at_level(logging.ERROR):
            peer.send(b"\x81\x05hello")  # unmasked: 1002
            frames = peer.read_until_eof()
            run_until(loop, lambda: "second finish" in calls)
        assert struct.unpack("!H", frames[-1][2][:2])[0] == 1002
        assert calls == ["parse_error", "finish", "second finish"]
        assert "user bug in parse_error" in caplog.text and "user bug in finish" in caplog.text
        assert_echoes(loop, other)
        peer.close()
        other.close()
