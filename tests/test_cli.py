"""``python -m evws``: serve and connect, run as subprocesses against each other.

Every wait is bounded: subprocesses run with ``timeout``, and a live server's
stderr is read by a thread into a queue that the test reads with a deadline.
"""

from __future__ import annotations

import ast
import os
import pathlib
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import pytest

import evws
from tests.certs import self_signed
from tests.conftest import run_until

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENV = {name: value for name, value in os.environ.items()
       if name.lower() not in ("http_proxy", "https_proxy", "no_proxy")}  # loopback: direct
ENV.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
TIMEOUT = 10.0


class Lines:
    """Reads a pipe line by line on a thread; ``wait_for`` has a deadline."""

    def __init__(self, pipe) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self.thread.start()

    def _pump(self, pipe) -> None:
        for line in pipe:
            self.queue.put(line)
        pipe.close()

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no line matching {pattern!r} within {timeout} s; saw {self.seen!r}")
            try:
                line = self.queue.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(line)
            match = regex.search(line)
            if match:
                return match

    def rest(self, timeout: float = TIMEOUT) -> str:
        """Everything up to EOF (the process must be ending)."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "pipe not closed in time"
        while not self.queue.empty():
            self.seen.append(self.queue.get())
        return "".join(self.seen)


def evws_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "evws", *args]


@contextmanager
def cli_server(*args: str) -> Iterator[tuple[str, subprocess.Popen, Lines]]:
    """``python -m evws serve --port 0 ARGS``: yields (url, process, stderr lines)."""
    proc = subprocess.Popen(evws_cmd("serve", "--port", "0", *args), env=ENV, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    err = Lines(proc.stderr)
    try:
        url = err.wait_for(r"listening on (wss?://\S+)").group(1)
        yield url, proc, err
        if proc.poll() is None:  # a test may have stopped it already
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0, "the server failed (or died during the test)"
        assert proc.stdout.read() == "", "serve printed data on stdout"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def run_connect(url: str, *args: str, stdin: bytes | int = b"",
                timeout: float = TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    kwargs = {"input": stdin} if isinstance(stdin, bytes) else {"stdin": stdin}
    return subprocess.run(evws_cmd("connect", url, *args), env=ENV, capture_output=True,
                          timeout=timeout, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- help and usage -------------------------------------------------------------


@pytest.mark.parametrize("command, options", [
    ("serve", ["--host", "--port", "--unix", "--broadcast", "--workers", "SIGHUP", "--redis", "--room",
               "--worker-header", "X-Evws-Worker", "evws[redis]", "--tls-cert", "--tls-key", "--subprotocol",
               "--require-subprotocol",
               "--max-payload-size", "--no-compression", "--verbose"]),
    ("connect", ["url", "--binary", "--header", "--subprotocol", "--origin", "--cafile",
                 "--insecure", "--unix", "--timeout", "--max-payload-size", "--no-compression",
                 "--verbose", "EOF", "stdout", "hexadecimal", "Exit status", "--proxy",
                 "--no-proxy", "--max-redirects", "--reconnect"]),
])
def test_help_of_each_command_is_complete(command, options):
    result = subprocess.run(evws_cmd(command, "--help"), env=ENV, capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for option in options:
        assert option in text, option


def test_top_level_help_and_version():
    result = subprocess.run(evws_cmd("--help"), env=ENV, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0
    assert "serve" in result.stdout and "connect" in result.stdout
    result = subprocess.run(evws_cmd("--version"), env=ENV, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.stdout.strip() == f"evws {evws.__version__}"
    result = subprocess.run(evws_cmd(), env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2 and "COMMAND" in result.stderr


def test_usage_errors_exit_2_on_stderr():
    result = run_connect("ws://127.0.0.1:1/", "--header", "no colon here")
    assert result.returncode == 2 and b"--header" in result.stderr and result.stdout == b""
    result = run_connect("http://127.0.0.1/")
    assert result.returncode == 2 and b"not a WebSocket URL" in result.stderr


# -- serve <-> connect -------------------------------------------------------------


def test_echo_round_trip_text():
    with cli_server() as (url, _proc, _err):
        assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/", url)
        result = run_connect(url, stdin="hello\nwörld\r\n\nlast line without newline".encode())
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "hello\nwörld\n\nlast line without newline\n"
    err = result.stderr.decode()
    assert f"connected to {url}" in err and "permessage-deflate" in err
    assert "connection closed: 1000" in err


def test_echo_round_trip_binary_prints_hex():
    with cli_server("--no-compression") as (url, _proc, _err):
        result = run_connect(url, "--binary", "--no-compression", stdin=b"abc\n\x00\xff\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"616263\n00ff\n"
    assert b"extensions" not in result.stderr


@pytest.mark.parametrize("kind", ["file", "devnull"])
def test_stdin_that_epoll_cannot_watch(tmp_path, kind):
    """A regular file or /dev/null as stdin is read without loop.io (epoll refuses them)."""
    with cli_server() as (url, _proc, _err):
        if kind == "file":
            path = tmp_path / "lines.txt"
            path.write_bytes(b"one\ntwo\n")
            with open(path, "rb") as f:
                result = run_connect(url, stdin=f.fileno())
            assert result.stdout == b"one\ntwo\n"
        else:
            result = run_connect(url, stdin=subprocess.DEVNULL)
            assert result.stdout == b""
    assert result.returncode == 0, result.stderr
    assert b"connection closed: 1000" in result.stderr


def test_broadcast_reaches_every_client():
    with cli_server("--broadcast") as (url, _proc, err):
        listener = subprocess.Popen(evws_cmd("connect", url), env=ENV, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, lerr = Lines(listener.stdout), Lines(listener.stderr)
            lerr.wait_for("connected to")
            talker = run_connect(url, stdin=b"hi all\n")
            assert talker.returncode == 0, talker.stderr
            assert talker.stdout == b"hi all\n"  # the sender is in the room too
            out.wait_for("^hi all$")
            listener.stdin.close()  # EOF: the listener closes with 1000 and exits
            assert listener.wait(timeout=TIMEOUT) == 0
            assert "connection closed: 1000" in lerr.rest()
        finally:
            if listener.poll() is None:
                listener.kill()
                listener.wait()


def test_serve_subprotocol_and_sigterm_closes_with_1001():
    with cli_server("--subprotocol", "chat", "--verbose") as (url, proc, err):
        client = subprocess.Popen(
            evws_cmd("connect", url, "--subprotocol", "other", "--subprotocol", "chat"),
            env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        try:
            cerr = Lines(client.stderr)
            cerr.wait_for(r"connected to .*subprotocol chat")
            # --verbose: the library's own loggers speak on the server's stderr
            err.wait_for(r"evws\.cli INFO connection from 127\.0\.0\.1")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=TIMEOUT) == 0
            assert client.wait(timeout=TIMEOUT) == 0
            assert "connection closed: 1001 'server shutting down'" in cerr.rest()
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
            client.stdin.close()
            client.stdout.close()


def test_verbose_is_off_by_default():
    with cli_server() as (url, _proc, err):
        result = run_connect(url, stdin=b"x\n")
        assert result.returncode == 0
        assert b"DEBUG" not in result.stderr and b"INFO" not in result.stderr
    assert not any("INFO" in line or "DEBUG" in line for line in err.seen)


def _echo(loop, conn, text: str) -> str | None:
    got: list[str] = []
    conn.on("next_message", lambda c, m: got.append(m.decoded_body))
    conn.send(text)
    run_until(loop, lambda: bool(got) or not conn.is_read_open)
    return got[0] if got else None


def test_serve_workers_sighup_closes_with_1012_and_sigterm_with_1001(loop):
    with cli_server("--workers", "2") as (url, proc, err):
        assert "(2 worker processes)" in err.seen[-1]
        conns = [evws.connect(url, loop=loop, timeout=5).recv(timeout=5) for _ in range(4)]
        codes: list[int | None] = []
        for conn in conns:
            assert _echo(loop, conn, "hi") == "hi"
            conn.on("finish", lambda c: codes.append(c.close_code))
        proc.send_signal(signal.SIGHUP)
        run_until(loop, lambda: len(codes) == 4, TIMEOUT)
        assert codes == [1012] * 4
        err.wait_for(r"evws: rolling restart done")
        conn = evws.connect(url, loop=loop, timeout=5).recv(timeout=5)
        assert _echo(loop, conn, "again") == "again"
        conn.on("finish", lambda c: codes.append(c.close_code))
        proc.send_signal(signal.SIGTERM)
        run_until(loop, lambda: len(codes) == 5, TIMEOUT)
        assert codes[-1] == 1001 and conn.close_reason == "server shutting down"
        assert proc.wait(timeout=TIMEOUT) == 0
        err.wait_for(r"evws: all workers stopped")


def test_serve_workers_broadcast_says_it_is_per_worker():
    with cli_server("--workers", "2", "--broadcast") as (url, _proc, err):
        assert "a broadcast reaches the clients of its own worker only" in err.seen[-1]
        result = run_connect(url, stdin=b"x\n")
        assert result.returncode == 0 and result.stdout == b"x\n"


def test_serve_workers_bad_tls_files_exit_1_at_once(tmp_path):
    missing = str(tmp_path / "missing.pem")
    result = subprocess.run(evws_cmd("serve", "--port", "0", "--workers", "2", "--tls-cert", missing),
                            env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1
    assert "cannot set up TLS" in result.stderr and "worker" not in result.stderr


# -- connect against in-process servers ----------------------------------------------


def start_connect(url: str, *args: str, stdin: bytes | None = b"") -> subprocess.Popen:
    proc = subprocess.Popen(evws_cmd("connect", url, *args), env=ENV, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if stdin is not None:
        proc.stdin.write(stdin)  # small: fits in the pipe without blocking
        proc.stdin.close()
    return proc


def finish(loop, proc: subprocess.Popen) -> tuple[int, bytes, bytes]:
    if proc.stdin is not None:
        proc.stdin.close()
        proc.stdin = None  # so that communicate() does not flush it
    try:
        run_until(loop, lambda: proc.poll() is not None, timeout=TIMEOUT)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


class InProcess:
    """A Server on the test's loop that records requests and runs ``on_conn``."""

    def __init__(self, loop, on_conn, **options) -> None:
        self.requests: list[evws.Request] = []

        def handshake(request, response):
            self.requests.append(request)
            if "b" in request.subprotocols:
                response.subprotocol = "b"
            return response

        self.server = evws.Server(handshake=handshake, loop=loop, **options)

        def on_accept(sock, host, port):
            self.server.establish(sock).cb(lambda cv: on_conn(cv.recv_all()[0]))

        self.listener = self.server.listen("127.0.0.1", 0, on_accept)
        self.url = f"ws://127.0.0.1:{self.listener.port}/chat?room=1"

    def close(self) -> None:
        self.listener.close()


