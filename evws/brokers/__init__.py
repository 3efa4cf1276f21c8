"""Brokers: how a :class:`~evws.Hub`'s rooms reach other processes.

- :class:`InProcessBroker`: no broker at all, the rooms of one process;
- :class:`RedisBroker`: Redis pub/sub (and Streams for recoverable rooms),
  its sockets driven by the evws loop. Needs ``hiredis`` (``evws[redis]``),
  imported only when a ``RedisBroker`` is made.

Both implement :class:`Broker`, the small interface a Hub talks to.
"""

from .base import Broker, Delivery, HubSink
from .inprocess import InProcessBroker
from .redis_broker import RedisBroker

__all__ = ["Broker", "Delivery", "HubSink", "InProcessBroker", "RedisBroker"]
