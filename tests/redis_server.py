"""A real ``redis-server`` for the Hub tests: own instance, free loopback port, no persistence.

``serve()`` (the body of the test modules' ``redis`` fixture) starts one per test and stops it at
teardown; it skips the test, saying why, only when ``redis-server`` is not
installed (``.ci/run`` installs the Debian package) or ``hiredis`` is
missing. Readiness is read from the server's own log line ("Ready to accept
connections"), with a deadline, not guessed with a sleep.

:meth:`RedisServer.command` is a small blocking client for the tests' own
checks (``PUBSUB NUMSUB``, ``CLIENT KILL``...): test code, not evws.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, Optional
from urllib.parse import quote

import pytest

START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> Optional[str]:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)


class RedisServer:
    """One redis-server process on 127.0.0.1; restartable on the same port."""

    def __init__(self, binary: str, *, password: Optional[str] = None) -> None:
        self.binary = binary
        self.port = free_port()
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="evws-redis-")
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.log: list[str] = []

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, *, appendonly: bool = False) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "yes" if appendonly else "no",
                "--appendfsync", "always", "--dir", self.dir, "--daemonize", "no",
                "--logfile", "", "--protected-mode", "no", "--loglevel", "notice"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"Ready to accept connections" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start: {buf.decode(errors='replace')}")
                if sel.select(left):
                    chunk = os.read(self.proc.stdout.fileno(), 65536)
                    if not chunk:
                        continue
                    buf += chunk
        self.log.append(buf.decode(errors="replace"))
        # Keep reading its output away from the test: a full pipe would block it.
        self._drain = subprocess.Popen(["cat"], stdin=self.proc.stdout,
                                       stdout=subprocess.DEVNULL)
        self.proc.stdout.close()

    def pids(self) -> set[int]:
        """The processes this server runs as: redis-server and the reader of its output."""
        procs = (self.proc, getattr(self, "_drain", None))
        return {p.pid for p in procs if p is not None and p.poll() is None}

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save; what a crash or an OOM kill does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._reap_drain()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reap_drain()
        if self.proc is not None and self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()

    def _reap_drain(self) -> None:
        drain = getattr(self, "_drain", None)
        if drain is not None:
            drain.wait(timeout=10)
            self._drain = None

    def restart(self, *, appendonly: bool = False) -> None:
        self.kill()
        self.start(appendonly=appendonly)

    def command(self, *args: Any, timeout: float = 5.0) -> Any:
        """Run one command with a blocking connection of the test's own; return the reply."""
        import hiredis

        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            reader = hiredis.Reader()
            commands = []
            if self.password:
                commands.append(hiredis.pack_command(("AUTH", self.password)))
            commands.append(hiredis.pack_command(args))
            sock.sendall(b"".join(commands))
            replies = []
            while len(replies) < len(commands):
                data = sock.recv(1 << 20)
                if not data:
                    raise ConnectionError("redis-server closed the connection")
                reader.feed(data)
                while (reply := reader.gets()) is not False:
                    replies.append(reply)
            return replies[-1]

    def numsub(self, channel: str) -> int:
        reply = self.command("PUBSUB", "NUMSUB", channel)
        return int(reply[1])

    def channels(self) -> set[bytes]:
        return set(self.command("PUBSUB", "CHANNELS"))

    def clients(self) -> list[dict[str, str]]:
        text = self.command("CLIENT", "LIST").decode()
        return [dict(field.split("=", 1) for field in line.split() if "=" in field)
                for line in text.splitlines() if line]

    def kill_clients(self, name_prefix: str) -> int:
        """CLIENT KILL every connection whose name starts with ``name_prefix``."""
        killed = 0
        for client in self.clients():
            if client.get("name", "").startswith(name_prefix):
                killed += int(self.command("CLIENT", "KILL", "ID", client["id"]))
        return killed

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _require() -> str:
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("redis-server not found (Debian: apt-get install redis-server; .ci/run does)")
    try:
        import hiredis  # noqa: F401
    except ImportError:
        pytest.skip("hiredis not installed (pip install 'evws[redis]')")
    return binary


def serve(password: Optional[str] = None):  # type: ignore[no-untyped-def]
    """The body of a test module's fixture: ``yield from serve()``.

    (A fixture defined here and imported into the test modules would be
    shadowed by every test's parameter of the same name, which linters flag.)
    """
    server = RedisServer(_require(), password=password)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()
