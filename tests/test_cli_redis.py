"""``python -m evws serve --broadcast --redis URL``: one room across workers and servers.

Against a real ``redis-server`` (tests/redis_server.py; skipped, saying why,
when it or hiredis is missing). Which worker a client landed on is read from
the ``X-Evws-Worker`` response field that ``--worker-header`` adds; clients
connect until two different pids were seen (bounded: 40 connections that
all land on one of two workers has odds of 2**-39). A message is published
only once every process is subscribed (``PUBSUB NUMSUB``): plain rooms are
at most once, and a process subscribes when its first client joins.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest

import evws
from evws.cli import WORKER_HEADER
from tests.conftest import run_until
from tests.processes import Baseline, alive, wait_gone
from tests.redis_server import free_port, serve
from tests.test_cli import ENV, TIMEOUT, cli_server, evws_cmd, run_connect

CHANNEL = "evws:room:broadcast"
MAX_CONNECTIONS = 40


@pytest.fixture
def redis():
    yield from serve()


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(evws_cmd("serve", "--port", "0", *args), env=ENV, capture_output=True,
                          text=True, timeout=TIMEOUT)


class Client:
    """One in-process WebSocket client that records the text it receives."""

    def __init__(self, loop: evws.Loop, url: str) -> None:
        self.loop = loop
        self.conn = evws.connect(url, loop=loop, timeout=5, compression=None).recv(timeout=5)
        self.pid = int(self.conn.response.headers[WORKER_HEADER])
        self.got: list[str] = []
        self.conn.on("each_message", lambda c, m: self.got.append(m.decoded_body))

    def close(self) -> None:
        if self.conn.is_write_open:
            self.conn.close()
        run_until(self.loop, lambda: self.conn.finished)


def clients_on_two_workers(loop: evws.Loop, url: str) -> list[Client]:
    """Connect until two clients are on different workers; close the others."""
    by_pid: dict[int, Client] = {}
    spare: list[Client] = []
    for _ in range(MAX_CONNECTIONS):
        client = Client(loop, url)
        if client.pid in by_pid:
            spare.append(client)
        else:
            by_pid[client.pid] = client
            if len(by_pid) == 2:
                break
    for client in spare:
        client.close()
    assert len(by_pid) == 2, f"{MAX_CONNECTIONS} connections, all on worker {list(by_pid)}"
    return list(by_pid.values())


def exchange(loop: evws.Loop, a: Client, b: Client, tag: str) -> None:
    """a and b each send once; both get both messages, once each, in the same order."""
    a.got.clear()
    b.got.clear()
    a.conn.send(f"{tag} from a")
    run_until(loop, lambda: len(a.got) >= 1 and len(b.got) >= 1)
    b.conn.send(f"{tag} from b")
    run_until(loop, lambda: len(a.got) >= 2 and len(b.got) >= 2)
    # A third message, sent last: a duplicate of the first two would arrive before it.
    a.conn.send(f"{tag} end")
    run_until(loop, lambda: len(a.got) >= 3 and len(b.got) >= 3)
    expected = [f"{tag} from a", f"{tag} from b", f"{tag} end"]
    assert a.got == expected
    assert b.got == expected


def test_workers_share_one_room_through_redis(loop, redis):
    baseline = Baseline()
    with cli_server("--workers", "2", "--broadcast", "--redis", redis.url,
                    "--worker-header") as (url, proc, err):
        assert f"through Redis at 127.0.0.1:{redis.port}, room 'broadcast'" in err.seen[-1]
        a, b = clients_on_two_workers(loop, url)
        worker_pids = {a.pid, b.pid}
        assert proc.pid not in worker_pids  # the supervisor serves nobody
        run_until(loop, lambda: redis.numsub(CHANNEL) == 2)  # one subscription per worker
        exchange(loop, a, b, "first")
        exchange(loop, b, a, "second")
        # `connect` shows the field too.
        shown = run_connect(url, stdin=b"")
        assert shown.returncode == 0, shown.stderr
        assert int(re.search(rb"\(.*worker pid (\d+)\)", shown.stderr).group(1)) in worker_pids
        a.close()
        b.close()
        run_until(loop, lambda: redis.numsub(CHANNEL) == 0)  # the rooms are empty again
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0
    err.thread.join(TIMEOUT)
    assert not any("Traceback" in line for line in err.seen), err.seen
    baseline.check(worker_pids)


def wait_line(err, pattern: str) -> re.Match[str]:
    """The first stderr line matching ``pattern``, seen already or still to come (bounded).

    The workers write concurrently: the line wanted may have gone by while
    the test waited for another one.
    """
    for line in err.seen:
        if match := re.search(pattern, line):
            return match
    return err.wait_for(pattern)


def redis_client_pids(redis) -> list[int]:
    """The pid in each evws connection's name (``evws-sub-<pid>-...``), sorted."""
    return sorted(int(client["name"].split("-")[2]) for client in redis.clients()
                  if client.get("name", "").startswith(("evws-sub-", "evws-pub-")))


