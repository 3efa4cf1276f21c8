"""Tests for evws.reactor.condvar: send/croak/recv, cb, begin/end, recursion."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from evws.errors import CroakError, RecursiveWaitError, WaitTimeout
from evws.reactor.condvar import CondVar
from tests.conftest import TIMEOUT


class TestValues:
    @pytest.mark.parametrize(
        "sent, one, all_",
        [((), None, ()), ((7,), 7, (7,)), ((1, "a"), (1, "a"), (1, "a")), ((None,), None, (None,))],
    )
    def test_recv_shapes(self, loop, sent, one, all_):
        cv = CondVar(loop)
        cv.send(*sent)
        assert cv.ready
        assert cv.recv() == one
        assert cv.recv() == one  # again: same answer
        assert cv.recv_all() == all_

    def test_recv_runs_the_loop_until_ready(self, loop):
        cv = CondVar(loop)
        loop.timer(0.02, lambda: cv.send("late"))
        assert not cv.ready
        assert cv.recv(timeout=TIMEOUT) == "late"

    def test_second_send_ignored(self, loop, caplog):
        cv = CondVar(loop)
        cv.send(1)
        with caplog.at_level(logging.DEBUG, logger="evws.condvar"):
            cv.send(2)
            cv.croak("no")
        assert cv.recv() == 1
        assert any("ignored" in r.getMessage() for r in caplog.records)


class TestCroak:
    def test_croak_str_becomes_croak_error(self, loop):
        cv = CondVar(loop)
        cv.croak("it broke")
        with pytest.raises(CroakError, match="it broke"):
            cv.recv()
        with pytest.raises(CroakError):
            cv.recv_all()

    def test_croak_exception_instance_is_raised(self, loop):
        cv = CondVar(loop)
        err = ConnectionRefusedError(111, "refused")
        loop.timer(0.01, lambda: cv.croak(err))
        with pytest.raises(ConnectionRefusedError) as info:
            cv.recv(timeout=TIMEOUT)
        assert info.value is err

    def test_croak_exception_class(self, loop):
        cv = CondVar(loop)
        cv.croak(KeyError)
        with pytest.raises(KeyError):
            cv.recv()

    def test_croak_other_types_refused(self, loop):
        with pytest.raises(TypeError):
            CondVar(loop).croak(42)


class TestTimeout:
    def test_recv_timeout(self, loop):
        cv = CondVar(loop)
        start = time.monotonic()
        with pytest.raises(WaitTimeout):
            cv.recv(timeout=0.05)
        elapsed = time.monotonic() - start
        assert 0.04 <= elapsed < 1.0
        assert not cv.ready

    def test_wait_timeout_is_a_timeout_error(self, loop):
        with pytest.raises(TimeoutError):
            CondVar(loop).recv_all(timeout=0)


class TestCallbacks:
    def test_cb_before_ready_runs_synchronously_once(self, loop):
        cv = CondVar(loop)
        got = []
        cv.cb(lambda c: got.append(("a", c.recv())))
        cv.cb(lambda c: got.append(("b", c.recv())))
        cv.send(5)
        assert got == [("a", 5), ("b", 5)]
        loop.run_once(0)
        assert len(got) == 2

    def test_cb_after_ready_is_deferred(self, loop):
        cv = CondVar(loop)
        cv.send("x")
        got = []
        cv.cb(got.append)
        assert got == []
        loop.run_once(0)
        assert got == [cv]
        loop.run_once(0)
        assert got == [cv]

    def test_cb_as_decorator(self, loop):
        cv = CondVar(loop)
        got = []

        @cv.cb
        def done(c):
            got.append(c.recv())

        cv.send(3)
        assert got == [3]
        assert callable(done)

    def test_cb_exception_logged_others_still_run(self, loop, caplog):
        cv = CondVar(loop)
        got = []

        def boom(c):
            raise RuntimeError("cb failed")

        cv.cb(boom)
        cv.cb(lambda c: got.append(1))
        with caplog.at_level(logging.ERROR, logger="evws.condvar"):
            cv.send()
        assert got == [1]
        assert any(isinstance(r.exc_info[1], RuntimeError) for r in caplog.records if r.exc_info)


class TestLoopTurns:
    def test_call_deferred_while_becoming_ready_runs_after_recv_returns(self, loop):
        # shared/NOTES.md: the deferred queue runs *before* select, so a call
        # deferred by the callback that made the condvar ready waits for the
        # next turn instead of running before recv() returns.
        a, b = socket.socketpair()
        try:
            cv = CondVar(loop)
            order = []

            def on_readable():
                a.recv(10)
                watcher.cancel()
                cv.send("value")
                loop.call_soon(order.append, "deferred")

            watcher = loop.io(a, "r", on_readable)
            b.send(b"go")
            assert cv.recv(timeout=TIMEOUT) == "value"
            order.append("recv returned")
            loop.run_once(0)
            assert order == ["recv returned", "deferred"]
        finally:
            a.close()
            b.close()

    def test_deferred_from_ready_callback_runs_after_recv(self, loop):
        cv = CondVar(loop)
        order = []
        cv.cb(lambda c: loop.call_soon(order.append, "deferred in cb"))
        loop.timer(0.01, lambda: cv.send())
        cv.recv(timeout=TIMEOUT)
        order.append("recv returned")
        loop.run_once(0)
        assert order == ["recv returned", "deferred in cb"]


class TestRecursion:
    def test_recv_in_loop_callback_raises(self, loop):
        cv = CondVar(loop)
        errors = []

        def inside():
            try:
                cv.recv(timeout=1)
            except RecursiveWaitError as exc:
                errors.append(exc)
            loop.stop()

        loop.call_soon(inside)
        loop.run()
        assert len(errors) == 1
        assert isinstance(errors[0], RuntimeError)

    def test_recv_in_cb_of_another_recv_raises(self, loop):
        outer = CondVar(loop)
        inner = CondVar(loop)
        errors = []

        def on_outer(c):
            try:
                inner.recv(timeout=1)
            except RecursiveWaitError as exc:
                errors.append(exc)

        outer.cb(on_outer)
        loop.timer(0.01, outer.send)
        outer.recv(timeout=TIMEOUT)
        assert len(errors) == 1
        assert loop.depth == 0

    def test_recv_of_ready_condvar_inside_callback_is_fine(self, loop):
        cv = CondVar(loop)
        cv.send(9)
        got = []
        loop.call_soon(lambda: got.append(cv.recv()))
        loop.run_once(0)
        assert got == [9]


class TestBeginEnd:
    def test_end_at_zero_sends(self, loop):
        cv = CondVar(loop)
        for _ in range(3):
            cv.begin()
        cv.end()
        cv.end()
        assert not cv.ready
        cv.end()
        assert cv.ready
        assert cv.recv() is None

    def test_end_at_zero_calls_last_begin_fn(self, loop):
        cv = CondVar(loop)
        calls = []
        cv.begin(lambda c: calls.append("first"))
        cv.begin(lambda c: (calls.append("last"), c.send(len(calls))))
        cv.end()
        assert calls == []
        cv.end()
        assert calls == ["last"]
        assert cv.recv() == 1

    def test_begin_fn_need_not_send(self, loop):
        cv = CondVar(loop)
        cv.begin(lambda c: None)
        cv.end()
        assert not cv.ready

    def test_end_without_begin(self, loop):
        with pytest.raises(ValueError):
            CondVar(loop).end()

    def test_counts_timers(self, loop):
        cv = CondVar(loop)
        done = []
        for delay in (0.03, 0.01, 0.02):
            cv.begin()
            loop.timer(delay, lambda d=delay: (done.append(d), cv.end()))
        cv.recv(timeout=TIMEOUT)
        assert done == [0.01, 0.02, 0.03]


def test_default_loop_used_when_none_given():
    from evws.reactor.loop import get_loop

    cv = CondVar()
    assert cv.loop is get_loop()