def test_connect_sends_headers_origin_and_subprotocols(loop):
    received = []

    def on_conn(conn):
        conn.on("each_message", lambda c, m: received.append(m))

    srv = InProcess(loop, on_conn)
    proc = start_connect(srv.url, "--header", "X-Token: s3cret", "--header", "X-Multi:  a b ",
                         "--subprotocol", "a", "--subprotocol", "b", "--origin",
                         "http://example.test", stdin=b"payload\n")
    code, out, err = finish(loop, proc)
    srv.close()
    assert code == 0, err
    (request,) = srv.requests
    assert request.resource_name == "/chat?room=1"
    assert request.headers.get("X-Token") == "s3cret"
    assert request.headers.get("X-Multi") == "a b"
    assert request.origin == "http://example.test"
    assert request.subprotocols == ["a", "b"]
    assert b"subprotocol b" in err
    assert [m.decoded_body for m in received] == ["payload"]


def test_peer_close_is_reported_and_clean(loop):
    def on_conn(conn):
        conn.on("each_message", lambda c, m: c.close(4000, "bye"))

    srv = InProcess(loop, on_conn)
    proc = start_connect(srv.url, stdin=None)  # stdin stays open: the server ends it
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    code, out, err = finish(loop, proc)
    srv.close()
    assert code == 0, err
    assert b"connection closed: 4000 'bye'" in err
    assert out == b""


