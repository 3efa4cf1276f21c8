"""The loop's two pollers: epoll used directly (Linux) and the selectors
fallback elsewhere. Both must report the same readiness in the same bits."""

from __future__ import annotations

import select
import socket

import pytest

from evws.reactor import loop as loop_mod
from tests.conftest import run_until

POLLERS = [pytest.param(loop_mod._SelectorsPoller, id="selectors")]
if hasattr(select, "epoll"):
    POLLERS.append(pytest.param(loop_mod._EpollPoller, id="epoll"))


@pytest.fixture(params=POLLERS)
def any_loop(request, monkeypatch):
    monkeypatch.setattr(loop_mod, "_Poller", request.param)
    loop = loop_mod.Loop()
    assert type(loop._selector) is request.param
    yield loop
    loop.close()


def test_read_write_and_hangup_wake_the_right_watchers(any_loop):
    loop = any_loop
    a, b = socket.socketpair()
    a.setblocking(False)
    events = []
    r = loop.io(a, "r", lambda: events.append(("r", a.recv(100))))
    w = loop.io(a, "w", lambda: events.append("w"))
    assert len(loop._selector.get_map()) == 1
    loop.run_once(0)
    assert events == ["w"]  # writable, nothing to read yet
    w.cancel()
    events.clear()
    b.send(b"hi")
    run_until(loop, lambda: events)
    assert events == [("r", b"hi")]
    events.clear()
    b.close()  # a hang-up wakes the reader, which sees EOF
    run_until(loop, lambda: events)
    assert events[0] == ("r", b"")
    r.cancel()
    assert len(loop._selector.get_map()) == 0
    a.close()


def test_a_timeout_under_a_millisecond_still_waits(any_loop):
    # Rounding down to 0 ms would make the loop spin until the timer is due.
    loop = any_loop
    fired = []
    loop.timer(0.0005, lambda: fired.append(1))
    turns = 0
    while not fired and turns < 1000:
        loop.run_once()
        turns += 1
    assert fired and turns < 10
