"""``Connection``: one established WebSocket, as a pyee ``EventEmitter``.

The connection is glue: bytes from the :class:`~evws.reactor.stream.Stream`
go into the sans-I/O :class:`~evws.protocol.websocket.WebSocketProtocol`; the
protocol's events become pyee events and its outgoing bytes go back to the
stream. Every RFC decision (echoing close codes, who closes TCP, limits) is
made in the protocol; this module only obeys it and runs the close timer.

Events (AnyEvent::WebSocket::Connection names):

``each_message(conn, message)``
    every text or binary message.
``next_message(conn, message)``
    the next message only; the listeners are removed before any runs, so a
    listener that registers another ``next_message`` gets the following one.
``parse_error(conn, text)``
    once, when the peer broke the protocol and evws failed the connection.
``finish(conn)``
    exactly once, when the connection is done, whatever the path; the reason,
    if any, is ``conn.close_error``.

A ``Connection`` stays alive while its socket is open (the loop holds it
through the stream's watchers), so users need not keep a reference.

Hardening lives here so that both sides get it (the server builds
connections, and so will the client):

Keepalive (``ping_interval`` / ``ping_timeout``)
    every ``ping_interval`` seconds a Ping with a fresh 8-byte payload goes
    out; the Pong that echoes that payload (and only that one: an unsolicited
    or stale Pong is ignored) sets :attr:`Connection.latency`. Without a
    matching Pong within ``ping_timeout`` the peer is presumed dead and the
    connection is failed with 1011, so ``finish`` fires instead of a socket
    lingering for ever. One Ping is outstanding at a time.
Back-pressure (``write_limit``)
    while more than ``write_limit`` bytes wait to be written to the peer, the
    connection stops reading from it (the kernel buffers fill, then the peer
    blocks); reading resumes once the queue drained. This bounds what a peer
    that floods us with Pings but never reads our Pongs (or never reads at
    all) can make us hold: ``write_limit`` plus what one read produces.
Timers
    the ping, pong and close timers are cancelled on every teardown path, in
    :meth:`Connection._finish`, the single place ``finish`` comes from.
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
from typing import Any, Callable, Optional, Union

from pyee import EventEmitter

from .errors import ConnectionClosed
from .message import Message
from .protocol.events import (
    CloseReceived,
    ConnectionFailed,
    ConnectionLost,
    MessageReceived,
    PongReceived,
)
from .protocol.frames import Opcode
from .protocol.websocket import Side, WebSocketProtocol
from .reactor.loop import Loop, get_loop
from .reactor.stream import Stream

__all__ = ["Connection"]

log = logging.getLogger("evws.connection")

Sendable = Union[str, bytes, bytearray, memoryview, Message]

#: RFC 6455 7.4.1: 1011 = the endpoint met an unexpected condition.
INTERNAL_ERROR = 1011

#: Defaults shared by server and client connections (those of ``websockets``).
DEFAULT_PING_INTERVAL = 20.0
DEFAULT_PING_TIMEOUT = 20.0
#: Stop reading from a peer while this much output is queued for it.
DEFAULT_WRITE_LIMIT = 1 << 20

# Ping payloads: a per-process random prefix and a counter, so a payload is
# never reused by this process and a peer cannot guess the next one.
_PING_PREFIX = os.urandom(4)
_ping_counter = itertools.count(1)


class Connection(EventEmitter):
    """An open WebSocket connection (server or client side).

    Build one through :meth:`evws.Server.establish` (or the client); the
    constructor is internal glue and its signature may change.
    """

    def __init__(
        self,
        stream: Stream,
        protocol: WebSocketProtocol,
        *,
        loop: Optional[Loop] = None,
        close_timeout: float = 10.0,
        subprotocol: Optional[str] = None,
        request: Any = None,
        ping_interval: Optional[float] = DEFAULT_PING_INTERVAL,
        ping_timeout: Optional[float] = DEFAULT_PING_TIMEOUT,
        write_limit: Optional[int] = DEFAULT_WRITE_LIMIT,
    ) -> None:
        super().__init__()
        self.loop = loop or get_loop()
        self.stream = stream
        self.protocol = protocol
        self.close_timeout = close_timeout
        #: seconds between keepalive Pings (None: no keepalive)
        self.ping_interval = ping_interval
        #: seconds a Ping may wait for its Pong before the peer is presumed dead
        self.ping_timeout = ping_timeout
        #: queued output (bytes) above which reading from the peer pauses
        self.write_limit = write_limit
        #: round-trip time in seconds of the last keepalive Ping answered, or None
        self.latency: Optional[float] = None
        #: the subprotocol agreed in the handshake, or None
        self.subprotocol = subprotocol
        #: the handshake request (server side), an :class:`evws.Request`
        self.request = request
        #: why the connection ended abnormally (an exception), or None
        self.close_error: Optional[BaseException] = None
        self.is_read_open = True
        self.is_write_open = True
        self._finished = False
        self._close_timer: Any = None
        self._ping_timer: Any = None
        self._pong_timer: Any = None
        self._ping_payload: Optional[bytes] = None
        self._ping_sent_at = 0.0
        self._read_paused = False
        self._internal_finish: list[Callable[["Connection"], None]] = []
        stream.on_data = self._on_data
        stream.on_eof = self._on_eof
        stream.on_close = self._on_stream_close
        stream.on_drain = self._on_drain

    # -- attributes of the original -------------------------------------

    @property
    def masked(self) -> bool:
        """True when this end masks its frames (the client side)."""
        return self.protocol.side == Side.CLIENT

    @property
    def max_payload_size(self) -> Optional[int]:
        return self.protocol.max_payload_size

    @property
    def close_code(self) -> Optional[int]:
        """The code the peer closed with (1005 none given, 1006 abnormal)."""
        return self.protocol.close_code

    @property
    def close_reason(self) -> str:
        return self.protocol.close_reason or ""

    @property
    def finished(self) -> bool:
        return self._finished

    # -- sending ----------------------------------------------------------

    def send(self, message: Sendable) -> None:
        """Send a message: ``str`` as text, bytes-like as binary, a ``Message`` as its opcode.

        Raises:
            ConnectionClosed: the closing handshake has started; nothing more can be sent.
        """
        if not self.is_write_open:
            raise ConnectionClosed("cannot send: connection is closed",
                                   self.close_code, self.close_reason)
        if isinstance(message, str):
            self.protocol.send_message(message.encode("utf-8"), Opcode.TEXT)
        elif isinstance(message, Message):
            self._send_message_object(message)
        elif isinstance(message, (bytes, bytearray, memoryview)):
            self.protocol.send_message(bytes(message), Opcode.BINARY)
        else:
            raise TypeError(f"cannot send {type(message).__name__}: use str, bytes or Message")
        self._flush()

    def _send_message_object(self, message: Message) -> None:
        opcode = message.opcode
        if opcode == Opcode.PING:
            self.protocol.send_ping(message.body)
        elif opcode == Opcode.PONG:
            self.protocol.send_pong(message.body)
        elif opcode == Opcode.CLOSE:
            raise ValueError("use Connection.close(code, reason) to close")
        else:
            self.protocol.send_message(message.body, opcode)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (RFC 6455 7.1.2).

        What was sent before is flushed first; ``finish`` fires when the peer
        answers, or after ``close_timeout`` if it never does. Closing twice is
        harmless.
        """
        if not self.is_write_open or self._finished:
            return
        self.is_write_open = False
        if self.protocol.close_sent is None:
            self.protocol.send_close(code, reason)
        self._flush()

    # -- input from the stream -------------------------------------------

    def _start(self, initial: bytes = b"") -> None:
        """Begin reading; deliver bytes that came with the handshake first.

        The server calls this from a deferred call made *after* the establish
        CondVar became ready, so handlers attached in ``cv.cb`` or right
        after ``cv.recv()`` see the first messages.
        """
        if self._finished:
            return
        self.stream.start_reading()
        if self._read_paused:
            self.stream.pause_reading()
        if self.ping_interval is not None and self._ping_timer is None:
            self._ping_timer = self.loop.timer(self.ping_interval, self._on_ping_timer,
                                               interval=self.ping_interval)
        if initial:
            self._on_data(initial)

    def _on_data(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        self._process()

    def _on_eof(self) -> None:
        self.protocol.receive_eof()
        self._process()

    def _process(self) -> None:
        """Send what the protocol queued, then handle its events, batch by batch.

        The protocol pauses after each complete message, so the answers a
        handler sends go out before anything the following frames cause.
        """
        protocol = self.protocol
        while True:
            events = protocol.events_received()
            self._flush()
            if not events:
                return
            self._dispatch(events)

    def _on_stream_close(self, error: Optional[BaseException]) -> None:
        """The socket is gone: if the protocol did not finish, this is abnormal (1006)."""
        if error is not None and self.close_error is None and not self._finished:
            self.close_error = error
        if not self._finished:
            self.protocol.receive_eof()
            self.protocol.data_to_send()  # nowhere to send it any more
            while events := self.protocol.events_received():
                self._dispatch(events)
        self._finish()

    # -- protocol output ---------------------------------------------------

    def _flush(self) -> None:
        """Hand the protocol's outgoing bytes to the stream; b"" means end TCP."""
        stream = self.stream
        for chunk in self.protocol.data_to_send():
            if chunk:
                if not stream.closing:
                    stream.write(chunk)
            else:
                self._cancel_close_timer()
                stream.close()
        if self.protocol.close_expected() and self._close_timer is None and not self._finished:
            self._close_timer = self.loop.timer(self.close_timeout, self._on_close_timeout)
        limit = self.write_limit
        if (limit is not None and not self._read_paused
                and stream.buffered_amount > limit and not stream.closing):
            # Back-pressure: do not read (and so answer) more until the peer
            # has taken what we owe it.
            self._read_paused = True
            stream.pause_reading()

    def _on_drain(self) -> None:
        """Everything queued reached the kernel: read from the peer again."""
        if self._read_paused:
            self._read_paused = False
            if not self._finished and not self.stream.closing:
                self.stream.resume_reading()

    # -- keepalive ---------------------------------------------------------

    def _on_ping_timer(self) -> None:
        """Every ``ping_interval``: send a Ping unless one is still unanswered."""
        if self._finished or not self.is_write_open or self.protocol.close_sent is not None:
            self._cancel_keepalive()
            return
        if self._ping_payload is not None:
            return  # the previous Ping is still out; its own timeout covers it
        payload = _PING_PREFIX + struct.pack("!I", next(_ping_counter) & 0xFFFFFFFF)
        try:
            self.protocol.send_ping(payload)
        except ConnectionClosed:
            self._cancel_keepalive()
            return
        self._ping_payload = payload
        self._ping_sent_at = self.loop.time()
        if self.ping_timeout is not None:
            self._pong_timer = self.loop.timer(self.ping_timeout, self._on_pong_timeout)
        self._flush()

    def _on_pong(self, payload: bytes) -> None:
        if self._ping_payload is None or payload != self._ping_payload:
            return  # unsolicited (a heartbeat) or the answer to a user's Ping
        self.latency = self.loop.time() - self._ping_sent_at
        self._ping_payload = None
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None

    def _on_pong_timeout(self) -> None:
        """No Pong in time: the peer (or the path to it) is dead. Fail with 1011."""
        self._pong_timer = None
        if self._finished:
            return
        log.debug("no pong within %.1f s: failing the connection with 1011", self.ping_timeout)
        if self.close_error is None:
            self.close_error = TimeoutError(
                f"keepalive ping timeout: no pong within {self.ping_timeout} s")
        self.is_read_open = self.is_write_open = False
        self.protocol.fail(INTERNAL_ERROR, "keepalive ping timeout")
        self._process()

    def _cancel_keepalive(self) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None
        self._ping_payload = None

    def _on_close_timeout(self) -> None:
        """RFC 6455 7.1.1: the peer never finished the closing handshake; drop TCP."""
        self._close_timer = None
        if self._finished:
            return
        log.debug("close timeout after %.1f s: dropping the connection", self.close_timeout)
        self.stream.abort()

    def _cancel_close_timer(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None

    def _dispatch(self, events: list) -> None:
        for event in events:
            kind = type(event)
            if kind is MessageReceived:
                self._deliver(Message(event.payload, event.opcode))
            elif kind is CloseReceived:
                self.is_read_open = False
                if self.protocol.close_sent is not None:
                    self.is_write_open = False
            elif kind is ConnectionFailed:
                self.is_read_open = self.is_write_open = False
                self.close_error = event.error
                self._emit_safely("parse_error", self, str(event.error))
            elif kind is PongReceived:
                self._on_pong(event.payload)
            elif kind is ConnectionLost:
                self._finish()
            # PingReceived: the protocol already answered it.

    def _deliver(self, message: Message) -> None:
        """Run next_message then each_message listeners, directly.

        pyee's ``emit`` takes a lock per call; on the per-message path we call
        the registered handlers ourselves, in registration order. A handler
        that raises fails only this connection, with 1011.
        """
        events = self._events
        once = events.pop("next_message", None)
        handlers = list(once.values()) if once else []
        every = events.get("each_message")
        if every:
            handlers.extend(every.values())
        for handler in handlers:
            if self._finished:
                return
            try:
                handler(self, message)
            except Exception as exc:
                self._handler_failed(exc)
                return

    def _handler_failed(self, exc: Exception) -> None:
        log.exception("a message handler raised; closing the connection with 1011")
        if self.close_error is None:
            self.close_error = exc
        if not self._finished and self.is_write_open:
            self.is_write_open = False
            self.is_read_open = False
            self.protocol.fail(INTERNAL_ERROR, "handler error")
            self._process()

    def _emit_safely(self, event: str, *args: Any) -> None:
        """Emit a rare event; a raising listener is logged, never propagated."""
        handlers = self._events.get(event)
        for handler in list(handlers.values()) if handlers else ():
            try:
                handler(*args)
            except Exception:
                log.exception("a %r listener raised", event)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self.is_read_open = self.is_write_open = False
        self._cancel_close_timer()
        self._cancel_keepalive()
        if not self.stream.closed:
            self.stream.close()
        for hook in self._internal_finish:
            try:
                hook(self)
            except Exception:
                log.exception("internal finish hook raised")
        self._emit_safely("finish", self)
        self._internal_finish.clear()

    def __repr__(self) -> str:
        side = "client" if self.masked else "server"
        state = "finished" if self._finished else ("open" if self.is_write_open else "closing")
        return f"<evws.Connection {side} {state}>"
