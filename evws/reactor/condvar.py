"""CondVar: AnyEvent's condition variable, the one way evws hands back results.

A CondVar becomes *ready* once, with values (:meth:`CondVar.send`) or with an
error (:meth:`CondVar.croak`). Consumers either block in :meth:`CondVar.recv`,
which runs loop turns until it is ready, or register :meth:`CondVar.cb`.

Deliberate choices:

- A second ``send``/``croak`` is ignored (logged at DEBUG). AnyEvent lets it
  overwrite, but then a consumer that already received could see a different
  answer from a second ``recv()``; "ready once" is simpler to reason about.
- ``recv()`` from inside a loop callback while not ready raises
  :class:`~evws.errors.RecursiveWaitError` instead of deadlocking: the loop
  that would have to make it ready is the one already running below us.
- Callbacks registered before readiness run synchronously inside ``send``;
  one registered after readiness runs on the next loop turn, so ``cb`` never
  calls back into the code that is still registering it.
- :meth:`CondVar.cancel` exists only where it really stops something: the
  producer registers how (:meth:`CondVar.on_cancel`), and a CondVar without
  one refuses ``cancel()`` rather than croak while its work goes on (a
  connection finishing its handshake into a CondVar nobody reads any more).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from ..errors import Cancelled, CroakError, RecursiveWaitError, WaitTimeout
from .loop import Loop, get_loop

__all__ = ["CondVar"]

log = logging.getLogger("evws.condvar")


class CondVar:
    """A one-shot result that can be waited for or subscribed to.

    Args:
        loop: the loop whose turns ``recv()`` runs; ``None`` = this thread's
            default loop (:func:`~evws.reactor.get_loop`).
    """

    __slots__ = ("_loop", "_ready", "_values", "_error", "_cbs", "_counter", "_end_fn",
                 "_cancel_fn")

    def __init__(self, loop: Loop | None = None) -> None:
        self._loop = loop if loop is not None else get_loop()
        self._ready = False
        self._values: tuple[Any, ...] = ()
        self._error: BaseException | None = None
        self._cbs: list[Callable[[CondVar], Any]] = []
        self._counter = 0
        self._end_fn: Callable[[CondVar], Any] | None = None
        self._cancel_fn: Callable[[BaseException | None], Any] | None = None

    @property
    def loop(self) -> Loop:
        return self._loop

    @property
    def ready(self) -> bool:
        """True once ``send`` or ``croak`` was called."""
        return self._ready

    @property
    def error(self) -> BaseException | None:
        """What was croaked, or ``None`` (not ready, or ready with values).

        For code that must look at the outcome without raising it, e.g. a
        ``cb`` that answers a refused handshake.
        """
        return self._error

    # -- producing -------------------------------------------------------

    def send(self, *values: Any) -> None:
        """Become ready with ``values``; run the registered callbacks now."""
        if self._ready:
            log.debug("%r: send() after ready ignored", self)
            return
        self._values = values
        self._become_ready()

    def croak(self, error: BaseException | str) -> None:
        """Become ready with an error that ``recv()`` will raise.

        Args:
            error: an exception instance (or class), or a message, which
                becomes :class:`~evws.errors.CroakError`.
        """
        if isinstance(error, str):
            exc: BaseException = CroakError(error)
        elif isinstance(error, BaseException):
            exc = error
        elif isinstance(error, type) and issubclass(error, BaseException):
            exc = error()
        else:
            raise TypeError(f"croak() needs an exception or a str, not {type(error).__name__}")
        if self._ready:
            log.debug("%r: croak(%r) after ready ignored", self, exc)
            return
        self._error = exc
        self._become_ready()

    def on_cancel(self, fn: Callable[[BaseException | None], Any] | None) -> None:
        """Say how to stop the work behind this CondVar (the producer's side of :meth:`cancel`).

        ``fn(error)`` must release what the work holds (sockets, timers,
        watchers) and croak this CondVar, with ``error`` when it is not
        ``None``, else with the producer's own :class:`~evws.errors.Cancelled`.
        A producer that goes through steps registers each step's ``fn`` in
        turn (the last one counts); ``None`` makes it uncancellable again.
        Dropped once the CondVar is ready.
        """
        if not self._ready:
            self._cancel_fn = fn

    @property
    def cancellable(self) -> bool:
        """True while not ready and the producer registered :meth:`on_cancel`."""
        return self._cancel_fn is not None

    def cancel(self, error: BaseException | None = None) -> bool:
        """Stop the work behind this CondVar and croak it: "I no longer want this result".

        The producer's canceller runs first, so by the time the callbacks
        see the croak (``error``, or the producer's
        :class:`~evws.errors.Cancelled`, e.g.
        :class:`~evws.errors.ConnectCancelled` for a connect) its sockets,
        timers and watchers are gone.

        Returns True when it cancelled, False when the CondVar was ready
        already (too late: nothing happens).

        Raises:
            RuntimeError: not ready, and its producer cannot stop its work
                (it registered no :meth:`on_cancel`).
        """
        if self._ready:
            return False
        fn, self._cancel_fn = self._cancel_fn, None
        if fn is None:
            raise RuntimeError(f"{self!r} cannot be cancelled: its producer has no canceller")
        try:
            fn(error)
        finally:
            if not self._ready:  # a canceller that forgot to croak: do it for it
                self.croak(error if error is not None else Cancelled("cancelled"))
        return True

    def _become_ready(self) -> None:
        self._ready = True
        self._cancel_fn = None
        cbs, self._cbs = self._cbs, []
        for fn in cbs:
            try:
                fn(self)
            except Exception:
                log.exception("exception in CondVar callback %r", fn)

    # -- consuming -------------------------------------------------------

    def recv(self, timeout: float | None = None) -> Any:
        """Wait until ready; return the value, a tuple of values, or None.

        One value sent -> that value; several -> a tuple; none -> ``None``.
        Calling it again returns the same thing.

        Raises:
            RecursiveWaitError: not ready and called from a loop callback.
            WaitTimeout: ``timeout`` seconds passed before it became ready.
            whatever was croaked.
        """
        values = self.recv_all(timeout)
        if not values:
            return None
        if len(values) == 1:
            return values[0]
        return values

    def recv_all(self, timeout: float | None = None) -> tuple[Any, ...]:
        """Like :meth:`recv` but always return the tuple of sent values."""
        if not self._ready:
            self._wait(timeout)
        if self._error is not None:
            raise self._error
        return self._values

    def _wait(self, timeout: float | None) -> None:
        loop = self._loop
        if loop.depth > 0:
            raise RecursiveWaitError(
                "CondVar.recv() called from inside a loop callback while not ready; "
                "use cv.cb(...) instead"
            )
        if timeout is None:
            while not self._ready:
                loop.run_once()
            return
        deadline = loop.time() + timeout
        while not self._ready:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise WaitTimeout(f"CondVar not ready after {timeout} s")
            loop.run_once(remaining)

    def cb(self, fn: Callable[[CondVar], Any]) -> Callable[[CondVar], Any]:
        """Call ``fn(cv)`` once when ready (next loop turn if already ready).

        Returns ``fn``, so it also works as a decorator.
        """
        if self._ready:
            self._loop.call_soon(fn, self)
        else:
            self._cbs.append(fn)
        return fn

    # -- counting (AnyEvent begin/end) ---------------------------------

    def begin(self, fn: Callable[[CondVar], Any] | None = None) -> None:
        """Count one more outstanding job; remember ``fn`` (the last one wins)."""
        self._counter += 1
        if fn is not None:
            self._end_fn = fn

    def end(self) -> None:
        """Count one job done; at zero call the ``begin`` fn, else ``send()``.

        An exception from that fn propagates to the caller of ``end()``.
        """
        if self._counter <= 0:
            raise ValueError("CondVar.end() without a matching begin()")
        self._counter -= 1
        if self._counter == 0:
            if self._end_fn is not None:
                self._end_fn(self)
            else:
                self.send()

    def __repr__(self) -> str:
        if not self._ready:
            state = "pending"
        elif self._error is not None:
            state = f"croaked {self._error!r}"
        else:
            state = f"ready {self._values!r}"[:80]
        return f"<CondVar {state}>"
