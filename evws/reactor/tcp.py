"""Stream-socket helpers for the loop: listening servers and non-blocking connects.

:func:`tcp_server` is AnyEvent::Socket's ``tcp_server``: it hands every
accepted socket, already non-blocking and with ``TCP_NODELAY``, to a callback
with the peer's host and port. :func:`tcp_connect` returns a
:class:`~evws.reactor.CondVar` that yields a connected non-blocking socket.

:func:`unix_server` and :func:`unix_connect` are the same two for Unix-domain
sockets (AnyEvent's ``tcp_server "unix/", $path``): the same
:class:`TcpServer` guard and accept callback (the peer's "host" is the
address ``accept`` gave, usually ``""``, and its port ``0``), plus what a
socket *file* needs -- a stale file left by a crashed server is replaced, a
live server's or any other file is not, permissions are set before the first
connection can be accepted, and the file goes away on ``close()``.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from typing import Any, Callable, Iterator

from ..errors import Cancelled
from .condvar import CondVar
from .loop import IoWatcher, Loop, Timer, get_loop

__all__ = ["tcp_server", "TcpServer", "tcp_connect", "listen_socket", "unix_server",
           "unix_connect", "listen_unix_socket"]

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

    __slots__ = ("_loop", "_fn", "sockets", "host", "port", "path", "_identity", "_watchers",
                 "_timers", "_closed")

    def __init__(self, loop: Loop, socks: list[socket.socket],
                 fn: Callable[[socket.socket, str, int], Any]) -> None:
        self._loop = loop
        self._fn = fn
        self.sockets = socks
        name = socks[0].getsockname()
        #: the Unix socket's path (``host`` too, ``port`` is 0), or None for TCP
        self.path: str | None = None
        self._identity: tuple[int, int] | None = None
        if isinstance(name, (str, bytes)):
            self.path = name if isinstance(name, str) else os.fsdecode(name)
            self.host, self.port = self.path, 0
            self._identity = _file_identity(self.path)
        else:
            self.host = name[0]
            self.port = name[1]
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
        """Stop listening and close the listening sockets (idempotent).

        A Unix socket's file is removed too, if it is still the one this
        server bound (another server may have replaced it since).
        """
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
        if self.path is not None and self._identity is not None:
            if _file_identity(self.path) == self._identity:
                try:
                    os.unlink(self.path)
                except OSError as exc:
                    log.debug("could not remove %s: %r", self.path, exc)

    def __enter__(self) -> TcpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"unix:{self.path}" if self.path is not None else f"{self.host}:{self.port}"
        return f"<TcpServer {where}{' closed' if self._closed else ''}>"


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
        self.stop(TimeoutError(errno.ETIMEDOUT, f"connect to {self.host}:{self.port} timed out"))

    def cancel(self, error: BaseException | None) -> None:
        """``cv.cancel()``: drop the connect in progress (no address is tried after it)."""
        self.cancel_timer()
        self.stop(error or Cancelled(f"connect to {self.host}:{self.port} cancelled"))

    def stop(self, error: BaseException) -> None:
        """Close the socket still connecting and croak ``error``."""
        self.addrs = iter(())
        if self.watcher is not None:
            self.watcher.cancel()
            self.watcher = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.cv.croak(error)


def tcp_connect(host: str, port: int, loop: Loop | None = None, *,
                timeout: float | None = None) -> CondVar:
    """Connect to ``host:port`` without blocking; a CondVar yields the socket.

    Every address ``getaddrinfo`` returns is tried in turn (note that the name
    lookup itself blocks). The socket comes out non-blocking with
    ``TCP_NODELAY``.

    Croaks with the last ``OSError`` when every address failed (for example
    ``ConnectionRefusedError``), with ``socket.gaierror`` when the name does
    not resolve, or with ``TimeoutError`` when ``timeout`` seconds passed.
    ``cv.cancel()`` closes the socket still connecting and croaks
    :class:`~evws.errors.Cancelled`.
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
    cv.on_cancel(conn.cancel)
    conn.next_address()
    return cv


# -- Unix-domain sockets ------------------------------------------------------------

#: how long an ``EAGAIN`` Unix connect (the server's backlog is full) waits
#: before trying again; Linux does not finish such a connect by itself, and the
#: socket polls writable at once, so there is nothing to watch.
_UNIX_RETRY = 0.01


