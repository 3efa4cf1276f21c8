"""``Connection``: one WebSocket, as a pyee ``EventEmitter``, from its first byte.

The connection is the one I/O driver of both ends: bytes from the
:class:`~evws.reactor.stream.Stream` go into the sans-I/O protocol (a
:class:`~evws.protocol.server.ServerProtocol` or
:class:`~evws.protocol.client.ClientProtocol`, which parse the opening
handshake as their CONNECTING state and then frames from the same buffer);
the protocol's events become pyee events and its outgoing bytes go back to
the stream. Every RFC decision (echoing close codes, who closes TCP, limits)
is made in the protocol; this module only obeys it and runs the timers.

While CONNECTING the connection is not the user's yet: it answers to the
establish CondVar that ``Server.establish`` or ``connect`` returned (see
:meth:`Connection.opening`), and its events are those of the handshake. The
frames that came with the handshake stay in the protocol until a call
deferred *after* that CondVar is ready, so handlers attached in ``cv.cb()``
or right after ``cv.recv()`` see the first messages.

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

Hardening lives here so that both sides get it:

Keepalive (``ping_interval`` / ``ping_timeout``)
    every ``ping_interval`` seconds a Ping with a fresh 8-byte payload goes
    out (the first one between 7/8 of ``ping_interval`` and ``ping_interval``
    after the connection opened: see :class:`~evws.reactor.ticker.Ticker`); the Pong that
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
from typing import Any, Callable, Optional, Union

from .emitter import Emitter
from .errors import ConnectCancelled, ConnectionClosed, HandshakeError
from .message import Message
from .options import DEFAULTS, Options
from .protocol.events import (
    CloseReceived,
    ConnectionFailed,
    ConnectionLost,
    HandshakeFailed,
    MessageReceived,
    PongReceived,
    RequestReceived,
    ResponseReceived,
)
from .protocol.frames import Opcode
from .protocol.websocket import OPEN, Side, WebSocketProtocol
from .reactor.condvar import CondVar
from .reactor.loop import Loop, get_loop
from .reactor.stream import Stream, write_each
from .reactor.ticker import Ticker

__all__ = ["Connection", "send_prepared_each"]

log = logging.getLogger("evws.connection")

Sendable = Union[str, bytes, bytearray, memoryview, Message]

#: RFC 6455 7.4.1: 1011 = the endpoint met an unexpected condition.
INTERNAL_ERROR = 1011

#: Defaults shared by server and client connections (those of ``websockets``),
#: kept as names for code that imported them; the one source is ``Options``.
DEFAULT_PING_INTERVAL = DEFAULTS.ping_interval
DEFAULT_PING_TIMEOUT = DEFAULTS.ping_timeout
DEFAULT_HIGH_WATER = DEFAULTS.high_water
DEFAULT_LOW_WATER = DEFAULTS.low_water

# Opcodes as plain ints: reading an IntEnum member off its class costs ~0.2 us
# (ten times a global), on the per-message path.
_TEXT = int(Opcode.TEXT)
_BINARY = int(Opcode.BINARY)
_CLOSE = int(Opcode.CLOSE)

# Messages are built without Message.__init__'s type checks: the protocol's
# payload is already bytes (half the cost, on the per-message path).
_new_message = Message.__new__

# Ping payloads: a per-process random prefix and a counter, so a payload is
# never reused by this process and a peer cannot guess the next one.
_PING_PREFIX = os.urandom(4)
_ping_counter = itertools.count(1)

_UNSET: Any = object()

#: ``negotiate(request, default_response) -> (response, results)``: the
#: server's handshake policy, called on ``RequestReceived``.
Negotiate = Callable[[Any, Any], "tuple[Any, tuple[Any, ...]]"]


class _Opening:
    """What a CONNECTING connection needs, dropped once it is open (memory)."""

    __slots__ = ("cv", "timer", "negotiate", "on_open", "answer_errors", "start_turns",
                 "timeout_error", "lost_error")

    def __init__(self, cv: CondVar, negotiate: Optional[Negotiate],
                 on_open: Optional[Callable[[Connection], Any]], answer_errors: bool,
                 start_turns: int, timeout_error: Callable[[], BaseException],
                 lost_error: Callable[[Optional[BaseException]], BaseException]) -> None:
        self.cv = cv
        self.timer: Any = None
        self.negotiate = negotiate
        self.on_open = on_open
        self.answer_errors = answer_errors
        self.start_turns = start_turns
        self.timeout_error = timeout_error
        self.lost_error = lost_error


class Connection(Emitter):
    """A WebSocket connection (server or client side).

    Build one through :meth:`evws.Server.establish` or :func:`evws.connect`;
    the constructor is internal glue and its signature may change. Given an
    OPEN protocol it drives an already handshaken connection (``_start()``
    begins reading); :meth:`opening` runs one from its first byte.
    """

    def __init__(
        self,
        stream: Stream,
        protocol: WebSocketProtocol,
        *,
        loop: Optional[Loop] = None,
        options: Optional[Options] = None,
        subprotocol: Optional[str] = None,
        request: Any = None,
        close_timeout: Any = _UNSET,
        ping_interval: Any = _UNSET,
        ping_timeout: Any = _UNSET,
        high_water: Any = _UNSET,
        low_water: Any = _UNSET,
    ) -> None:
        options = options or DEFAULTS
        if not (close_timeout is ping_interval is ping_timeout is high_water is low_water is _UNSET):
            changes = {name: value for name, value in (
                ("close_timeout", close_timeout), ("ping_interval", ping_interval),
                ("ping_timeout", ping_timeout), ("high_water", high_water),
                ("low_water", low_water)) if value is not _UNSET}
            if "high_water" in changes and "low_water" not in changes:
                changes["low_water"] = None  # derived from the new high_water
            options = options.replace(**changes)
        super().__init__()
        #: the settings of this connection (shared with its server or client)
        self.options = options
        self.loop = loop or get_loop()
        self.stream = stream
        self.protocol = protocol
        #: round-trip time in seconds of the last keepalive Ping answered, or None
        self.latency: Optional[float] = None
        #: the subprotocol agreed in the handshake, or None
        self.subprotocol = subprotocol
        #: the handshake request (server side), an :class:`evws.Request`
        self.request = request
        #: why the connection ended abnormally (an exception), or None
        self.close_error: Optional[BaseException] = None
        # The API's own state, not the protocol's: ``finish`` was emitted.
        # (The protocol is CLOSED earlier, while its last events -- messages
        # that came before an EOF, say -- are still being handled.)
        self._finished = False
        self._close_timer: Any = None
        #: the shared ticker pinging this connection, while keepalive runs
        self._keepalive: Optional[Ticker] = None
        self._pong_timer: Any = None
        self._ping_payload: Optional[bytes] = None
        self._ping_sent_at = 0.0
        self._read_paused = False
        #: finish hooks (see ``add_finish_hook``); a tuple, () for none
        self._finish_hooks: tuple[Callable[[Connection], Any], ...] = ()
        #: the opening handshake's state while CONNECTING (see ``opening``)
        self._opening: Optional[_Opening] = None
        stream.on_data = self._process  # called with the bytes read
        stream.on_eof = self._on_eof
        stream.on_close = self._on_stream_close
        stream.on_drain = self._on_drain
        if options.high_water is not None and options.low_water is not None:
            stream.low_water = options.low_water

    @classmethod
    def opening(
        cls,
        stream: Stream,
        protocol: WebSocketProtocol,
        options: Options,
        *,
        loop: Loop,
        cv: Optional[CondVar] = None,
        timeout: Optional[float] = None,
        negotiate: Optional[Negotiate] = None,
        on_open: Optional[Callable[[Connection], Any]] = None,
        answer_errors: bool = False,
        start_turns: int = 1,
        timeout_error: Callable[[], BaseException],
        lost_error: Callable[[Optional[BaseException]], BaseException],
    ) -> CondVar:
        """Run a CONNECTING ``protocol`` over ``stream``; return the establish CondVar.

        The CondVar yields ``(connection, *results)`` once the handshake
        succeeded, or croaks: with the protocol's ``HandshakeError``, with
        ``timeout_error()`` after ``timeout`` seconds, or with
        ``lost_error(exc)`` when the stream closed first.

        Args:
            negotiate: (server) the policy called on ``RequestReceived``; it
                returns ``(response, results)`` or raises ``HandshakeError``.
            on_open: called with the connection once it is open, before the
                CondVar is ready (the server's bookkeeping).
            answer_errors: (server) write a refusal's ready HTTP answer and
                close; otherwise the socket is handed back to the caller open
                and untouched (AnyEvent::WebSocket::Server's contract), as
                ``HandshakeError`` leaves it.
            start_turns: how many loop turns after the CondVar is ready the
                connection starts reading and delivers the first frames.

        On the client side the CondVar can be cancelled (``cv.cancel()``):
        the socket is closed at once (no lingering) and the CondVar croaks
        :class:`~evws.ConnectCancelled`. A server's establish CondVar cannot
        be: what to do with a socket the caller handed in is the caller's.
        """
        cv = cv or CondVar(loop)
        conn = cls(stream, protocol, loop=loop, options=options)
        opening = conn._opening = _Opening(cv, negotiate, on_open, answer_errors, start_turns,
                                           timeout_error, lost_error)
        if timeout is not None:
            opening.timer = loop.timer(timeout, conn._on_open_timeout)
        if protocol.side == Side.CLIENT:
            cv.on_cancel(conn._cancel_opening)
        stream.start_reading()
        conn._process()  # the client's request; a request the protocol was given
        return cv

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
    def is_read_open(self) -> bool:
        """True while messages from the peer can still arrive (the protocol parses input)."""
        return self.protocol.input_open

    @property
    def is_write_open(self) -> bool:
        """True while messages can be sent: open, and no Close frame sent."""
        protocol = self.protocol
        return protocol.close_sent is None and protocol.state is OPEN

    @property
    def finished(self) -> bool:
        """True once ``finish`` was emitted."""
        return self._finished

    @property
    def buffered_amount(self) -> int:
        """Bytes sent (frames included) that the kernel has not taken yet."""
        return self.stream.buffered_amount

    # The settings, readable and (for this connection alone) assignable as
    # the attributes they always were; assigning replaces ``options``.

    @property
    def close_timeout(self) -> float:
        """Seconds to wait for the peer to finish a closing handshake."""
        return self.options.close_timeout

    @close_timeout.setter
    def close_timeout(self, value: float) -> None:
        self.options = self.options.replace(close_timeout=value)

    @property
    def ping_interval(self) -> Optional[float]:
        """Seconds between keepalive Pings (None: no keepalive); set it before the connection opens."""
        return self.options.ping_interval

    @ping_interval.setter
    def ping_interval(self, value: Optional[float]) -> None:
        self.options = self.options.replace(ping_interval=value)

    @property
    def ping_timeout(self) -> Optional[float]:
        """Seconds a Ping may wait for its Pong before the peer is presumed dead."""
        return self.options.ping_timeout

    @ping_timeout.setter
    def ping_timeout(self, value: Optional[float]) -> None:
        self.options = self.options.replace(ping_timeout=value)

    @property
    def high_water(self) -> Optional[int]:
        """Queued output (bytes) from which reading from the peer pauses; None: never."""
        return self.options.high_water

    @high_water.setter
    def high_water(self, value: Optional[int]) -> None:
        low = self.options.low_water
        if value is not None and low is not None and low > value:
            low = value
        self._set_water(value, low)

    @property
    def low_water(self) -> Optional[int]:
        """Queued output (bytes) at which reading resumes and ``drain`` fires."""
        return self.options.low_water

    @low_water.setter
    def low_water(self, value: Optional[int]) -> None:
        self._set_water(self.options.high_water, value)

    def _set_water(self, high: Optional[int], low: Optional[int]) -> None:
        self.options = self.options.replace(high_water=high, low_water=low)
        self.stream.low_water = self.options.low_water or 0

    # -- sending ----------------------------------------------------------

    def send(self, message: Sendable) -> None:
        """Send a message: ``str`` as text, bytes-like as binary, a ``Message`` as its opcode.

        Raises:
            ConnectionClosed: the closing handshake has started; nothing more can be sent.
        """
        protocol = self.protocol  # it raises ConnectionClosed once closed
        kind = type(message)
        if kind is Message:
            # The common cases first, without isinstance chains (per-message path).
            opcode = message.opcode  # type: ignore[union-attr]
            if opcode == _CLOSE:
                raise ValueError("use Connection.close(code, reason) to close")
            frame = protocol.encode_message(message.body, opcode)  # type: ignore[union-attr]
        elif kind is bytes:
            frame = protocol.encode_message(message, _BINARY)  # type: ignore[arg-type]
        elif isinstance(message, str):
            frame = protocol.encode_message(message.encode("utf-8"), _TEXT)
        elif isinstance(message, Message):
            if message.opcode == _CLOSE:
                raise ValueError("use Connection.close(code, reason) to close")
            frame = protocol.encode_message(message.body, message.opcode)
        elif isinstance(message, (bytes, bytearray, memoryview)):
            frame = protocol.encode_message(bytes(message), _BINARY)
        else:
            raise TypeError(f"cannot send {type(message).__name__}: use str, bytes or Message")
        if frame is None:
            self._flush()  # queued in the protocol: the general path
            return
        # The direct path: nothing was queued before this frame, the
        # connection is open, so the frame goes straight to the stream.
        try:
            if type(frame) is bytes:
                queued = self.stream.write(frame)
            else:
                queued = self.stream.writev(frame)  # type: ignore[arg-type]
        except BrokenPipeError:
            return  # the stream is closing or failed: nowhere to send it
        if queued:
            self._check_high_water(queued)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (RFC 6455 7.1.2).

        What was sent before is flushed first; ``finish`` fires when the peer
        answers, or after ``close_timeout`` if it never does. Closing twice is
        harmless.
        """
        if not self.is_write_open or self._finished:
            return
        self.protocol.send_close(code, reason)
        self._flush()

    # -- the opening handshake ---------------------------------------------

    def _on_request(self, event: RequestReceived) -> None:
        """Server: ask the policy for the answer, write it, open."""
        opening = self._opening
        assert opening is not None and opening.negotiate is not None
        try:
            response, results = opening.negotiate(event.request, event.response)
            self.protocol.accept(response)  # type: ignore[attr-defined]
        except HandshakeError as exc:
            self._open_failed(exc)
            return
        self.request = event.request
        self.subprotocol = self.protocol.subprotocol  # type: ignore[attr-defined]
        self._opened(results)

    def _on_response(self, event: ResponseReceived) -> None:
        """Client: the server's 101 checked out."""
        #: the server's 101 head (``status``, ``headers``): cookies, custom fields
        self.response = event.response
        self.subprotocol = self.protocol.subprotocol  # type: ignore[attr-defined]
        self._opened(())

    def _opened(self, results: tuple[Any, ...]) -> None:
        opening = self._opening
        assert opening is not None
        if opening.timer is not None:
            opening.timer.cancel()
            opening.timer = None
        # Hold input until _start (``_opening`` stays set until then, and
        # _process stops after this event): nothing may overtake the first
        # frames, which wait in the protocol. The stream keeps reading: what
        # arrives meanwhile (one turn) goes into the protocol unprocessed (see
        # _process), so there is no pause and resume, and no epoll_ctl pair
        # per connection, for it.
        self._flush()  # the 101 goes out before anything a CondVar callback sends
        if opening.on_open is not None:
            opening.on_open(self)
        opening.cv.send(self, *results)
        start: Callable[..., Any] = self._start
        for _ in range(opening.start_turns - 1):
            start = _later(self.loop, start)
        self.loop.call_soon(start)

    def _connecting(self) -> bool:
        """True until the establish CondVar is ready."""
        return self._opening is not None and not self._opening.cv.ready

    def _on_open_timeout(self) -> None:
        opening = self._opening
        if opening is not None and not opening.cv.ready:
            opening.timer = None
            self._open_failed(opening.timeout_error())

    def _cancel_opening(self, error: Optional[BaseException]) -> None:
        """(client) The establish CondVar was cancelled while the handshake ran."""
        if self._connecting():
            self._open_failed(error or ConnectCancelled("WebSocket handshake cancelled"),
                              abort=True)

    def _open_failed(self, error: BaseException, *, abort: bool = False) -> None:
        """The handshake failed: croak, and leave the socket as the side's contract says.

        ``abort``: (client) close the socket at once, even after a refusal.
        """
        opening = self._opening
        assert opening is not None and not opening.cv.ready
        self._opening = None
        self._finished = True  # done, without a finish: it never opened
        if opening.timer is not None:
            opening.timer.cancel()
        stream = self.stream
        stream.on_data = stream.on_eof = stream.on_drain = stream.on_close = None
        log.debug("handshake failed: %s", error)
        if not stream.closed:
            if self.protocol.side == Side.SERVER:
                if opening.answer_errors and isinstance(error, HandshakeError):
                    # The caller cannot answer on a TLS socket we wrapped: do it here.
                    self.protocol.reject(error.response)  # type: ignore[attr-defined]
                    stream.linger = 1.0
                    self._flush()
                    stream.close()
                else:
                    stream.detach()  # the caller's socket again, open and untouched
            elif not abort and getattr(self.protocol, "refused", False):
                stream.close()  # a refusal was read whole: leave politely
            else:
                stream.abort()  # RFC 6455 4.1: _Fail the WebSocket Connection_
        opening.cv.croak(error)

    # -- input from the stream -------------------------------------------

    def _start(self, initial: bytes = b"") -> None:
        """Begin reading; deliver the frames that came with the handshake first.

        Called from a deferred call made *after* the establish CondVar became
        ready, so handlers attached in ``cv.cb`` or right after ``cv.recv()``
        see the first messages.
        """
        self._opening = None
        if self._finished:
            return
        self.stream.start_reading()
        if self._read_paused:
            self.stream.pause_reading()  # a CondVar callback already filled the queue
        interval = self.options.ping_interval
        if interval is not None and self._keepalive is None:
            self._keepalive = Ticker.join(self.loop, interval, self._on_ping_timer)
        self._process(initial)

    def _on_eof(self) -> None:
        self.protocol.receive_eof()
        if self._opening is None or not self._opening.cv.ready:
            self._process()

    def _process(self, data: bytes = b"") -> None:
        """Feed ``data`` to the protocol, send what it queued, handle its events, batch by batch.

        It is the stream's ``on_data`` too (one call per read less than a
        wrapper that feeds and then processes); the other callers pass nothing.

        The protocol pauses after each complete message, so the answers a
        handler sends go out before anything the following frames cause.
        While flow control holds reading (``_read_paused``), input already
        received stays unparsed in the protocol until ``_on_drain``; once the
        input is closed there is nothing left to parse and the remaining
        events (the close, ``ConnectionLost``) are always handled.
        """
        protocol = self.protocol
        if data:
            protocol.receive_data(data)
            opening = self._opening
            if opening is not None and opening.cv.ready:
                return  # open, and held until _start, which processes it in order
        while True:
            events = protocol.events_received()
            if protocol.pending_output or protocol.state is not OPEN:
                self._flush()
            if not events:
                return
            for event in events:
                if type(event) is not MessageReceived:
                    if self._handle_event(event):
                        return  # opened: the first frames wait for _start
                    continue
                self._deliver(event)
            if protocol.pending_input is None:
                # Nothing parked: the batch was all the input held. What the
                # handlers sent went out with each send (every Connection
                # method flushes); a handler's failure was processed where
                # it happened. So the empty batch that would follow is not
                # asked for (a call and a property per message).
                if protocol.state is not OPEN:
                    self._flush()
                return
            if self._read_paused and protocol.input_open:
                return

    def _on_stream_close(self, error: Optional[BaseException]) -> None:
        """The socket is gone: if the protocol did not finish, this is abnormal (1006)."""
        opening = self._opening
        if opening is not None and not opening.cv.ready:
            self._open_failed(opening.lost_error(error))
            return
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
        chunks = protocol.data_to_send()
        if chunks:
            stream = self.stream
            # b"" (end TCP) can only come last: nothing is queued after it.
            if chunks[-1]:
                try:
                    # One syscall for a header and its separate payload.
                    queued = (stream.write(chunks[0]) if len(chunks) == 1
                              else stream.writev(chunks))
                except BrokenPipeError:
                    queued = 0  # the stream is closing or failed: nowhere to send it
                if queued:
                    self._check_high_water(queued)
            else:
                chunks.pop()
                if chunks and not stream.closing:
                    stream.writev(chunks)
                self._cancel_close_timer()
                stream.close()
        if (protocol.state is not OPEN and protocol.close_expected()
                and self._close_timer is None and not self._finished):
            self._close_timer = self.loop.timer(self.options.close_timeout,
                                                self._on_close_timeout)

    def _check_high_water(self, queued: int) -> None:
        """Flow control: from ``high_water`` bytes queued on, stop reading (and parsing)."""
        high = self.options.high_water
        if high is not None and queued >= high and not self._read_paused:
            self._read_paused = True
            self.stream.pause_reading()

    def _on_drain(self) -> None:
        """The output queue fell to ``low_water`` (or emptied): read again, emit ``drain``."""
        if not self._read_paused or self.stream.buffered_amount > (self.options.low_water or 0):
            return
        self._read_paused = False
        if self._opening is not None:
            return  # before _start: input stays held, _start reads
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
        if self._finished or not self.is_write_open:
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
        timeout = self.options.ping_timeout
        if timeout is not None:
            self._pong_timer = self.loop.timer(timeout, self._on_pong_timeout)
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
        timeout = self.options.ping_timeout
        log.debug("no pong within %.1f s: failing the connection with 1011", timeout)
        if self.close_error is None:
            self.close_error = TimeoutError(f"keepalive ping timeout: no pong within {timeout} s")
        self.protocol.fail(INTERNAL_ERROR, "keepalive ping timeout")
        self._process()

    def _cancel_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.leave(self._on_ping_timer)
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
        log.debug("close timeout after %.1f s: dropping the connection", self.options.close_timeout)
        self.stream.abort()

    def _cancel_close_timer(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None

    def _handle_event(self, event: Any) -> bool:
        """Act on one protocol event (``_process`` delivers messages itself).

        Returns True when the connection just opened: parsing must stop
        until ``_start`` (see ``_opened``).
        """
        kind = type(event)
        if kind is MessageReceived:
            self._deliver(event)
        elif kind is CloseReceived:
            pass  # the protocol answered it; is_read_open/is_write_open follow its state
        elif kind is ConnectionFailed:
            self.close_error = event.error
            self._emit_safely("parse_error", self, str(event.error))
        elif kind is PongReceived:
            self._on_pong(event.payload)
        elif kind is ConnectionLost:
            self._finish()
        elif kind is RequestReceived:
            self._on_request(event)
            return True
        elif kind is ResponseReceived:
            self._on_response(event)
            return True
        elif kind is HandshakeFailed:
            if self._connecting():
                self._open_failed(event.error)
        # PingReceived: the protocol already answered it.
        return False

    def _deliver(self, event: MessageReceived) -> None:
        """Run next_message then each_message listeners with the message, directly.

        ``emit`` is not used on the per-message path (see ``evws.emitter``).
        A handler that raises fails only this connection, with 1011.
        """
        message = _new_message(Message)
        message.opcode, message.body = event
        # The emitter's storage (a base class of ours): one dict lookup and
        # one snapshot in the common case, no method calls through emit.
        registry = self._handlers
        every = registry.get("each_message")
        # ``functions`` tuples are snapshots already: a handler that adds or
        # removes listeners changes the next message's, not this one's.
        if "next_message" in registry:
            handlers = registry.pop("next_message").functions
            if every is not None:
                handlers += every.functions
        elif every is not None:
            handlers = every.functions
        else:
            return
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
            self.protocol.fail(INTERNAL_ERROR, "handler error")
            self._process()

    def _emit_safely(self, event: str, *args: Any) -> None:
        """Emit a rare event; a raising listener is logged, never propagated."""
        for handler in self.handlers(event):
            try:
                handler(*args)
            except Exception:
                log.exception("a %r listener raised", event)

    def add_finish_hook(self, hook: Callable[[Connection], Any]) -> None:
        """Run ``hook(self)`` on finish, before the ``finish`` listeners.

        For libraries built on evws (``Server`` tracks its connections with
        one): unlike a ``finish`` listener, a user's ``remove_all_listeners``
        cannot remove it. A tuple rather than a list made up front: most
        connections never get a hook, and an empty tuple costs them nothing.
        """
        self._finish_hooks += (hook,)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._cancel_close_timer()
        self._cancel_keepalive()
        if not self.stream.closed:
            self.stream.close()
        hooks, self._finish_hooks = self._finish_hooks, ()
        for hook in hooks:
            try:
                hook(self)
            except Exception:
                log.exception("finish hook raised")
        self._emit_safely("finish", self)

    def __repr__(self) -> str:
        side = "client" if self.masked else "server"
        if self._finished:
            state = "finished"
        elif self._connecting():
            state = "connecting"
        else:
            state = "open" if self.is_write_open else "closing"
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
        if not self.protocol.encode_frame_bytes(chunks):
            self._flush()  # queued in the protocol: the general path
            return
        # The direct path: nothing queued before, open: straight to the stream.
        stream = self.stream
        try:
            queued = stream.write(chunks[0]) if len(chunks) == 1 else stream.writev(list(chunks))
        except BrokenPipeError:
            return  # the stream is closing or failed: nowhere to send it
        if queued:
            self._check_high_water(queued)

def send_prepared_each(connections: list[Connection], frames: bytes, *,
                       soon: bool = False) -> list[Connection]:
    """``conn.send_prepared((frames,))`` for each connection, the writes batched.

    Why: fan-out's per-member work (``evws.broadcast``). The members whose
    output is on the direct path (nothing queued in the protocol) go to
    ``write_each`` together -- one C loop of ``send`` for the plain sockets
    among them -- instead of one ``send_prepared`` call each; the others
    take the general path of ``send_prepared``. Flow control is applied to
    each member left with queued output, as ``send_prepared`` does. With
    ``soon``, the direct members get the frames at the end of the loop's
    turn, with whatever else this turn writes to them, in one ``send``
    (``write_each(..., soon=True)``).

    Returns:
        the connections that were written to (not those already closing or
        finished, which are passed over).
    """
    written: list[Connection] = []
    streams: list[Stream] = []
    direct: list[Connection] = []
    chunks = (frames,)
    for conn in connections:
        try:
            if conn.protocol.encode_frame_bytes(chunks):
                streams.append(conn.stream)
                direct.append(conn)
            else:
                conn._flush()  # queued in the protocol: the general path
        except ConnectionClosed:
            continue
        written.append(conn)
    if streams:
        for index, queued in write_each(streams, frames, soon=soon):
            direct[index]._check_high_water(queued)
    return written


def _later(loop: Loop, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` one loop turn later."""
    return lambda: loop.call_soon(fn)
