"""Stream: a buffered non-blocking socket driven by a :class:`~evws.reactor.Loop`.

The owner (the WebSocket connection, later) feeds bytes in with
:meth:`Stream.write` and gets bytes out through ``on_data``. The stream knows
nothing about what the bytes mean. Why each piece is here:

- Writes go straight to ``sock.send`` when nothing is queued (the common case
  costs no watcher and no copy). Whatever the kernel does not take is queued
  as ``memoryview`` slices, so a large partial write is never copied again
  (``del buf[:n]`` on a bytearray would move the rest on each send). A write
  watcher exists only while something is queued. :meth:`Stream.writev` hands
  several chunks (a frame header and its payload) to one ``sendmsg``.
- :func:`write_each` writes one buffer to many streams with one C loop of
  ``send`` (fan-out); with ``soon=True`` it holds the bytes until the end of
  the loop's turn, so that everything written to a stream that way during
  one turn -- the several broadcasts one read of a publisher causes -- goes
  out in one ``send`` instead of one each (the kernel's per-``send`` cost is
  most of fan-out's). Redis does the same: replies are written before the
  loop sleeps, not as they are made. A ``write()`` to a stream holding such
  bytes joins them, in order; ``close()`` and ``shutdown_write()`` send them
  first; ``buffered_amount`` counts them, ``backlog`` does not.
- :meth:`Stream.close` is graceful: flush, ``shutdown(SHUT_WR)``, then read and
  discard until the peer's EOF (bounded by ``linger``), then close. Closing a
  socket that still has unread input makes the kernel send an RST, and an RST
  can destroy the last bytes we wrote before the peer read them.
- Read errors and write errors end the stream with ``on_close(error)``;
  "would block" conditions -- including ``ssl.SSLWantReadError`` and
  ``SSLWantWriteError``, which are ``OSError`` subclasses -- just wait.

Callbacks (each may be given to the constructor or assigned later):

- ``on_data(data: bytes)`` -- bytes arrived (not called once closing).
- ``on_eof()`` -- the peer shut down its write side; called once, reading
  stops. The owner decides what follows (usually ``close()``). Without an
  ``on_eof`` the stream closes itself.
- ``on_drain()`` -- the write queue became empty after being non-empty; and,
  when ``low_water`` is set, also as soon as it falls to ``low_water`` bytes
  or fewer after having been above (flow control: the owner may queue more
  before the kernel's buffer runs dry). It may therefore fire twice for one
  burst; owners treat it as "there is room", idempotently.
- ``on_close(error: Exception | None)`` -- the fd was closed; called exactly
  once. ``None`` after ``close()``/``abort()``; the ``OSError`` after a failed
  ``send``/``recv``; a ``TimeoutError`` when ``close()`` could not flush within
  ``linger``. It is called synchronously, except after a ``send`` failure
  inside :meth:`Stream.write`, where it is deferred to the next loop turn so
  that the owner's ``write()`` call never re-enters the owner.

Queued reads, for the line- or record-oriented sockets a port also has
(AnyEvent::Handle's ``push_read``): :meth:`Stream.read_line` and
:meth:`Stream.read_exactly` queue a request with its callback. The rule:
**while read requests are queued they take the data**; each is satisfied in
the order queued, bytes that do not complete the first request wait for more,
and ``on_data`` sees nothing. When the queue empties, what is left over goes
to ``on_data`` if one is set; if not, it is kept for the next request and
reading pauses until one is queued (the peer waits, memory stays bounded).
A line longer than ``max_size`` fails the stream: ``on_close`` gets
:class:`~evws.errors.LineTooLong`. At EOF unmet requests stay unmet:
``on_eof`` fires as usual and :attr:`Stream.read_buffer` holds the rest.
How it costs nothing on the WebSocket path: the requests live in one object
made on first use, which stands in for ``on_data`` only while it is needed;
a stream that never queues a request reads exactly as before.

TLS: ``sock`` may be a :class:`~evws.reactor.tls.TlsSocket` whose handshake
is done (see :mod:`evws.reactor.tls`: OpenSSL over memory BIOs). Then:

- A readable event is one ``recv`` of up to ``read_size`` bytes of
  ciphertext, fed to OpenSSL, and all the plaintext it yields goes to
  ``on_data`` at once: nothing stays decrypted out of ``select``'s sight.
  Application data that came with the handshake's last flight is delivered
  when reading starts. The peer's close_notify is EOF; so is a bare TCP EOF
  (as ``ssl.SSLSocket`` treats it by default).
- :meth:`Stream.write` encrypts first; the queue holds ciphertext, which the
  kernel may take in any pieces. :meth:`Stream.writev` joins a header and
  its payload (up to 64 KiB) into one ``SSL_write``: one record, one send.
- Closing sends close_notify first (a plain ``shutdown(SHUT_WR)`` would end
  TCP without it, a truncation to the peer), then shuts down TCP and
  lingers as usual. After that, what the peer sends is discarded, so
  ``shutdown_write()`` on a TLS stream also ends delivery of data (TLS has
  no half-close a peer can rely on).
"""


