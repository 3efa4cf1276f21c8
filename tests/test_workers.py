"""Worker processes on one port: SO_REUSEPORT listeners and the supervisor (evws.workers).

The supervisor runs as a real process (tests/workers_app.py) with real forked
workers; the test talks to them over loopback with evws clients on a private
loop and reads the supervisor's log lines from its stderr. Every wait is
bounded (``Lines.wait_for``, ``run_until``, ``proc.wait(timeout=...)``).
"""

from __future__ import annotations

import errno
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import pytest

import evws
from tests.conftest import run_until
from tests.test_cli import Lines

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
APP = str(ROOT / "tests" / "workers_app.py")
TIMEOUT = 10.0
READY = r"worker (\d+) \(pid (\d+)\) ready"

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT") or not hasattr(os, "fork"),
                                reason="needs SO_REUSEPORT and fork")


# -- SO_REUSEPORT listeners ------------------------------------------------------------


def test_two_listeners_share_one_port_and_both_accept(loop):
    accepted: dict[str, list[socket.socket]] = {"a": [], "b": []}
    a = evws.tcp_server("127.0.0.1", 0, lambda s, h, p: accepted["a"].append(s),
                        loop=loop, reuse_port=True)
    b = evws.tcp_server("127.0.0.1", a.port, lambda s, h, p: accepted["b"].append(s),
                        loop=loop, reuse_port=True)
    clients = []
    try:
        assert b.port == a.port
        # The kernel picks a listener by hashing the 4-tuple: within 200
        # connections both get some (all on one would be a 2**-199 chance).
        for _ in range(200):
            clients.append(socket.create_connection(("127.0.0.1", a.port), timeout=5))
            if accepted["a"] and accepted["b"]:
                break
            run_until(loop, lambda: len(accepted["a"]) + len(accepted["b"]) == len(clients))
        assert accepted["a"] and accepted["b"], {k: len(v) for k, v in accepted.items()}
    finally:
        for s in clients + accepted["a"] + accepted["b"]:
            s.close()
        a.close()
        b.close()


def test_without_reuse_port_the_second_bind_fails(loop):
    with evws.tcp_server("127.0.0.1", 0, lambda s, h, p: s.close(), loop=loop,
                         reuse_port=True) as first:
        with pytest.raises(OSError) as info:
            evws.tcp_server("127.0.0.1", first.port, lambda s, h, p: s.close(), loop=loop)
        assert info.value.errno == errno.EADDRINUSE


def test_server_listen_forwards_reuse_port(loop):
    server = evws.Server(loop=loop)
    one = server.listen("127.0.0.1", 0, lambda s, h, p: s.close(), reuse_port=True)
    two = server.listen("127.0.0.1", one.port, lambda s, h, p: s.close(), reuse_port=True)
    assert one.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    server.shutdown().recv(timeout=5)
    assert one.closed and two.closed


def test_reuse_port_where_the_platform_lacks_it(loop, monkeypatch):
    monkeypatch.delattr(socket, "SO_REUSEPORT")
    with pytest.raises(OSError, match="SO_REUSEPORT") as info:
        evws.tcp_server("127.0.0.1", 0, lambda s, h, p: s.close(), loop=loop, reuse_port=True)
    assert info.value.errno == errno.ENOPROTOOPT
    with pytest.raises(OSError, match="SO_REUSEPORT"):  # the dual-stack path too
        evws.tcp_server(None, 0, lambda s, h, p: s.close(), loop=loop, reuse_port=True)


def test_reserved_port_takes_no_connections():
    reservation = evws.workers.reserve_port("127.0.0.1", 0)
    try:
        port = reservation.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
    finally:
        reservation.close()


def test_supervisor_arguments_are_checked():
    with pytest.raises(ValueError, match="workers"):
        evws.Supervisor(lambda ctx: None, 0)
    with pytest.raises(ValueError, match="heartbeat_timeout"):
        evws.Supervisor(lambda ctx: None, 2, heartbeat_timeout=0)


# -- the supervisor, as a process --------------------------------------------------------


