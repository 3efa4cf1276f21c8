"""TCP helpers for the loop: a listening server and a non-blocking connect.

:func:`tcp_server` is AnyEvent::Socket's ``tcp_server``: it hands every
accepted socket, already non-blocking and with ``TCP_NODELAY``, to a callback
with the peer's host and port. :func:`tcp_connect` returns a
:class:`~evws.reactor.CondVar` that yields a connected non-blocking socket.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from typing import Any, Callable, Iterator

from .condvar import CondVar
from .loop import IoWatcher, Loop, Timer, get_loop

__all__ = ["tcp_server", "TcpServer", "tcp_connect", "listen_socket"]

log = logging.getLogger("evws.tcp")

# Running out of descriptors or memory: the pending connection stays in the
# backlog, so the listener stays readable; retrying at once would busy-spin.
_ACCEPT_RESOURCE_ERRORS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_PAUSE = 0.1
_ACCEPTS_PER_EVENT = 64
_CONNECT_PENDING = frozenset(
    {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY, errno.EINTR})


def _unmap(host: str) -> str:
    """``::ffff:1.2.3.4`` (an IPv4 peer on a dual-stack socket) -> ``1.2.3.4``."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


def _set_nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # not TCP (e.g. a Unix socket): nothing to tune


def _check_reuse_port() -> None:
    """Refuse ``reuse_port=True`` up front where the platform has no SO_REUSEPORT.

    Checked before any socket is made, so the dual-stack fallback below cannot
    swallow the failure and quietly bind a port that is not shared.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError(errno.ENOPROTOOPT,
                      "reuse_port=True needs SO_REUSEPORT, which this platform does not have")


def _prepare(sock: socket.socket, reuse_port: bool) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        except OSError as exc:
            raise OSError(exc.errno or errno.ENOPROTOOPT,
                          f"reuse_port=True: setting SO_REUSEPORT failed: {exc}") from exc


def listen_socket(host: str | None, port: int, backlog: int, reuse_port: bool = False,
                   listen: bool = True) -> socket.socket:
    """A bound (and, unless ``listen`` is false, listening) socket for ``host:port``.

    ``listen=False`` leaves it bound only: with ``reuse_port`` that reserves a
    port for other SO_REUSEPORT listeners without taking any of its
    connections (see :func:`evws.workers.reserve_port`).
    """
    if reuse_port:
        _check_reuse_port()
    if host is None:
        # All interfaces: dual-stack "::" if the system has IPv6, else IPv4.
        if socket.has_ipv6:
            try:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            except OSError:
                pass
            else:
                try:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                    _prepare(sock, reuse_port)
                    sock.bind(("::", port))
                    if listen:
                        sock.listen(backlog)
                    return sock
                except OSError:
                    sock.close()
        infos: list[tuple[Any, ...]] = [(socket.AF_INET, socket.SOCK_STREAM, 0, "", ("0.0.0.0", port))]
    else:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                                   0, socket.AI_PASSIVE)
    last: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            _prepare(sock, reuse_port)
            sock.bind(addr)
            if listen:
                sock.listen(backlog)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    assert last is not None
    raise last


class TcpServer:
    """Guard returned by :func:`tcp_server`: ``.host``, ``.port``, ``.sockets``, ``.close()``."""

    __slots__ = ("_loop", "_fn", "sockets", "host", "port", "_watchers", "_timers", "_closed")

    def __init__(self, loop: Loop, socks: list[socket.socket],
                 fn: Callable[[socket.socket, str, int], Any]) -> None:
        self._loop = loop
        self._fn = fn
        self.sockets = socks
        name = socks[0].getsockname()
        self.host: str = name[0]
        self.port: int = name[1]
        self._watchers: dict[socket.socket, IoWatcher] = {}
        self._timers: dict[socket.socket, Timer] = {}
        self._closed = False
        for s in socks:
            s.setblocking(False)
            self._watch(s)

    @property
    def closed(self) -> bool:
        return self._closed

    def _watch(self, sock: socket.socket) -> None:
        self._timers.pop(sock, None)
        if not self._closed:
            self._watchers[sock] = self._loop.io(sock, "r", lambda: self._accept(sock))

    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(_ACCEPTS_PER_EVENT):
            try:
                conn, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_RESOURCE_ERRORS:
                    log.warning("accept() on port %d failed (%s); pausing %.1f s",
                                self.port, exc, _ACCEPT_PAUSE)
                    self._watchers.pop(lsock).cancel()
                    self._timers[lsock] = self._loop.timer(
                        _ACCEPT_PAUSE, lambda: self._watch(lsock))
                    return
                # ECONNABORTED and friends: that one connection is gone.
                log.debug("accept() on port %d failed: %r", self.port, exc)
                continue
            conn.setblocking(False)
            _set_nodelay(conn)
            host, port = (_unmap(addr[0]), addr[1]) if isinstance(addr, tuple) else (str(addr), 0)
            try:
                self._fn(conn, host, port)
            except Exception:
                # The callback owns the socket now; closing it here could
                # close something it already handed on.
                log.exception("exception in tcp_server callback %r", self._fn)
            if self._closed:
                return

    def close(self) -> None:
        """Stop listening and close the listening sockets (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for w in self._watchers.values():
            w.cancel()
        for t in self._timers.values():
            t.cancel()
        self._watchers.clear()
        self._timers.clear()
        for s in self.sockets:
            s.close()

    def __enter__(self) -> TcpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TcpServer {self.host}:{self.port}{' closed' if self._closed else ''}>"


def tcp_server(host: str | None, port: int,
               fn: Callable[[socket.socket, str, int], Any], *,
               loop: Loop | None = None, backlog: int = 1024,
               reuse_port: bool = False) -> TcpServer:
    """Listen on ``host:port`` and call ``fn(sock, peer_host, peer_port)`` per connection.

    Args:
        host: an address or name to bind; ``None`` = all interfaces
            (dual-stack ``::`` where possible, else ``0.0.0.0``).
        port: ``0`` = any free port (read it back from ``.port``).
        fn: receives each accepted socket (non-blocking, ``TCP_NODELAY``);
            an exception it raises is logged and the socket left alone.
        reuse_port: set ``SO_REUSEPORT``, so that several listeners (one per
            worker process, see :mod:`evws.workers`) share the port and the
            kernel spreads new connections over them. Every listener of the
            port must set it (and, on Linux, belong to the same user).

    Raises:
        OSError: the address cannot be bound, or ``reuse_port=True`` where the
            platform has no ``SO_REUSEPORT`` (``errno.ENOPROTOOPT``, with a
            message that says so).
    """
    loop = loop if loop is not None else get_loop()
    sock = listen_socket(host, port, backlog, reuse_port)
    return TcpServer(loop, [sock], fn)


class _Connector:
    """One ``tcp_connect``: try each address in turn, within one deadline."""

    __slots__ = ("loop", "cv", "host", "port", "addrs", "sock", "watcher", "timer", "error")

    def __init__(self, loop: Loop, cv: CondVar, host: str, port: int,
                 addrs: Iterator[tuple[Any, ...]]) -> None:
        self.loop = loop
        self.cv = cv
        self.host = host
        self.port = port
        self.addrs = addrs
        self.sock: socket.socket | None = None
        self.watcher: IoWatcher | None = None
        self.timer: Timer | None = None
        self.error: OSError | None = None

    def next_address(self) -> None:
        """Start a connect to the next address; croak when none is left."""
        for family, type_, proto, _, addr in self.addrs:
            try:
                sock = socket.socket(family, type_, proto)
            except OSError as exc:
                self.error = exc
                continue
            sock.setblocking(False)
            try:
                err = sock.connect_ex(addr)
            except OSError as exc:
                err = exc.errno or errno.EINVAL
            if err == 0:
                self.succeed(sock)
                return
            if err in _CONNECT_PENDING:
                self.sock = sock
                self.watcher = self.loop.io(sock, "w", self.writable)
                return
            sock.close()
            self.error = OSError(err, f"connect to {self.host}:{self.port}: {os.strerror(err)}")
        self.fail(self.error or OSError(errno.EHOSTUNREACH, f"no address for {self.host!r}"))

    def writable(self) -> None:
        sock = self.sock
        assert sock is not None
        self.watcher.cancel()  # type: ignore[union-attr]
        self.watcher = None
        # POSIX: a finished non-blocking connect makes the socket writable
        # and leaves its result in SO_ERROR.
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            self.sock = None
            self.succeed(sock)
            return
        sock.close()
        self.sock = None
        # OSError(errno, ...) picks the subclass (ConnectionRefusedError...).
        self.error = OSError(err, f"connect to {self.host}:{self.port}: {os.strerror(err)}")
        self.next_address()

    def succeed(self, sock: socket.socket) -> None:
        self.cancel_timer()
        _set_nodelay(sock)
        self.cv.send(sock)

    def fail(self, exc: BaseException) -> None:
        self.cancel_timer()
        self.cv.croak(exc)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def timed_out(self) -> None:
        self.timer = None
        if self.watcher is not None:
            self.watcher.cancel()
            self.watcher = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.cv.croak(TimeoutError(
            errno.ETIMEDOUT, f"connect to {self.host}:{self.port} timed out"))


def tcp_connect(host: str, port: int, loop: Loop | None = None, *,
                timeout: float | None = None) -> CondVar:
    """Connect to ``host:port`` without blocking; a CondVar yields the socket.

    Every address ``getaddrinfo`` returns is tried in turn (note that the name
    lookup itself blocks). The socket comes out non-blocking with
    ``TCP_NODELAY``.

    Croaks with the last ``OSError`` when every address failed (for example
    ``ConnectionRefusedError``), with ``socket.gaierror`` when the name does
    not resolve, or with ``TimeoutError`` when ``timeout`` seconds passed.
    """
    loop = loop if loop is not None else get_loop()
    cv = CondVar(loop)
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except OSError as exc:
        cv.croak(exc)
        return cv
    conn = _Connector(loop, cv, host, port, iter(infos))
    if timeout is not None:
        conn.timer = loop.timer(timeout, conn.timed_out)
    conn.next_address()
    return cv
