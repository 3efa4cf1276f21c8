"""Loop.call_soon_threadsafe: many threads, nothing lost, order kept, prompt wake-ups."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import evws
from tests.conftest import run_until

THREADS = 8
CALLS = 2000


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def in_blocking_poll(native_id: int) -> bool | None:
    """Whether thread ``native_id`` sleeps in epoll_wait (None: cannot tell here)."""
    try:
        with open(f"/proc/self/task/{native_id}/wchan") as f:
            wchan = f.read()
    except OSError:
        return None
    if wchan in ("", "0"):
        return None
    return "epoll" in wchan or "poll" in wchan or "select" in wchan


def call_when_blocked(loop: evws.Loop, native_id: int, fn, deadline: float) -> threading.Thread:
    """A thread that calls ``loop.call_soon_threadsafe(fn)`` once the loop thread blocks."""
    def worker() -> None:
        while time.monotonic() < deadline:
            state = in_blocking_poll(native_id)
            if state is None or state:
                break
            time.sleep(0.001)  # polling a condition, bounded by deadline
        loop.call_soon_threadsafe(fn)
    th = threading.Thread(target=worker)
    th.start()
    return th


def test_many_threads_many_calls_none_lost_order_per_thread_kept(loop):
    got: list[tuple[int, int]] = []
    start = threading.Barrier(THREADS)

    def worker(tid: int) -> None:
        start.wait(timeout=10)
        for i in range(CALLS):
            loop.call_soon_threadsafe(got.append, (tid, i))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    try:
        run_until(loop, lambda: len(got) >= THREADS * CALLS, timeout=20)
    finally:
        for th in threads:
            th.join(timeout=10)
    loop.run_once(0)  # nothing more may arrive
    assert len(got) == THREADS * CALLS
    for tid in range(THREADS):
        assert [i for t, i in got if t == tid] == list(range(CALLS))


def test_a_blocked_loop_wakes_at_once():
    loop = evws.Loop()
    try:
        ran = []
        for _ in range(3):  # the first call creates the wake-up fd from the thread
            deadline = time.monotonic() + 5
            th = call_when_blocked(loop, threading.get_native_id(), lambda: ran.append(1),
                                   deadline)
            t0 = time.monotonic()
            while not ran:
                loop.run_once(10)  # no timer, no fd: only the wake-up can end this
                assert time.monotonic() - t0 < 3, "the loop slept through the wake-up"
            th.join(timeout=5)
            ran.clear()
    finally:
        loop.close()


def test_args_and_cancel_and_isolation(loop):
    got = []
    h = loop.call_soon_threadsafe(got.append, "cancelled")
    h.cancel()
    loop.call_soon_threadsafe(lambda: 1 / 0)
    loop.call_soon_threadsafe(got.append, "after")
    run_until(loop, lambda: got == ["after"])
    assert got == ["after"]


def test_wakeup_fd_is_lazy_and_closed_with_the_loop():
    before = open_fds()
    loop = evws.Loop()
    with_loop = open_fds()
    loop.call_soon(lambda: None)
    loop.run_once(0)
    assert open_fds() == with_loop, "call_soon alone must not make a wake-up fd"
    got = []
    loop.call_soon_threadsafe(got.append, 1)
    assert open_fds() > with_loop
    loop.run_once(0)
    loop.run_once(0)
    assert got == [1]
    loop.close()
    assert open_fds() == before
    with pytest.raises(RuntimeError):
        loop.call_soon_threadsafe(got.append, 2)


def test_racing_first_calls_make_one_wakeup_fd():
    loop = evws.Loop()
    try:
        with_loop = open_fds()
        got: list[int] = []
        start = threading.Barrier(THREADS)

        def worker(tid: int) -> None:
            start.wait(timeout=10)
            loop.call_soon_threadsafe(got.append, tid)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=10)
        run_until(loop, lambda: len(got) == THREADS)
        assert sorted(got) == list(range(THREADS))
        assert open_fds() == with_loop + 1  # one eventfd (or 2 for a socketpair)
    finally:
        loop.close()


def test_from_a_signal_handler(loop):
    got = []
    old = signal.signal(signal.SIGUSR1, lambda s, f: loop.call_soon_threadsafe(got.append, s))
    try:
        deadline = time.monotonic() + 5
        main = threading.get_native_id()

        def kill() -> None:
            while time.monotonic() < deadline and in_blocking_poll(main) is False:
                time.sleep(0.001)
            os.kill(os.getpid(), signal.SIGUSR1)
        th = threading.Thread(target=kill)
        th.start()
        t0 = time.monotonic()
        while not got:
            loop.run_once(10)
            assert time.monotonic() - t0 < 3
        th.join(timeout=5)
        assert got == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, old)
