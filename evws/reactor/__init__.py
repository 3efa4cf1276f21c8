"""The reactor layer: a selectors loop, condvars, buffered streams, TCP and
Unix sockets, processes, and the allocator setting a server program may opt into.

It knows nothing of WebSocket; the API layer (evws/*.py) drives the protocol
core over it. Everything runs in one thread, without asyncio.
"""

from .allocator import keep_freed_memory
from .condvar import CondVar
from .loop import Handle, IdleWatcher, IoWatcher, Loop, SignalWatcher, Timer, get_loop
from .process import ChildWatcher, ExitStatus, child, run_cmd
from .stream import Stream
from .tcp import TcpServer, tcp_connect, tcp_server, unix_connect, unix_server

__all__ = [
    "Loop",
    "get_loop",
    "IoWatcher",
    "Timer",
    "Handle",
    "IdleWatcher",
    "SignalWatcher",
    "ChildWatcher",
    "ExitStatus",
    "child",
    "run_cmd",
    "CondVar",
    "Stream",
    "tcp_server",
    "TcpServer",
    "tcp_connect",
    "unix_server",
    "unix_connect",
    "keep_freed_memory",
]
