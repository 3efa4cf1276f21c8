"""``Hub``: rooms of connections, spanning processes through a broker.

::

    hub = evws.Hub(evws.RedisBroker("redis://127.0.0.1:6379/0"))
    hub.join(conn, "lobby")
    hub.publish("lobby", "hello")        # every member, in every process
    hub.leave(conn, "lobby")             # or just let conn finish

The hub keeps the local members of each room; the broker (see
:mod:`evws.brokers`) carries messages between processes. The broker hears
about a room only when its first local member joins and its last one leaves,
so a process never receives traffic for rooms it has no member of.

Delivery: a published message reaches this process's members when it comes
back from the broker, never at ``publish`` time. Why: every member in every
process then sees the same order (the broker's), there is a single delivery
path, and a message cannot be delivered twice locally (once at publish,
once from Redis). It costs one round trip to Redis (~0.1 ms on loopback).
Each batch of messages the broker hands over is serialised into frames once
and written with :func:`evws.broadcast` (``slow_policy`` applies).

Members leave every room automatically when they finish: the hub registers
an evws-internal finish hook on each member (``Connection.add_finish_hook``),
which runs before the user's ``finish`` listeners and cannot be removed by
them, so a room never keeps a dead connection.

Events (the Hub is a pyee ``EventEmitter``; a raising listener is logged):

``healthy(hub)`` / ``unhealthy(hub, error)``
    the broker's connections came (back) up / went down (``hub.healthy``).
``recovery(hub, room, recovered, fetched, reason)``
    after a reconnect, for each recoverable room: ``fetched`` messages were
    fetched from the stream; ``recovered`` is False when some may be lost
    (``reason`` says why: the stream was trimmed past the last delivered
    message, or Redis restarted without persistence).
``slow(hub, conn, room, action)``
    a member past its high water mark was ``"closed"`` or ``"skipped"``.
``publish_failed(hub, room, error)``
    the broker refused a publish it had accepted (e.g. Redis answered an
    error); ``publish`` itself raises when it cannot take a message.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Collection, Optional, Union

from pyee import EventEmitter

from .broadcast import Broadcastable, broadcast, prepare
from .brokers.base import Broker, Delivery
from .brokers.inprocess import InProcessBroker
from .connection import Connection
from .errors import ConnectionClosed
from .message import Message
from .reactor.loop import Loop, get_loop

__all__ = ["Hub"]

log = logging.getLogger("evws.hub")

Recoverable = Union[bool, Collection[str], Callable[[str], bool]]


class Hub(EventEmitter):
    """Rooms of connections; ``publish`` reaches every member in every process.

    Args:
        broker: an :class:`~evws.InProcessBroker` (the default: one process)
            or a :class:`~evws.RedisBroker`. A broker serves one hub.
        recoverable: which rooms are recoverable (``True`` for all, a
            collection of names, or a predicate). Every process must agree:
            the publisher decides whether a message goes into the room's
            stream. See the README for the guarantee of each kind.
        slow_policy: ``"close"`` (default) or ``"skip"`` for a member past its
            high water mark; see :mod:`evws.broadcast`.

    Events (pyee): ``healthy(hub)``, ``unhealthy(hub, error)``,
    ``recovery(hub, room, recovered, fetched, reason)``,
    ``slow(hub, conn, room, action)`` and ``publish_failed(hub, room, error)``;
    see the module docstring.
    """

    def __init__(
        self,
        broker: Optional[Broker] = None,
        *,
        recoverable: Recoverable = False,
        slow_policy: str = "close",
        loop: Optional[Loop] = None,
    ) -> None:
        super().__init__()
        if slow_policy not in ("close", "skip"):
            raise ValueError(f"slow_policy must be 'close' or 'skip', not {slow_policy!r}")
        #: the loop the hub (and an in-process broker) runs on
        self.loop = loop if loop is not None else get_loop()
        #: the broker carrying this hub's rooms between processes
        self.broker: Broker = broker if broker is not None else InProcessBroker(self.loop)
        #: what a member past its high water mark gets: "close" or "skip"
        self.slow_policy = slow_policy
        self._recoverable = recoverable
        self._rooms: dict[str, dict[Connection, None]] = {}
        self._member_of: dict[Connection, set[str]] = {}
        self._closed = False
        self.broker.attach(self)

    # -- rooms -------------------------------------------------------------

    def is_recoverable(self, room: str) -> bool:
        """Whether ``room`` is a recoverable room (see ``recoverable``)."""
        spec = self._recoverable
        if isinstance(spec, bool):
            return spec
        if callable(spec):
            return bool(spec(room))
        return room in spec

    def join(self, conn: Connection, room: str) -> None:
        """Make ``conn`` a member of ``room`` (joining twice is harmless).

        The first local member makes the broker subscribe to the room.

        Raises:
            ConnectionClosed: ``conn`` is closing or finished.
            RuntimeError: the hub is closed.
        """
        if self._closed:
            raise RuntimeError("the hub is closed")
        if not isinstance(room, str):
            raise TypeError("a room name is a str")
        if conn.finished or not conn.is_write_open:
            raise ConnectionClosed("cannot join a room: connection is closed")
        rooms = self._member_of.get(conn)
        if rooms is None:
            # Kept until finish, so the hook is registered once per connection.
            rooms = self._member_of[conn] = set()
            conn.add_finish_hook(self._on_finish)
        if room in rooms:
            return
        rooms.add(room)
        members = self._rooms.get(room)
        if members is None:
            members = self._rooms[room] = {}
            self.broker.subscribe(room, self.is_recoverable(room))
        members[conn] = None

    def leave(self, conn: Connection, room: str) -> None:
        """Remove ``conn`` from ``room`` (a no-op if it is not a member).

        The last local member leaving makes the broker unsubscribe.
        """
        rooms = self._member_of.get(conn)
        if rooms is None or room not in rooms:
            return
        rooms.discard(room)
        members = self._rooms[room]
        del members[conn]
        if not members:
            del self._rooms[room]
            if not self._closed:
                self.broker.unsubscribe(room)

    def leave_all(self, conn: Connection) -> None:
        """Remove ``conn`` from every room it is in."""
        for room in list(self._member_of.get(conn, ())):
            self.leave(conn, room)

    def _on_finish(self, conn: Connection) -> None:
        self.leave_all(conn)
        self._member_of.pop(conn, None)

    def members(self, room: str) -> list[Connection]:
        """This process's members of ``room``, in the order they joined."""
        return list(self._rooms.get(room, ()))

    def rooms(self, conn: Optional[Connection] = None) -> list[str]:
        """The rooms ``conn`` is in; without ``conn``, every room with a local member."""
        if conn is None:
            return list(self._rooms)
        return sorted(self._member_of.get(conn, ()))

    # -- messages ------------------------------------------------------------

    def publish(self, room: str, message: Broadcastable) -> None:
        """Send ``message`` to every member of ``room`` in every process.

        ``str`` is text, bytes-like binary, a :class:`Message` its opcode
        (text or binary). Local members get it when it comes back from the
        broker (see the module docstring), on a later loop turn.

        Raises:
            BrokerUnavailable: the broker is down and its publish queue is
                full: the message was not taken (never silently dropped).
            TypeError / ValueError: not a text or binary message.
            RuntimeError: the hub is closed.
        """
        if self._closed:
            raise RuntimeError("the hub is closed")
        if isinstance(message, str):
            opcode, payload = 1, message.encode("utf-8")
        elif isinstance(message, Message):
            if message.opcode not in (1, 2):
                raise ValueError("only text and binary messages can be published")
            opcode, payload = message.opcode, message.body
        elif isinstance(message, (bytes, bytearray, memoryview)):
            opcode, payload = 2, bytes(message)
        else:
            raise TypeError(f"cannot publish {type(message).__name__}: use str, bytes or Message")
        self.broker.publish(room, opcode, payload, self.is_recoverable(room))

    @property
    def healthy(self) -> bool:
        """True while the broker is connected (always, in-process)."""
        return self.broker.healthy

    def close(self) -> None:
        """Stop: forget every member (they stay open) and close the broker."""
        if self._closed:
            return
        self._closed = True
        self._rooms.clear()
        self._member_of.clear()
        self.broker.close()

    # -- from the broker (its side of the seam; not for applications) -----------

    def broker_deliver(self, room: str, batch: list[Delivery]) -> None:
        """The broker hands over messages for ``room``: frame them once, send to the members."""
        members = self._rooms.get(room)
        if not members or not batch:
            return
        result = broadcast(list(members), prepare(batch), policy=self.slow_policy)
        if result.slow:
            action = "closed" if self.slow_policy == "close" else "skipped"
            log.info("room %r: %d slow member(s) %s", room, len(result.slow), action)
            for conn in result.slow:
                self._emit_safely("slow", self, conn, room, action)

    def broker_health(self, healthy: bool, error: Optional[BaseException]) -> None:
        """The broker's link went up or down: emit ``healthy`` / ``unhealthy``."""
        if healthy:
            self._emit_safely("healthy", self)
        else:
            self._emit_safely("unhealthy", self, error)

    def broker_recovery(self, room: str, recovered: bool, fetched: int, reason: str) -> None:
        """A recoverable room caught up after a reconnect (or could not): emit ``recovery``."""
        self._emit_safely("recovery", self, room, recovered, fetched, reason)

    def broker_publish_failed(self, room: str, error: BaseException) -> None:
        """Redis refused a publish: emit ``publish_failed``."""
        self._emit_safely("publish_failed", self, room, error)

    def _emit_safely(self, event: str, *args: Any) -> None:
        for handler in list(self.listeners(event)):
            try:
                handler(*args)
            except Exception:
                log.exception("a Hub %r listener raised", event)

    def __repr__(self) -> str:
        return (f"<evws.Hub {type(self.broker).__name__} rooms={len(self._rooms)} "
                f"members={len(self._member_of)}>")