def test_workers_keep_serving_while_redis_is_down(loop, redis):
    """Redis killed after start-up: no worker dies (not even one started during the
    outage), clients stay connected, each state change is one line; after Redis
    restarts on the same port, broadcasts span the workers again."""
    baseline = Baseline()
    with cli_server("--workers", "2", "--broadcast", "--redis", redis.url,
                    "--worker-header") as (url, proc, err):
        a, b = clients_on_two_workers(loop, url)
        first = {a.pid, b.pid}
        run_until(loop, lambda: redis.numsub(CHANNEL) == 2)
        exchange(loop, a, b, "before")

        redis.kill()
        for pid in first:
            wait_line(err, rf"\(pid {pid}\): Redis connection lost \(")
        assert all(alive(pid) for pid in first)
        a.conn.send("while down")  # queued by a's worker until Redis is back
        # A worker that dies meanwhile is replaced; the replacement cannot reach
        # Redis, says so once and serves anyway (it used to exit 1, in a loop).
        os.kill(b.pid, signal.SIGKILL)
        run_until(loop, lambda: b.conn.finished)
        new = int(wait_line(err, r"worker \d \(pid (\d+)\): cannot reach Redis at "
                                 rf"127\.0\.0\.1:{redis.port}: .*refused.*; serving anyway").group(1))
        wait_line(err, rf"worker \d \(pid {new}\) ready")
        c = Client(loop, url)  # handshakes work while Redis is down
        assert c.pid in (a.pid, new)
        loop.run_once(0.05)
        assert not a.conn.finished and not c.conn.finished
        assert proc.poll() is None

        redis.start()  # the same port
        for pid in (a.pid, new):
            wait_line(err, rf"\(pid {pid}\): Redis connection back")
        # What a sent during the outage went out once its worker resubscribed.
        run_until(loop, lambda: "while down" in a.got)
        x, y = clients_on_two_workers(loop, url)
        assert {x.pid, y.pid} == {a.pid, new}
        run_until(loop, lambda: redis.numsub(CHANNEL) == 2)
        exchange(loop, x, y, "after")
        for client in (a, c, x, y):
            client.close()
        run_until(loop, lambda: redis.numsub(CHANNEL) == 0)
    text = err.rest()
    assert "Traceback" not in text, text
    # One line per change of state and process.
    assert text.count(f"(pid {a.pid}): Redis connection lost") == 1, text
    assert text.count(f"(pid {a.pid}): Redis connection back") == 1, text
    assert text.count(f"(pid {new}): cannot reach Redis") == 1, text
    assert text.count(f"(pid {new}): Redis connection back") == 1, text
    assert f"(pid {new}): Redis connection lost" not in text, text
    assert "giving up" not in text and "exit status 1" not in text, text
    baseline.check(first | {new}, replaced=redis.pids())


