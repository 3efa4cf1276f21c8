"""``Ticker``: one repeating timer calls many callables, each once per interval.

Why in the reactor: it is a timer wheel, nothing more. A connection's
keepalive joins with its own bound method (``conn._on_ping_timer``); the
Ping/Pong logic (payloads, the pong timeout, 1011) stays in ``Connection``.
One timer per connection (the ``Timer``, its heap entry and a bound method)
cost ~260 bytes of every idle connection; an entry in a bucket costs ~40.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Callable

from .loop import Loop, Timer

__all__ = ["Ticker"]

log = logging.getLogger("evws.ticker")

Tick = Callable[[], Any]


class Ticker:
    """One repeating timer per loop and interval, for all its members.

    The members are spread over ``SLOTS`` buckets and every
    ``interval / SLOTS`` seconds the next bucket is called, so each member is
    called every ``interval``. One that joins goes into the bucket just
    called: its first call comes between ``(SLOTS - 1) / SLOTS`` and one
    ``interval`` later. The timer is cancelled when the last member leaves,
    so a loop with no member has no ticker timer.

    Members are callables compared by equality: ``leave`` takes an equal
    callable (a bound method made again is equal to the first one).
    """

    SLOTS = 8
    __slots__ = ("loop", "interval", "buckets", "index", "members", "timer")

    #: loop -> interval -> its ticker
    _tickers: weakref.WeakKeyDictionary[Loop, dict[float, Ticker]] = weakref.WeakKeyDictionary()

    def __init__(self, loop: Loop, interval: float) -> None:
        self.loop = loop
        self.interval = interval
        # Dicts used as ordered sets: members are called in the order they joined.
        self.buckets: list[dict[Tick, None]] = [{} for _ in range(self.SLOTS)]
        self.index = 0  # the bucket called last (and where newcomers go)
        self.members = 0
        step = interval / self.SLOTS
        self.timer: Timer = loop.timer(step, self._tick, interval=step)

    @classmethod
    def join(cls, loop: Loop, interval: float, fn: Tick) -> Ticker:
        """Call ``fn()`` every ``interval`` seconds on ``loop`` from now on; return its ticker."""
        tickers = cls._tickers.setdefault(loop, {})
        ticker = tickers.get(interval)
        if ticker is None:
            ticker = tickers[interval] = cls(loop, interval)
        ticker.buckets[ticker.index][fn] = None
        ticker.members += 1
        return ticker

    def leave(self, fn: Tick) -> None:
        """Stop calling ``fn``; the last member to leave stops the timer."""
        for bucket in self.buckets:
            if fn in bucket:
                del bucket[fn]
                self.members -= 1
                break
        if self.members == 0:
            self.timer.cancel()
            tickers = self._tickers.get(self.loop)
            if tickers is not None and tickers.get(self.interval) is self:
                del tickers[self.interval]

    def _tick(self) -> None:
        self.index = (self.index + 1) % self.SLOTS
        # A snapshot: a member may leave while called.
        for fn in tuple(self.buckets[self.index]):
            try:
                fn()
            except Exception:  # one member's failure must not stop the others
                log.exception("ticker member %r raised", fn)
