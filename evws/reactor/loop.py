"""A small single-threaded reactor on epoll (:mod:`selectors` elsewhere): AnyEvent's io/timer/idle.

Why not asyncio: evws is a callback library in the style of AnyEvent. Its users
block in ``CondVar.recv()``, which runs loop turns until something happened;
that needs a loop whose single turn (:meth:`Loop.run_once`) is public and whose
order of work inside a turn is fixed and documented:

1. run a *snapshot* of the deferred calls (``call_soon``); calls deferred while
   that snapshot runs wait for the next turn;
2. wait in ``select`` -- with a zero timeout when step 1 ran anything, when new
   deferred calls are pending, or when :meth:`Loop.stop` was requested;
   otherwise until the given timeout or the next timer, whichever is sooner;
3. dispatch I/O callbacks (level-triggered: a watcher fires every turn while
   its file descriptor is ready);
4. run the timers that are due.

Running step 1 *before* waiting is what makes "a call deferred while a CondVar
became ready runs after ``recv()`` returned" hold: a loop that waited first
would run such a call before ``recv()`` could return.

Signals (:meth:`Loop.signal`) are delivered the same way as I/O: the Python
signal handler does nothing but exist; :func:`signal.set_wakeup_fd` makes the
interpreter write the signal number into a socketpair whose read end the loop
watches, so ``select`` wakes up at once and the user's function runs as an
ordinary loop callback -- never inside the signal handler, where almost
nothing is safe to do.

Other threads (and signal handlers) hand work to the loop with
:meth:`Loop.call_soon_threadsafe`: the call is queued, then one byte (an
eventfd count on Linux, a socketpair elsewhere) wakes the ``select``. The
wake-up fd is created on the first such call, so a loop that never talks to
threads costs nothing. :meth:`Loop.idle` runs work only in turns that found
nothing else to do, and :meth:`Loop.child` (see :mod:`evws.reactor.process`)
reports a child process's exit.

Every callback is isolated: an :class:`Exception` it raises is logged on the
``evws.loop`` logger and the loop carries on. ``BaseException`` subclasses that
are not ``Exception`` (``KeyboardInterrupt``, ``SystemExit``) propagate.

A watcher must be cancelled before its file descriptor is closed: the loop
registers the integer fd, and a stale registration for a closed (and possibly
reused) fd cannot be told apart from a fresh one.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import selectors
import signal as _signal
import socket
import threading
import time as _time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # process imports loop: no cycle at run time
    from .process import ChildWatcher, ExitStatus

__all__ = ["Loop", "get_loop", "set_loop", "IoWatcher", "Timer", "Handle", "SignalWatcher",
           "IdleWatcher"]

log = logging.getLogger("evws.loop")

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE

# Poll results use epoll's bits on every platform: "in" and "out". Like
# selectors, anything but "out" alone (errors, hang-ups) wakes the reader, and
# anything but "in" alone wakes the writer, so an error is never missed.
_IN = getattr(select, "EPOLLIN", 1)
_OUT = getattr(select, "EPOLLOUT", 4)
_NOT_OUT = ~_OUT
_NOT_IN = ~_IN


class _EpollPoller:
    """``select.epoll`` used directly: the loop's poller on Linux.

    Why not ``selectors.EpollSelector``: its ``select()`` looks a
    ``SelectorKey`` up and builds a ``(key, events)`` tuple for every ready
    fd, and it keeps a ``SelectorKey`` and two map entries per fd (~0.2 KiB
    per idle connection). The loop already maps fd -> [reader, writer], so
    the raw ``(fd, events)`` list from ``epoll.poll`` is all it needs.
    """

    __slots__ = ("_epoll", "_fds", "poll")

    _MASKS = (0, _IN, _OUT, _IN | _OUT)  # indexed by _READ | _WRITE bits

    def __init__(self, fds: dict[int, Any]) -> None:
        self._epoll = select.epoll()
        self._fds = fds  # the loop's registrations, for get_map()
        # poll(timeout) -> [(fd, events)]: epoll's own method, no Python
        # frame per loop turn (the loop passes epoll's timeout convention).
        self.poll = self._epoll.poll

    def register(self, fd: int, events: int) -> None:
        self._epoll.register(fd, self._MASKS[events])

    def modify(self, fd: int, events: int) -> None:
        self._epoll.modify(fd, self._MASKS[events])

    def unregister(self, fd: int) -> None:
        self._epoll.unregister(fd)

    def get_map(self) -> dict[int, Any]:
        return self._fds

    def close(self) -> None:
        self._epoll.close()


class _SelectorsPoller:
    """The same interface on ``selectors.DefaultSelector`` (not Linux)."""

    __slots__ = ("_selector",)

    def __init__(self, fds: dict[int, Any]) -> None:
        self._selector = selectors.DefaultSelector()

    def register(self, fd: int, events: int) -> None:
        self._selector.register(fd, events)

    def modify(self, fd: int, events: int) -> None:
        self._selector.modify(fd, events)

    def unregister(self, fd: int) -> None:
        self._selector.unregister(fd)

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        """``timeout`` as epoll takes it: seconds, negative = forever."""
        return [(key.fd, (_IN if ev & _READ else 0) | (_OUT if ev & _WRITE else 0))
                for key, ev in self._selector.select(None if timeout < 0 else timeout)]

    def get_map(self) -> Any:
        return self._selector.get_map()

    def close(self) -> None:
        self._selector.close()


_Poller = _EpollPoller if hasattr(select, "epoll") else _SelectorsPoller


def _fileno(fileobj: Any) -> int:
    """Return the integer fd of a socket-like object or an int."""
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"invalid file descriptor: {fd}")
    return fd


def _call(fn: Callable[..., Any], args: tuple[Any, ...] = ()) -> None:
    """Run one callback; log (never propagate) an ordinary exception."""
    try:
        fn(*args)
    except Exception:
        log.exception("exception in loop callback %r", fn)


#: ``call_safely(fn, args)``: call ``fn(*args)``, logging what it raises (for other reactor modules).
call_safely = _call


def _describe(fn: Callable[..., Any]) -> str:
    """Name a callback for people: ``module.Qualified.name`` (a lambda says where it was made).

    Used by the guards' ``repr`` so that a list of live registrations (see
    :meth:`Loop.pending`) tells *whose* timer or watcher is still there.
    """
    target = getattr(fn, "func", fn)  # functools.partial: the function it wraps
    name = getattr(target, "__qualname__", None)
    if name is None:
        return repr(fn)
    module = getattr(target, "__module__", None)
    return f"{module}.{name}" if module else str(name)


class IoWatcher:
    """Guard for :meth:`Loop.io`; ``cancel()`` stops the watching (idempotent)."""

    __slots__ = ("_loop", "fd", "mode", "fn", "active")

    def __init__(self, loop: Loop, fd: int, mode: str, fn: Callable[[], Any]) -> None:
        self._loop = loop
        self.fd = fd
        self.mode = mode
        self.fn = fn
        self.active = True

    def cancel(self) -> None:
        if self.active:
            self.active = False
            self._loop._remove_io(self)

    def __repr__(self) -> str:
        state = "active" if self.active else "cancelled"
        return f"<IoWatcher fd={self.fd} mode={self.mode!r} fn={_describe(self.fn)} {state}>"


class Timer:
    """Guard for :meth:`Loop.timer`; ``cancel()`` is idempotent.

    ``when`` is the loop time (:func:`time.monotonic`) of the next firing.
    """

    __slots__ = ("_loop", "when", "interval", "fn", "active", "_queued")

    def __init__(self, loop: Loop, when: float, fn: Callable[[], Any],
                 interval: float | None) -> None:
        self._loop = loop
        self.when = when
        self.interval = interval
        self.fn = fn
        self.active = True
        self._queued = False  # currently an entry in the loop's heap

    def cancel(self) -> None:
        if self.active:
            self.active = False
            if self._queued:
                self._loop._timer_cancelled()

    def __repr__(self) -> str:
        state = "active" if self.active else "cancelled"
        return (f"<Timer when={self.when:.3f} interval={self.interval} fn={_describe(self.fn)} "
                f"{state}>")


class Handle:
    """Guard for :meth:`Loop.call_soon`; ``cancel()`` is idempotent."""

    __slots__ = ("fn", "args", "active")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.active = True

    def cancel(self) -> None:
        self.active = False

    def __repr__(self) -> str:
        state = "active" if self.active else "cancelled"
        return f"<Handle fn={_describe(self.fn)} {state}>"


class SignalWatcher:
    """Guard for :meth:`Loop.signal`; ``cancel()`` is idempotent and, for the
    last watcher of a signal, restores the handler that was there before."""

    __slots__ = ("_loop", "signum", "fn", "active")

    def __init__(self, loop: Loop, signum: int, fn: Callable[[int], Any]) -> None:
        self._loop = loop
        self.signum = signum
        self.fn = fn
        self.active = True

    def cancel(self) -> None:
        if self.active:
            self.active = False
            self._loop._remove_signal(self)

    def __repr__(self) -> str:
        state = "active" if self.active else "cancelled"
        return f"<SignalWatcher signum={self.signum} fn={_describe(self.fn)} {state}>"


class IdleWatcher:
    """Guard for :meth:`Loop.idle`; ``cancel()`` is idempotent."""

    __slots__ = ("_loop", "fn", "active")

    def __init__(self, loop: Loop, fn: Callable[[], Any]) -> None:
        self._loop = loop
        self.fn = fn
        self.active = True

    def cancel(self) -> None:
        if self.active:
            self.active = False
            try:
                self._loop._idlers.remove(self)
            except ValueError:
                pass

    def __repr__(self) -> str:
        state = "active" if self.active else "cancelled"
        return f"<IdleWatcher fn={_describe(self.fn)} {state}>"


class _Waker:
    """The wake-up fd of :meth:`Loop.call_soon_threadsafe`.

    An eventfd where the platform has one (one fd, a counter that cannot
    fill up), else a non-blocking socketpair (a full buffer just means a
    wake-up is already pending). ``wake()`` is one syscall and safe from any
    thread and from a signal handler; ``drain()`` runs on the loop.
    """

    __slots__ = ("fd", "_rsock", "_wsock")

    def __init__(self) -> None:
        self._rsock: socket.socket | None = None
        self._wsock: socket.socket | None = None
        if hasattr(os, "eventfd"):
            self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:
            self._rsock, self._wsock = socket.socketpair()
            self._rsock.setblocking(False)
            self._wsock.setblocking(False)
            self.fd = self._rsock.fileno()

    def wake(self) -> None:
        try:
            if self._wsock is None:
                if self.fd >= 0:
                    os.eventfd_write(self.fd, 1)
            else:
                self._wsock.send(b"\0")
        except OSError:
            # Full (a wake-up is pending anyway) or closed (the loop is gone).
            pass

    def drain(self) -> None:
        try:
            if self._rsock is None:
                os.eventfd_read(self.fd)
            else:
                while self._rsock.recv(4096):
                    pass
        except OSError:
            pass

    def close(self) -> None:
        if self._rsock is None:
            fd, self.fd = self.fd, -1
            if fd >= 0:
                os.close(fd)
        else:
            self.fd = -1
            self._rsock.close()
            assert self._wsock is not None
            self._wsock.close()


def _ignore_signal(signum: int, frame: Any) -> None:
    """The Python-level handler: the wakeup fd already recorded the signal."""


class Loop:
    """A selectors-based event loop: io watchers, timers, deferred calls.

    ``depth`` counts the :meth:`run_once` calls currently on the stack; a
    value above zero means "we are inside a loop callback", which is how
    ``CondVar.recv()`` detects a recursive blocking wait (a flag set only by
    :meth:`run` would miss a ``recv()`` made from a callback of another
    ``recv()``).
    """

    def __init__(self) -> None:
        # fd -> [reader, writer]: one registration serves both directions.
        self._io: dict[int, list[IoWatcher | None]] = {}
        self._selector = _Poller(self._io)
        self._timers: list[tuple[float, int, Timer]] = []
        self._timers_cancelled = 0
        self._seq = itertools.count()
        self._deferred: deque[Handle] = deque()
        # at_turn_end(): one-shot calls for the end of the current turn.
        self._turn_end: list[Handle] = []
        self._stop_requested = False
        self._closed = False
        self.depth = 0
        # Signal watching, set up on the first signal() call.
        self._signals: dict[int, list[SignalWatcher]] = {}
        self._old_handlers: dict[int, Any] = {}
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._wakeup_watcher: IoWatcher | None = None
        self._old_wakeup_fd = -1
        # call_soon_threadsafe: the wake-up fd, made on first use. A dict
        # because setdefault() publishes it atomically (see _make_waker).
        self._wakers: dict[str, _Waker] = {}
        self._waker: _Waker | None = None
        self._wake_pending = False
        # idle(): the active idle watchers, in the order they were added.
        self._idlers: list[IdleWatcher] = []
        # child(): evws.reactor.process._Reaper, made on first use.
        self._reaper: Any = None

    # -- clock -----------------------------------------------------------

    # The loop's clock, :func:`time.monotonic` itself: no Python frame for
    # the one or two clock reads of every turn.
    time = staticmethod(_time.monotonic)

    # -- io --------------------------------------------------------------

    def io(self, fileobj: Any, mode: str, fn: Callable[[], Any]) -> IoWatcher:
        """Call ``fn()`` on every turn while ``fileobj`` is ready for ``mode``.

        Args:
            fileobj: a socket (anything with ``fileno()``) or an int fd.
            mode: ``"r"`` (readable) or ``"w"`` (writable).
            fn: called without arguments until the watcher is cancelled.

        Raises:
            ValueError: bad mode or fd, or a watcher for this fd and mode is
                already active (one reader and one writer per fd; replacing one
                silently would hide bugs, so cancel the old one first).
        """
        self._check_open()
        if mode not in ("r", "w"):
            raise ValueError(f"mode must be 'r' or 'w', not {mode!r}")
        fd = _fileno(fileobj)
        slot = 0 if mode == "r" else 1
        pair = self._io.get(fd)
        if pair is not None and pair[slot] is not None:
            raise ValueError(f"fd {fd} already has an active {mode!r} watcher")
        watcher = IoWatcher(self, fd, mode, fn)
        if pair is None:
            pair = [None, None]
            pair[slot] = watcher
            self._io[fd] = pair
            self._register(fd, pair, new=True)
        else:
            pair[slot] = watcher
            self._register(fd, pair, new=False)
        return watcher

    def _remove_io(self, watcher: IoWatcher) -> None:
        pair = self._io.get(watcher.fd)
        if pair is None or self._closed:
            return
        slot = 0 if watcher.mode == "r" else 1
        if pair[slot] is not watcher:
            return
        pair[slot] = None
        if pair[0] is None and pair[1] is None:
            del self._io[watcher.fd]
            try:
                self._selector.unregister(watcher.fd)
            except (KeyError, ValueError, OSError):
                pass
        else:
            self._register(watcher.fd, pair, new=False)

    def _register(self, fd: int, pair: list[IoWatcher | None], new: bool) -> None:
        events = (_READ if pair[0] is not None else 0) | (_WRITE if pair[1] is not None else 0)
        sel = self._selector
        try:
            if new:
                sel.register(fd, events)
            else:
                sel.modify(fd, events)
        except (KeyError, OSError):
            # A stale registration: the fd was closed (the kernel dropped it
            # from epoll) and perhaps reused. Start over with a fresh one.
            try:
                sel.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass
            try:
                sel.register(fd, events)
            except BaseException:
                self._io.pop(fd, None)
                raise

    # -- timers ----------------------------------------------------------

    def timer(self, after: float, fn: Callable[[], Any],
              interval: float | None = None) -> Timer:
        """Call ``fn()`` once after ``after`` seconds, then every ``interval``.

        Repeating timers are rescheduled from their previous due time (no
        drift); a timer that fell behind by more than an interval skips the
        missed firings instead of firing in a burst.
        """
        self._check_open()
        if interval is not None and interval <= 0:
            raise ValueError("interval must be positive")
        t = Timer(self, self.time() + max(after, 0.0), fn, interval)
        self._push_timer(t)
        return t

    def _push_timer(self, t: Timer) -> None:
        t._queued = True
        heapq.heappush(self._timers, (t.when, next(self._seq), t))

    def _timer_cancelled(self) -> None:
        # Lazy deletion, but compact once cancelled entries are the majority,
        # so that a connection churn that always cancels its timers cannot
        # grow the heap without bound.
        self._timers_cancelled += 1
        if self._timers_cancelled * 2 > len(self._timers):
            live = []
            for e in self._timers:
                if e[2].active:
                    live.append(e)
                else:
                    e[2]._queued = False
            heapq.heapify(live)
            self._timers = live
            self._timers_cancelled = 0

    def _drop_cancelled_timers(self) -> None:
        """Pop cancelled entries off the top of the heap (lazy deletion)."""
        heap = self._timers
        while heap and not heap[0][2].active:
            heapq.heappop(heap)[2]._queued = False
            self._timers_cancelled -= 1

    def _run_timers(self) -> None:
        heap = self._timers
        now = self.time()
        due: list[Timer] = []
        # Collect first, then run: a timer rescheduled (or created) by a
        # callback waits for the next turn, even with a tiny interval.
        while heap and heap[0][0] <= now:
            t = heapq.heappop(heap)[2]
            t._queued = False
            if t.active:
                due.append(t)
            else:
                self._timers_cancelled -= 1
        for t in due:
            if not t.active:
                continue
            if t.interval is None:
                t.active = False
            _call(t.fn)
            if t.active and t.interval is not None and not t._queued:
                t.when += t.interval
                if t.when <= now:
                    t.when = now + t.interval
                self._push_timer(t)

    # -- signals -----------------------------------------------------------

    def signal(self, signum: int, fn: Callable[[int], Any]) -> SignalWatcher:
        """Call ``fn(signum)`` on the loop each time the process gets ``signum``.

        The function runs as a normal loop callback on the next turn (the
        pending ``select`` wakes up), not inside the signal handler, so it may
        do anything, e.g. ``server.shutdown(...)`` then ``loop.stop()``.
        Several watchers of one signal run in the order they were added. While
        any watcher of ``signum`` is active the previous handler is replaced
        (for SIGINT: no ``KeyboardInterrupt``); cancelling the last one puts
        it back.

        Only one loop per process can watch signals at a time (the wakeup fd
        is process-wide), and only from the main thread, as :mod:`signal`
        requires.

        Raises:
            ValueError: not the main thread, or an invalid signal number.
            RuntimeError: another open loop is watching signals.
        """
        self._check_open()
        if threading.current_thread() is not threading.main_thread():
            raise ValueError("signals can only be watched from the main thread")
        owner = _signal_loop
        if owner is not None and owner is not self and owner._wakeup is not None:
            raise RuntimeError("another loop is already watching signals")
        signum = int(signum)
        if self._wakeup is None:
            self._start_wakeup()
        watchers = self._signals.get(signum)
        if watchers is None:
            try:
                old = _signal.signal(signum, _ignore_signal)
            except BaseException:
                if not self._signals:
                    self._stop_wakeup()
                raise
            self._old_handlers[signum] = old
            watchers = self._signals[signum] = []
        watcher = SignalWatcher(self, signum, fn)
        watchers.append(watcher)
        return watcher

    def _start_wakeup(self) -> None:
        global _signal_loop
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        wsock.setblocking(False)
        try:
            self._old_wakeup_fd = _signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
        except BaseException:
            rsock.close()
            wsock.close()
            raise
        self._wakeup = (rsock, wsock)
        self._wakeup_watcher = self.io(rsock, "r", self._read_signals)
        _signal_loop = self

    def _stop_wakeup(self) -> None:
        global _signal_loop
        if self._wakeup is None:
            return
        rsock, wsock = self._wakeup
        self._wakeup = None
        try:
            if _signal.set_wakeup_fd(self._old_wakeup_fd) != wsock.fileno():
                log.warning("the signal wakeup fd was replaced behind the loop's back")
        except ValueError:  # not the main thread any more (loop closed elsewhere)
            pass
        self._old_wakeup_fd = -1
        if self._wakeup_watcher is not None:
            self._wakeup_watcher.cancel()
            self._wakeup_watcher = None
        rsock.close()
        wsock.close()
        if _signal_loop is self:
            _signal_loop = None

    def _read_signals(self) -> None:
        """The wakeup fd holds one byte per signal caught: dispatch them in order."""
        assert self._wakeup is not None
        rsock = self._wakeup[0]
        while True:
            try:
                data = rsock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            for signum in data:
                for watcher in list(self._signals.get(signum, ())):
                    if watcher.active:
                        _call(watcher.fn, (signum,))

    def _remove_signal(self, watcher: SignalWatcher) -> None:
        watchers = self._signals.get(watcher.signum)
        if watchers is None or watcher not in watchers:
            return
        watchers.remove(watcher)
        if watchers:
            return
        del self._signals[watcher.signum]
        old = self._old_handlers.pop(watcher.signum, _signal.SIG_DFL)
        try:
            _signal.signal(watcher.signum, old if old is not None else _signal.SIG_DFL)
        except ValueError:  # not the main thread
            log.warning("could not restore the handler of signal %d", watcher.signum)
        if not self._signals:
            self._stop_wakeup()

    # -- deferred calls --------------------------------------------------

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> Handle:
        """Call ``fn(*args)`` at the start of the next loop turn (AnyEvent::postpone; not :meth:`idle`)."""
        self._check_open()
        h = Handle(fn, args)
        self._deferred.append(h)
        return h

    def at_turn_end(self, fn: Callable[..., Any], *args: Any) -> Handle:
        """Call ``fn(*args)`` once, at the end of this turn: after its io callbacks, timers and idlers.

        Why: batching. Work that many callbacks of one turn add to -- the
        frames of several broadcasts bound for the same sockets -- is done
        once, before the loop polls again (libev's check watcher; Redis
        writes its replies the same way, before it sleeps), and, unlike
        :meth:`call_soon`, still in this turn when a callback of it calls
        :meth:`stop`. Called outside a turn, or from an ``at_turn_end``
        call itself, ``fn`` runs at the end of the next turn, which then
        does not wait in ``select``. Calls run in the order they were made;
        an exception is logged, as for any callback.
        """
        self._check_open()
        h = Handle(fn, args)
        self._turn_end.append(h)
        return h

    def _run_turn_end(self) -> None:
        calls, self._turn_end = self._turn_end, []
        for h in calls:
            if h.active:
                h.active = False
                _call(h.fn, h.args)

    def call_soon_threadsafe(self, fn: Callable[..., Any], *args: Any) -> Handle:
        """Call ``fn(*args)`` on the loop's thread, soon; callable from any thread.

        Why: a sensor, worker or GUI thread that has a result must not touch
        the loop's watchers itself; it queues the call here, and the loop,
        woken at once from ``select``, runs it in a following turn as an
        ordinary deferred call (same order and isolation as
        :meth:`call_soon`). Calls made by one thread run in the order that
        thread made them. Also safe from a Python signal handler (it neither
        locks nor allocates an fd twice).

        The wake-up fd (eventfd, or a socketpair) is created by the first
        call and closed by :meth:`close`. On Linux and the BSDs the poller
        sees it at once even when that first call comes from another thread
        while the loop is blocked; with a plain ``select``/``poll`` poller,
        make one call from the loop's thread before blocking.

        Raises:
            RuntimeError: the loop is closed (a call racing ``close()`` may
                also be dropped silently: stop the threads first).
        """
        self._check_open()
        h = Handle(fn, args)
        # deque.append is atomic; the loop's snapshot in _run_deferred only
        # pops what was there when it started, so a racing append waits a turn.
        self._deferred.append(h)
        waker = self._waker
        if waker is None:
            waker = self._make_waker()
        if not self._wake_pending:
            # One write per burst: the loop clears the flag *after* draining
            # (see _on_wake), so a caller that sees it set needs no write.
            self._wake_pending = True
            waker.wake()
        return h

    def _make_waker(self) -> _Waker:
        """Create and register the wake-up fd; safe against racing callers.

        No lock (a signal handler interrupting its own thread inside the
        locked section would deadlock): each racer makes a waker, one wins
        the atomic ``setdefault``, the others close theirs.
        """
        mine = _Waker()
        winner = self._wakers.setdefault("w", mine)
        if winner is not mine:
            mine.close()
            return winner
        self.io(mine.fd, "r", self._on_wake)
        self._waker = mine
        return mine

    def _on_wake(self) -> None:
        # Drain first, then clear: a caller that saw the flag still set has
        # already queued its call, which the next turn's snapshot includes.
        # (Clearing first would let a drain swallow a write whose caller set
        # the flag again, and every later caller would skip waking us.)
        waker = self._waker
        if waker is not None:
            waker.drain()
        self._wake_pending = False

    def idle(self, fn: Callable[[], Any]) -> IdleWatcher:
        """Call ``fn()`` in every turn that has nothing else to do, until cancelled.

        AnyEvent->idle: "nothing else" means no deferred call ran, no fd was
        ready and no timer was due in that turn. While an idle watcher is
        active the loop polls without waiting (it never blocks), yet I/O and
        timers keep their turns: each turn polls first, and an idle callback
        runs only in a turn where the poll found nothing. Use it for
        background work cut into small steps; use :meth:`call_soon` for
        "once, next turn".
        """
        self._check_open()
        w = IdleWatcher(self, fn)
        self._idlers.append(w)
        return w

    def _run_idle(self) -> None:
        for w in list(self._idlers):
            if w.active:
                _call(w.fn)

    def child(self, pid: int, fn: Callable[[int, ExitStatus], Any]) -> ChildWatcher:
        """Call ``fn(pid, status)`` once child ``pid`` exits (AnyEvent->child).

        ``status`` is an :class:`~evws.reactor.process.ExitStatus`: the
        ``os.waitpid`` status as an int, with ``.returncode``, ``.exit_code``
        and ``.signal``. See :func:`evws.reactor.process.child` for how
        (pidfd, or SIGCHLD and a ``waitpid`` per watched pid). Returns a
        :class:`~evws.reactor.process.ChildWatcher`; ``cancel()`` it to stop
        watching (the child is then left for someone else to reap).
        """
        from .process import child
        return child(pid, fn, loop=self)

    def _run_deferred(self) -> bool:
        q = self._deferred
        ran = False
        for _ in range(len(q)):  # a snapshot: later additions wait a turn
            h = q.popleft()
            if h.active:
                h.active = False
                ran = True
                _call(h.fn, h.args)
        return ran

    # -- running ---------------------------------------------------------

    def run_once(self, timeout: float | None = None) -> None:
        """Run one turn: deferred snapshot, select, io callbacks, due timers.

        Args:
            timeout: the longest to wait in ``select``; ``None`` waits until
                an fd is ready or a timer is due (forever if neither can
                happen, as AnyEvent does).
        """
        self.depth += 1
        try:
            self._turn(timeout)
        finally:
            self.depth -= 1

    def run(self) -> None:
        """Run turns until :meth:`stop` is called.

        A ``stop()`` made while no ``run()`` is active (for instance from a
        callback run by ``CondVar.recv()``) is kept: the next ``run()`` returns
        after one turn, like asyncio's ``stop()`` before ``run_forever()``.
        """
        # ``depth`` is held for the whole run rather than per turn: at one
        # connection every message is a turn (benchmarks/PROFILE.md, phase 5).
        self.depth += 1
        try:
            turn = self._turn
            while not self._stop_requested:
                turn(None)
        finally:
            self.depth -= 1
            self._stop_requested = False

    def _turn(self, timeout: float | None) -> None:
        """One turn of :meth:`run_once` (the caller counts ``depth``)."""
        if self._closed:
            raise RuntimeError("the loop is closed")
        # At one connection every message is a loop turn: skip the
        # bookkeeping that has nothing to do, and keep what is left inline
        # (benchmarks/PROFILE.md, phases 2, 4 and 5).
        ran = self._run_deferred() if self._deferred else False
        poll_timeout = 0.0
        if not (ran or self._deferred or self._stop_requested or self._idlers or self._turn_end):
            wait = timeout
            timers = self._timers
            if timers:
                if not timers[0][2].active:
                    self._drop_cancelled_timers()
                if timers:
                    delay = timers[0][0] - self.time()
                    if wait is None or delay < wait:
                        wait = delay
            if wait is None:
                poll_timeout = -1.0  # the poller's "forever"
            elif wait > 0:
                # No rounding here: epoll.poll() and selectors round a
                # sub-millisecond timeout *up*, so a timer is never polled
                # for with a zero timeout (which would spin).
                poll_timeout = wait
        ready = self._selector.poll(poll_timeout)
        # The per-event path matters with many ready sockets: the
        # isolation of _call() is inlined here.
        io = self._io
        for fd, events in ready:
            pair = io.get(fd)
            if pair is None:
                continue
            if events & _NOT_OUT:
                w = pair[0]
                if w is not None and w.active:
                    try:
                        w.fn()
                    except Exception:
                        log.exception("exception in io callback %r", w.fn)
            if events & _NOT_IN:
                w = pair[1]  # re-read: the reader may have cancelled it
                if w is not None and w.active:
                    try:
                        w.fn()
                    except Exception:
                        log.exception("exception in io callback %r", w.fn)
        timers = self._timers
        if timers and timers[0][0] <= self.time():
            self._run_timers()
        else:
            if self._wakeup is not None and not self._signals:
                self._stop_wakeup()
            if self._idlers and not ready and not ran:
                self._run_idle()
        if self._turn_end:
            self._run_turn_end()

    def stop(self) -> None:
        """Make the innermost :meth:`run` return once the current turn ends."""
        self._stop_requested = True

    # -- introspection ---------------------------------------------------

    def pending(self) -> list[IoWatcher | Timer | Handle | SignalWatcher | IdleWatcher]:
        """The live registrations on this loop, as their guards (each with a ``repr``).

        Why: whether anything still has work on the loop -- a timer nobody
        cancelled, a watcher on a socket nobody closed, a deferred call not
        yet run -- is the question a leak check asks at the end of a test
        (:mod:`evws.testing`), and a program about to close its loop may ask
        it too. Listed in this order: io watchers (by fd), active timers (the
        next due first), deferred calls (in queue order), signal watchers,
        idle watchers. The loop's own machinery -- the wake-up fd of
        :meth:`call_soon_threadsafe` and the socket that carries signals --
        is not listed (the signal watchers it serves are). A closed loop has
        nothing pending. The list is a snapshot: cancelling a guard from it is
        safe.
        """
        if self._closed:
            return []
        own_fds = {w.fd for w in (self._wakeup_watcher,) if w is not None}
        if self._waker is not None:
            own_fds.add(self._waker.fd)
        found: list[IoWatcher | Timer | Handle | SignalWatcher | IdleWatcher] = []
        for fd in sorted(self._io):
            if fd not in own_fds:
                found.extend(w for w in self._io[fd] if w is not None and w.active)
        timers = sorted((entry for entry in self._timers if entry[2].active),
                        key=lambda entry: entry[:2])
        found.extend(entry[2] for entry in timers)
        found.extend(h for h in self._deferred if h.active)
        found.extend(h for h in self._turn_end if h.active)
        for watchers in self._signals.values():
            found.extend(sw for sw in watchers if sw.active)
        found.extend(iw for iw in self._idlers if iw.active)
        return found

    # -- lifecycle -------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release the selector and forget every watcher, timer and call."""
        if self._closed:
            return
        for watchers in list(self._signals.values()):
            for sw in list(watchers):
                sw.cancel()
        self._stop_wakeup()
        if self._reaper is not None:
            self._reaper.close()
            self._reaper = None
        self._closed = True
        waker, self._waker = self._waker, None
        if waker is not None:
            waker.close()
        for idler in self._idlers:
            idler.active = False
        self._idlers.clear()
        for pair in self._io.values():
            for w in pair:
                if w is not None:
                    w.active = False
        self._io.clear()
        for _, _, t in self._timers:
            t.active = False
            t._queued = False
        self._timers.clear()
        self._deferred.clear()
        for h in self._turn_end:
            h.active = False
        self._turn_end.clear()
        self._selector.close()

    def abandon(self) -> None:
        """Close a loop inherited through ``fork`` without touching the parent's.

        The child shares the parent's epoll instance: closing our descriptor
        of it first means that closing the loop (which unregisters its
        signal wakeup socket) cannot remove anything from the parent's
        registrations.
        """
        if self._closed:
            return
        self._selector.close()
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the loop is closed")

    def __repr__(self) -> str:
        return (f"<Loop io={len(self._io)} timers={len(self._timers)} "
                f"deferred={len(self._deferred)} idle={len(self._idlers)} depth={self.depth}"
                f"{' closed' if self._closed else ''}>")


_local = threading.local()
# The loop that owns the process-wide signal wakeup fd, if any.
_signal_loop: Loop | None = None


def set_loop(loop: Loop | None) -> Loop | None:
    """Make ``loop`` this thread's default loop (``None``: none); return the previous one.

    For a process that starts afresh with a loop of its own (a forked
    worker), so that code calling :func:`get_loop` finds it.
    """
    previous: Loop | None = getattr(_local, "loop", None)
    _local.loop = loop
    return previous


def get_loop() -> Loop:
    """Return this thread's default loop, creating it on first use.

    A closed default loop is replaced by a fresh one.
    """
    loop: Loop | None = getattr(_local, "loop", None)
    if loop is None or loop.closed:
        loop = Loop()
        _local.loop = loop
    return loop
