"""The WebSocket connection state machine, without any I/O (RFC 6455 5-7).

``WebSocketProtocol`` is fed with what came from the peer (``receive_data``,
``receive_eof``) and told what the application wants (``send_*``, ``fail``);
the caller drains two outputs after each call:

* ``events_received()``: parsed events (see ``events.py``);
* ``data_to_send()``: byte chunks to write, in order. An empty chunk ``b""``
  means "end TCP now" (shut down the write side, then close).

plus one question, ``close_expected()``: "should the I/O layer arm its close
timer?".

The closing rules live here, so that the I/O layer only has to obey:

* we fail the connection (peer error, or ``fail()``): queue a Close frame if
  none was sent yet, then end TCP at once (7.1.7) -- both sides;
* the peer's Close arrives first: echo its code (5.5.1); a server then ends
  TCP (7.1.1: "the server ... SHOULD close the underlying TCP connection
  first"), a client waits for the server to do so;
* our Close was answered: the server ends TCP, the client waits for EOF;
* after a Close was received, further input is discarded (5.5.1: "after
  sending a Close frame, the endpoint MUST NOT send any more data frames").

``ConnectionLost`` is the last event and comes exactly once: when the server
ends TCP after the handshake, when we fail, or at EOF, whichever is first.

One message at a time: parsing stops after each complete data message (and
after each Ping, whose Pong is output just like an answer) and
resumes when ``events_received()`` is called again with nothing left to
return. The caller drains events until the list is empty, handling each
batch (and sending what it answers) before the next one is parsed. So the
echo of message 1 goes out before the Close frame that a bad frame 2 causes,
and a handler that closes the connection after message 1 is not handed
message 2 -- the order a peer sees is the order of the conversation.

Buffering, and why it stays linear: the payload of a data frame is consumed
as it arrives (unmasked straight into the message's one ``bytearray``, then
validated), never kept in the receive buffer. That buffer is sized from the
frame header (at most ``_PREALLOC`` ahead of what arrived, so a header that
merely claims a huge length costs nothing) and grows geometrically, so a
message trickling in one byte per read costs neither quadratic time nor a
``bytes`` object per read. What is left over between calls is at
most an incomplete header or an incomplete control frame (<= 131 bytes), so
prepending it to the next input costs a bounded copy, and input trickling in
one byte at a time costs linear time. The common case -- a whole small frame
already in the input -- is sliced straight out of the input bytes; the
commonest shape of all (a masked, unfragmented TEXT/BINARY frame with a 7- or
16-bit length) is decoded by ``frames.simple_message`` (C when built) in
``_consume``, before the general parser ``_parse`` is called at all.
Outgoing unmasked, uncompressed data messages likewise take a short path in
``send_message`` (a precomputed 2-byte header for short payloads), and
``encode_message`` hands such a frame straight back to an I/O layer that has
nothing else queued.
"""

from __future__ import annotations

import enum
import logging
import os
import struct
from typing import Any

from ..errors import ConnectionClosed, PayloadTooBig, ProtocolError
from . import mask as _mask
from .close import parse_close, serialize_close
from .deflate import DeflateParams, PerMessageDeflate
from .events import (
    CloseReceived,
    ConnectionFailed,
    ConnectionLost,
    MessageReceived,
    PingReceived,
    PongReceived,
)
from .frames import MAX_CONTROL_PAYLOAD, RSV1, frame_header, parse_header, simple_message
from .frames import SEPARATE_PAYLOAD as _SEPARATE_PAYLOAD
from .mask import apply_mask, unmask_into
from .utf8 import IncrementalUtf8, Utf8Validator, check_utf8

__all__ = [
    "Side",
    "SERVER",
    "CLIENT",
    "State",
    "CONNECTING",
    "OPEN",
    "CLOSING",
    "CLOSED",
    "WebSocketProtocol",
]

_log = logging.getLogger("evws.protocol")


class Side(enum.IntEnum):
    """Which end of the connection this is; it decides the masking direction."""

    SERVER = 0
    CLIENT = 1


SERVER = Side.SERVER
CLIENT = Side.CLIENT


