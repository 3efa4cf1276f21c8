"""Tests for evws.reactor.loop: turns, deferred calls, timers, io watchers."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from evws.reactor.loop import Loop, get_loop
from tests.conftest import TIMEOUT, run_until


class TestDeferred:
    def test_runs_next_turn_in_order_with_args(self, loop):
        got = []
        loop.call_soon(got.append, 1)
        loop.call_soon(lambda a, b: got.append(a + b), 2, 3)
        assert got == []
        loop.run_once(0)
        assert got == [1, 5]

    def test_snapshot_calls_deferred_during_a_turn_wait(self, loop):
        got = []

        def first():
            got.append("first")
            loop.call_soon(got.append, "second")

        loop.call_soon(first)
        loop.run_once(0)
        assert got == ["first"]
        loop.run_once(0)
        assert got == ["first", "second"]

    def test_pending_deferred_call_makes_select_not_block(self, loop):
        loop.call_soon(lambda: loop.call_soon(lambda: None))
        start = time.monotonic()
        loop.run_once(3.0)  # ran something: zero timeout
        loop.run_once(3.0)  # something is pending: zero timeout too
        assert time.monotonic() - start < 1.0

    def test_cancel(self, loop):
        got = []
        h = loop.call_soon(got.append, 1)
        h.cancel()
        h.cancel()  # idempotent
        loop.run_once(0)
        assert got == []
        assert not h.active


class TestTimers:
    def test_fire_in_due_order(self, loop):
        got = []
        loop.timer(0.06, lambda: got.append(3))
        loop.timer(0.02, lambda: got.append(1))
        loop.timer(0.04, lambda: got.append(2))
        loop.timer(0.0, lambda: got.append(0))
        run_until(loop, lambda: len(got) == 4)
        assert got == [0, 1, 2, 3]

    def test_same_due_time_fires_in_creation_order(self, loop, monkeypatch):
        monkeypatch.setattr(loop, "time", lambda: 100.0)
        got = []
        for i in range(5):
            loop.timer(0, lambda i=i: got.append(i))
        loop.run_once(0)
        assert got == [0, 1, 2, 3, 4]

    def test_run_once_waits_for_next_timer(self, loop):
        got = []
        loop.timer(0.05, lambda: got.append(1))
        start = time.monotonic()
        loop.run_once()  # no timeout: select waits for the timer only
        assert got == [1]
        assert 0.04 <= time.monotonic() - start < 1.0

    def test_run_once_timeout_bounds_the_wait(self, loop):
        start = time.monotonic()
        loop.run_once(0.05)
        assert 0.04 <= time.monotonic() - start < 1.0

    def test_wait_ignores_cancelled_timers_and_negative_timeouts(self, loop):
        # run_once computes the poll timeout inline: a cancelled timer at the
        # top of the heap must not cut the wait short, a live later one must
        # bound it, and a negative timeout means "do not wait".
        loop.timer(0.0, lambda: None).cancel()
        loop.timer(0.05, lambda: None)
        start = time.monotonic()
        loop.run_once(5.0)
        assert 0.04 <= time.monotonic() - start < 1.0
        loop.timer(10.0, lambda: None)  # bounds the wait if this regresses
        start = time.monotonic()
        loop.run_once(-1.0)
        assert time.monotonic() - start < 0.03

    def test_interval_repeats_until_cancelled(self, loop):
        times = []

        def tick():
            times.append(loop.time())
            if len(times) == 3:
                t.cancel()

        t = loop.timer(0.01, tick, interval=0.02)
        run_until(loop, lambda: len(times) == 3)
        for _ in range(5):
            loop.run_once(0.03)
        assert len(times) == 3
        assert times[2] - times[0] >= 0.035
        assert not loop._timers  # the cancelled repeating timer is gone

    def test_interval_timer_fires_once_per_turn(self, loop, monkeypatch):
        now = [50.0]
        monkeypatch.setattr(loop, "time", lambda: now[0])
        got = []
        loop.timer(0, lambda: got.append(now[0]), interval=0.001)
        now[0] = 60.0  # far behind: no burst of missed firings
        loop.run_once(0)
        assert got == [60.0]
        loop.run_once(0)
        assert got == [60.0]
        now[0] = 60.001
        loop.run_once(0)
        assert got == [60.0, 60.001]

    def test_cancel_prevents_firing(self, loop):
        got = []
        t = loop.timer(0.01, lambda: got.append(1))
        t.cancel()
        t.cancel()
        loop.timer(0.03, lambda: got.append(2))
        run_until(loop, lambda: got)
        assert got == [2]

    def test_cancelled_timers_do_not_pile_up(self, loop):
        for _ in range(10):
            timers = [loop.timer(100, lambda: None) for _ in range(1000)]
            for t in timers:
                t.cancel()
        assert len(loop._timers) <= 500

    def test_negative_interval_refused(self, loop):
        with pytest.raises(ValueError):
            loop.timer(0, lambda: None, interval=0)


class TestIo:
    def test_read_and_write_watchers_on_same_fd(self, loop, socketpair):
        a, b = socketpair
        events = []
        r = loop.io(a, "r", lambda: events.append(("r", a.recv(100))))
        w = loop.io(a.fileno(), "w", lambda: events.append(("w",)))
        assert len(loop._selector.get_map()) == 1  # one combined registration
        loop.run_once(0)
        assert events == [("w",)]  # writable, not yet readable
        b.send(b"hi")
        events.clear()
        run_until(loop, lambda: ("r", b"hi") in events)
        w.cancel()
        events.clear()
        b.send(b"again")
        run_until(loop, lambda: events)
        assert events == [("r", b"again")]
        r.cancel()
        r.cancel()
        assert len(loop._selector.get_map()) == 0

    def test_level_triggered(self, loop, socketpair):
        a, b = socketpair
        count = [0]
        loop.io(a, "r", lambda: count.__setitem__(0, count[0] + 1))
        b.send(b"x")  # never read: stays readable
        run_until(loop, lambda: count[0] >= 3)

    def test_second_watcher_same_mode_refused(self, loop, socketpair):
        a, _ = socketpair
        w = loop.io(a, "r", lambda: None)
        with pytest.raises(ValueError):
            loop.io(a, "r", lambda: None)
        w.cancel()
        loop.io(a, "r", lambda: None).cancel()

    def test_bad_mode_refused(self, loop, socketpair):
        with pytest.raises(ValueError):
            loop.io(socketpair[0], "x", lambda: None)

    def test_reader_cancelling_writer_in_same_turn(self, loop, socketpair):
        a, b = socketpair
        got = []
        b.send(b"x")

        def on_read():
            got.append("r")
            a.recv(10)
            w.cancel()

        loop.io(a, "r", on_read)
        w = loop.io(a, "w", lambda: got.append("w"))
        loop.run_once(1)
        assert got == ["r"]

    def test_cancel_after_close_then_fd_reused(self, loop):
        # The owner cancelled only after closing the socket (the kernel has
        # already dropped it from epoll); a new socket may reuse the fd.
        a, b = socket.socketpair()
        stale = loop.io(a, "r", lambda: None)
        a.close()
        b.close()
        stale.cancel()
        c, d = socket.socketpair()
        try:
            got = []
            loop.io(c, "w", lambda: got.append("w"))
            loop.run_once(1)
            assert got == ["w"]
        finally:
            c.close()
            d.close()


class TestErrors:
    def test_exceptions_logged_and_loop_survives(self, loop, socketpair, caplog):
        a, b = socketpair
        got = []

        def boom():
            raise ValueError("boom")

        loop.call_soon(boom)
        loop.call_soon(got.append, "deferred")
        loop.timer(0, boom)
        loop.timer(0, lambda: got.append("timer"))
        w = loop.io(a, "w", boom)
        with caplog.at_level(logging.ERROR, logger="evws.loop"):
            loop.run_once(0)
            loop.run_once(0)
        w.cancel()
        assert "deferred" in got and "timer" in got
        errors = [r for r in caplog.records if r.name == "evws.loop" and r.exc_info]
        assert len(errors) >= 3
        assert all(isinstance(r.exc_info[1], ValueError) for r in errors)

    def test_keyboard_interrupt_propagates(self, loop):
        def interrupt():
            raise KeyboardInterrupt

        loop.call_soon(interrupt)
        with pytest.raises(KeyboardInterrupt):
            loop.run_once(0)
        assert loop.depth == 0


class TestRunStop:
    def test_run_until_stop(self, loop):
        got = []
        loop.timer(0.01, lambda: got.append(1))
        loop.timer(0.02, loop.stop)
        loop.run()
        assert got == [1]

    def test_stop_returns_innermost_run_only(self, loop):
        got = []

        def inner():
            loop.timer(0.01, loop.stop)
            loop.run()
            got.append("inner returned")
            loop.timer(0.01, loop.stop)

        loop.call_soon(inner)
        loop.run()
        assert got == ["inner returned"]

    def test_depth_counts_nested_run_once(self, loop):
        seen = []

        def outer():
            seen.append(loop.depth)
            loop.call_soon(lambda: seen.append(loop.depth))
            loop.run_once(0)

        assert loop.depth == 0
        loop.call_soon(outer)
        loop.run_once(0)
        assert seen == [1, 2]
        assert loop.depth == 0

    def test_run_holds_depth_one_for_its_callbacks(self, loop):
        seen = []

        def record():
            seen.append(loop.depth)
            if len(seen) == 3:
                loop.stop()
            else:
                loop.call_soon(record)

        loop.call_soon(record)
        loop.run()
        assert seen == [1, 1, 1]
        assert loop.depth == 0

    def test_run_restores_depth_when_interrupted(self, loop):
        def interrupt():
            raise KeyboardInterrupt

        loop.call_soon(interrupt)
        with pytest.raises(KeyboardInterrupt):
            loop.run()
        assert loop.depth == 0
        loop.call_soon(loop.stop)
        loop.run()  # the interrupted run left no stop request or depth behind
        assert loop.depth == 0

    def test_sub_millisecond_timer_waits_instead_of_spinning(self, loop):
        """The poll timeout is not rounded down to 0 (which would busy-loop)."""
        fired = []
        start = time.monotonic()
        loop.timer(0.0003, lambda: fired.append(time.monotonic() - start))
        turns = 0
        while not fired and turns < 1000:
            loop.run_once()
            turns += 1
        assert fired and fired[0] >= 0.0003
        assert turns <= 3

    def test_closed_loop_refuses_work(self):
        lp = Loop()
        lp.close()
        lp.close()
        with pytest.raises(RuntimeError):
            lp.call_soon(lambda: None)
        with pytest.raises(RuntimeError):
            lp.run_once(0)


class TestGetLoop:
    def test_one_default_per_thread(self):
        mine = get_loop()
        assert get_loop() is mine
        other = []
        t = threading.Thread(target=lambda: other.append(get_loop()))
        t.start()
        t.join(TIMEOUT)
        assert other and other[0] is not mine
        other[0].close()

    def test_closed_default_is_replaced(self):
        first = get_loop()
        first.close()
        second = get_loop()
        assert second is not first and not second.closed


@pytest.fixture
def socketpair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


# -- signal watchers (loop.signal) ------------------------------------------

import os  # noqa: E402
import signal  # noqa: E402


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


class TestSignals:
    def test_signal_wakes_select_and_runs_fn_on_the_loop(self, loop):
        seen = []
        guard = loop.signal(signal.SIGUSR1, lambda signum: seen.append((signum, loop.depth)))
        try:
            # Sent from another thread while the main thread waits in select.
            killer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1))
            start = time.monotonic()
            killer.start()
            run_until(loop, lambda: seen)
            killer.join(TIMEOUT)
            assert time.monotonic() - start < 2.0
            # Called with the signal number, from a loop turn (depth 1), not the handler.
            assert seen == [(signal.SIGUSR1, 1)]
        finally:
            guard.cancel()

    def test_several_watchers_in_order_and_cancel_restores_the_handler(self, loop):
        before = signal.getsignal(signal.SIGUSR2)
        order = []
        first = loop.signal(signal.SIGUSR2, lambda s: order.append("first"))
        second = loop.signal(signal.SIGUSR2, lambda s: order.append("second"))
        assert signal.getsignal(signal.SIGUSR2) is not before
        os.kill(os.getpid(), signal.SIGUSR2)
        run_until(loop, lambda: len(order) == 2)
        assert order == ["first", "second"]
        first.cancel()
        first.cancel()  # idempotent
        os.kill(os.getpid(), signal.SIGUSR2)
        run_until(loop, lambda: len(order) == 3)
        assert order[-1] == "second"
        second.cancel()
        assert signal.getsignal(signal.SIGUSR2) is before

    def test_sigint_watched_raises_no_keyboard_interrupt(self, loop):
        seen = []
        guard = loop.signal(signal.SIGINT, seen.append)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            run_until(loop, lambda: seen)
            assert seen == [signal.SIGINT]
        finally:
            guard.cancel()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def test_raising_fn_is_logged_and_the_loop_goes_on(self, loop, caplog):
        seen = []

        def boom(signum):
            raise RuntimeError("boom")
        g1 = loop.signal(signal.SIGUSR1, boom)
        g2 = loop.signal(signal.SIGUSR1, seen.append)
        try:
            with caplog.at_level(logging.ERROR, logger="evws.loop"):
                os.kill(os.getpid(), signal.SIGUSR1)
                run_until(loop, lambda: seen)
            assert "boom" in caplog.text
        finally:
            g1.cancel()
            g2.cancel()

    def test_loop_close_cleans_up(self):
        before = signal.getsignal(signal.SIGUSR1)
        lp = Loop()
        try:
            before_fds = _fd_count()
            lp.signal(signal.SIGUSR1, lambda s: None)
            assert _fd_count() == before_fds + 2  # the wakeup socketpair
        finally:
            lp.close()
        assert signal.getsignal(signal.SIGUSR1) is before
        assert signal.set_wakeup_fd(-1) == -1
        assert _fd_count() == before_fds - 1  # and the selector's own fd

    def test_only_one_loop_watches_signals(self, loop):
        guard = loop.signal(signal.SIGUSR1, lambda s: None)
        other = Loop()
        try:
            with pytest.raises(RuntimeError):
                other.signal(signal.SIGUSR2, lambda s: None)
        finally:
            other.close()
            guard.cancel()
        # Once released, another loop may take over.
        lp = Loop()
        g = lp.signal(signal.SIGUSR2, lambda s: None)
        g.cancel()
        lp.close()

    def test_not_from_another_thread(self, loop):
        errors = []

        def worker():
            lp = Loop()
            try:
                lp.signal(signal.SIGUSR1, lambda s: None)
            except ValueError as exc:
                errors.append(exc)
            finally:
                lp.close()
        t = threading.Thread(target=worker)
        t.start()
        t.join(TIMEOUT)
        assert errors


class TestPending:
    """Loop.pending(): what is still registered, named, without the loop's own machinery."""

    def test_empty_loop_has_nothing_pending(self, loop):
        assert loop.pending() == []

    def test_lists_each_kind_in_order_and_names_the_callback(self, loop, socketpair):
        a, _ = socketpair

        def on_time():
            pass
        late = loop.timer(60, on_time)
        soon = loop.timer(30, lambda: None)
        reader = loop.io(a, "r", lambda: None)
        call = loop.call_soon(print)
        sig = loop.signal(signal.SIGUSR1, lambda s: None)
        idle = loop.idle(lambda: None)
        try:
            assert loop.pending() == [reader, soon, late, call, sig, idle]
            assert "TestPending.test_lists_each_kind_in_order_and_names_the_callback" \
                   ".<locals>.on_time" in repr(late)
            assert f"fd={a.fileno()} mode='r'" in repr(reader)
        finally:
            sig.cancel()

    def test_cancelled_and_finished_registrations_are_gone(self, loop, socketpair):
        a, _ = socketpair
        loop.timer(0, lambda: None)
        loop.call_soon(lambda: None)
        loop.io(a, "w", lambda: None).cancel()
        loop.timer(60, lambda: None).cancel()
        loop.call_soon(print).cancel()
        loop.run_once(0.1)
        loop.run_once(0)
        assert loop.pending() == []

    def test_the_loops_own_wakeup_fds_are_not_listed(self, loop):
        loop.call_soon_threadsafe(lambda: None)   # creates the waker fd and its watcher
        sig = loop.signal(signal.SIGUSR2, lambda s: None)   # the signal wakeup socket
        loop.run_once(0)
        assert loop.pending() == [sig]
        sig.cancel()
        assert loop.pending() == []

    def test_closed_loop_has_nothing_pending(self):
        lp = Loop()
        lp.timer(60, lambda: None)
        lp.close()
        assert lp.pending() == []