def _file_identity(path: str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of ``path``, or None (gone, or an abstract Linux name)."""
    if path.startswith("\0") or not path:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _remove_stale_socket(path: str) -> None:
    """Remove ``path`` if it is a socket file nobody listens on any more.

    A server that crashed leaves its socket file behind, and ``bind`` then
    fails with EADDRINUSE. Only a *socket* that refuses a connection is
    removed: a regular file (a typo in the path) is kept, and a live server
    keeps its socket (binding over it would steal its future clients).

    Raises:
        OSError: ``EADDRINUSE`` for a live server or a file that is not a socket.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EADDRINUSE, f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        err = probe.connect_ex(path)
    finally:
        probe.close()
    if err in (0, errno.EAGAIN, errno.EWOULDBLOCK, errno.EINPROGRESS):
        raise OSError(errno.EADDRINUSE, f"a server is listening on {path}")
    if err != errno.ECONNREFUSED:
        raise OSError(err, f"cannot tell whether {path} is in use: {os.strerror(err)}")
    log.debug("removing stale socket file %s", path)
    os.unlink(path)


def listen_unix_socket(path: str, backlog: int, mode: int | None = None) -> socket.socket:
    """A listening ``AF_UNIX`` socket bound at ``path``; see :func:`unix_server`.

    ``mode`` is applied between ``bind`` and ``listen``: a connect before
    ``listen`` is refused, so no client gets in under the umask's permissions.
    """
    if not path.startswith("\0"):
        _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        if mode is not None and not path.startswith("\0"):
            os.chmod(path, mode)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def unix_server(path: str, fn: Callable[[socket.socket, str, int], Any], *,
                loop: Loop | None = None, backlog: int = 1024,
                mode: int | None = None) -> TcpServer:
    """Listen on the Unix-domain socket ``path``; ``fn(sock, peer, 0)`` per connection.

    The Unix twin of :func:`tcp_server` (the same :class:`TcpServer` guard:
    ``.path`` and ``.host`` are ``path``, ``.port`` is 0). For a server behind
    a local reverse proxy (nginx's ``proxy_pass http://unix:/run/app.sock``),
    or clients on the same machine whom file permissions should select.

    Args:
        path: the socket file (or, on Linux, an abstract name starting with
            ``"\\0"``, which has no file).
        fn: receives each accepted socket (non-blocking) and the peer's
            address as ``accept`` gave it (``""`` for an unnamed client) and 0.
        mode: permissions of the socket file (``0o660``: owner and group
            only); by default what the umask leaves. Connecting to a Unix
            socket needs write permission on it.

    A stale socket file (its server died) is removed before binding; the file
    is removed again by ``close()`` if it is still this server's.

    Raises:
        OSError: ``EADDRINUSE`` when a server listens on ``path`` or ``path``
            is a file that is not a socket; the ``bind`` error otherwise
            (``EACCES``, ``ENOENT`` for a missing directory...).
    """
    loop = loop if loop is not None else get_loop()
    sock = listen_unix_socket(path, backlog, mode)
    return TcpServer(loop, [sock], fn)


class _UnixConnector:
    """One ``unix_connect``: a Unix connect either finishes at once or is retried."""

    __slots__ = ("loop", "cv", "path", "sock", "timer", "deadline")

    def __init__(self, loop: Loop, cv: CondVar, path: str, timeout: float | None) -> None:
        self.loop = loop
        self.cv = cv
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.timer: Timer | None = None
        self.deadline = None if timeout is None else loop.time() + timeout

    def attempt(self) -> None:
        self.timer = None
        try:
            err = self.sock.connect_ex(self.path)
        except OSError as exc:
            err = exc.errno or errno.EINVAL
        if err in (0, errno.EISCONN):
            self.cv.send(self.sock)
            return
        if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINPROGRESS):
            # The listener's backlog is full: try again shortly, until the deadline.
            if self.deadline is not None and self.loop.time() >= self.deadline:
                self.sock.close()
                self.cv.croak(TimeoutError(errno.ETIMEDOUT, f"connect to {self.path} timed out"))
                return
            delay = _UNIX_RETRY
            if self.deadline is not None:
                delay = max(0.0, min(delay, self.deadline - self.loop.time()))
            self.timer = self.loop.timer(delay, self.attempt)
            return
        self.sock.close()
        self.cv.croak(OSError(err, f"connect to {self.path}: {os.strerror(err)}"))

    def cancel(self, error: BaseException | None) -> None:
        """``cv.cancel()``: stop retrying, close the socket."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.sock.close()
        self.cv.croak(error or Cancelled(f"connect to {self.path} cancelled"))


def unix_connect(path: str, loop: Loop | None = None, *,
                 timeout: float | None = None) -> CondVar:
    """Connect to the Unix-domain socket ``path`` without blocking; a CondVar yields the socket.

    Croaks with the ``OSError`` (``FileNotFoundError`` when nothing is at
    ``path``, ``ConnectionRefusedError`` for a stale socket file,
    ``PermissionError``...), or ``TimeoutError`` when the server's backlog
    stayed full for ``timeout`` seconds; ``cv.cancel()`` closes the socket
    and croaks :class:`~evws.errors.Cancelled`.
    """
    loop = loop if loop is not None else get_loop()
    cv = CondVar(loop)
    try:
        connector = _UnixConnector(loop, cv, path, timeout)
    except OSError as exc:
        cv.croak(exc)
        return cv
    cv.on_cancel(connector.cancel)
    connector.attempt()
    return cv