def test_dropped_connection_exits_1(loop):
    def on_conn(conn):
        conn.on("each_message", lambda c, m: c.stream.abort())

    srv = InProcess(loop, on_conn)
    proc = start_connect(srv.url, stdin=None)
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    code, out, err = finish(loop, proc)
    srv.close()
    assert code == 1, err
    assert b"connection closed: 1006" in err


def test_messages_before_close_are_printed(loop):
    def on_conn(conn):
        conn.send("first")
        conn.send(b"\x01\x02")
        conn.close(1000)

    srv = InProcess(loop, on_conn)
    code, out, err = finish(loop, start_connect(srv.url, stdin=None))
    srv.close()
    assert code == 0, err
    assert out == b"first\n0102\n"


def test_connect_failures_exit_1_with_the_reason_on_stderr(loop):
    result = run_connect(f"ws://127.0.0.1:{free_port()}/")
    assert result.returncode == 1
    assert b"cannot connect" in result.stderr and b"refused" in result.stderr
    assert result.stdout == b""

    def refuse(request, response):
        raise ValueError("no entry")

    server = evws.Server(handshake=refuse, loop=loop)

    def on_accept(sock, host, port):
        def done(cv):
            try:
                cv.recv()
            except evws.HandshakeError as exc:
                sock.send(exc.response)
                sock.close()
        server.establish(sock).cb(done)

    listener = server.listen("127.0.0.1", 0, on_accept)
    code, out, err = finish(loop, start_connect(f"ws://127.0.0.1:{listener.port}/"))
    listener.close()
    assert code == 1 and b"403" in err and out == b""


