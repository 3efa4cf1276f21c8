"""The interface between a :class:`~evws.Hub` and its broker.

The hub owns the members (connections per room); the broker owns the wire
(which rooms this process listens to, and how a message reaches every
process listening). The hub tells the broker when a room gets its first
local member (``subscribe``) and loses its last (``unsubscribe``), and hands
it what to ``publish``; the broker hands back, per room, the batches of
messages to deliver, and tells the hub when its health changes and how a
recoverable room's recovery went.

Why batches: a broker that read several messages for one room in one go
hands them over together, so the hub serialises them into one buffer and
writes each member once (``evws.broadcast``).
"""

from __future__ import annotations

from typing import Optional, Protocol

__all__ = ["Broker", "Delivery", "HubSink"]

#: ``(opcode, payload)`` of one message to deliver (1 text, 2 binary).
Delivery = tuple[int, bytes]


class HubSink(Protocol):
    """What a broker calls on its hub (implemented by :class:`evws.Hub`)."""

    def broker_deliver(self, room: str, batch: list[Delivery]) -> None: ...

    def broker_health(self, healthy: bool, error: Optional[BaseException]) -> None: ...

    def broker_recovery(self, room: str, recovered: bool, fetched: int, reason: str) -> None: ...

    def broker_publish_failed(self, room: str, error: BaseException) -> None: ...


class Broker:
    """Base class of hub brokers: a room-level pub/sub.

    A broker serves one hub (``attach``). ``subscribe``/``unsubscribe`` are
    called once per transition (first local member in / last out), never
    twice in a row for the same room.
    """

    #: the hub this broker delivers to (set by ``attach``)
    hub: Optional[HubSink] = None

    def attach(self, hub: HubSink) -> None:
        """Deliver to ``hub`` from now on; a broker serves one hub."""
        if self.hub is not None and self.hub is not hub:
            raise ValueError("this broker already serves another Hub")
        self.hub = hub

    @property
    def healthy(self) -> bool:
        """True while publishes and subscriptions go through without delay."""
        return True

    def subscribe(self, room: str, recoverable: bool) -> None:
        raise NotImplementedError

    def unsubscribe(self, room: str) -> None:
        raise NotImplementedError

    def publish(self, room: str, opcode: int, payload: bytes, recoverable: bool) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the broker's resources (sockets, timers); idempotent."""
