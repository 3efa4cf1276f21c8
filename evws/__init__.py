"""evws: callback-style WebSockets on a selectors loop, after Perl's AnyEvent::WebSocket.

Three layers, each importable alone:

- ``evws.protocol``: RFC 6455 without I/O (bytes in, events and bytes out);
- ``evws.reactor``: the event loop, condition variables, buffered sockets, TCP;
- this package's top level: ``Server``, ``Connection``, ``Message``, gluing the two.

Every public name is importable from ``evws`` directly.
"""

import logging as _logging

from .broadcast import BroadcastResult, Prepared, broadcast, prepare
from .brokers import Broker, InProcessBroker, RedisBroker
from .client import Client, connect, connection_pair
from .connection import Connection
from .errors import (
    BrokerError,
    BrokerUnavailable,
    Cancelled,
    ConnectCancelled,
    ConnectionClosed,
    CroakError,
    HandshakeError,
    InvalidUTF8,
    LineTooLong,
    PayloadTooBig,
    ProtocolError,
    ProxyError,
    RecursiveWaitError,
    RedirectError,
    WaitTimeout,
    WebSocketError,
)
from .hub import Hub
from .message import Message
from .options import Options
from .protocol.handshake import Request, Response
from .reactor.allocator import keep_freed_memory
from .reactor.condvar import CondVar
from .reactor.loop import Loop, get_loop
from .reactor.process import ExitStatus, run_cmd
from .reactor.stream import Stream
from .reactor.tcp import TcpServer, tcp_connect, tcp_server, unix_connect, unix_server
from .reconnect import ReconnectingClient, ReconnectPolicy, reconnecting, retryable
from .server import Server
from .workers import Supervisor, WorkerContext
from .workers import run as run_workers

__version__ = "0.1.0"

# A library stays silent unless the application configures logging (the
# logging HOWTO's advice): without this, Python's "last resort" handler would
# print evws's warnings to stderr. ``python -m evws --verbose`` turns it on.
_logging.getLogger("evws").addHandler(_logging.NullHandler())

__all__ = [
    "BroadcastResult",
    "Broker",
    "BrokerError",
    "BrokerUnavailable",
    "Cancelled",
    "Client",
    "CondVar",
    "ConnectCancelled",
    "Connection",
    "ConnectionClosed",
    "CroakError",
    "ExitStatus",
    "HandshakeError",
    "Hub",
    "InProcessBroker",
    "InvalidUTF8",
    "LineTooLong",
    "Loop",
    "Message",
    "Options",
    "PayloadTooBig",
    "Prepared",
    "ProtocolError",
    "ProxyError",
    "ReconnectPolicy",
    "ReconnectingClient",
    "RecursiveWaitError",
    "RedirectError",
    "RedisBroker",
    "Request",
    "Response",
    "Server",
    "Supervisor",
    "Stream",
    "TcpServer",
    "WaitTimeout",
    "WebSocketError",
    "WorkerContext",
    "broadcast",
    "connect",
    "connection_pair",
    "get_loop",
    "keep_freed_memory",
    "prepare",
    "reconnecting",
    "retryable",
    "run_workers",
    "run_cmd",
    "tcp_connect",
    "tcp_server",
    "unix_connect",
    "unix_server",
    "__version__",
]
