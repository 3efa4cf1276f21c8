"""``RedisLink``: one Redis connection on the evws loop that keeps itself up.

RESP is parsed by ``hiredis.Reader`` (sans-I/O: fed bytes, hands out
replies) and commands are encoded by ``hiredis.pack_command``; the socket is
an :class:`~evws.reactor.Stream` connected with ``tcp_connect``. Nothing
blocks (the name lookup of a host name does: give an IP address or
``localhost``), no thread, no asyncio.

What the link does on its own, so that its owner (the Redis broker) only
deals with "ready" and "down":

- connects, then sends ``AUTH`` (password, or user and password), ``SELECT``
  (db), ``CLIENT SETNAME`` and the owner's setup commands, pipelined; it is
  *ready* once every one of them was answered without error;
- keeps an idle connection checked: an application ``PING`` every
  ``ping_interval`` seconds (a missing answer within ``ping_timeout`` counts
  as a dead connection) plus TCP keepalive on the socket, so neither a
  crashed Redis nor a middlebox that silently dropped the flow goes
  unnoticed;
- on EOF, a socket error, a RESP protocol error, a failed setup command or
  a ping timeout: drops the socket and what was in flight (the owner's
  ``on_down`` decides what to resend), then reconnects after an exponential,
  jittered backoff (``backoff_initial`` doubling up to ``backoff_max``,
  each delay drawn between half and all of it, so that many workers do not
  reconnect in lockstep); the backoff restarts once a connection is ready.

Replies are matched to commands in order (Redis answers in order). On a
subscriber link (``on_push`` given) the ``message``, ``subscribe`` and
``unsubscribe`` arrays are not answers to a single command: they go to
``on_push``, all those of one read at once, so the owner can deliver them as
one batch.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from collections import deque
from typing import Any, Callable, NamedTuple, Optional
from urllib.parse import unquote, urlsplit

from ..errors import BrokerError
from ..reactor.condvar import CondVar
from ..reactor.loop import Loop, Timer
from ..reactor.stream import Stream
from ..reactor.tcp import tcp_connect

__all__ = ["RedisAddress", "parse_redis_url", "RedisLink"]

log = logging.getLogger("evws.redis")

Reply = Any
ReplyCallback = Callable[[Reply], None]

_PUSH_KINDS = frozenset((b"message", b"subscribe", b"unsubscribe"))


class RedisAddress(NamedTuple):
    """Where a Redis server is and how to log in (from a ``redis://`` URL)."""

    host: str
    port: int
    db: int
    username: Optional[str]
    password: Optional[str]


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[[user]:password@]host[:port][/db]`` -> :class:`RedisAddress`.

    Raises:
        BrokerError: not a ``redis://`` URL, a bad port or db number
            (``rediss://``, TLS, is not supported).
    """
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise BrokerError(f"not a redis:// URL: {url!r} (rediss:// is not supported)")
    try:
        port = parts.port or 6379
    except ValueError:
        raise BrokerError(f"bad port in Redis URL {url!r}") from None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise BrokerError(f"bad database number {path!r} in Redis URL {url!r}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return RedisAddress(parts.hostname or "127.0.0.1", port, int(path or 0), username, password)


def _set_keepalive(sock: socket.socket, idle: float) -> None:
    """TCP keepalive: probe after ``idle`` s of silence, every 10 s, give up after 3."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", max(1, int(idle))), ("TCP_KEEPINTVL", 10),
                            ("TCP_KEEPCNT", 3)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError as exc:
        log.debug("TCP keepalive not set: %r", exc)


class RedisLink:
    """One reconnecting Redis connection (see the module docstring).

    Args:
        address: where to connect and how to log in.
        name: ``CLIENT SETNAME`` (it shows in ``CLIENT LIST``).
        on_ready: called once each connection is ready.
        on_down: called with the error when a ready connection is lost.
        on_push: subscriber links only: called with the list of pub/sub
            arrays of one read.
        setup: ``(args, callback)`` pairs sent after login on each
            connection, before it counts as ready; an error reply to one of
            them fails the connection.
    """

    def __init__(
        self,
        address: RedisAddress,
        loop: Loop,
        *,
        name: str,
        on_ready: Callable[[RedisLink], None],
        on_down: Callable[[RedisLink, BaseException], None],
        on_push: Optional[Callable[[list[list[Any]]], None]] = None,
        setup: Optional[Callable[[], list[tuple[tuple[Any, ...], ReplyCallback]]]] = None,
        connect_timeout: float = 5.0,
        ping_interval: Optional[float] = 10.0,
        ping_timeout: float = 5.0,
        keepalive_idle: float = 30.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
    ) -> None:
        import hiredis  # the evws[redis] extra; imported only when Redis is used

        self._hiredis = hiredis
        #: hiredis' command encoder (RESP), for callers that batch commands themselves
        self.pack_command: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command
        self.address = address
        self.loop = loop
        self.name = name
        self.on_ready = on_ready
        self.on_down = on_down
        self.on_push = on_push
        self.setup = setup
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.keepalive_idle = keepalive_idle
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        #: True once logged in and set up, until the connection is lost
        self.ready = False
        #: connections made ready so far (1 after the first, +1 per reconnect)
        self.connections = 0
        #: the last reason the link went down or failed to come up, or None
        self.last_error: Optional[BaseException] = None
        self._stream: Optional[Stream] = None
        self._reader: Any = None
        self._callbacks: deque[Optional[ReplyCallback]] = deque()
        self._attempt = 0
        self._connecting: Optional[CondVar] = None
        self._retry: Optional[Timer] = None
        self._ping_timer: Optional[Timer] = None
        self._pong_timer: Optional[Timer] = None
        self._closed = False

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Begin connecting (and keep doing so until :meth:`close`)."""
        if not self._closed and self._stream is None and self._connecting is None:
            self._connect()

    def close(self) -> None:
        """Drop the connection for good; no callback fires after this."""
        if self._closed:
            return
        self._closed = True
        self.ready = False
        self._cancel_timers()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._callbacks.clear()
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.on_data = stream.on_eof = stream.on_close = None
            stream.abort()

    @property
    def closed(self) -> bool:
        return self._closed

    def _connect(self) -> None:
        self._retry = None
        cv = tcp_connect(self.address.host, self.address.port, self.loop,
                         timeout=self.connect_timeout)
        self._connecting = cv
        cv.cb(self._connected)

    def _connected(self, cv: CondVar) -> None:
        self._connecting = None
        try:
            sock = cv.recv()
        except OSError as exc:
            if not self._closed:
                self._failed(exc)
            return
        if self._closed:
            sock.close()
            return
        _set_keepalive(sock, self.keepalive_idle)
        self._reader = self._hiredis.Reader()
        self._callbacks.clear()
        self._stream = Stream(sock, self.loop, on_data=self._on_data, on_eof=self._on_eof,
                              on_close=self._on_close)
        self._stream.start_reading()
        address = self.address
        steps: list[tuple[tuple[Any, ...], ReplyCallback]] = []
        if address.password is not None:
            login: tuple[Any, ...] = ("AUTH", address.password)
            if address.username:
                login = ("AUTH", address.username, address.password)
            steps.append((login, self._setup_reply("AUTH")))
        if address.db:
            steps.append((("SELECT", address.db), self._setup_reply("SELECT")))
        steps.append((("CLIENT", "SETNAME", self.name), self._setup_reply("CLIENT SETNAME")))
        if self.setup is not None:
            steps.extend(self.setup())
        last = len(steps) - 1
        for i, (args, cb) in enumerate(steps):
            self._write(self._hiredis.pack_command(args),
                        self._setup_done(cb) if i == last else cb)

    def _setup_reply(self, what: str) -> ReplyCallback:
        def check(reply: Reply) -> None:
            if isinstance(reply, Exception):
                self.fail(BrokerError(f"Redis {what} failed: {reply}"))
        return check

    def _setup_done(self, cb: ReplyCallback) -> ReplyCallback:
        def done(reply: Reply) -> None:
            cb(reply)
            if self._stream is None or self.ready:
                return  # cb failed the connection
            if isinstance(reply, Exception):
                self.fail(BrokerError(f"Redis setup failed: {reply}"))
                return
            self.ready = True
            self.connections += 1
            self._attempt = 0
            if self.ping_interval is not None:
                self._ping_timer = self.loop.timer(self.ping_interval, self._ping,
                                                   interval=self.ping_interval)
            log.debug("%s: connected to %s:%d", self.name, self.address.host, self.address.port)
            self.on_ready(self)
        return done

    # -- commands --------------------------------------------------------------

    def send(self, args: tuple[Any, ...], cb: Optional[ReplyCallback] = None) -> None:
        """Send one command; ``cb(reply)`` gets its answer (an ``Exception`` for an error reply).

        Raises:
            BrokerError: the link is not ready (the owner checks ``ready``).
        """
        self.send_packed(self._hiredis.pack_command(args), cb)

    def send_packed(self, data: bytes, cb: Optional[ReplyCallback] = None) -> None:
        """Send a command already encoded with ``hiredis.pack_command``."""
        if not self.ready:
            raise BrokerError(f"{self.name}: not connected to Redis")
        self._write(data, cb)

    def _write(self, data: bytes, cb: Optional[ReplyCallback]) -> None:
        assert self._stream is not None
        self._callbacks.append(cb)
        try:
            self._stream.write(data)
        except BrokenPipeError:
            pass  # the stream is failing; _on_close follows

    # -- input ------------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pushes: list[list[Any]] = []
        push = self.on_push is not None
        callbacks = self._callbacks
        stream = self._stream
        while self._stream is stream:
            try:
                reply = reader.gets()
            except self._hiredis.ProtocolError as exc:
                self.fail(BrokerError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                break
            if push and type(reply) is list and reply and reply[0] in _PUSH_KINDS:
                pushes.append(reply)
                continue
            if not callbacks:
                self.fail(BrokerError(f"unexpected reply from Redis: {reply!r:.80}"))
                return
            cb = callbacks.popleft()
            if cb is not None:
                cb(reply)
        if pushes and self._stream is stream:
            self.on_push(pushes)  # type: ignore[misc]

    def _on_eof(self) -> None:
        self.fail(ConnectionResetError("Redis closed the connection"))

    def _on_close(self, error: Optional[Exception]) -> None:
        if self._stream is not None:
            self._stream = None
            self.fail(error or ConnectionResetError("connection to Redis lost"))

    # -- keepalive ---------------------------------------------------------------

    def _ping(self) -> None:
        if not self.ready or self._pong_timer is not None:
            return  # the previous PING is unanswered; its timer covers it
        self._pong_timer = self.loop.timer(self.ping_timeout, self._ping_timed_out)
        self.send(("PING",), self._pong)

    def _pong(self, reply: Reply) -> None:
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None

    def _ping_timed_out(self) -> None:
        self._pong_timer = None
        self.fail(TimeoutError(f"no answer to PING within {self.ping_timeout} s"))

    def _cancel_timers(self) -> None:
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = None

    # -- failure -----------------------------------------------------------------

    def fail(self, error: BaseException) -> None:
        """Drop the connection (if any) and reconnect after the backoff."""
        if self._closed:
            return
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.on_data = stream.on_eof = stream.on_close = None
            stream.abort()
        self._callbacks.clear()
        self._reader = None
        self._cancel_timers()
        was_ready, self.ready = self.ready, False
        self._failed(error, was_ready)

    def _failed(self, error: BaseException, was_ready: bool = False) -> None:
        self.last_error = error
        delay = min(self.backoff_max, self.backoff_initial * (2 ** self._attempt))
        delay *= random.uniform(0.5, 1.0)
        self._attempt = min(self._attempt + 1, 30)
        if self._retry is None:
            self._retry = self.loop.timer(delay, self._connect)
        log.log(logging.WARNING if was_ready or self._attempt == 1 else logging.DEBUG,
                "%s: Redis at %s:%d %s (%s); reconnecting in %.2f s", self.name,
                self.address.host, self.address.port, "lost" if was_ready else "unreachable",
                error, delay)
        if was_ready:
            self.on_down(self, error)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("ready" if self.ready else "down")
        return f"<RedisLink {self.name} {self.address.host}:{self.address.port} {state}>"


def default_name(role: str, tag: str) -> str:
    """A ``CLIENT SETNAME`` that tells processes and brokers apart: ``evws-<role>-<pid>-<tag>``."""
    return f"evws-{role}-{os.getpid()}-{tag}"
