"""WebSockets over Unix-domain sockets, both ends: the evws server (``Server.listen_unix``,
``unix_server``, ``python -m evws serve --unix``) and client (``unix_socket=``), each
also against the ``websockets`` library, and what a socket *file* needs."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading

import pytest

import evws
from tests.certs import self_signed
from tests.conftest import TIMEOUT, run_until
from tests.test_cli import ENV, Lines, evws_cmd
from tests.test_cli import TIMEOUT as CLI_TIMEOUT  # a subprocess starts Python: more room

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")


@pytest.fixture
def sock_dir():
    """A short directory: a Unix socket path is limited to about 107 bytes."""
    path = tempfile.mkdtemp(prefix="evws-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


class UnixEcho:
    """An evws echo server on a Unix socket; records the requests it accepted."""

    def __init__(self, loop, path, **server_options):
        self.requests: list = []
        self.server = evws.Server(loop=loop, handshake=self.handshake, **server_options)
        self.listener = self.server.listen_unix(path, self.accept)

    def handshake(self, request, response):
        self.requests.append(request)
        return response

    def accept(self, sock, peer, port):
        assert port == 0

        def established(cv):
            if cv.error is not None:
                sock.close()
                return
            cv.recv_all()[0].on("each_message", lambda c, m: c.send(m))
        self.server.establish(sock).cb(established)


def echo_once(loop, conn, text="over a unix socket"):
    got = []
    conn.on("each_message", lambda c, m: got.append(m.decoded_body))
    conn.send(text)
    run_until(loop, lambda: got)
    assert got == [text]
    conn.close()
    run_until(loop, lambda: conn.finished)


# -- evws <-> evws --------------------------------------------------------------------


def test_evws_client_and_server(loop, sock_dir):
    path = os.path.join(sock_dir, "ws.sock")
    echo = UnixEcho(loop, path)
    assert echo.listener.path == path and echo.listener.port == 0
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    conn = evws.connect("ws://localhost/chat?room=7", unix_socket=path,
                        loop=loop).recv(timeout=TIMEOUT)
    echo_once(loop, conn)
    [request] = echo.requests
    assert request.headers["Host"] == "localhost"
    assert request.resource_name == "/chat?room=7"
    echo.server.shutdown().recv(timeout=TIMEOUT)
    assert not os.path.exists(path), "shutdown closes the listener, which removes the file"


def test_wss_over_a_unix_socket_sends_the_url_host_as_sni(loop, sock_dir, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(cert), str(key))
    names = []
    server_ctx.sni_callback = lambda sslobj, name, ctx: names.append(name)
    path = os.path.join(sock_dir, "wss.sock")
    echo = UnixEcho(loop, path, ssl_context=server_ctx)
    try:
        conn = evws.connect("wss://localhost/", unix_socket=path, loop=loop,
                            ssl_context=ssl.create_default_context(cafile=str(cert))
                            ).recv(timeout=TIMEOUT)
        echo_once(loop, conn)
        assert names == ["localhost"]
    finally:
        echo.listener.close()


def test_proxy_environment_is_not_used_for_a_unix_socket(loop, sock_dir, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:1")
    path = os.path.join(sock_dir, "ws.sock")
    echo = UnixEcho(loop, path)
    try:
        echo_once(loop, evws.connect("ws://localhost/", unix_socket=path,
                                     loop=loop).recv(timeout=TIMEOUT))
    finally:
        echo.listener.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract names are Linux's")
def test_abstract_socket_name(loop):
    name = f"\0evws-test-{os.getpid()}"
    echo = UnixEcho(loop, name)
    try:
        echo_once(loop, evws.connect("ws://localhost/", unix_socket=name,
                                     loop=loop).recv(timeout=TIMEOUT))
    finally:
        echo.listener.close()


# -- the socket file ---------------------------------------------------------------------


def test_mode_is_set_before_listening(loop, sock_dir):
    path = os.path.join(sock_dir, "private.sock")
    listener = evws.unix_server(path, lambda s, h, p: s.close(), loop=loop, mode=0o600)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        listener.close()
    listener = evws.unix_server(path, lambda s, h, p: s.close(), loop=loop, mode=0o660)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    finally:
        listener.close()


def test_stale_socket_file_is_replaced(loop, sock_dir):
    path = os.path.join(sock_dir, "stale.sock")
    crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    crashed.bind(path)
    crashed.close()  # the file stays: what a killed server leaves behind
    assert os.path.exists(path)
    echo = UnixEcho(loop, path)
    try:
        echo_once(loop, evws.connect("ws://localhost/", unix_socket=path,
                                     loop=loop).recv(timeout=TIMEOUT))
    finally:
        echo.listener.close()
    assert not os.path.exists(path)


def test_a_live_server_keeps_its_socket(loop, sock_dir):
    path = os.path.join(sock_dir, "live.sock")
    echo = UnixEcho(loop, path)
    try:
        with pytest.raises(OSError) as info:
            evws.unix_server(path, lambda s, h, p: None, loop=loop)
        assert info.value.errno == errno.EADDRINUSE
        echo_once(loop, evws.connect("ws://localhost/", unix_socket=path,
                                     loop=loop).recv(timeout=TIMEOUT))
    finally:
        echo.listener.close()


def test_a_file_that_is_not_a_socket_is_left_alone(loop, sock_dir):
    path = os.path.join(sock_dir, "notes.txt")
    with open(path, "w") as f:
        f.write("precious")
    with pytest.raises(OSError, match="not a socket") as info:
        evws.unix_server(path, lambda s, h, p: None, loop=loop)
    assert info.value.errno == errno.EADDRINUSE
    with open(path) as f:
        assert f.read() == "precious"


def test_close_leaves_a_file_that_another_server_put_there(loop, sock_dir):
    path = os.path.join(sock_dir, "ws.sock")
    first = evws.unix_server(path, lambda s, h, p: s.close(), loop=loop)
    os.unlink(path)  # someone removed it and started another server at the same path
    second = evws.unix_server(path, lambda s, h, p: s.close(), loop=loop)
    first.close()
    assert os.path.exists(path), "the second server's file was removed"
    second.close()
    assert not os.path.exists(path)
    first.close()  # idempotent


def test_connect_failures_are_the_oserror(loop, sock_dir):
    missing = os.path.join(sock_dir, "missing.sock")
    with pytest.raises(FileNotFoundError):
        evws.connect("ws://localhost/", unix_socket=missing, loop=loop).recv(timeout=TIMEOUT)
    stale = os.path.join(sock_dir, "stale.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(stale)
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        evws.connect("ws://localhost/", unix_socket=stale, loop=loop).recv(timeout=TIMEOUT)


def test_unix_connect_waits_while_the_backlog_is_full(loop, sock_dir):
    path = os.path.join(sock_dir, "full.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    fillers: list[socket.socket] = []
    accepted: list[socket.socket] = []
    try:
        for _ in range(64):  # fill the backlog until a connect would block
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            if filler.connect_ex(path) in (errno.EAGAIN, errno.EWOULDBLOCK):
                break
        else:
            pytest.skip("the backlog never filled")
        cv = evws.unix_connect(path, loop, timeout=0.2)
        with pytest.raises(TimeoutError):
            cv.recv(timeout=TIMEOUT)
        cv = evws.unix_connect(path, loop, timeout=TIMEOUT)
        listener.setblocking(False)

        def accept_and_check():
            try:
                accepted.append(listener.accept()[0])
            except BlockingIOError:
                pass
            return cv.ready
        run_until(loop, accept_and_check)
        sock = cv.recv()
        sock.send(b"x")  # really connected, not a socket that only polled writable
        sock.close()
    finally:
        for s in fillers + accepted:
            s.close()
        listener.close()


# -- against the websockets library -----------------------------------------------------


def test_websockets_client_against_evws_serve_unix(sock_dir):
    """``python -m evws serve --unix PATH`` with ``websockets.sync.client.unix_connect``."""
    sync_client = pytest.importorskip("websockets.sync.client")
    path = os.path.join(sock_dir, "cli.sock")
    proc = subprocess.Popen(evws_cmd("serve", "--unix", path), env=ENV, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = Lines(proc.stderr)
    try:
        err.wait_for(r"listening on unix:")
        with sync_client.unix_connect(path, uri="ws://localhost/x", open_timeout=CLI_TIMEOUT) as ws:
            ws.send("héllo")
            assert ws.recv(timeout=TIMEOUT) == "héllo"
            ws.send(b"\x00\xff")
            assert ws.recv(timeout=TIMEOUT) == b"\x00\xff"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=CLI_TIMEOUT) == 0
        assert not os.path.exists(path), "serve --unix leaves its socket file behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_evws_connect_unix_against_evws_serve_unix(sock_dir):
    path = os.path.join(sock_dir, "cli.sock")
    proc = subprocess.Popen(evws_cmd("serve", "--unix", path), env=ENV, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = Lines(proc.stderr)
    try:
        err.wait_for(r"listening on unix:")
        result = subprocess.run(evws_cmd("connect", "--unix", path, "ws://localhost/"), env=ENV,
                                input=b"one\ntwo\n", capture_output=True, timeout=CLI_TIMEOUT)
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"one\ntwo\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=CLI_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_unix_and_workers_is_a_usage_error(sock_dir):
    result = subprocess.run(evws_cmd("serve", "--unix", os.path.join(sock_dir, "s"),
                                     "--workers", "2"), env=ENV, capture_output=True, text=True,
                            timeout=CLI_TIMEOUT)
    assert result.returncode == 2 and "--unix and --workers" in result.stderr


def test_serve_unix_refuses_a_live_socket(sock_dir, loop):
    path = os.path.join(sock_dir, "taken.sock")
    listener = evws.unix_server(path, lambda s, h, p: s.close(), loop=loop)
    try:
        result = subprocess.run(evws_cmd("serve", "--unix", path), env=ENV, capture_output=True,
                                text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)
        assert result.returncode == 1 and f"cannot listen on unix:{path}" in result.stderr
    finally:
        listener.close()


def test_evws_client_against_websockets_unix_server(loop, sock_dir):
    sync_server = pytest.importorskip("websockets.sync.server")
    path = os.path.join(sock_dir, "websockets.sock")
    seen = []

    def handler(ws):
        seen.append(ws.request.path)
        for message in ws:
            ws.send(message)

    with sync_server.unix_serve(handler, path) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            conn = evws.connect("ws://localhost/from-evws", unix_socket=path,
                                loop=loop).recv(timeout=TIMEOUT)
            echo_once(loop, conn)
            assert seen == ["/from-evws"]
        finally:
            server.shutdown()
            thread.join(TIMEOUT)
    assert not thread.is_alive()