# -- TLS ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    cert, key = self_signed(tmp_path_factory.mktemp("cli-tls"))
    return str(cert), str(key)


def test_tls_serve_and_connect(certs):
    cert, key = certs
    with cli_server("--tls-cert", cert, "--tls-key", key) as (url, _proc, _err):
        assert url.startswith("wss://127.0.0.1:")
        ok = run_connect(url, "--cafile", cert, stdin=b"secret\n")
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout == b"secret\n"
        untrusted = run_connect(url, stdin=b"secret\n")
        assert untrusted.returncode == 1 and untrusted.stdout == b""
        assert b"CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
        insecure = run_connect(url, "--insecure", stdin=b"anyway\n")
        assert insecure.returncode == 0, insecure.stderr
        assert insecure.stdout == b"anyway\n"


def test_tls_bad_files_exit_1(tmp_path):
    missing = str(tmp_path / "missing.pem")
    result = subprocess.run(evws_cmd("serve", "--port", "0", "--tls-cert", missing), env=ENV,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1 and "cannot set up TLS" in result.stderr


# -- logging: silent library -----------------------------------------------------------


def test_library_logging_is_silent_by_default():
    code = ("import logging, evws\n"
            "logging.getLogger('evws.reactor.loop').warning('should not be seen')\n"
            "logging.getLogger('evws').error('nor this')\n")
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0
    assert result.stderr == ""


def test_no_library_module_prints_or_configures_logging():
    """Only the CLI (an application) may print or set up handlers."""
    offenders = []
    for path in sorted((ROOT / "evws").rglob("*.py")):
        if path.name in ("cli.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else (
                func.attr if isinstance(func, ast.Attribute) else "")
            if name in ("print", "basicConfig", "setLevel") or (
                    name == "addHandler" and "NullHandler" not in ast.unparse(node)):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert offenders == []


def test_serve_keeps_freed_memory_unless_told_not_to(monkeypatch):
    from evws import cli
    calls: list[str] = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("kept") or True)
    monkeypatch.setattr(cli, "serve", lambda args: calls.append(f"serve {args.port}") or 0)
    assert cli.main(["serve", "--port", "1"]) == 0
    assert calls == ["kept", "serve 1"]
    calls.clear()
    assert cli.main(["serve", "--port", "2", "--malloc-defaults"]) == 0
    assert calls == ["serve 2"]
