"""examples/line_echo.py (the ported AnyEvent::Handle example), run as programs."""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "examples" / "line_echo.py")
ENV = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
TIMEOUT = 10


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, SCRIPT, *args], env=ENV, capture_output=True,
                          text=True, timeout=TIMEOUT)


@pytest.fixture
def line_server():
    proc = subprocess.Popen([sys.executable, SCRIPT, "serve", "--port", "0"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        port = None
        while port is None:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"line_echo.py did not start (exit {proc.poll()})")
            match = re.search(r"tcp://[^:]+:(\d+)/", proc.stderr.readline())
            if match:
                port = int(match.group(1))
        yield port, proc
        assert proc.poll() is None, "the line server died during the test"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_demo_runs_server_and_client_on_one_loop():
    result = run("demo", "hello", "two words")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "echo: hello\necho: two words\n"


def test_client_against_the_server_process(line_server):
    port, _ = line_server
    for _ in range(2):
        result = run("client", "127.0.0.1", str(port), "a", "b", "c")
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["echo: a", "echo: b", "echo: c"]


def test_server_answers_a_raw_socket_and_refuses_an_endless_line(line_server):
    port, _ = line_server
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"one\ntwo\nbye\n")  # three lines in one segment
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        assert data == b"echo: one\necho: two\nbye\n"
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        try:
            sock.sendall(b"x" * 5000)  # no newline, over the 1 KiB limit
            end = sock.recv(4096)
        except ConnectionResetError:
            end = b""
        assert end == b"", "the server must drop the connection, not buffer forever"


def test_client_without_a_server_exits_1():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        result = run("client", "127.0.0.1", str(port), "x")
    assert result.returncode == 1
    assert "cannot connect" in result.stderr