# --- at_turn_end: once, at the end of this turn -------------------------------------------

def test_at_turn_end_runs_after_the_turns_callbacks_and_before_the_next_poll(loop):
    order = []
    a, b = socket.socketpair()
    try:
        b.send(b"x")

        def readable():
            order.append("io")
            loop.at_turn_end(order.append, "end 1")
            loop.at_turn_end(order.append, "end 2")
            loop.call_soon(order.append, "soon")
            a.recv(1)

        w = loop.io(a, "r", readable)
        loop.timer(0, lambda: order.append("timer"))
        loop.run_once(1.0)
        assert order[0] == "io" and order[-2:] == ["end 1", "end 2"]   # this turn, last
        assert "soon" not in order                                       # call_soon: next turn
        loop.run_once(0)
        assert order[-1] == "soon"
        w.cancel()
    finally:
        a.close()
        b.close()


def test_at_turn_end_still_runs_when_a_callback_stops_the_loop(loop):
    done = []

    def stop_now():
        loop.at_turn_end(done.append, "flushed")
        loop.stop()

    loop.call_soon(stop_now)
    loop.run()
    assert done == ["flushed"]


def test_at_turn_end_outside_a_turn_does_not_wait_in_select(loop):
    done = []
    loop.at_turn_end(done.append, 1)
    loop.timer(30, lambda: done.append("timer"))   # would block the poll for 30 s
    started = time.monotonic()
    loop.run_once()
    assert done == [1] and time.monotonic() - started < 5


def test_at_turn_end_from_itself_runs_a_turn_later_and_is_cancellable(loop, caplog):
    done = []

    def first():
        done.append("first")
        loop.at_turn_end(done.append, "again")

    loop.at_turn_end(first)
    cancelled = loop.at_turn_end(done.append, "never")
    cancelled.cancel()
    loop.at_turn_end(lambda: 1 / 0)   # logged, the others still run
    loop.run_once(0)
    assert done == ["first"]
    assert any("ZeroDivisionError" in r.exc_text for r in caplog.records if r.exc_text)
    assert any(h.fn == done.append for h in loop.pending())   # listed while pending
    loop.run_once(0)
    assert done == ["first", "again"]
    assert loop.pending() == []
