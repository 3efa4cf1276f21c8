"""The reactor layer: a selectors loop, condvars, buffered streams, TCP helpers.

It knows nothing of WebSocket; the API layer (evws/*.py) drives the protocol
core over it. Everything runs in one thread, without asyncio.
"""

from .condvar import CondVar
from .loop import Handle, IoWatcher, Loop, Timer, get_loop
from .stream import Stream
from .tcp import TcpServer, tcp_connect, tcp_server

__all__ = [
    "Loop",
    "get_loop",
    "IoWatcher",
    "Timer",
    "Handle",
    "CondVar",
    "Stream",
    "tcp_server",
    "TcpServer",
    "tcp_connect",
]
