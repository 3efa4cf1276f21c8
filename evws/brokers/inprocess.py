"""``InProcessBroker``: the rooms of one process, without any broker.

For a single worker, and for tests. Messages are delivered on the next loop
turn rather than inside ``publish``: the same order of events as with Redis
(``publish`` returns before any member got the message), so code written
against one backend behaves alike on the other, and a handler that publishes
from inside a delivery does not recurse. Everything published in one loop
turn to a room goes out as one batch (one write per member).
"""

from __future__ import annotations

from typing import Optional

from ..reactor.loop import Handle, Loop, get_loop
from .base import Broker, Delivery

__all__ = ["InProcessBroker"]


class InProcessBroker(Broker):
    """A broker for one process: ``publish`` reaches this process's members only."""

    def __init__(self, loop: Optional[Loop] = None) -> None:
        self.loop = loop if loop is not None else get_loop()
        self._rooms: set[str] = set()
        self._batches: dict[str, list[Delivery]] = {}
        self._flush_handle: Optional[Handle] = None

    def subscribe(self, room: str, recoverable: bool) -> None:
        self._rooms.add(room)

    def unsubscribe(self, room: str) -> None:
        self._rooms.discard(room)
        self._batches.pop(room, None)

    def publish(self, room: str, opcode: int, payload: bytes, recoverable: bool) -> None:
        if room not in self._rooms:
            return  # nobody listens in this process: that is all of them
        self._batches.setdefault(room, []).append((opcode, payload))
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        batches, self._batches = self._batches, {}
        hub = self.hub
        if hub is None:
            return
        for room, batch in batches.items():
            if room in self._rooms:
                hub.broker_deliver(room, batch)

    def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._batches.clear()
