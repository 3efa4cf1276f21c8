"""A client that reconnects: ``evws.reconnecting(url, policy=ReconnectPolicy(...))``.

Why: a long-lived client (a dashboard, a bot, a service talking to another)
meets servers that restart, load balancers that drop idle connections and
networks that go away for a while. Reconnecting well is easy to get wrong --
retrying in a hot loop, every client at the same instant after a server
restart, or never giving up on a server that says "forbidden" -- so it is
written once, here, on top of :class:`~evws.Client`.

:func:`reconnecting` returns a :class:`ReconnectingClient`, a pyee-style
emitter (:class:`~evws.emitter.Emitter`), and starts connecting at once.
Its events:

- ``connect(conn)``: a new :class:`~evws.Connection` is open. Attach the
  connection's own listeners here: each connection is a new object.
- ``message(conn, message)``: every message of the current connection (its
  ``each_message``, forwarded), so most programs need no per-connection
  listener at all.
- ``disconnect(conn)``: a connection announced by ``connect`` finished
  (``conn.close_code``, ``conn.close_error`` say how), also after
  :meth:`~ReconnectingClient.close`; calling ``close()`` here stops there.
- ``reconnect(attempt, delay, cause)``: the next connect, number ``attempt``
  since the last stable connection, starts in ``delay`` seconds because of
  ``cause`` (the failed connect's exception, the connection's
  ``close_error``, or a :class:`~evws.ConnectionClosed` with the peer's
  close code and reason).
- ``finish(error)``: emitted exactly once, when the client stops for good:
  ``error`` is ``None`` after :meth:`ReconnectingClient.close`, else the last
  error -- ``max_attempts`` ran out, or the error is not worth retrying
  (see :func:`retryable`). Nothing is emitted after it.

The schedule (:class:`ReconnectPolicy`): after the n-th connect in a row
that did not lead to a stable connection, the next waits ``initial_delay *
factor ** (n - 1)`` seconds, at most ``max_delay``, shortened by up to
``jitter`` of itself at random (so that clients dropped together do not
come back together). A connection that stayed open ``reset_after`` seconds
or more was stable: the count starts again. The waits are loop timers; no
thread, no blocking.

Raising listeners are logged (``evws.reconnect``), never propagated: a bug
in a ``connect`` handler must not stop the reconnecting.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .client import Client
from .connection import Connection
from .emitter import Emitter
from .errors import ConnectionClosed, HandshakeError, ProxyError, RedirectError
from .message import Message
from .reactor.condvar import CondVar
from .reactor.loop import Loop, Timer, get_loop

__all__ = ["ReconnectPolicy", "ReconnectingClient", "reconnecting", "retryable"]

log = logging.getLogger("evws.reconnect")


@dataclass(frozen=True)
class ReconnectPolicy:
    """When a :class:`ReconnectingClient` tries again, and when it gives up.

    Attributes:
        initial_delay: seconds before the first retry (> 0).
        max_delay: the longest wait between two connects (>= ``initial_delay``).
        factor: how much each wait grows over the previous one (>= 1).
        jitter: the fraction of a wait taken off at random, 0 (none) to 1
            (anything from 0 to the full wait).
        max_attempts: most connects in a row that do not lead to a stable
            connection, the first included (``None``: never give up).
        reset_after: seconds a connection must stay open to count as
            stable, which starts the backoff over.
    """

    initial_delay: float = 1.0
    max_delay: float = 60.0
    factor: float = 2.0
    jitter: float = 0.5
    max_attempts: Optional[int] = None
    reset_after: float = 10.0

    def __post_init__(self) -> None:
        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"{name} must be a number, not {value!r}")
            return float(value)

        if number("initial_delay") <= 0:
            raise ValueError(f"initial_delay must be > 0, not {self.initial_delay!r}")
        if number("max_delay") < self.initial_delay:
            raise ValueError(f"max_delay ({self.max_delay!r}) must be >= initial_delay "
                             f"({self.initial_delay!r})")
        if number("factor") < 1:
            raise ValueError(f"factor must be >= 1, not {self.factor!r}")
        if not 0 <= number("jitter") <= 1:
            raise ValueError(f"jitter must be between 0 and 1, not {self.jitter!r}")
        if number("reset_after") < 0:
            raise ValueError(f"reset_after must be >= 0, not {self.reset_after!r}")
        attempts = self.max_attempts
        if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int)
                                     or attempts < 1):
            raise ValueError(f"max_attempts must be None or an int >= 1, not {attempts!r}")

    def delay(self, failures: int, rand: float = 0.0) -> float:
        """The wait after ``failures`` (>= 1) connects in a row that did not last.

        ``rand`` in [0, 1) picks the jitter (``random.random()`` in use;
        0 gives the full wait).
        """
        if failures < 1:
            raise ValueError(f"failures must be >= 1, not {failures!r}")
        try:
            base = min(self.max_delay, self.initial_delay * self.factor ** (failures - 1))
        except OverflowError:  # a factor ** thousands of failures
            base = self.max_delay
        return base * (1.0 - self.jitter * rand)


def retryable(error: BaseException) -> bool:
    """Whether a reconnecting client tries again after ``error`` (the default rule).

    Not retried: an answer the server actually gave that says trying again
    will not help -- a refusal with a status below 500 other than 408
    (timeout) and 429 (too many requests), from the server or from an HTTP
    proxy (:class:`~evws.ProxyError`: a 407 or 403 stays one; a 502 from a
    proxy that cannot reach the server is retried), and a redirect that cannot
    be followed (:class:`~evws.RedirectError`). Everything else is retried:
    transport errors, timeouts, 5xx answers, answers cut short, and every
    way an open connection can end.
    """
    if isinstance(error, RedirectError):
        return False
    if isinstance(error, ProxyError) and error.status is not None:
        return error.status >= 500 or error.status in (408, 429)
    if isinstance(error, HandshakeError) and error.headers is not None and error.status != 101:
        return error.status >= 500 or error.status in (408, 429)
    return True


class ReconnectingClient(Emitter):
    """A connection to ``url`` that comes back; made by :func:`reconnecting`.

    See the module docstring for the events and the schedule.

    Attributes:
        url: where it connects.
        policy: its :class:`ReconnectPolicy`.
        connection: the open :class:`~evws.Connection`, or ``None`` (connecting
            or waiting).
        attempt: connects made since the last stable connection.
        error: what ``finish`` reported (``None`` until then, or after :meth:`close`).
    """

    def __init__(self, url: str, policy: ReconnectPolicy, *, loop: Loop,
                 retry: Callable[[BaseException], bool], client: Client) -> None:
        super().__init__()
        self.url = url
        self.policy = policy
        self.loop = loop
        self.retry = retry
        self.client = client
        self.connection: Optional[Connection] = None
        self.attempt = 0
        self.error: Optional[BaseException] = None
        self._started = False
        self._finished = False
        self._closing: Optional[tuple[int, str]] = None
        self._timer: Optional[Timer] = None
        self._pending: Optional[CondVar] = None  # the connect in flight
        self._opened_at = 0.0
        self._announced: Optional[Connection] = None  # the connection ``connect`` announced

    @property
    def finished(self) -> bool:
        """True once ``finish`` was emitted."""
        return self._finished

    @property
    def waiting(self) -> bool:
        """True while a backoff timer runs (no connection, no connect in flight)."""
        return self._timer is not None

    def start(self) -> None:
        """Make the first connect (:func:`reconnecting` calls it).

        Raises:
            ValueError, TypeError: as :meth:`Client.connect` (a bad URL or
                option), at once.
            RuntimeError: started already.
        """
        if self._started:
            raise RuntimeError("this ReconnectingClient was started already")
        self._started = True
        self._connect()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Stop for good: close the connection (``code``, ``reason``), or cancel
        the wait or the connect in flight; ``finish(None)`` follows once
        nothing is left open -- at once (before this returns) when waiting or
        connecting (the connect is cancelled: its socket closed, whatever step
        it was at), after the closing handshake when connected. Calling it
        again does nothing."""
        if self._finished or self._closing is not None:
            return
        self._closing = (code, reason)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.connection is not None:
            self.connection.close(code, reason)  # finish follows the connection's
        elif self._pending is not None:
            self._pending.cancel()  # _connected sees ConnectCancelled and finishes
        else:
            self._finish(None)

    # -- the cycle -------------------------------------------------------------

    def _connect(self) -> None:
        self._timer = None
        self.attempt += 1
        cv = self._pending = self.client.connect(self.url)
        cv.cb(self._connected)

    def _connected(self, cv: CondVar) -> None:
        self._pending = None
        error = cv.error
        if error is not None:
            if self._closing is not None:
                self._finish(None)
            else:
                self._failed(error)
            return
        conn: Connection = cv.recv_all()[0]
        if self._closing is not None:
            # Asked to stop while connecting: close this one and finish after it.
            self.connection = conn
            conn.add_finish_hook(self._lost)
            conn.close(*self._closing)
            return
        self.connection = conn
        self._opened_at = self.loop.time()
        conn.add_finish_hook(self._lost)
        conn.on("each_message", self._forward)
        self._announced = conn
        self._emit("connect", conn)

    def _forward(self, conn: Connection, message: Message) -> None:
        self._emit("message", conn, message)

    def _lost(self, conn: Connection) -> None:
        self.connection = None
        if conn is not self._announced:  # closed while connecting: never announced
            self._finish(None)
            return
        self._announced = None
        self._emit("disconnect", conn)
        if self._closing is not None:  # closing, or a disconnect listener called close()
            self._finish(None)
            return
        if self.loop.time() - self._opened_at >= self.policy.reset_after:
            self.attempt = 0  # it was stable: start the backoff over
        cause = conn.close_error or ConnectionClosed(
            f"connection closed: {conn.close_code} {conn.close_reason!r}",
            code=conn.close_code, reason=conn.close_reason)
        self._failed(cause)

    def _failed(self, cause: BaseException) -> None:
        """A connect failed or a connection ended: wait and retry, or finish."""
        policy = self.policy
        if not self.retry(cause) or (policy.max_attempts is not None
                                     and self.attempt >= policy.max_attempts):
            self._finish(cause)
            return
        delay = policy.delay(max(self.attempt, 1), random.random())
        self._timer = self.loop.timer(delay, self._connect)
        self._emit("reconnect", self.attempt + 1, delay, cause)  # may call close()

    def _finish(self, error: Optional[BaseException]) -> None:
        if self._finished:
            return
        self._finished = True
        self.error = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._emit("finish", error)

    def _emit(self, event: str, *args: Any) -> None:
        """Emit a lifecycle event; a raising listener is logged, never propagated."""
        for handler in self.handlers(event):
            try:
                handler(*args)
            except Exception:
                log.exception("a %r listener raised", event)

    def __repr__(self) -> str:
        if self._finished:
            state = "finished"
        elif self.connection is not None:
            state = "connected"
        elif self._timer is not None:
            state = "waiting"
        else:
            state = "connecting"
        return f"<evws.ReconnectingClient {self.url} {state} attempt={self.attempt}>"


def reconnecting(url: str, policy: Optional[ReconnectPolicy] = None, *,
                 loop: Optional[Loop] = None,
                 retry: Callable[[BaseException], bool] = retryable,
                 **connect_options: Any) -> ReconnectingClient:
    """Connect to ``url`` now, and again whenever the connection is lost.

    Args:
        url: a ``ws://`` or ``wss://`` URL.
        policy: the backoff (default ``ReconnectPolicy()``: 1 s doubling to
            60 s, half jitter, forever, stable after 10 s).
        loop: the loop to run on (default ``get_loop()``).
        retry: ``retry(error)`` says whether to try again (default
            :func:`retryable`).
        connect_options: what :func:`evws.connect` takes (``subprotocols``,
            ``headers``, ``ssl_context``, ``timeout``, ``ping_interval``...),
            used for every connect.

    Returns the :class:`ReconnectingClient`; listeners attached right after
    this returns see the first ``connect``.

    Raises:
        ValueError: a bad URL or option value; TypeError: an unknown option.
    """
    loop = loop or get_loop()
    client = ReconnectingClient(url, policy or ReconnectPolicy(), loop=loop, retry=retry,
                                client=Client(loop=loop, **connect_options))
    client.start()
    return client
