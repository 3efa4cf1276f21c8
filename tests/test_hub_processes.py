"""A room across two real processes through a real redis-server.

The child (tests/hub_worker.py) runs its own loop, server and Hub; this test
process has another Hub with a member of its own, and a WebSocket client of
the child's server. Messages cross in both directions, each exactly once,
and the child's subscription follows its members (PUBSUB NUMSUB).
"""

from __future__ import annotations

import os
import pathlib
import selectors
import subprocess
import sys
import time

import pytest

import evws
from tests.conftest import run_until
from tests.redis_server import serve
from tests.test_hub_redis import finish, make_hub, member

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def redis():
    yield from serve()


def start_worker(url: str, room: str) -> tuple[subprocess.Popen[bytes], int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "hub_worker.py"), url, room],
                            stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 10
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                proc.kill()
                proc.wait()
                pytest.fail(f"the worker did not start (exit {proc.poll()})")
            if sel.select(left):
                line += os.read(proc.stdout.fileno(), 100)
    return proc, int(line.split()[1])


def test_a_room_spans_two_processes(loop, redis):
    proc, port = start_worker(redis.url, "chat")
    try:
        hub = make_hub(loop, redis.url)
        mine, my_client, got_mine = member(loop)
        hub.join(mine, "chat")
        theirs = evws.connect(f"ws://127.0.0.1:{port}/", loop=loop, compression=None).recv(
            timeout=5)
        got_theirs: list[str] = []
        theirs.on("each_message", lambda c, m: got_theirs.append(m.decoded_body))
        run_until(loop, lambda: redis.numsub("evws:room:chat") == 2)
        # Their client -> their process publishes -> both processes deliver.
        theirs.send("from the child's client")
        hub.publish("chat", "from this process")
        run_until(loop, lambda: len(got_mine) >= 2 and len(got_theirs) >= 2)
        loop.run_once(0.05)
        assert sorted(got_mine) == ["from the child's client", "from this process"]
        assert got_theirs == got_mine  # same order in both processes
        # Their member finishes: the child unsubscribes, ours stays.
        theirs.close()
        run_until(loop, lambda: theirs.finished)
        run_until(loop, lambda: redis.numsub("evws:room:chat") == 1)
        hub.publish("chat", "after")
        run_until(loop, lambda: got_mine[-1:] == ["after"])
        finish(loop, mine, my_client)
        hub.close()
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