def test_rolling_restart_with_redis_moves_the_room_to_the_new_workers(loop, redis):
    """SIGHUP: old clients get 1012, new ones (on new workers) share the room, and the
    old workers' subscriptions and connections are gone from Redis."""
    baseline = Baseline()
    with cli_server("--workers", "2", "--broadcast", "--redis", redis.url,
                    "--worker-header") as (url, proc, err):
        a, b = clients_on_two_workers(loop, url)
        old = {a.pid, b.pid}
        run_until(loop, lambda: redis.numsub(CHANNEL) == 2)
        assert redis_client_pids(redis) == sorted(2 * list(old))  # sub + pub per worker
        exchange(loop, a, b, "before")

        proc.send_signal(signal.SIGHUP)
        run_until(loop, lambda: a.conn.finished and b.conn.finished)
        assert (a.conn.close_code, b.conn.close_code) == (1012, 1012)
        wait_line(err, r"rolling restart done")
        assert not wait_gone(old)

        x, y = clients_on_two_workers(loop, url)
        new = {x.pid, y.pid}
        assert not new & old
        run_until(loop, lambda: redis.numsub(CHANNEL) == 2)  # not 3 or 4: none leaked
        exchange(loop, x, y, "after")
        run_until(loop, lambda: redis_client_pids(redis) == sorted(2 * list(new)))
        x.close()
        y.close()
        run_until(loop, lambda: redis.numsub(CHANNEL) == 0)
    assert "Traceback" not in err.rest()
    baseline.check(old | new)


def test_two_servers_share_a_room_and_survive_a_redis_restart(loop, redis):
    baseline = Baseline()
    args = ("--broadcast", "--redis", redis.url, "--room", "lobby", "--worker-header")
    with cli_server(*args) as (url_a, proc_a, err_a), cli_server(*args) as (url_b, proc_b, err_b):
        a, b = Client(loop, url_a), Client(loop, url_b)
        assert (a.pid, b.pid) == (proc_a.pid, proc_b.pid)
        run_until(loop, lambda: redis.numsub("evws:room:lobby") == 2)
        exchange(loop, a, b, "before")
        redis.restart()
        for err in (err_a, err_b):
            err.wait_for(r"evws: Redis connection lost")
            err.wait_for(r"evws: Redis connection back")
        run_until(loop, lambda: redis.numsub("evws:room:lobby") == 2)  # resubscribed
        exchange(loop, b, a, "after")
        a.close()
        b.close()
    for err in (err_a, err_b):
        err.thread.join(TIMEOUT)
    baseline.check(replaced=redis.pids())


@pytest.mark.parametrize("args, message", [
    (["--redis", "redis://127.0.0.1:6379/0"], "--redis needs --broadcast"),
    (["--broadcast", "--redis", "http://127.0.0.1/"], "not a redis:// URL"),
    (["--broadcast", "--redis", "redis://127.0.0.1:port/0"], "bad port"),
    (["--broadcast", "--redis", "redis://127.0.0.1/x"], "bad database number"),
    (["--broadcast", "--room", "lobby"], "--room needs --redis"),
    (["--broadcast", "--redis", "redis://127.0.0.1/0", "--room", ""], "--room wants a non-empty name"),
])
def test_redis_usage_errors_exit_2(args, message):
    result = run_serve(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "usage: python -m evws serve" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_unreachable_redis_exits_1_at_once(workers):
    pytest.importorskip("hiredis", reason="hiredis not installed (pip install 'evws[redis]')")
    port = free_port()  # nothing listens there
    result = run_serve("--broadcast", "--redis", f"redis://127.0.0.1:{port}/0", *workers)
    assert result.returncode == 1
    assert f"evws: cannot reach Redis at 127.0.0.1:{port}: " in result.stderr
    assert "refused" in result.stderr
    assert "worker" not in result.stderr and "listening" not in result.stderr
    assert "Traceback" not in result.stderr
