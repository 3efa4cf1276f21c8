"""The two documented examples, run as programs and driven by a real client."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import threading

import pytest

import evws
from tests import wire
from tests.conftest import run_until
from tests.processes import Baseline, alive
from tests.redis_server import serve
from tests.servers import ROOT, example_server
from tests.test_cli import Lines

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


def run_chat(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "examples" / "chat.py"), "--port", "0", *args],
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=TIMEOUT)


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_chat_unreachable_redis_exits_1_saying_why(workers):
    pytest.importorskip("hiredis", reason="hiredis not installed (pip install 'evws[redis]')")
    baseline = Baseline()
    with socket.socket() as probe:  # a free port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_chat("--redis", f"redis://127.0.0.1:{port}/0", *workers)
    assert result.returncode == 1, result.stderr
    assert f"chat: cannot reach Redis at 127.0.0.1:{port}: " in result.stderr
    assert "refused" in result.stderr
    assert "chat on http" not in result.stderr and "worker" not in result.stderr
    assert "Traceback" not in result.stderr
    baseline.check()


def test_chat_gives_up_on_redis_at_the_first_failed_attempt():
    """Like the CLI: a Redis that drops the connection is reported at once, not retried.

    Counted, not timed: a listener that accepts and closes at once sees one
    connection per broker link (2); retrying for a few seconds of backoff
    (50 ms doubling) would make many more.
    """
    pytest.importorskip("hiredis", reason="hiredis not installed (pip install 'evws[redis]')")
    baseline = Baseline()
    accepted = 0
    done = threading.Event()
    with socket.socket() as listener, selectors.DefaultSelector() as sel:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.setblocking(False)
        sel.register(listener, selectors.EVENT_READ)

        def drop_every_connection() -> None:
            nonlocal accepted
            while not done.is_set():
                for _ in sel.select(0.05):
                    try:
                        conn, _addr = listener.accept()
                    except BlockingIOError:
                        continue
                    conn.close()
                    accepted += 1

        thread = threading.Thread(target=drop_every_connection, daemon=True)
        thread.start()
        try:
            port = listener.getsockname()[1]
            result = run_chat("--redis", f"redis://127.0.0.1:{port}/0")
        finally:
            done.set()
            thread.join(TIMEOUT)
    assert result.returncode == 1, result.stderr
    assert f"chat: cannot reach Redis at 127.0.0.1:{port}: " in result.stderr
    assert "Traceback" not in result.stderr
    assert 1 <= accepted <= 2, f"{accepted} connections: it retried"
    baseline.check()


@pytest.fixture
def redis():
    yield from serve()


class ChatClient:
    """An evws client on the chat's /ws: the welcome names its worker, then the room's messages."""

    def __init__(self, loop: evws.Loop, port: int) -> None:
        self.loop = loop
        self.conn = evws.connect(f"ws://127.0.0.1:{port}/ws", loop=loop, timeout=TIMEOUT,
                                 compression=None).recv(timeout=TIMEOUT)
        self.got: list[str] = []
        self.conn.on("each_message", lambda c, m: self.got.append(m.decoded_body))
        run_until(loop, lambda: bool(self.got))
        self.pid = int(self.got.pop(0).rsplit(" ", 1)[1])  # "you are on worker PID"

    def close(self) -> None:
        if self.conn.is_write_open:
            self.conn.close()
        run_until(self.loop, lambda: self.conn.finished)


def chat_clients_on_two_workers(loop, port, tries=40):
    by_pid: dict[int, ChatClient] = {}
    for _ in range(tries):
        client = ChatClient(loop, port)
        if client.pid in by_pid or len(by_pid) == 2:
            client.close()
        else:
            by_pid[client.pid] = client
        if len(by_pid) == 2:
            return list(by_pid.values())
    pytest.fail(f"{tries} connections, all on worker {list(by_pid)}")


def test_chat_workers_keep_serving_while_redis_is_down(loop, redis):
    """Redis killed: the workers stay up (a replacement started meanwhile too) and
    log each change once; Redis back on the same port: the room spans the workers."""
    baseline = Baseline()
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "chat.py"), "--port", "0",
                             "--workers", "2", "--redis", redis.url],
                            env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    err = Lines(proc.stderr)
    pids = set()
    try:
        port = int(err.wait_for(r"ws://127\.0\.0\.1:(\d+)/ws").group(1))
        a, b = chat_clients_on_two_workers(loop, port)
        pids = {a.pid, b.pid}
        redis.kill()
        for _ in pids:
            err.wait_for(r"Redis connection lost")
        assert all(alive(pid) for pid in pids)
        os.kill(b.pid, signal.SIGKILL)
        run_until(loop, lambda: b.conn.finished)
        line = err.wait_for(r"chat\[(\d+)\] WARNING cannot reach Redis at .*; serving anyway")
        new = int(line.group(1))
        pids.add(new)
        err.wait_for(rf"worker \d \(pid {new}\) ready")
        assert not a.conn.finished and proc.poll() is None
        redis.start()
        for _ in range(2):
            err.wait_for(r"Redis connection back")
        x, y = chat_clients_on_two_workers(loop, port)
        assert {x.pid, y.pid} == {a.pid, new}
        run_until(loop, lambda: redis.numsub("evws:room:chat") == 2)
        x.conn.send("after")
        run_until(loop, lambda: x.got == ["after"] and y.got == ["after"])
        for client in (a, x, y):
            client.close()
        proc.terminate()
        assert proc.wait(timeout=TIMEOUT) == 0
        text = err.rest()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in text, text
    assert text.count("Redis connection lost") == 2 and text.count("Redis connection back") == 2
    assert text.count("cannot reach Redis") == 1, text
    baseline.check(pids, replaced=redis.pids())
