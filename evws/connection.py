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
``drain(conn)``
    the output queue went above ``high_water`` and has now fallen to
    ``low_water`` or below: a producer may send again (see Flow control).

A ``Connection`` stays alive while its socket is open (the loop holds it
through the stream's watchers), so users need not keep a reference.

Hardening lives here so that both sides get it (the server builds
connections, and so will the client):

Keepalive (``ping_interval`` / ``ping_timeout``)
    every ``ping_interval`` seconds a Ping with a fresh 8-byte payload goes
    out (the first one between 7/8 of ``ping_interval`` and ``ping_interval``
    after the connection opened: see ``KeepaliveTicker``); the Pong that
    echoes that payload (and only that one: an unsolicited or stale Pong is
    ignored) sets :attr:`Connection.latency`. Without a
    matching Pong within ``ping_timeout`` the peer is presumed dead and the
    connection is failed with 1011, so ``finish`` fires instead of a socket
    lingering for ever. One Ping is outstanding at a time.
Flow control (``high_water`` / ``low_water``, 64 KiB / 16 KiB)
    :attr:`Connection.buffered_amount` is what was sent but not yet taken by
    the kernel. Once it reaches ``high_water`` the connection stops reading
    from the peer *and* stops parsing input it already holds (the protocol
    pauses after each message), so an echo server facing a client that sends
    but never reads holds at most ``high_water`` plus one answer -- whatever
    the read size, and however many Pings the peer floods us with. When the
    queue falls to ``low_water`` reading resumes and ``drain`` is emitted,
    once. Producers use the same pair::

        def pump(conn):
            while conn.buffered_amount < conn.high_water and more():
                conn.send(next_chunk())
        conn.on("drain", pump)
        pump(conn)

    ``high_water=None`` switches flow control off.
Timers
    the ping, pong and close timers are cancelled on every teardown path, in
    :meth:`Connection._finish`, the single place ``finish`` comes from.
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
import threading
from typing import Any, Callable, MutableMapping, Optional, Union

from pyee import EventEmitter

from .errors import ConnectionClosed
from .keepalive import KeepaliveTicker
from .listeners import Listener, Listeners
from .message import Message
from .protocol.events import (
    CloseReceived,
    ConnectionFailed,
    ConnectionLost,
    MessageReceived,
    PongReceived,
)
from .protocol.frames import Opcode
from .protocol.websocket import OPEN, Side, WebSocketProtocol
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
#: Stop reading from a peer once this much output is queued for it ...
DEFAULT_HIGH_WATER = 64 * 1024
#: ... and resume (emitting ``drain``) once the queue is down to this.
DEFAULT_LOW_WATER = 16 * 1024

# Opcodes as plain ints: reading an IntEnum member off its class costs ~0.2 us
# (ten times a global), on the per-message path.
_TEXT = int(Opcode.TEXT)
_BINARY = int(Opcode.BINARY)
_CLOSE = int(Opcode.CLOSE)

# Messages are built without Message.__init__'s type checks: the protocol's
# payload is already bytes (half the cost, on the per-message path).
_new_message = Message.__new__

# pyee gives every emitter its own threading.Lock (~90 bytes). A loop and its
# connections live in one thread, so all connections share one lock: it is
# only ever held for a dict update, never across a callback.
_SHARED_LOCK = threading.Lock()

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
        high_water: Optional[int] = DEFAULT_HIGH_WATER,
        low_water: Optional[int] = DEFAULT_LOW_WATER,
    ) -> None:
        if high_water is not None:
            if low_water is None:
                low_water = min(DEFAULT_LOW_WATER, high_water)
            if not 0 <= low_water <= high_water:
                raise ValueError("need 0 <= low_water <= high_water")
        super().__init__()
        self._lock = _SHARED_LOCK
        self.loop = loop or get_loop()
        self.stream = stream
        self.protocol = protocol
        self.close_timeout = close_timeout
        #: seconds between keepalive Pings (None: no keepalive)
        self.ping_interval = ping_interval
        #: seconds a Ping may wait for its Pong before the peer is presumed dead
        self.ping_timeout = ping_timeout
        #: queued output (bytes) from which reading from the peer pauses; None: never
        self.high_water = high_water
        #: queued output (bytes) at which reading resumes and ``drain`` fires
        self.low_water = low_water if high_water is not None else None
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
        #: the shared ticker pinging this connection, while keepalive runs
        self._keepalive: Optional[KeepaliveTicker] = None
        self._pong_timer: Any = None
        self._ping_payload: Optional[bytes] = None
        self._ping_sent_at = 0.0
        self._read_paused = False
        #: evws' own finish hooks (see ``_add_finish_hook``); a tuple, () for none
        self._internal_finish: tuple[Callable[[Connection], None], ...] = ()
        #: the set of live connections this one is in (its server's), left on finish
        self._registry: Optional[set[Connection]] = None
        stream.on_data = self._on_data
        stream.on_eof = self._on_eof
        stream.on_close = self._on_stream_close
        stream.on_drain = self._on_drain
        if high_water is not None and low_water is not None:
            stream.low_water = low_water

    def _add_event_handler(self, event: str, k: Callable[..., Any], v: Callable[..., Any]) -> None:
        """pyee's, with a :class:`Listeners` per event instead of an ``OrderedDict``.

        It keeps registration order just as well for a fraction of the memory
        (an ``OrderedDict`` is ~400 bytes, a dict ~220): the example's two
        listeners were a fifth of an idle connection.
        """
        self.emit("new_listener", event, k)
        with self._lock:
            events: dict[str, MutableMapping[Listener, Listener]] = self._events  # type: ignore[assignment]
            handlers = events.get(event)
            if handlers is None:
                handlers = events[event] = Listeners()
            handlers[k] = v

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

    @property
    def buffered_amount(self) -> int:
        """Bytes sent (frames included) that the kernel has not taken yet."""
        return self.stream.buffered_amount

    # -- sending ----------------------------------------------------------

    def send(self, message: Sendable) -> None:
        """Send a message: ``str`` as text, bytes-like as binary, a ``Message`` as its opcode.

        Raises:
            ConnectionClosed: the closing handshake has started; nothing more can be sent.
        """
        if not self.is_write_open:
            raise ConnectionClosed("cannot send: connection is closed",
                                   self.close_code, self.close_reason)
        kind = type(message)
        if kind is Message:
            # The common cases first, without isinstance chains (per-message path).
            opcode = message.opcode  # type: ignore[union-attr]
            if opcode == _CLOSE:
                raise ValueError("use Connection.close(code, reason) to close")
            self.protocol.send_message(message.body, opcode)  # type: ignore[union-attr]
        elif kind is bytes:
            self.protocol.send_message(message, _BINARY)  # type: ignore[arg-type]
        elif isinstance(message, str):
            self.protocol.send_message(message.encode("utf-8"), _TEXT)
        elif isinstance(message, Message):
            if message.opcode == _CLOSE:
                raise ValueError("use Connection.close(code, reason) to close")
            self.protocol.send_message(message.body, message.opcode)
        elif isinstance(message, (bytes, bytearray, memoryview)):
            self.protocol.send_message(bytes(message), _BINARY)
        else:
            raise TypeError(f"cannot send {type(message).__name__}: use str, bytes or Message")
        self._flush()

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
        if self.ping_interval is not None and self._keepalive is None:
            self._keepalive = KeepaliveTicker.join(self, self.ping_interval)
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
        While flow control holds reading (``_read_paused``), input already
        received stays unparsed in the protocol until ``_on_drain``; once the
        input is closed there is nothing left to parse and the remaining
        events (the close, ``ConnectionLost``) are always handled.
        """
        protocol = self.protocol
        while True:
            events = protocol.events_received()
            if protocol._out or protocol.state is not OPEN:
                self._flush()
            if not events:
                return
            for event in events:
                # Messages first, without a call through _handle_event.
                if type(event) is MessageReceived:
                    self._deliver(event)
                else:
                    self._handle_event(event)
            if self._read_paused and not protocol._input_closed:
                return

    def _on_stream_close(self, error: Optional[BaseException]) -> None:
        """The socket is gone: if the protocol did not finish, this is abnormal (1006)."""
        if error is not None and self.close_error is None and not self._finished:
            self.close_error = error
        if not self._finished:
            self.protocol.receive_eof()
            self.protocol.data_to_send()  # nowhere to send it any more
            while events := self.protocol.events_received():
                for event in events:
                    self._handle_event(event)
        self._finish()

    # -- protocol output ---------------------------------------------------

    def _flush(self) -> None:
        """Hand the protocol's outgoing bytes to the stream; b"" means end TCP.

        Then apply flow control: from ``high_water`` bytes queued on, stop
        reading (and parsing) until ``_on_drain``.
        """
        protocol = self.protocol
        # protocol._out is read directly: skipping the data_to_send() call
        # when nothing is queued is measurable on the per-message path.
        if protocol._out:
            stream = self.stream
            chunks = protocol.data_to_send()
            # b"" (end TCP) can only come last: nothing is queued after it.
            if chunks[-1]:
                try:
                    # One syscall for a header and its separate payload.
                    queued = (stream.write(chunks[0]) if len(chunks) == 1
                              else stream.writev(chunks))
                except BrokenPipeError:
                    queued = 0  # the stream is closing or failed: nowhere to send it
                high = self.high_water
                if high is not None and queued >= high and not self._read_paused:
                    self._read_paused = True
                    stream.pause_reading()
            else:
                chunks.pop()
                if chunks and not stream.closing:
                    stream.writev(chunks)
                self._cancel_close_timer()
                stream.close()
        if (protocol.state is not OPEN and protocol.close_expected()
                and self._close_timer is None and not self._finished):
            self._close_timer = self.loop.timer(self.close_timeout, self._on_close_timeout)

    def _on_drain(self) -> None:
        """The output queue fell to ``low_water`` (or emptied): read again, emit ``drain``."""
        if not self._read_paused or self.stream.buffered_amount > (self.low_water or 0):
            return
        self._read_paused = False
        if self._finished or self.stream.closing:
            return
        self.stream.resume_reading()
        self._emit_safely("drain", self)
        # Messages that arrived before the pause and wait in the protocol.
        if not self._finished and not self._read_paused:
            self._process()

    # -- keepalive ---------------------------------------------------------

    def _on_ping_timer(self) -> None:
        """Every ``ping_interval`` (from the ticker): send a Ping unless one is still unanswered."""
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
        if self._keepalive is not None:
            self._keepalive.leave(self)
            self._keepalive = None
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

    def _handle_event(self, event: Any) -> None:
        """Act on one protocol event (``_process`` delivers messages itself)."""
        kind = type(event)
        if kind is MessageReceived:
            self._deliver(event)
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

    def _deliver(self, event: MessageReceived) -> None:
        """Run next_message then each_message listeners with the message, directly.

        pyee's ``emit`` takes a lock per call; on the per-message path we call
        the registered handlers ourselves, in registration order. A handler
        that raises fails only this connection, with 1011.
        """
        message = _new_message(Message)
        message.opcode, message.body = event
        events: dict[str, MutableMapping[Listener, Listener]] = self._events  # type: ignore[assignment]
        once = events.pop("next_message", None) if "next_message" in events else None
        every = events.get("each_message")
        # A snapshot: a handler may add or remove listeners.
        if once is None and type(every) is Listeners:
            handlers = every._items[1::2]  # the common case, without method calls
        else:
            handlers = list(once.values()) if once else []
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

    def _add_finish_hook(self, hook: Callable[[Connection], None]) -> None:
        """Run ``hook(self)`` on finish, before the ``finish`` listeners (evws-internal).

        A tuple rather than a list made up front: most connections never get a
        hook, and an empty tuple costs them nothing.
        """
        self._internal_finish += (hook,)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self.is_read_open = self.is_write_open = False
        self._cancel_close_timer()
        self._cancel_keepalive()
        if not self.stream.closed:
            self.stream.close()
        if self._registry is not None:
            self._registry.discard(self)
            self._registry = None
        hooks, self._internal_finish = self._internal_finish, ()
        for hook in hooks:
            try:
                hook(self)
            except Exception:
                log.exception("internal finish hook raised")
        self._emit_safely("finish", self)

    def __repr__(self) -> str:
        side = "client" if self.masked else "server"
        state = "finished" if self._finished else ("open" if self.is_write_open else "closing")
        return f"<evws.Connection {side} {state}>"

    # -- shared frames (evws.broadcast) ------------------------------------

    @property
    def accepts_prepared(self) -> bool:
        """True when frames encoded once for many connections can go to this one as they are.

        A server-side connection without permessage-deflate does; a
        client-side one (each frame masked with a fresh key) or one with
        deflate (a per-connection compression context) gets ``send``.
        """
        return self.protocol.accepts_frame_bytes

    def send_prepared(self, chunks: tuple[bytes, ...] | list[bytes]) -> None:
        """Write frames encoded once for many connections (see ``evws.broadcast``).

        Raises:
            ConnectionClosed: the closing handshake has started.
            ValueError: this connection does not :attr:`accepts_prepared`.
        """
        if not self.is_write_open:
            raise ConnectionClosed("cannot send: connection is closed",
                                   self.close_code, self.close_reason)
        self.protocol.send_frame_bytes(chunks)
        self._flush()