from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
from collections import deque
from typing import Any, Callable

from ..errors import LineTooLong
from ..speedups import c_function
from .loop import IoWatcher, Loop, Timer, get_loop
from .tls import TlsSocket

__all__ = ["Stream", "write_each"]

log = logging.getLogger("evws.stream")

# "Try again later", not a failure.
_WAIT = (BlockingIOError, InterruptedError)

# writev() gathers chunks with one sendmsg() where the platform has it
# (not on Windows), up to this many at a time (POSIX guarantees IOV_MAX >= 16;
# Linux allows 1024).
_SENDMSG = hasattr(socket.socket, "sendmsg")
# TLS: up to this many bytes of chunks are joined into one write (one record).
_TLS_JOIN = 65536
_IOV_MAX = 512


class Stream:
    """A buffered non-blocking socket; see the module docstring.

    Callbacks: ``on_data(bytes)``, ``on_eof()`` (without one the stream
    closes itself at EOF), ``on_drain()`` (the write queue emptied, or fell
    to ``low_water``) and ``on_close(error_or_None)``, exactly once: the
    place errors arrive (AnyEvent::Handle's ``on_error``). Writing is
    :meth:`write` (``push_write``). Queued reads (:meth:`read_line`,
    :meth:`read_exactly`, AnyEvent's ``push_read``) take the data while any
    is queued; ``on_data`` gets what is left once the queue empties.

    Args:
        sock: a connected stream socket; it is made non-blocking.
        loop: ``None`` = this thread's default loop.
        read_size: the most bytes read per readable event. 64 KiB: each
            ``recv(n)`` allocates ``n`` bytes before shrinking them to what
            arrived, and above glibc's mmap threshold (128 KiB) that costs an
            mmap, page faults and an munmap per read (benchmarks/PROFILE.md:
            -40 % server CPU on small messages against 256 KiB).
        linger: seconds ``close()`` may spend flushing, and then again
            draining input before it closes the fd.
    """

    __slots__ = (
        "_sock", "_fd", "_loop", "on_data", "on_eof", "on_close", "on_drain",
        "read_size", "linger", "_rw", "_ww", "_queue", "_buffered",
        "_want_read", "_paused", "_eof", "_shut_pending", "_write_shut",
        "_closing", "_closed", "_no_write", "_timer", "_tls", "low_water", "_above_low", "_rq",
        "_soon", "_soon_size",
    )

    def __init__(
        self,
        sock: socket.socket | TlsSocket,
        loop: Loop | None = None,
        *,
        on_data: Callable[[bytes], Any] | None = None,
        on_eof: Callable[[], Any] | None = None,
        on_close: Callable[[Exception | None], Any] | None = None,
        on_drain: Callable[[], Any] | None = None,
        read_size: int = 65536,
        linger: float = 2.0,
    ) -> None:
        tls = sock if type(sock) is TlsSocket else None
        raw: socket.socket = sock.raw if tls is not None else sock  # type: ignore[union-attr, assignment]
        if raw.gettimeout() != 0.0:
            # (An accepted socket from tcp_server is non-blocking already:
            # asking again would cost an ioctl per connection.)
            raw.setblocking(False)
        self._sock = raw
        self._fd = raw.fileno()
        self._loop = loop if loop is not None else get_loop()
        self.on_data = on_data
        self.on_eof = on_eof
        self.on_close = on_close
        self.on_drain = on_drain
        self.read_size = read_size
        self.linger = linger
        self._rw: IoWatcher | None = None
        self._ww: IoWatcher | None = None
        # Created on the first partial write: an empty deque costs ~760 bytes,
        # and most connections never fill their kernel buffer.
        self._queue: deque[memoryview | bytes] | None = None
        self._buffered = 0
        self._want_read = False   # start_reading() was called
        self._paused = False
        self._eof = False         # the peer's EOF was seen
        self._shut_pending = False  # shut down the write side once flushed
        self._write_shut = False
        self._closing = False     # close() was called: flush, shut, drain
        self._closed = False      # the fd is closed
        # Any of _closing, _shut_pending, _write_shut (each only ever turns
        # True): write() tests one flag per message instead of three.
        self._no_write = False
        self._timer: Timer | None = None
        self._tls = tls
        #: ``on_drain`` also fires when the queue falls to this many bytes
        #: (from above), not only when it empties; see the module docstring.
        self.low_water = 0
        self._above_low = False
        # Queued reads (read_line/read_exactly): made on first use.
        self._rq: _ReadQueue | None = None
        # Bytes held until the end of the turn (write_each(..., soon=True)), in order.
        self._soon: list[bytes] | None = None
        self._soon_size = 0

    # -- properties ------------------------------------------------------

    @property
    def sock(self) -> socket.socket | TlsSocket:
        """The socket given (the :class:`~evws.reactor.tls.TlsSocket` on TLS)."""
        return self._tls if self._tls is not None else self._sock

    def fileno(self) -> int:
        """The fd the stream was created with (a method, as on sockets and files)."""
        return self._fd

    @property
    def closed(self) -> bool:
        """True once the fd is closed."""
        return self._closed

    @property
    def closing(self) -> bool:
        """True from ``close()``/``abort()`` on."""
        return self._closing or self._closed

    @property
    def buffered_amount(self) -> int:
        """Bytes accepted by ``write()`` and not yet handed to the kernel."""
        return self._buffered + self._soon_size

    @property
    def backlog(self) -> int:
        """Bytes the kernel did not take when they were sent: how far behind the peer is.

        :attr:`buffered_amount` less what is only held until the end of the turn
        (``write_each(..., soon=True)``), which has not been tried yet. A
        broadcast judges a member slow by this.
        """
        return self._buffered

    # -- reading ---------------------------------------------------------

    def start_reading(self) -> None:
        """Start delivering ``on_data``; call it once the callbacks are set."""
        self._want_read = True
        self._paused = False
        if self._rq is not None:
            self._rq.resumed()
        self._update_reader()
        tls = self._tls
        if tls is not None and (tls.incoming.pending or tls.ssl_object.pending()):
            self._loop.call_soon(self._tls_leftover)

    def pause_reading(self) -> None:
        """Stop reading (flow control); the kernel buffers, then the peer waits."""
        self._paused = True
        self._update_reader()

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`."""
        self._paused = False
        if self._rq is not None:
            self._rq.resumed()
        self._update_reader()

    def _update_reader(self) -> None:
        want = (not self._closed and not self._eof
                and (self._closing or (self._want_read and not self._paused
                                       and (self._rq is None or not self._rq.hold))))
        if want and self._rw is None:
            self._rw = self._loop.io(self._fd, "r", self._on_readable)
        elif not want and self._rw is not None:
            self._rw.cancel()
            self._rw = None

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(self.read_size)
        except _WAIT:
            return
        except OSError as exc:
            self._teardown(exc)
            return
        if data and not self._tls:
            # The common case first: bytes from a plain socket.
            if not self._closing and self.on_data is not None:
                self.on_data(data)
            return
        if self._tls is not None and data:
            if self._write_shut:
                return  # after our close_notify, input is drained unread (see above)
            self._take(*self._decrypt(data))
        else:
            self._take(data, not data, None)

    def _take(self, data: bytes, eof: bool, error: OSError | None) -> None:
        """What a read brought, in order: the data, then the error or the EOF (if any)."""
        if data and not self._closing and self.on_data is not None:
            self.on_data(data)
        if error is not None:
            self._teardown(error)
            return
        if not eof or self._closed:
            return  # (TLS: a partial record, or records with no data in them)
        self._eof = True
        self._update_reader()
        if self._closing:
            if not self._queue:
                self._teardown(None)
        elif self.on_eof is not None:
            self.on_eof()
        else:
            self.close()

    # -- queued reads (AnyEvent::Handle push_read) ----------------------

    def read_line(self, fn: Callable[[bytes], Any], sep: bytes = b"\n", *,
                  max_size: int = 65536) -> None:
        """Queue a request for the next line: ``fn(line)``, without ``sep``.

        AnyEvent::Handle's ``push_read(line => ...)``. Requests are met in
        the order queued (see the module docstring for how they share the
        data with ``on_data``); reading starts if it had not. ``fn`` runs on
        the loop, never inside this call, even when the line is already
        buffered. For CRLF protocols pass ``sep=b"\r\n"``.

        Args:
            max_size: the longest line accepted, separator excluded; a
                longer one fails the stream with
                :class:`~evws.errors.LineTooLong` (to ``on_close``), so a
                peer that never sends ``sep`` cannot make us buffer forever.

        Raises:
            ValueError: empty ``sep`` or ``max_size`` < 1.
            BrokenPipeError: the stream is closing or closed.
        """
        if not sep:
            raise ValueError("sep must not be empty")
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._queue_read((bytes(sep), max_size, fn))

    def read_exactly(self, n: int, fn: Callable[[bytes], Any]) -> None:
        """Queue a request for exactly ``n`` bytes: ``fn(data)``.

        AnyEvent::Handle's ``push_read(chunk => n, ...)``: for length-prefixed
        records (read the header, then ``read_exactly(length, ...)``).
        Ordered with :meth:`read_line` requests; ``n`` may be 0.

        Raises:
            ValueError: ``n`` < 0.
            BrokenPipeError: the stream is closing or closed.
        """
        if n < 0:
            raise ValueError("n must not be negative")
        self._queue_read((None, n, fn))

    def _queue_read(self, request: tuple[bytes | None, int, Callable[[bytes], Any]]) -> None:
        if self._closing:
            raise BrokenPipeError(errno.EPIPE, "stream is closed for reading")
        rq = self._rq
        if rq is None:
            rq = self._rq = _ReadQueue(self)
        rq.push(request)
        self._want_read = True
        self._update_reader()

    @property
    def read_buffer(self) -> bytes:
        """Bytes received that no read request took yet (say, a partial line at EOF)."""
        return bytes(self._rq.buf) if self._rq is not None else b""

    def _decrypt(self, data: bytes) -> tuple[bytes, bool, OSError | None]:
        """Feed ciphertext to OpenSSL; take all the plaintext it has.

        Returns ``(plaintext, eof_seen, error)``: an error met after some
        data is reported with it, so the data is delivered before the stream
        fails. Whatever OpenSSL writes in answer (TLS 1.3 key updates) is sent.
        """
        tls = self._tls
        assert tls is not None
        ssl_object = tls.ssl_object
        incoming = tls.incoming
        if data:
            incoming.write(data)
        read = ssl_object.read
        parts: list[bytes] = []
        eof = False
        error: OSError | None = None
        while True:
            try:
                chunk = read(65536)
            except ssl.SSLWantReadError:
                break  # the rest of a record is still on its way
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                eof = True  # close_notify (or a truncation, which SSLSocket also reads as EOF)
                break
            except OSError as exc:  # ssl.SSLError: a bad record, a fatal alert
                error = exc
                break
            if not chunk:
                eof = True
                break
            parts.append(chunk)
            if not incoming.pending and not ssl_object.pending():
                # Every byte fed was used and handed out: asking again would
                # only raise SSLWantReadError (an exception per message).
                break
        if tls.outgoing.pending and not self._no_write:
            # OpenSSL answered on its own (a TLS 1.3 key update): behind anything
            # queued; the write watcher sends it.
            self._enqueue(memoryview(tls.outgoing.read()))
        return (parts[0] if len(parts) == 1 else b"".join(parts)), eof, error

    def _tls_leftover(self) -> None:
        """Deliver what came with the handshake's last flight (select cannot see it)."""
        if self._closed or self._tls is None or not self._want_read:
            return
        tls = self._tls
        if tls.incoming.pending or tls.ssl_object.pending():
            self._take(*self._decrypt(b""))

    # -- writing ---------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Send ``data``, queueing what the kernel does not take now.

        Returns:
            :attr:`buffered_amount` after the call (0 when the kernel took
            everything): what a producer checks for flow control, without
            asking again.

        Raises:
            BrokenPipeError: after ``close()``, ``abort()`` or
                ``shutdown_write()``, or once the stream failed.
        """
        # _no_write: closing, closed or shut down for writing, in one test.
        if self._no_write:
            raise BrokenPipeError(errno.EPIPE, "stream is closed for writing")
        if type(data) is not bytes:
            # Any other buffer goes through a flat byte view, so len() counts bytes.
            view = memoryview(data)
            if view.ndim != 1 or view.itemsize != 1:
                view = view.cast("B")
            data = view
        size = len(data)
        if not size:
            return self._buffered + self._soon_size
        if self._soon is not None:
            # Bytes held for the end of the turn go first: these join them. The
            # caller sees them in the count, so it hears on_drain once they
            # are out (a count it never saw needs no such news).
            self._soon.append(data if type(data) is bytes else bytes(data))
            self._soon_size += size
            self._above_low = True
            return self._buffered + self._soon_size
        if self._tls is not None:
            # Encrypt; from here on the bytes are the records OpenSSL wrote.
            tls = self._tls
            try:
                tls.ssl_object.write(data)
            except (OSError, ValueError) as exc:  # ssl.SSLError: the TLS state is broken
                self._teardown(exc if isinstance(exc, OSError) else OSError(str(exc)), defer=True)
                return self._buffered
            data = tls.outgoing.read()
            size = len(data)
        if self._queue:
            self._enqueue(data if type(data) is memoryview else memoryview(data))
            return self._buffered
        # The common case: nothing queued, hand ``data`` to the kernel as it is
        # (no view made unless some of it must wait).
        try:
            sent = self._sock.send(data)
        except _WAIT:
            sent = 0
        except OSError as exc:
            self._teardown(exc, defer=True)
            return self._buffered
        if sent < size:
            self._enqueue(memoryview(data)[sent:])
        return self._buffered

    def writev(self, chunks: list[bytes]) -> int:
        """Write ``chunks`` back to back, with one ``sendmsg`` when possible; return as :meth:`write`.

        Why: a frame header and a large payload are separate chunks (the
        payload is never copied into a joined buffer), and two ``send`` calls
        would cost a second syscall and a second TCP segment per message:
        about +5 us of CPU per 4 KiB echo on loopback (benchmarks/PROFILE.md,
        phase 3). On TLS (records are made before the send) chunks up to
        ``_TLS_JOIN`` bytes in all are joined and written once: one TLS record
        and one syscall per message instead of one per chunk (a header and
        its payload would otherwise be two records), for the price of copying
        a few KiB. With data already queued, larger TLS writes or without
        ``sendmsg``, it is :meth:`write` per chunk.

        Raises:
            BrokenPipeError: as :meth:`write`.
        """
        if self._tls and len(chunks) > 1 and not self._queue:
            total = sum(map(len, chunks))
            if total <= _TLS_JOIN:
                return self.write(b"".join(chunks))
        if (len(chunks) == 1 or self._queue or self._tls or not _SENDMSG
                or len(chunks) > _IOV_MAX or self._soon is not None):
            for chunk in chunks:
                self.write(chunk)
            return self._buffered + self._soon_size
        if self._no_write:
            raise BrokenPipeError(errno.EPIPE, "stream is closed for writing")
        try:
            sent = self._sock.sendmsg(chunks)
        except _WAIT:
            sent = 0
        except OSError as exc:
            self._teardown(exc, defer=True)
            return self._buffered
        for chunk in chunks:
            size = len(chunk)
            if sent >= size:
                sent -= size  # taken whole by the kernel (or empty)
                continue
            self._enqueue(memoryview(chunk)[sent:])
            sent = 0
        return self._buffered

    def _send_soon(self) -> None:
        """Write what is held for the end of the turn now, through :meth:`write` (order kept)."""
        held, self._soon = self._soon, None
        self._soon_size = 0
        if held and not self._no_write:
            for chunk in held:
                self.write(chunk)

    def _enqueue(self, view: memoryview) -> None:
        # A view of a mutable buffer would see the caller's later changes
        # (and pin the buffer's size): keep a private copy of those only.
        chunk: memoryview | bytes = view if view.readonly else view.tobytes()
        if self._queue is None:
            self._queue = deque()
        self._queue.append(chunk)
        self._buffered += len(view)
        if self._buffered > self.low_water:
            self._above_low = True
        if self._ww is None:
            self._ww = self._loop.io(self._fd, "w", self._on_writable)

    def _on_writable(self) -> None:
        queue = self._queue
        assert queue is not None
        send = self._sock.send
        while queue:
            chunk = queue[0]
            try:
                sent = send(chunk)
            except _WAIT:
                return
            except OSError as exc:
                self._teardown(exc)
                return
            self._buffered -= sent
            if sent < len(chunk):
                # The kernel buffer is full: wait for the next writable event.
                queue[0] = memoryview(chunk)[sent:]
                if self._above_low and self._buffered <= self.low_water:
                    # Down to the low-water mark: the owner may queue more.
                    self._above_low = False
                    if not self._closing and self.on_drain is not None:
                        self.on_drain()
                return
            queue.popleft()
        self._ww.cancel()  # type: ignore[union-attr]
        self._ww = None
        self._above_low = False
        self._drained()

    def _drained(self) -> None:
        """The queue just emptied: finish pending shutdown/close, tell the owner."""
        if self._shut_pending or self._closing:
            self._shut_write()
        if self._closing:
            self._start_draining()
        elif self.on_drain is not None:
            self.on_drain()

    def shutdown_write(self) -> None:
        """Send EOF (``SHUT_WR``) once everything queued has been written."""
        if self._closed or self._closing or self._shut_pending or self._write_shut:
            return
        if self._soon is not None:
            self._send_soon()
        self._shut_pending = True
        self._no_write = True
        if not self._queue:
            self._shut_write()

    def _shut_write(self) -> None:
        self._shut_pending = False
        if self._write_shut:
            return
        self._write_shut = True
        self._no_write = True
        if self._tls:
            self._send_close_notify()
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            # ENOTCONN: the peer reset meanwhile; the read side will tell.
            log.debug("shutdown(SHUT_WR) on fd %d failed: %r", self._fd, exc)

    def _send_close_notify(self) -> None:
        """Send TLS close_notify without blocking (``SHUT_WR`` alone would drop TLS without it)."""
        tls = self._tls
        assert tls is not None
        try:
            tls.ssl_object.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            # Written; OpenSSL would now like the peer's close_notify, which
            # the lingering read below drains (or the timer gives up on).
            pass
        except (OSError, ValueError) as exc:
            log.debug("fd %d: TLS close_notify not made: %r", self._fd, exc)
        alert = tls.outgoing.read()
        if alert:
            # The queue is empty here (shutdown waits for it), and the alert is
            # a few dozen bytes: the kernel takes it, or the peer is gone.
            try:
                self._sock.send(alert)
            except OSError as exc:
                log.debug("fd %d: TLS close_notify not sent: %r", self._fd, exc)

    # -- closing ---------------------------------------------------------

    def close(self) -> None:
        """Close gracefully: flush, shut down writing, drain input, close.

        Flushing and draining are each bounded by ``linger`` seconds.
        ``on_data`` is no longer called. Idempotent.
        """
        if self._closed or self._closing:
            return
        if self._soon is not None:
            self._send_soon()  # what is held for the end of the turn goes out first
        self._closing = True
        self._no_write = True
        self._update_reader()  # discard input while flushing, too
        if self._queue:
            self._timer = self._loop.timer(self.linger, self._flush_timeout)
        else:
            self._shut_write()
            self._start_draining()

    def _flush_timeout(self) -> None:
        self._timer = None
        self._teardown(TimeoutError(
            errno.ETIMEDOUT,
            f"could not flush {self._buffered} bytes within {self.linger} s"))

    def _start_draining(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._eof:
            self._teardown(None)
            return
        self._update_reader()
        self._timer = self._loop.timer(self.linger, self._drain_timeout)

    def _drain_timeout(self) -> None:
        self._timer = None
        log.debug("fd %d: no EOF from the peer within %s s; closing", self._fd, self.linger)
        self._teardown(None)

    def detach(self) -> socket.socket:
        """Stop watching the socket and hand it over open and untouched.

        For a protocol switch: a WSGI server (``evws.wsgi``) lets go of a
        connection that a view upgraded to WebSocket, and the new owner wraps
        the socket in a Stream of its own. No callback fires and the stream
        counts as closed from then on.

        Raises:
            ValueError: already closed, or bytes are still queued (they would
                be lost, or overtaken by the new owner's first write).
        """
        if self._closed:
            raise ValueError("stream is closed")
        if self._tls is not None:
            raise ValueError("a TLS stream cannot be detached (its TLS state would be lost)")
        if self._soon is not None:
            self._send_soon()
        if self._queue:
            raise ValueError(f"{self._buffered} bytes still queued; wait for on_drain")
        self._closed = self._closing = self._no_write = True
        for guard in (self._rw, self._ww, self._timer):
            if guard is not None:
                guard.cancel()
        self._rw = self._ww = None
        self._timer = None
        self._queue = None
        self.on_data = self.on_eof = self.on_drain = self.on_close = None
        return self._sock

    def abort(self) -> None:
        """Close the socket now, dropping queued data; ``on_close(None)``."""
        if not self._closed:
            self._teardown(None)

    def _teardown(self, error: Exception | None, defer: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing = True
        self._no_write = True
        if self._rw is not None:
            self._rw.cancel()
            self._rw = None
        if self._ww is not None:
            self._ww.cancel()
            self._ww = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue = None
        self._buffered = 0
        self._soon = None
        self._soon_size = 0
        if self._rq is not None:
            self._rq.requests.clear()  # drop the callbacks (and their cycles)
        try:
            self._sock.close()
        except OSError:
            pass
        if error is not None:
            log.debug("fd %d closed on error: %r", self._fd, error)
        on_close = self.on_close
        # Break the reference cycles owner <-> stream once nothing can fire.
        self.on_data = self.on_eof = self.on_drain = self.on_close = None
        if on_close is not None:
            if defer:
                self._loop.call_soon(on_close, error)
            else:
                on_close(error)

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._closing:
            state = "closing"
        else:
            state = "open"
        return f"<Stream fd={self._fd} {state} buffered={self._buffered}>"


def _py_send_each(fds: list[int], data: bytes) -> list[tuple[int, int]]:
    """The pure-Python twin of ``evws._speedups.send_each`` (see _speedups.c)."""
    short: list[tuple[int, int]] = []
    blocked: set[int] = set()
    size = len(data)
    if not size:
        return short
    for index, fd in enumerate(fds):
        if fd in blocked:
            short.append((index, 0))
            continue
        try:
            sent = os.write(fd, data)
        except OSError:  # would block, or failed: the caller's write() sorts it out
            sent = 0
        if sent < size:
            short.append((index, sent))
            blocked.add(fd)
    return short


_send_each: Callable[[list[int], bytes], list[tuple[int, int]]] = (
    c_function("send_each") or _py_send_each)


def write_each(streams: list[Stream], data: bytes, *, soon: bool = False) -> list[tuple[int, int]]:
    """``stream.write(data)`` for every stream, with one C loop of ``send`` for most of them.

    Why: fan-out writes the same frame to a thousand streams, and a Python
    call of ``write`` per stream costs more than the ``send`` in it. The
    streams that are plain sockets with nothing queued and writing open --
    where ``write`` would just call ``send`` -- get their bytes from one
    ``send_each`` call; the rest, and what a socket did not take (a short
    send, "would block", an error), go through :meth:`Stream.write` as
    usual, so queueing, TLS and error handling stay in one place. A stream
    listed twice gets its copies in order.

    With ``soon=True`` those plain streams get the bytes at the end of the
    loop's turn instead (``Loop.at_turn_end``: before it polls again), together with everything else
    written to them in between -- more ``write_each(..., soon=True)`` calls
    or plain ``write()`` s, in order -- in one ``send`` per stream, and one
    C loop for the streams that got the same bytes. That is the fan-out of
    several messages in one turn for the price of one (see the module
    docstring). Until then the bytes count in ``buffered_amount`` but not in
    ``backlog``; ``on_drain`` fires once they are out if a ``write()`` in
    between reported them.

    Returns:
        ``(index, buffered_amount)`` for each stream left with queued
        output, for the caller's flow control (most calls: an empty list;
        with ``soon``, bytes held for the end of the turn are not "queued" here).
    """
    if soon:
        return _hold_each(streams, data)
    fds: list[int] = []
    direct: list[int] = []  # the index in ``streams`` of each of ``fds``
    queued: list[tuple[int, int]] = []
    plain = socket.socket
    for index, stream in enumerate(streams):
        if (stream._queue or stream._no_write or stream._soon is not None
                or stream._tls is not None or type(stream._sock) is not plain):
            # The general path (write() also joins bytes held for the end of
            # the turn). A stream listed again stays on it: its queue only
            # grows, and _no_write and the socket never change back.
            _write_noting(stream, data, index, queued)
        else:
            fds.append(stream._fd)
            direct.append(index)
    if fds:
        for position, sent in _send_each(fds, data):
            index = direct[position]
            _write_noting(streams[index], memoryview(data)[sent:] if sent else data, index, queued)
    return sorted(queued) if len(queued) > 1 else queued


def _write_noting(stream: Stream, data: bytes | memoryview, index: int,
                  queued: list[tuple[int, int]]) -> None:
    """``stream.write(data)`` on write_each's general path; note ``(index, buffered)`` if it queued."""
    try:
        buffered = stream.write(data)
    except BrokenPipeError:
        return  # closing or failed: passed over
    if buffered:
        queued.append((index, buffered))


# Streams holding bytes until the end of the turn, per loop (write_each(..., soon=True)).
_held: dict[Loop, list[Stream]] = {}


def _hold_each(streams: list[Stream], data: bytes) -> list[tuple[int, int]]:
    """``write_each(streams, data, soon=True)``."""
    queued: list[tuple[int, int]] = []
    size = len(data)
    if not size:
        return queued
    plain = socket.socket
    loop: Loop | None = None
    held: list[Stream] | None = None
    for index, stream in enumerate(streams):
        soon = stream._soon
        if soon is not None:
            soon.append(data)
            stream._soon_size += size
        elif (stream._queue or stream._no_write or stream._tls is not None
              or type(stream._sock) is not plain):
            _write_noting(stream, data, index, queued)
        else:
            if stream._loop is not loop:
                loop = stream._loop
                held = _held.get(loop)
                if held is None:
                    held = _held_for(loop)
            if held is None:  # a closed loop has no turn to end: write now
                _write_noting(stream, data, index, queued)
                continue
            stream._soon = [data]
            stream._soon_size = size
            held.append(stream)
    return sorted(queued) if len(queued) > 1 else queued


def _held_for(loop: Loop) -> list[Stream] | None:
    """A new list of held streams for ``loop``'s turn, and its flush at the turn's end.

    None for a closed loop (no turn of it will end).
    """
    # A loop closed before its turn ended never flushed: forget its streams
    # (their sockets are the owners' to close) instead of keeping them alive.
    for stale in [lp for lp in _held if lp.closed]:
        del _held[stale]
    if loop.closed:
        return None
    held: list[Stream] = []
    _held[loop] = held
    loop.at_turn_end(_send_held, loop)
    return held


def _send_held(loop: Loop) -> None:
    """The end of the turn of ``write_each(..., soon=True)``: send what the streams hold.

    Three steps, so that no callback runs while a stream's bytes are half
    handled: take every stream's held bytes (grouping the streams that hold
    the same objects, as a broadcast leaves them), send each group's bytes
    with one C loop, then queue what a socket did not take and tell the
    owners (``on_drain``), who may write again.
    """
    groups: dict[int | tuple[int, ...], tuple[bytes, list[Stream]]] = {}
    for stream in _held.pop(loop, ()):
        held = stream._soon
        if held is None:
            continue  # written out by close()/shutdown_write(), or torn down
        # Still held, so nothing is queued and writing is open: a stream is
        # held only then, and write(), close(), shutdown_write() and
        # teardown all take its held bytes first.
        stream._soon = None
        stream._soon_size = 0
        key = id(held[0]) if len(held) == 1 else tuple(map(id, held))
        group = groups.get(key)
        if group is None:
            groups[key] = (held[0] if len(held) == 1 else b"".join(held), [stream])
        else:
            group[1].append(stream)
    short: list[tuple[Stream, memoryview | bytes]] = []
    for data, members in groups.values():
        for position, sent in _send_each([m._fd for m in members], data):
            short.append((members[position], memoryview(data)[sent:] if sent else data))
    for stream, rest in short:
        try:
            stream.write(rest)
        except BrokenPipeError:
            pass
    for _data, members in groups.values():
        for stream in members:
            # Only an owner whose write() returned a count with held bytes
            # in it may be waiting (write_each(..., soon=True) does not
            # report held bytes); one with a backlog hears it later.
            if stream._above_low and not stream._buffered:
                stream._above_low = False
                if not stream._closing and stream.on_drain is not None:
                    stream.on_drain()


class _ReadQueue:
    """The read requests of one :class:`Stream`, and the bytes they wait on.

    While requests are queued, :meth:`feed` is the stream's ``on_data``
    (the user's is kept in ``saved`` and put back when the queue empties), so
    the stream's read path has no test of its own for requests.
    """

    __slots__ = ("stream", "requests", "buf", "saved", "hold", "scheduled", "scan")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.requests: deque[tuple[bytes | None, int, Callable[[bytes], Any]]] = deque()
        self.buf = bytearray()
        self.saved: Callable[[bytes], Any] | None = None
        self.hold = False       # no request and nobody else to take data: don't read
        self.scheduled = False  # a process() is pending on the loop
        self.scan = 0           # bytes of buf already searched for the first sep

    def push(self, request: tuple[bytes | None, int, Callable[[bytes], Any]]) -> None:
        stream = self.stream
        if not self.requests:
            if stream.on_data != self.feed:
                self.saved = stream.on_data
                stream.on_data = self.feed
            self.hold = False
        self.requests.append(request)
        if (self.buf or not request[1]) and not self.scheduled:
            # Buffered bytes may already meet it: next turn, never inside
            # read_line() itself (the caller may not be ready for its callback).
            self.scheduled = True
            stream._loop.call_soon(self.process)

    def feed(self, data: bytes) -> None:
        self.buf += data
        self.process()

    def process(self) -> None:
        self.scheduled = False
        stream = self.stream
        requests = self.requests
        buf = self.buf
        while requests and not stream._closing:
            sep, size, fn = requests[0]
            if sep is None:
                if len(buf) < size:
                    break
                data = bytes(buf[:size])
                del buf[:size]
            else:
                # Resume the search where the last one stopped (minus a
                # separator's worth): a long line arriving in small pieces
                # costs one pass, not one per piece.
                at = buf.find(sep, max(0, self.scan - len(sep) + 1))
                if at < 0 or at > size:
                    if at > size or len(buf) > size + len(sep) - 1:
                        stream._teardown(LineTooLong(
                            f"line longer than {size} bytes without {sep!r}"))
                        return
                    self.scan = len(buf)
                    break
                data = bytes(buf[:at])
                del buf[:at + len(sep)]
            self.scan = 0
            requests.popleft()
            try:
                fn(data)
            except Exception:
                log.exception("exception in read callback %r", fn)
        if requests or stream._closing:
            return
        # The queue is empty: the data goes back to on_data, or waits.
        if stream.on_data == self.feed:
            stream.on_data = self.saved
        self.saved = None
        if stream.on_data is not None:
            self.flush()
        elif not self.hold:
            self.hold = True
            stream._update_reader()

    def flush(self) -> None:
        """Hand the leftover bytes to ``on_data``."""
        on_data = self.stream.on_data
        if self.buf and on_data is not None and not self.requests:
            data = bytes(self.buf)
            self.buf.clear()
            self.scan = 0
            on_data(data)

    def resumed(self) -> None:
        """``start_reading``/``resume_reading``: an ``on_data`` set since gets the rest."""
        stream = self.stream
        if not self.requests and stream.on_data is not None:
            self.hold = False
            if self.buf:
                stream._loop.call_soon(self.flush)
