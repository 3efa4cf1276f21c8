"""Loop.idle: runs only in turns with nothing else to do, never blocks, never starves I/O."""

from __future__ import annotations

import socket
import time

from tests.conftest import run_until


def test_idle_runs_repeatedly_until_cancelled(loop):
    count = [0]
    w = loop.idle(lambda: count.__setitem__(0, count[0] + 1))
    t0 = time.monotonic()
    for _ in range(50):
        loop.run_once()  # would block forever without the idle watcher
    assert time.monotonic() - t0 < 2
    assert count[0] == 50
    w.cancel()
    w.cancel()
    loop.run_once(0)
    assert count[0] == 50
    assert "idle=0" in repr(loop)


def test_idle_waits_for_deferred_calls_io_and_due_timers(loop):
    order = []
    loop.idle(lambda: order.append("idle"))
    loop.call_soon(lambda: order.append("soon"))
    loop.run_once()
    assert order == ["soon"], "a turn that ran deferred calls is not idle"
    a, b = socket.socketpair()
    try:
        w = loop.io(a, "r", lambda: order.append("io") or a.recv(10))
        b.send(b"x")
        order.clear()
        loop.run_once()
        assert order == ["io"]
        loop.run_once()
        assert order == ["io", "idle"]
        w.cancel()
    finally:
        a.close()
        b.close()
    order.clear()
    loop.timer(0, lambda: order.append("timer"))
    run_until(loop, lambda: "timer" in order)
    assert order[-1] == "timer"


def test_busy_idle_does_not_starve_io_or_timers(loop):
    spins = [0]
    loop.idle(lambda: spins.__setitem__(0, spins[0] + 1))
    a, b = socket.socketpair()
    got = bytearray()
    fired = []
    w = loop.io(a, "r", lambda: got.extend(a.recv(65536)))
    try:
        loop.timer(0.05, lambda: fired.append(time.monotonic()))
        t0 = time.monotonic()
        for i in range(100):
            b.send(b"%03d" % i)
            run_until(loop, lambda n=3 * (i + 1): len(got) >= n, timeout=2)
        run_until(loop, lambda: bool(fired), timeout=2)
        assert fired[0] - t0 < 1.0
        assert bytes(got) == b"".join(b"%03d" % i for i in range(100))
        assert spins[0] > 0
    finally:
        w.cancel()
        a.close()
        b.close()


def test_several_idle_watchers_in_order_and_cancel_from_callback(loop):
    order = []
    second = None

    def first():
        order.append(1)
        second.cancel()

    loop.idle(first)
    second = loop.idle(lambda: order.append(2))
    third = loop.idle(lambda: order.append(3))
    loop.run_once()
    assert order == [1, 3]
    third.cancel()


def test_close_deactivates_idle_watchers():
    import evws
    lp = evws.Loop()
    w = lp.idle(lambda: None)
    lp.close()
    assert not w.active
