"""``KeepaliveTicker``: one timer drives the keepalive Pings of many connections.

The Ping/Pong logic itself (payloads, the pong timeout, 1011) lives in
``Connection``; this module only decides *when* each connection pings, at a
cost of ~40 bytes per connection instead of a timer each.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING

from .reactor.loop import Loop, Timer

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["KeepaliveTicker"]

log = logging.getLogger("evws.keepalive")


class KeepaliveTicker:
    """One repeating timer per loop and ping interval, for all its connections.

    A timer per connection (the ``Timer``, its heap entry and a bound method)
    cost ~260 bytes of every idle connection (issue 4); an entry in a bucket
    costs ~40. The connections are spread over ``SLOTS`` buckets and every
    ``interval / SLOTS`` seconds the next bucket is pinged, so each connection
    is pinged every ``interval``. One that joins goes into the bucket just
    pinged: its first Ping comes between ``(SLOTS - 1) / SLOTS`` and one
    ``interval`` later. The timer is cancelled when the last connection
    leaves, so a loop with no connection has no keepalive timer.
    """

    SLOTS = 8
    __slots__ = ("loop", "interval", "buckets", "index", "members", "timer")

    #: loop -> interval -> its ticker
    _tickers: weakref.WeakKeyDictionary[Loop, dict[float, KeepaliveTicker]] = (
        weakref.WeakKeyDictionary())

    def __init__(self, loop: Loop, interval: float) -> None:
        self.loop = loop
        self.interval = interval
        # Dicts used as ordered sets: Pings go out in the order connections joined.
        self.buckets: list[dict[Connection, None]] = [{} for _ in range(self.SLOTS)]
        self.index = 0  # the bucket pinged last (and where newcomers go)
        self.members = 0
        step = interval / self.SLOTS
        self.timer: Timer = loop.timer(step, self._tick, interval=step)

    @classmethod
    def join(cls, conn: Connection, interval: float) -> KeepaliveTicker:
        """Ping ``conn`` (``conn._on_ping_timer()``) every ``interval`` from now on."""
        tickers = cls._tickers.setdefault(conn.loop, {})
        ticker = tickers.get(interval)
        if ticker is None:
            ticker = tickers[interval] = cls(conn.loop, interval)
        ticker.buckets[ticker.index][conn] = None
        ticker.members += 1
        return ticker

    def leave(self, conn: Connection) -> None:
        for bucket in self.buckets:
            if conn in bucket:
                del bucket[conn]
                self.members -= 1
                break
        if self.members == 0:
            self.timer.cancel()
            tickers = self._tickers.get(self.loop)
            if tickers is not None and tickers.get(self.interval) is self:
                del tickers[self.interval]

    def _tick(self) -> None:
        self.index = (self.index + 1) % self.SLOTS
        # A snapshot: a connection that finished leaves its bucket.
        for conn in tuple(self.buckets[self.index]):
            try:
                conn._on_ping_timer()
            except Exception:  # one connection's failure must not stop the others' pings
                log.exception("keepalive ping failed on %r", conn)