class Supervised:
    """A running tests/workers_app.py: its process, log lines and workers."""

    def __init__(self, proc: subprocess.Popen, lines: Lines, port: int) -> None:
        self.proc = proc
        self.lines = lines
        self.port = port
        self.pids: dict[int, int] = {}  # worker index -> pid of the ready one

    def wait_ready(self, count: int, timeout: float = TIMEOUT) -> list[int]:
        """Wait for ``count`` more ``ready`` lines; returns their pids."""
        pids = []
        for _ in range(count):
            match = self.lines.wait_for(READY, timeout)
            self.pids[int(match.group(1))] = int(match.group(2))
            pids.append(int(match.group(2)))
        return pids

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.proc.wait(timeout=timeout)


@contextmanager
def supervised(*args: str, workers: int = 2, wait: bool = True) -> Iterator[Supervised]:
    proc = subprocess.Popen([sys.executable, APP, "--workers", str(workers), *args], env=ENV,
                            text=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    lines = Lines(proc.stderr)
    try:
        port = int(lines.wait_for(r"^port (\d+)").group(1))
        sup = Supervised(proc, lines, port)
        if wait:
            sup.wait_ready(workers)
        yield sup
    finally:
        if proc.poll() is None:
            proc.kill()  # a failed test: the workers see EOF and stop on their own
            proc.wait()


def open_client(loop: evws.Loop, port: int) -> evws.Connection:
    return evws.connect(f"ws://127.0.0.1:{port}/", loop=loop, timeout=5,
                        close_timeout=2).recv(timeout=5)


def ask(loop: evws.Loop, conn: evws.Connection, text: str = "pid") -> str | None:
    """Send ``text``, return the answer; ``None`` if the connection closed first."""
    got: list[str] = []
    conn.on("next_message", lambda c, m: got.append(m.decoded_body))
    conn.send(text)
    run_until(loop, lambda: bool(got) or not conn.is_read_open)
    return got[0] if got else None


def worker_pid(loop: evws.Loop, conn: evws.Connection) -> int:
    answer = ask(loop, conn)
    assert answer is not None, f"closed before answering: {conn.close_code}"
    return int(answer.split()[1])


def clients_on(loop: evws.Loop, port: int, pids: set[int], tries: int = 100) -> dict[int, evws.Connection]:
    """Connect until there is a client on each worker of ``pids``; close the extra ones."""
    found: dict[int, evws.Connection] = {}
    for _ in range(tries):
        conn = open_client(loop, port)
        pid = worker_pid(loop, conn)
        if pid in pids and pid not in found:
            found[pid] = conn
        else:
            conn.close()
        if set(found) == pids:
            return found
    pytest.fail(f"no client landed on each of {pids} in {tries} tries: {set(found)}")


def closed(loop: evws.Loop, conns, timeout: float = TIMEOUT) -> None:
    run_until(loop, lambda: all(not c.is_read_open and not c.is_write_open for c in conns),
              timeout)


def fds_line(sup: Supervised) -> tuple[int, int]:
    match = sup.lines.wait_for(r"fds before (\d+) after (\d+)")
    return int(match.group(1)), int(match.group(2))


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_sigkill_of_a_worker_replaces_it_and_the_other_keeps_its_connections(loop):
    with supervised("--fds") as sup:
        clients = clients_on(loop, sup.port, set(sup.pids.values()))
        victim, survivor = sup.pids[0], sup.pids[1]
        finished: list[int] = []
        clients[victim].on("finish", lambda c: finished.append(c.close_code))
        os.kill(victim, signal.SIGKILL)
        sup.lines.wait_for(rf"worker 0 \(pid {victim}\) exited: killed by SIGKILL")
        new = sup.wait_ready(1)[0]
        assert new != victim and sup.pids[0] == new
        run_until(loop, lambda: bool(finished))
        assert finished == [1006]  # the killed worker could not close it
        # The survivor's connection never noticed.
        assert clients[survivor].is_write_open
        assert worker_pid(loop, clients[survivor]) == survivor
        # New connections reach the replacement.
        clients_on(loop, sup.port, {new})[new].close()
        clients[survivor].close()
        closed(loop, [clients[survivor]])
        sup.signal(signal.SIGTERM)
        assert sup.wait() == 0
        before, after = fds_line(sup)
        assert after == before
        assert gone(victim) and gone(new) and gone(survivor)


def test_a_hung_worker_is_killed_and_replaced(loop):
    with supervised("--heartbeat-interval", "0.1", "--heartbeat-timeout", "0.6") as sup:
        clients = clients_on(loop, sup.port, set(sup.pids.values()))
        hung, other = sup.pids[0], sup.pids[1]
        started = time.monotonic()
        assert ask(loop, clients[hung], "hang") == "hanging"  # its loop sleeps now
        sup.lines.wait_for(rf"worker 0 \(pid {hung}\) hung: no heartbeat answer .*SIGKILL")
        sup.lines.wait_for(rf"worker 0 \(pid {hung}\) exited: killed by SIGKILL")
        new = sup.wait_ready(1)[0]
        assert time.monotonic() - started < 5.0
        assert new != hung and gone(hung)
        assert worker_pid(loop, clients[other]) == other  # the other worker is untouched
        sup.signal(signal.SIGTERM)
        assert sup.wait() == 0


def test_workers_that_keep_dying_at_start_up_make_the_supervisor_exit_non_zero():
    started = time.monotonic()
    with supervised("--crash-at-start", wait=False) as sup:
        status = sup.wait(timeout=TIMEOUT)
        text = sup.lines.rest()
    assert status == 1
    assert "giving up: worker" in text and "died 4 times in a row at start-up" in text
    assert "RuntimeError: broken at start-up" in text
    # each failure: one log line and one traceback (not the log's and print_exc's)
    failures = text.count("main() failed: RuntimeError: broken at start-up")
    assert failures >= 4 and text.count("Traceback (most recent call last)") == failures, text
    # backoff 0.05, 0.1, 0.2 s between the four attempts of a slot: well under 10 s
    assert time.monotonic() - started < TIMEOUT
    # the restarts happened with a growing delay
    delays = [float(d) for d in re.findall(r"restarting worker 0 in ([\d.]+) s", text)]
    assert delays == sorted(delays) and len(delays) == 3 and delays[-1] > delays[0]


def test_sigterm_closes_every_connection_with_1001_and_exits(loop):
    with supervised() as sup:
        clients = clients_on(loop, sup.port, set(sup.pids.values()))
        codes: list[tuple[int | None, str]] = []
        for conn in clients.values():
            conn.on("finish", lambda c: codes.append((c.close_code, c.close_reason)))
        started = time.monotonic()
        sup.signal(signal.SIGTERM)
        run_until(loop, lambda: len(codes) == 2)
        assert codes == [(1001, "server shutting down")] * 2
        assert sup.wait() == 0
        assert time.monotonic() - started < 3.0
        assert all(gone(pid) for pid in sup.pids.values())
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", sup.port), timeout=5)


def test_a_worker_that_does_not_stop_is_killed_after_graceful_timeout(loop):
    with supervised("--graceful-timeout", "1.0", "--heartbeat-timeout", "30") as sup:
        clients = clients_on(loop, sup.port, set(sup.pids.values()))
        assert ask(loop, clients[sup.pids[0]], "hang") == "hanging"  # its loop sleeps now
        started = time.monotonic()
        sup.signal(signal.SIGINT)
        sup.lines.wait_for(rf"worker 0 \(pid {sup.pids[0]}\) still running 1.0 s after stop: SIGKILL")
        assert sup.wait() == 0
        assert 0.9 < time.monotonic() - started < 4.0


def test_sighup_restarts_one_worker_at_a_time_old_connections_get_1012(loop):
    with supervised("--fds") as sup:
        old = dict(sup.pids)
        clients = clients_on(loop, sup.port, set(old.values()))
        codes: list[tuple[int | None, str]] = []
        for conn in clients.values():
            conn.on("finish", lambda c: codes.append((c.close_code, c.close_reason)))
        sup.signal(signal.SIGHUP)
        # Keep connecting while the roll runs: each attempt is a full
        # connect + handshake + echo.
        ok = failed = 0
        done = False
        order: list[str] = []
        deadline = time.monotonic() + TIMEOUT
        while not done:
            assert time.monotonic() < deadline, f"rolling restart not done; saw {order}"
            # A failure: refused or reset, a 503 from a stopping worker, or
            # closed with 1012 before the echo came back.
            try:
                conn = open_client(loop, sup.port)
                answer = ask(loop, conn, "hello")
                conn.close()
            except (OSError, evws.WebSocketError):
                answer = None
            if answer == "hello":
                ok += 1
            else:
                failed += 1
            while not sup.lines.queue.empty():
                line = sup.lines.queue.get()
                sup.lines.seen.append(line)
                order.append(line.strip())
                done = done or "rolling restart done" in line
        run_until(loop, lambda: len(codes) == 2)
        assert codes == [(1012, "service restart")] * 2
        # One attempt is in flight at a time, and a stopping worker's listener
        # is closed at once: each old worker can break at most the one
        # attempt connected to it.
        assert ok >= 1 and failed <= 2, (ok, failed)
        # Each replacement was ready before its old worker was told to stop.
        events = [line for line in order if re.search(r"ready|stopping|exited", line)]
        for index in (0, 1):
            ready_at = next(i for i, e in enumerate(events)
                            if re.search(rf"worker {index} \(pid \d+\) ready", e))
            stop_at = events.index(f"stopping worker {index} (pid {old[index]}) (close code 1012)")
            assert ready_at < stop_at
        new = [int(m.group(2)) for m in (re.search(READY, e) for e in events) if m]
        assert len(new) == 2 and not set(new) & set(old.values())
        # after the roll, every connection lands on a new worker and works
        for _ in range(6):
            conn = open_client(loop, sup.port)
            assert worker_pid(loop, conn) in new
            conn.close()
        sup.signal(signal.SIGTERM)
        assert sup.wait() == 0
        before, after = fds_line(sup)
        assert after == before


def test_a_rolling_restart_whose_new_worker_fails_keeps_the_old_ones(loop):
    with supervised("--crash-on-restart") as sup:
        old = dict(sup.pids)
        clients = clients_on(loop, sup.port, set(old.values()))
        sup.signal(signal.SIGHUP)
        sup.lines.wait_for(r"rolling restart aborted: the new worker 0 failed")
        sup.lines.wait_for(r"rolling restart done")
        # Nobody was told to stop: the old workers and their connections are there.
        for pid, conn in clients.items():
            assert worker_pid(loop, conn) == pid
        assert "stopping" not in "".join(sup.lines.seen)
        sup.signal(signal.SIGTERM)
        assert sup.wait() == 0


def test_chat_example_with_workers(loop):
    # One worker: more need --redis (tests/test_chat_browser.py runs two through Redis).
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "chat.py"), "--port", "0",
                             "--workers", "1"], env=ENV, text=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines = Lines(proc.stderr)
    try:
        match = lines.wait_for(r"chat on http://127\.0\.0\.1:(\d+)/ .* with 1 worker$")
        port = int(match.group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as page:
            page.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            body = b""
            while chunk := page.recv(65536):
                body += chunk
        assert body.startswith(b"HTTP/1.1 200") and b"evws chat" in body
        conn = evws.connect(f"ws://127.0.0.1:{port}/ws", loop=loop, timeout=5).recv(timeout=5)
        welcome: list[str] = []
        conn.on("next_message", lambda c, m: welcome.append(m.decoded_body))
        run_until(loop, lambda: bool(welcome))
        pid = int(re.fullmatch(r"you are on worker (\d+)", welcome[0]).group(1))
        assert pid != proc.pid  # a worker, not the supervisor
        assert ask(loop, conn, "hello room") == "hello room"  # the sender is in its room
        codes: list[int | None] = []
        conn.on("finish", lambda c: codes.append(c.close_code))
        proc.send_signal(signal.SIGTERM)
        run_until(loop, lambda: bool(codes))
        assert codes == [1001]
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