class State(enum.IntEnum):
    """CONNECTING while the opening handshake runs (``ServerProtocol`` and
    ``ClientProtocol`` only), OPEN, then CLOSING while a close handshake or
    TCP close is awaited, then CLOSED once ``ConnectionLost`` was emitted (or
    the opening handshake failed)."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


CONNECTING = State.CONNECTING
OPEN = State.OPEN
CLOSING = State.CLOSING
CLOSED = State.CLOSED

# Plain ints on the hot path: comparing with IntEnum members is slower.
_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0, 1, 2, 8, 9, 10
_OPNAMES = {0: "CONT", 1: "TEXT", 2: "BINARY", 8: "CLOSE", 9: "PING", 10: "PONG"}


# The 4-byte header of an unmasked final frame of 126..65535 bytes.
_pack_head16 = struct.Struct("!BBH").pack

# The 2-byte headers of unmasked final TEXT/BINARY frames shorter than 126
# bytes, indexed [opcode][length]: one concatenation builds the frame.
_SHORT_HEADS = (
    (),
    tuple(bytes((0x80 | _TEXT, n)) for n in range(126)),
    tuple(bytes((0x80 | _BINARY, n)) for n in range(126)),
)

# MessageReceived(opcode, payload) goes through the named tuple's generated
# Python __new__ (~0.5 us); tuple.__new__ builds the same object in C (~0.15).
_new_event = tuple.__new__

# A message buffer is allocated at most this far ahead of the bytes received
# (see the module docstring).
_PREALLOC = 1 << 20

# A close reason must fit in a control frame next to the 2-byte code.
_MAX_REASON = 123


def _clip_reason(reason: str) -> str:
    data = reason.encode("utf-8")
    if len(data) <= _MAX_REASON:
        return reason
    return data[:_MAX_REASON].decode("utf-8", "ignore")


class WebSocketProtocol:
    """Sans-I/O WebSocket connection after the opening handshake, either side.

    Args:
        side: ``SERVER`` (expects masked input, sends unmasked) or ``CLIENT``
            (masks every frame it sends with a fresh key, rejects masked input).
        max_payload_size: the largest message accepted, counting all of its
            fragments; a frame header that would exceed it fails the connection
            with 1009 before its payload is buffered. ``None``: no limit.
        max_fragments: the most frames one message may use (1009 beyond);
            ``None``: no limit.
        deflate: the permessage-deflate parameters agreed in the handshake
            (RFC 7692), or ``None``. With them, RSV1 marks a compressed
            message on its first frame; such messages are inflated frame by
            frame, ``max_payload_size`` counting the *inflated* bytes (a
            compression bomb fails with 1009 before it is inflated), and every
            TEXT/BINARY message sent is compressed.

    Attributes:
        state: ``OPEN``, ``CLOSING`` or ``CLOSED``.
        close_code: the code received: ``None`` until known, 1005 if the peer's
            Close frame carried none, 1006 if the connection ended without one.
        close_reason: the reason received (``None`` until known).
        close_sent: ``(code, reason)`` of the Close frame we sent, ``None``
            before that; code is ``None`` if the frame carried no code.
        pending_input: (read-only) ``None``, or the input whose parsing paused
            after a complete message or Ping (from an offset kept inside):
            the next ``events_received()`` with no events left parses on. An
            I/O layer that has handled a batch reads it -- a plain attribute,
            no call per message -- to know whether to ask again.
        pending_output: (read-only) the chunks :meth:`data_to_send` will
            return, a list; empty when nothing is queued. The same as
            :attr:`has_data_to_send` without a property call, for an I/O
            layer's per-message path.
    """

    # Slots: a server holds thousands of idle protocols, and an instance
    # __dict__ with these ~35 attributes costs ~1.6 KiB each (evws keeps an
    # idle connection under 3 KiB in all).
    __slots__ = (
        "side", "deflate", "_codec", "_inflating", "allowed_rsv_bits",
        "max_payload_size", "max_fragments", "state", "close_code",
        "close_reason", "close_sent", "_mask_out", "_expect_masked", "_debug",
        "_fast_in", "_fast_out", "_events", "pending_output", "_buf", "pending_input",
        "_rest_pos", "_input_closed", "_eof_sent", "_lost", "_frame_left",
        "_frame_key", "_frame_keypos", "_frame_fin", "_msg_opcode", "_msg_buf",
        "_msg_fill", "_msg_size", "_msg_frames", "_utf8", "_send_opcode",
    )

    def __init__(
        self,
        side: Side | int = SERVER,
        *,
        max_payload_size: int | None = 1 << 20,
        max_fragments: int | None = None,
        deflate: DeflateParams | None = None,
    ) -> None:
        self.side = Side(side)
        self.max_payload_size = max_payload_size
        self.max_fragments = max_fragments
        # 5.1: "a client MUST mask all frames that it sends to the server";
        # "A server MUST NOT mask any frames that it sends to the client".
        self._mask_out = self.side == CLIENT
        self._expect_masked = self.side == SERVER
        self._debug = _log.isEnabledFor(logging.DEBUG)
        self._configure(deflate)
        # The message being received is compressed (RSV1 on its first frame).
        self._inflating = False
        self.state = OPEN
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.close_sent: tuple[int | None, str] | None = None
        self._events: list[Any] = []
        # The chunks data_to_send() returns next (public, read-only for
        # callers: see the class docstring).
        self.pending_output: list[bytes] = []
        self._buf = b""  # an incomplete header or control frame, see module doc
        # Input not yet parsed because a message was completed before it:
        # the bytes and where parsing resumes (kept whole, not sliced, so
        # many small messages in one read cost no copies). Public, read-only
        # for callers: see the class docstring.
        self.pending_input: bytes | None = None
        self._rest_pos = 0
        # No frame is parsed: Close received, EOF, or failed -- and, in a
        # ServerProtocol/ClientProtocol, CONNECTING (the handshake has the input).
        self._input_closed = False
        self._eof_sent = False
        self._lost = False
        # The data frame whose payload is being received.
        self._frame_left = 0
        self._frame_key: bytes | None = None
        self._frame_keypos = 0
        self._frame_fin = False
        # The message being assembled (opcode 0: none): its payload so far is
        # _msg_buf[:_msg_fill] (the buffer is made on the first payload byte).
        self._msg_opcode = 0
        # A bytearray, or (C path) a bytes object from new_payload() being filled.
        self._msg_buf: bytearray | bytes | None = None
        self._msg_fill = 0
        self._msg_size = 0
        self._msg_frames = 0
        self._utf8: IncrementalUtf8 | None = None
        # The opcode of a fragmented message we are sending (0: none).
        self._send_opcode = 0

    def _configure(self, deflate: DeflateParams | None) -> None:
        """Set up for the extensions agreed: at construction, or once the
        opening handshake (``ServerProtocol``/``ClientProtocol``) agreed them."""
        self.deflate = deflate
        # Hook for extensions: the RSV bits (frames.RSV1 etc.) a negotiated
        # extension gives a meaning to. permessage-deflate sets RSV1 here; with
        # the default 0 any reserved bit fails the connection (5.2).
        self.allowed_rsv_bits = 0
        # The codec; None keeps every deflate branch off the hot path.
        self._codec: PerMessageDeflate | None = None
        if deflate is not None:
            self._codec = PerMessageDeflate(deflate, self.side == SERVER)
            self.allowed_rsv_bits = RSV1
        # The inline paths (see the module docstring) skip masking of output
        # and compression; they log at DEBUG level like the general path, so
        # a debug run parses with the same code as any other.
        self._fast_in = self._expect_masked and (self.max_fragments is None
                                                 or self.max_fragments >= 1)
        # _fast_out: the short send paths are open -- unmasked, uncompressed,
        # and (kept up to date where they change) no Close sent, not lost, no
        # fragmented message being sent: one test per message instead of four.
        self._fast_out = not self._mask_out and deflate is None

    # ------------------------------------------------------------- state seams

    @property
    def input_open(self) -> bool:
        """True while frames from the peer are parsed: OPEN (or CLOSING) and
        no Close received, no EOF, no failure."""
        return not self._input_closed

    @property
    def has_data_to_send(self) -> bool:
        """True when :meth:`data_to_send` would return something (``bool(pending_output)``)."""
        return bool(self.pending_output)

    @property
    def finished(self) -> bool:
        """True once ``ConnectionLost`` was emitted (or the opening handshake failed)."""
        return self._lost

    # ------------------------------------------------------------------ output

    def events_received(self) -> list[Any]:
        """Return the events parsed since the last call, and forget them.

        Parsing pauses after each complete data message (see the module
        docstring): call this until it returns an empty list, handling each
        batch before asking for the next.
        """
        events = self._events
        if not events and self.pending_input is not None:
            data, pos = self.pending_input, self._rest_pos
            self.pending_input = None
            self._consume(data, pos)
            events = self._events
        self._events = []
        return events

    def data_to_send(self) -> list[bytes]:
        """Return the chunks to write since the last call, and forget them.

        An empty chunk ``b""`` means: end the TCP connection now (after writing
        what precedes it). Nothing else is ever queued after it.
        """
        out, self.pending_output = self.pending_output, []
        return out

    def close_expected(self) -> bool:
        """Tell whether we are waiting for the peer to close.

        True while our Close awaits the peer's, or (client side) while the
        server is expected to close TCP; the I/O layer arms its close timer then
        and, when it fires, ends the connection (``receive_eof()`` or
        ``fail()``).
        """
        return self.state == CLOSING

    # ------------------------------------------------------------------- input

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes received from the peer, split anywhere."""
        if self._input_closed or not data:
            if data and self.state is CONNECTING:
                self._receive_handshake(data)
            return
        if self.pending_input is not None:
            data = self.pending_input[self._rest_pos :] + data
            self.pending_input = None
        elif self._buf:
            data = self._buf + data
            self._buf = b""
        elif type(data) is not bytes:
            data = bytes(data)
        self._consume(data, 0)

    def _consume(self, data: bytes, pos: int) -> None:
        """Parse ``data`` from ``pos`` (``_parse`` keeps what is left for later).

        Every read and every resumption after a message starts here, so the
        short cut lives here, one call from ``receive_data``: a whole final
        masked TEXT/BINARY frame of at most 64 KiB within the size limit, a
        TEXT one valid UTF-8 (``frames.simple_message``, in C when built), is
        the next message, event built, with no call to the general parser. Anything else, or anything wrong, takes
        ``_parse``. A DEBUG run takes the same path (it only logs more).
        """
        try:
            if self._fast_in and not self._msg_opcode:
                found = simple_message(data, pos, self.max_payload_size, MessageReceived)
                if found is not None:
                    event, pos = found
                    if self._debug:
                        _log.debug("< %s %d bytes", _OPNAMES[event[0]], len(event[1]))
                    self._events.append(event)
                    if pos < len(data):
                        # Pause after the message (see the module docstring).
                        self.pending_input, self._rest_pos = data, pos
                    return
            self._parse(data, pos)
        except ProtocolError as exc:
            self._fail(exc.close_code, _clip_reason(str(exc)), exc)

    def _receive_handshake(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes in CONNECTING: ``ServerProtocol`` and ``ClientProtocol`` parse them."""
        raise AssertionError("a plain WebSocketProtocol starts OPEN")

    def _handshake_eof(self) -> None:
        """EOF in CONNECTING (see :meth:`_receive_handshake`)."""
        raise AssertionError("a plain WebSocketProtocol starts OPEN")

    def receive_eof(self) -> None:
        """The peer closed its side of TCP (or the I/O layer gave up on it).

        Without a Close frame received, the close code becomes 1006 (7.1.5).
        Ends our side of TCP too and emits ``ConnectionLost``; a no-op if the
        connection was already finished.
        """
        if self._lost:
            return
        if self.state is CONNECTING:
            self._handshake_eof()
            return
        while self.pending_input is not None and not self._input_closed:
            # Input that came before the EOF is still due (7.1.5).
            data, pos = self.pending_input, self._rest_pos
            self.pending_input = None
            self._consume(data, pos)
        if self._lost:
            return
        if self._debug:
            _log.debug("< EOF")
        self._input_closed = True
        self._buf = b""
        self._end_tcp()
        self._finish()

    def _parse(self, data: bytes, pos: int) -> None:
        """Consume frames from ``data[pos:]``.

        What is not parsed is kept: after a complete data message (or a
        Ping) with input left over, the whole input and where to resume
        (``pending_input``, ``_rest_pos``: no copy); otherwise the incomplete header
        or control frame at the end (``_buf``).
        """
        end = len(data)
        events = self._events
        while pos < end:
            if self._frame_left:
                # The rest (or more) of a data frame's payload.
                pos = self._frame_data(data, pos, end)
                if not self._frame_left and self._frame_fin and pos < end:
                    self.pending_input, self._rest_pos = data, pos
                    return
                continue

            header = parse_header(data, pos, self.allowed_rsv_bits)
            if header is None:
                break
            fin, opcode, rsv, length, key, start = header
            if (key is None) == self._expect_masked:
                # 5.1: "The server MUST close the connection upon receiving a
                # frame that is not masked"; "A client MUST close a connection
                # if it detects a masked frame."
                if self._expect_masked:
                    raise ProtocolError("unmasked frame from a client")
                raise ProtocolError("masked frame from a server")
            stop = start + length
            if rsv:
                # From here on, rsv is true for a compressed message only.
                rsv = self._compressed(opcode, rsv)

            if opcode >= 8:
                # Control frames may come between fragments (5.4); they are
                # at most 125 bytes, so wait until one is whole.
                if stop > end:
                    break
                payload = data[start:stop]
                if key is not None:
                    payload = apply_mask(payload, key)
                pos = stop
                self._control(opcode, payload)
                if self._input_closed:
                    return
                if opcode == _PING and pos < end:
                    # Its Pong is output, like an echo's answer: pausing here
                    # lets the I/O layer's flow control bound a Ping flood.
                    self.pending_input, self._rest_pos = data, pos
                    return
                continue

            # Data frame. 5.4: a continuation needs a message in progress, and
            # a new message may not start inside another one.
            if opcode == _CONT:
                if not self._msg_opcode:
                    raise ProtocolError("continuation frame without a message")
                frames = self._msg_frames + 1
                size = self._msg_size + length
            else:
                if self._msg_opcode:
                    raise ProtocolError("new message inside a fragmented message")
                frames = 1
                size = length
            limit = self.max_payload_size
            if limit is not None and size > limit and not (rsv or self._inflating):
                # A compressed message is bounded by its inflated size
                # instead, as it is inflated (see _frame_data).
                raise PayloadTooBig(f"message over {limit} bytes")
            if self.max_fragments is not None and frames > self.max_fragments:
                raise PayloadTooBig(f"message over {self.max_fragments} fragments")

            if fin and opcode and stop <= end and not rsv:
                # A whole unfragmented message is in the input.
                payload = data[start:stop]
                if key is not None:
                    payload = apply_mask(payload, key)
                if opcode == _TEXT:
                    check_utf8(payload)
                if self._debug:
                    _log.debug("< %s %d bytes", _OPNAMES[opcode], length)
                events.append(_new_event(MessageReceived, (opcode, payload)))
                pos = stop
                if pos < end:
                    self.pending_input, self._rest_pos = data, pos
                    return
                continue

            if self._debug:
                _log.debug("< %s fin=%d %d bytes", _OPNAMES[opcode], fin, length)
            if opcode:
                self._msg_opcode = opcode
                self._utf8 = Utf8Validator() if opcode == _TEXT else None
                if rsv:
                    self._inflating = True
                    self._codec.start_message(limit)  # type: ignore[union-attr]
            self._msg_frames = frames
            self._msg_size = size
            self._frame_fin = fin
            self._frame_key = key
            self._frame_keypos = 0
            self._frame_left = length
            pos = start
            if not length:
                self._frame_data(data, pos, pos)  # an empty frame may end the message
                if fin and pos < end:
                    self.pending_input, self._rest_pos = data, pos
                    return
        if pos < end and not self._input_closed:
            self._buf = data[pos:]

    def _compressed(self, opcode: int, rsv: int) -> int:
        """Check the RSV bits of a frame; tell whether it starts a compressed message.

        Only reachable when ``allowed_rsv_bits`` let a bit through.
        """
        if self._codec is None or not rsv & RSV1:
            return 0  # bits of an extension that only used the hook
        # RFC 7692 6: RSV1 is set on "the first frame of a message" only --
        # never on a continuation (6.1) nor on a control frame.
        if opcode == _CONT:
            raise ProtocolError("RSV1 set on a continuation frame")
        if opcode >= 8:
            raise ProtocolError("RSV1 set on a control frame")
        return RSV1

    def _frame_data(self, data: bytes, pos: int, end: int) -> int:
        """Take the current data frame's payload from ``data[pos:end]``; return where it stopped.

        The bytes are unmasked straight into the message buffer (inflated
        first for a compressed message), then checked as UTF-8 for text: 8.1
        wants the failure as soon as the text is not UTF-8, even mid-message.
        """
        take = end - pos
        left = self._frame_left
        if take > left:
            take = left
        stop = pos + take
        self._frame_left = left = left - take
        final = not left and self._frame_fin
        key = self._frame_key
        keypos = self._frame_keypos
        if key is not None:
            self._frame_keypos = (keypos + take) & 3
        if self._inflating:
            # RFC 7692 7.2.2: inflate as the payload comes, then the tail.
            chunk = data[pos:stop]
            if key is not None:
                if keypos:
                    key = key[keypos:] + key[:keypos]
                chunk = apply_mask(chunk, key)
            codec = self._codec
            chunk = codec.inflate(chunk)  # type: ignore[union-attr]
            if final:
                chunk += codec.finish_message()  # type: ignore[union-attr]
            take = len(chunk)
            fill = self._msg_fill
            buf = self._reserve(take)
            buf[fill:fill + take] = chunk
        else:
            fill = self._msg_fill
            buf = self._reserve(take)
            if key is not None:
                unmask_into(buf, fill, data, pos, stop, key, keypos)
            else:
                buf[fill:fill + take] = memoryview(data)[pos:stop]
        self._msg_fill = fill + take
        if self._utf8 is not None:
            self._utf8.feed(memoryview(buf)[fill:fill + take], final)
        if final:
            self._message_done()
        return stop

    def _reserve(self, n: int) -> bytearray:
        """Make room for ``n`` more payload bytes in the message buffer; return it.

        Allocates ahead for the rest of the current frame (so a large frame
        arriving in many reads is allocated once), but never more than
        ``_PREALLOC`` beyond what is needed now, and grows at least
        geometrically: linear time whatever the read sizes.
        """
        buf = self._msg_buf
        need = self._msg_fill + n
        if buf is None:
            total = need + self._frame_left
            if (total <= _PREALLOC and self._frame_fin and self._frame_key is not None
                    and not self._inflating and _mask.new_payload is not None):
                # One masked frame, size known and bounded: unmask straight
                # into the bytes object the user will get (C path only; it is
                # never seen before _message_done, see _speedups.c).
                buf = self._msg_buf = _mask.new_payload(total)
            else:
                buf = self._msg_buf = bytearray(need + min(self._frame_left, _PREALLOC))
        elif need > len(buf):
            ahead = min(self._frame_left, max(len(buf), _PREALLOC))
            buf += bytes(need - len(buf) + ahead)  # a bytearray (new_payload is exact)
        # A new_payload() bytes on the C path: unmask_into fills it (typed as
        # the bytearray it stands in for).
        return buf  # type: ignore[return-value]

    def _message_done(self) -> None:
        """The final frame of the message is complete: emit it."""
        buf = self._msg_buf
        if buf is None:
            payload = b""
        elif type(buf) is bytes:
            payload = buf  # filled by unmask_into, exactly
        else:
            if len(buf) != self._msg_fill:
                del buf[self._msg_fill:]  # type: ignore[union-attr]  # unused room allocated ahead
            payload = bytes(buf)
        self._events.append(_new_event(MessageReceived, (self._msg_opcode, payload)))
        self._reset_message()

    def _reset_message(self) -> None:
        self._msg_opcode = 0
        self._msg_buf = None
        self._msg_fill = 0
        self._msg_size = 0
        self._msg_frames = 0
        self._utf8 = None
        self._frame_left = 0
        self._inflating = False

    def _control(self, opcode: int, payload: bytes) -> None:
        if self._debug:
            _log.debug("< %s %r", _OPNAMES[opcode], payload)
        if opcode == _PING:
            # 5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a Pong
            # frame in response, unless it already received a Close frame";
            # nothing at all may follow our own Close frame.
            if self.close_sent is None:
                self._queue(_PONG, payload)
            self._events.append(PingReceived(payload))
        elif opcode == _PONG:
            self._events.append(PongReceived(payload))
        else:
            self._close_received(payload)

    def _close_received(self, payload: bytes) -> None:
        code, reason = parse_close(payload)  # ProtocolError / InvalidUTF8
        self.close_code = code
        self.close_reason = reason
        self._input_closed = True
        self._buf = b""
        self.pending_input = None
        self._reset_message()
        if self.close_sent is None:
            # 5.5.1: "If an endpoint receives a Close frame and did not
            # previously send a Close frame, the endpoint MUST send a Close
            # frame in response. ... typically echos the status code it
            # received." 1005 means there was none: answer with none.
            echo = None if code == 1005 else code
            self._send_close_frame(echo, "")
        self._events.append(CloseReceived(code, reason))
        if self.side == SERVER:
            # 7.1.1: the server closes TCP first once the handshake is done.
            self._end_tcp()
            self._finish()
        else:
            # 7.1.1: "the client SHOULD wait for the server to close the
            # connection"; the close timer covers a server that never does.
            self._set_state(CLOSING)

    # ---------------------------------------------------------------- commands

    def send_text(self, data: str | bytes, fin: bool = True) -> None:
        """Send a TEXT frame (the first frame of a message if ``fin`` is False).

        ``str`` is encoded as UTF-8; ``bytes`` are sent as given, unchecked.

        Raises:
            ConnectionClosed: our Close frame was sent, or the connection ended.
            RuntimeError: a fragmented message is still being sent.
        """
        if isinstance(data, str):
            data = data.encode("utf-8")
        self._send_data(_TEXT, data, fin)

    def send_binary(self, data: bytes | bytearray | memoryview, fin: bool = True) -> None:
        """Send a BINARY frame (the first frame of a message if ``fin`` is False).

        Raises:
            ConnectionClosed: our Close frame was sent, or the connection ended.
            RuntimeError: a fragmented message is still being sent.
        """
        self._send_data(_BINARY, data, fin)

    def send_continuation(self, data: str | bytes | bytearray | memoryview, fin: bool) -> None:
        """Send the next frame of the fragmented message started by ``send_text``
        or ``send_binary`` with ``fin=False``.

        Raises:
            ConnectionClosed: our Close frame was sent, or the connection ended.
            RuntimeError: no fragmented message is being sent.
        """
        self._check_open()
        if not self._send_opcode:
            raise RuntimeError("no fragmented message is being sent")
        if isinstance(data, str):
            data = data.encode("utf-8")
        if fin:
            self._send_opcode = 0
            # Open again (_check_open passed: no Close sent, not lost).
            self._fast_out = not self._mask_out and self._codec is None
        if self._codec is not None:
            # RFC 7692 7.2.1: the message is compressed as one stream; only
            # its first frame carries RSV1.
            data = self._codec.compress(data, fin)
        self._queue(_CONT, data, fin)

    def _send_data(self, opcode: int, data: bytes | bytearray | memoryview, fin: bool) -> None:
        self._check_open()
        if self._send_opcode:
            # 5.4: the fragments of one message may not be interleaved with
            # another message's frames (control frames excepted).
            raise RuntimeError("a fragmented message is still being sent")
        if not fin:
            self._send_opcode = opcode
            self._fast_out = False
        if self._codec is not None:
            self._queue(opcode, self._codec.compress(data, fin), fin, RSV1)
            return
        self._queue(opcode, data, fin)

    def send_message(self, payload: bytes | bytearray | memoryview, opcode: int) -> None:
        """Send a whole message in one frame, whatever its opcode.

        TEXT and BINARY make a data frame; PING and PONG a control frame; CLOSE
        starts the closing handshake with the code and reason read from the
        payload (like ``send_close``).

        Raises:
            ConnectionClosed: our Close frame was sent, or the connection ended.
            ValueError: CONTINUATION or an unknown opcode, an oversized control
                payload, or a malformed close payload.
            RuntimeError: a fragmented message is still being sent (data only).
        """
        if opcode == _TEXT or opcode == _BINARY:
            if self._fast_out and type(payload) is bytes:
                # The short path of an echo: what _send_data and _queue would do
                # for an unmasked, uncompressed, unfragmented frame.
                n = len(payload)
                if self._debug:
                    _log.debug("> %s fin=1 %d bytes", _OPNAMES[opcode], n)
                if n < 126:
                    self.pending_output.append(_SHORT_HEADS[opcode][n] + payload)
                    return
                head = (_pack_head16(0x80 | opcode, 126, n) if n < 0x10000
                        else frame_header(opcode, n))
                if n < _SEPARATE_PAYLOAD:
                    self.pending_output.append(head + payload)
                else:
                    self.pending_output.append(head)
                    self.pending_output.append(payload)
                return
            self._send_data(opcode, payload, True)
        elif opcode == _PING:
            self.send_ping(payload)
        elif opcode == _PONG:
            self.send_pong(payload)
        elif opcode == _CLOSE:
            self._check_open()
            try:
                code, reason = parse_close(payload)
            except ProtocolError as exc:
                raise ValueError(f"bad close payload: {exc}") from None
            self.send_close(None if not payload else code, reason)
        else:
            raise ValueError(f"cannot send a message with opcode {opcode}")

    def encode_message(self, payload: bytes | bytearray | memoryview,
                       opcode: int) -> bytes | list[bytes] | None:
        """Send a whole message like :meth:`send_message`, handing back its frame when it can.

        The direct send path of an I/O layer: when nothing else is queued
        (:meth:`data_to_send` would return nothing) and the message takes the
        short path -- TEXT or BINARY ``bytes``, unmasked, uncompressed, no
        fragmented message being sent -- the frame is returned and *not*
        queued, and the caller writes it right away, exactly as it would have
        written ``data_to_send()``. That saves the queue round trip (a list,
        two calls) on every echo. The frame is one ``bytes`` below
        ``SEPARATE_PAYLOAD`` (16 KiB), else ``[header, payload]`` for one
        gathering write (the payload is not copied). Otherwise the message is
        queued as :meth:`send_message` queues it and ``None`` is returned: the
        caller flushes ``data_to_send()`` as usual.

        Raises:
            as :meth:`send_message`.
        """
        if (self._fast_out and type(payload) is bytes and (opcode == _BINARY or opcode == _TEXT)
                and not self.pending_output):
            n = len(payload)
            if self._debug:
                _log.debug("> %s fin=1 %d bytes", _OPNAMES[opcode], n)
            if n < 126:
                return _SHORT_HEADS[opcode][n] + payload
            if n < _SEPARATE_PAYLOAD:
                return _pack_head16(0x80 | opcode, 126, n) + payload
            return [frame_header(opcode, n), payload]  # large: the header's cost is nothing
        self.send_message(payload, opcode)
        return None

    def send_ping(self, payload: str | bytes | bytearray | memoryview = b"") -> None:
        """Send a Ping (5.5.2); the payload is at most 125 bytes.

        Raises:
            ConnectionClosed: our Close frame was sent, or the connection ended.
            ValueError: the payload is longer than 125 bytes.
        """
        self._send_control(_PING, payload)

    def send_pong(self, payload: str | bytes | bytearray | memoryview = b"") -> None:
        """Send a Pong (5.5.3): unsolicited, it serves as a heartbeat.

        Raises:
            ConnectionClosed: our Close frame was sent, or the connection ended.
            ValueError: the payload is longer than 125 bytes.
        """
        self._send_control(_PONG, payload)

    def _send_control(self, opcode: int, payload: str | bytes | bytearray | memoryview) -> None:
        self._check_open()
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if len(payload) > MAX_CONTROL_PAYLOAD:
            raise ValueError("control frame payload longer than 125 bytes")
        self._queue(opcode, payload)

    def send_close(self, code: int | None = 1000, reason: str = "") -> None:
        """Start the closing handshake (7.1.2).

        The peer's Close is answered automatically, so this is only needed to
        initiate. After it, ``close_expected()`` is True until the handshake
        completes or the connection ends.

        Args:
            code: the status code; ``None`` (or 1005) sends a Close without one.
            reason: at most 123 bytes of UTF-8.

        Raises:
            ConnectionClosed: a Close frame was already sent, or the connection
                ended.
            ValueError: a code that may not be sent, or a reason too long.
        """
        self._check_open()
        self._send_close_frame(code, reason)
        self._set_state(CLOSING)

    def fail(self, code: int, reason: str = "") -> None:
        """_Fail the WebSocket Connection_ (7.1.7).

        Queues a Close frame with ``code`` unless one was sent already, then
        ends TCP right away without waiting for the peer's answer, and emits
        ``ConnectionLost``. A no-op once the connection is finished. The API
        layer uses it for 1011 (a raising handler) and close timeouts.

        Raises:
            ValueError: a code that may not be sent, or a reason too long (only
                checked when a Close frame is still to be sent).
        """
        if self._lost:
            return
        if self.close_sent is None:
            serialize_close(code, reason)  # raise ValueError before any change
        self._fail(code, reason, None)

    def _fail(self, code: int, reason: str, error: Exception | None) -> None:
        if self._debug:
            _log.debug("! failing with %d %s", code, reason)
        self._input_closed = True
        self._buf = b""
        self.pending_input = None
        self._reset_message()
        if self.close_sent is None:
            self._send_close_frame(code, reason)
        if error is not None:
            self._events.append(ConnectionFailed(code, reason, error))
        self._end_tcp()
        self._finish()

    # ----------------------------------------------------------------- helpers

    def _check_open(self) -> None:
        if self.close_sent is not None or self._lost or self.state is CONNECTING:
            raise ConnectionClosed("cannot send: connection is closed" if self.state
                                   else "cannot send: the opening handshake is not done",
                                   code=self.close_code, reason=self.close_reason or "")

    def _send_close_frame(self, code: int | None, reason: str) -> None:
        payload = serialize_close(code, reason)
        self.close_sent = (code if payload else None, reason)
        self._fast_out = False
        self._queue(_CLOSE, payload)

    def _queue(
        self, opcode: int, payload: bytes | bytearray | memoryview, fin: bool = True, rsv: int = 0
    ) -> None:
        n = len(payload)
        if self._mask_out:
            # 5.3: a fresh, unpredictable key for every frame.
            key = os.urandom(4)
            head = frame_header(opcode, n, fin=fin, mask_key=key, rsv1=bool(rsv))
            payload = apply_mask(payload, key)
        else:
            head = frame_header(opcode, n, fin=fin, rsv1=bool(rsv))
        if self._debug:
            _log.debug("> %s fin=%d %d bytes%s", _OPNAMES[opcode], fin, n,
                       " (compressed)" if rsv else "")
        if n < _SEPARATE_PAYLOAD:
            self.pending_output.append(head + payload)
        else:
            # Saves copying a large payload; never empty, so never taken for EOF.
            self.pending_output.append(head)
            self.pending_output.append(payload if type(payload) is bytes else bytes(payload))

    def _end_tcp(self) -> None:
        if not self._eof_sent:
            if self._debug:
                _log.debug("> EOF")
            self._eof_sent = True
            self.pending_output.append(b"")

    def _finish(self) -> None:
        """Emit ``ConnectionLost``; the single place that does, so once only."""
        if self._lost:
            return
        self._lost = True
        self._fast_out = False
        if self.close_code is None:
            # 7.1.5: no Close frame received: "considered to be 1006".
            self.close_code = 1006
            self.close_reason = ""
        self._set_state(CLOSED)
        self._events.append(ConnectionLost(self.close_code, self.close_reason or ""))

    def _set_state(self, state: State) -> None:
        if self._debug and state != self.state:
            _log.debug("= %s", state.name)
        self.state = state

    # ------------------------------------------------------- shared frames

    @property
    def accepts_frame_bytes(self) -> bool:
        """True when frames prepared once can be written to this connection as they are.

        That needs an unmasked side (the server: a client masks each frame
        with its own key) without permessage-deflate (whose compression
        context is per connection). ``evws.broadcast`` asks before sharing.
        """
        return not self._mask_out and self._codec is None

    def encode_frame_bytes(self, chunks: tuple[bytes, ...] | list[bytes]) -> bool:
        """Send frames like :meth:`send_frame_bytes`, leaving them to the caller when it can.

        The direct path of fan-out, as :meth:`encode_message` is for one
        message: when nothing else is queued and the connection is open,
        unmasked and uncompressed, returns True and queues nothing (the
        caller writes ``chunks`` right away, as it would have written
        ``data_to_send()``). Otherwise queues them as :meth:`send_frame_bytes`
        does and returns False.

        Raises:
            as :meth:`send_frame_bytes`.
        """
        if self._fast_out and not self.pending_output:
            return True
        self.send_frame_bytes(chunks)
        return False

    def send_frame_bytes(self, chunks: tuple[bytes, ...] | list[bytes]) -> None:
        """Queue complete, already serialised frames (unmasked, uncompressed) as they are.

        For fan-out: one message encoded once and written to many
        connections. The bytes are not checked; the caller built them with
        ``frame_header`` and checked :attr:`accepts_frame_bytes`.

        Raises:
            ConnectionClosed: our Close frame was sent, or the connection ended.
            RuntimeError: a fragmented message is still being sent.
            ValueError: this connection masks or compresses its frames.
        """
        self._check_open()
        if self._send_opcode:
            raise RuntimeError("a fragmented message is still being sent")
        if self._mask_out or self._codec is not None:
            raise ValueError("this connection masks or compresses its frames")
        out = self.pending_output
        for chunk in chunks:
            if chunk:  # b"" in the output means "end TCP"
                out.append(chunk)
