"""The two documented examples, run as programs and driven by a real client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests import wire
from tests.servers import ROOT, example_server

client = pytest.importorskip("websockets.sync.client")
exceptions = pytest.importorskip("websockets.exceptions")

TIMEOUT = 10


def test_echo_server_survives_port_probes_and_echoes():
    with example_server("echo_server.py") as port:
        for _ in range(3):  # connect and leave without a handshake, like a health check
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
        with client.connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT) as ws:
            ws.send("ping?")
            assert ws.recv(timeout=TIMEOUT) == "ping?"


def test_handshake_path_accepts_year_and_month():
    with example_server("handshake_path.py") as port:
        with client.connect(f"ws://127.0.0.1:{port}/2013/10", open_timeout=TIMEOUT) as ws:
            assert ws.recv(timeout=TIMEOUT) == "You are accessing YEAR = 2013, MONTH = 10"


@pytest.mark.parametrize("path", ["/", "/2013/13", "/2013/00", "/hello/world"])
def test_handshake_path_rejects_with_an_http_error(path):
    with example_server("handshake_path.py") as port:
        with pytest.raises(exceptions.InvalidStatus) as info:
            client.connect(f"ws://127.0.0.1:{port}{path}", open_timeout=TIMEOUT)
        assert info.value.response.status_code == 400


def test_handshake_path_raw_socket_gets_the_error_body():
    with example_server("handshake_path.py") as port:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(wire.upgrade_request("/2013/13"))
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        assert data.startswith(b"HTTP/1.1 400 ")
        assert b"Invalid month" in data


@pytest.mark.parametrize("args, message", [
    (["--workers", "2"], "--workers 2 without --redis: each worker would have a room of its own"),
    (["--redis", "http://127.0.0.1/"], "not a redis:// URL"),
])
def test_chat_usage_errors_exit_2(args, message):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "chat.py"), "--port", "0", *args],
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split())  # argparse wraps lines
    assert "Traceback" not in result.stderr
