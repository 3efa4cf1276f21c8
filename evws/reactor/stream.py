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

TLS: ``sock`` may be an ``ssl.SSLSocket`` whose handshake is done (see
:mod:`evws.reactor.tls`). Three things differ, each for a reason:

- After each read the stream also takes what OpenSSL already decrypted
  (``pending()``) and keeps reading records until it would block (up to
  ``read_size``): ``select`` only sees the kernel's buffer, so bytes left in
  OpenSSL's would wait until the peer happened to send more.
- ``SSLWantReadError``/``SSLWantWriteError`` can come from either direction;
  both just mean "retry later". OpenSSL wants a retried ``SSL_write`` to get
  the same bytes again, which the write queue does: a chunk leaves the queue
  only once ``send`` accepted it.
- Closing sends close_notify first, with a non-blocking ``unwrap()`` (a
  plain ``shutdown(SHUT_WR)`` would end TCP without it, a truncation to the
  peer), then shuts down TCP and lingers as usual. After that, what the peer
  sends is discarded, so ``shutdown_write()`` on a TLS stream also ends
  delivery of data (TLS has no half-close a peer can rely on).
"""


from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections import deque
from typing import Any, Callable

from .loop import IoWatcher, Loop, Timer, get_loop

__all__ = ["Stream"]

log = logging.getLogger("evws.stream")

# "Try again later", not a failure. SSL ones first: they are OSErrors too.
_WAIT = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError)

# writev() gathers chunks with one sendmsg() where the platform has it
# (not on Windows), up to this many at a time (POSIX guarantees IOV_MAX >= 16;
# Linux allows 1024).
_SENDMSG = hasattr(socket.socket, "sendmsg")
_IOV_MAX = 512


class Stream:
    """A buffered non-blocking socket; see the module docstring.

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
        "_closing", "_closed", "_timer", "_tls", "low_water", "_above_low",
    )

    def __init__(
        self,
        sock: socket.socket,
        loop: Loop | None = None,
        *,
        on_data: Callable[[bytes], Any] | None = None,
        on_eof: Callable[[], Any] | None = None,
        on_close: Callable[[Exception | None], Any] | None = None,
        on_drain: Callable[[], Any] | None = None,
        read_size: int = 65536,
        linger: float = 2.0,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
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
        self._timer: Timer | None = None
        self._tls = isinstance(sock, ssl.SSLSocket)
        #: ``on_drain`` also fires when the queue falls to this many bytes
        #: (from above), not only when it empties; see the module docstring.
        self.low_water = 0
        self._above_low = False

    # -- properties ------------------------------------------------------

    @property
    def sock(self) -> socket.socket:
        return self._sock

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
        return self._buffered

    # -- reading ---------------------------------------------------------

    def start_reading(self) -> None:
        """Start delivering ``on_data``; call it once the callbacks are set."""
        self._want_read = True
        self._paused = False
        self._update_reader()

    def pause_reading(self) -> None:
        """Stop reading (flow control); the kernel buffers, then the peer waits."""
        self._paused = True
        self._update_reader()

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`."""
        self._paused = False
        self._update_reader()

    def _update_reader(self) -> None:
        want = (not self._closed and not self._eof
                and (self._closing or (self._want_read and not self._paused)))
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
        eof = not data
        error: OSError | None = None
        if self._tls and data:
            data, eof, error = self._read_more_tls(data)
        if data:
            # A TLS stream whose close_notify went out discards input (see above).
            if (not self._closing and not (self._tls and self._write_shut)
                    and self.on_data is not None):
                self.on_data(data)
            if error is not None:
                self._teardown(error)
                return
            if not eof or self._closed:
                return
        self._eof = True
        self._update_reader()
        if self._closing:
            if not self._queue:
                self._teardown(None)
        elif self.on_eof is not None:
            self.on_eof()
        else:
            self.close()

    def _read_more_tls(self, first: bytes) -> tuple[bytes, bool, OSError | None]:
        """Take decrypted bytes OpenSSL holds, then more records, up to ``read_size``.

        Returns ``(data, eof_seen, error)``: an error met after some data
        is reported with it, so the data is delivered before the stream fails.
        """
        sock = self._sock
        parts = [first]
        total = len(first)
        while total < self.read_size or sock.pending():  # type: ignore[attr-defined]
            try:
                more = sock.recv(max(self.read_size - total, sock.pending()))  # type: ignore[attr-defined]
            except _WAIT:
                break
            except OSError as exc:
                return b"".join(parts), False, exc
            if not more:
                return b"".join(parts), True, None
            parts.append(more)
            total += len(more)
        return (first if len(parts) == 1 else b"".join(parts)), False, None

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
        # _closed implies _closing: one test fewer per message.
        if self._closing or self._shut_pending or self._write_shut:
            raise BrokenPipeError(errno.EPIPE, "stream is closed for writing")
        if type(data) is not bytes:
            # Any other buffer goes through a flat byte view, so len() counts bytes.
            view = memoryview(data)
            if view.ndim != 1 or view.itemsize != 1:
                view = view.cast("B")
            data = view
        size = len(data)
        if not size:
            return self._buffered
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
        phase 3). With data already queued, on TLS (``SSLSocket`` has no
        ``sendmsg``) or without ``sendmsg``, it is :meth:`write` per chunk.

        Raises:
            BrokenPipeError: as :meth:`write`.
        """
        if (len(chunks) == 1 or self._queue or self._tls or not _SENDMSG
                or len(chunks) > _IOV_MAX):
            for chunk in chunks:
                self.write(chunk)
            return self._buffered
        if self._closing or self._shut_pending or self._write_shut:
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
        self._shut_pending = True
        if not self._queue:
            self._shut_write()

    def _shut_write(self) -> None:
        self._shut_pending = False
        if self._write_shut:
            return
        self._write_shut = True
        if self._tls:
            self._send_close_notify()
        try:
            # socket.socket.shutdown, not SSLSocket.shutdown: the latter would
            # forget the TLS layer, and reads could no longer be drained.
            socket.socket.shutdown(self._sock, socket.SHUT_WR)
        except OSError as exc:
            # ENOTCONN: the peer reset meanwhile; the read side will tell.
            log.debug("shutdown(SHUT_WR) on fd %d failed: %r", self._fd, exc)

    def _send_close_notify(self) -> None:
        """Send TLS close_notify without blocking (``SHUT_WR`` alone would drop TLS without it)."""
        try:
            self._sock.unwrap()  # type: ignore[attr-defined]
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            # Sent; OpenSSL would now like the peer's close_notify, which
            # the lingering read below drains (or the timer gives up on).
            pass
        except (OSError, ValueError) as exc:
            log.debug("fd %d: TLS close_notify not sent: %r", self._fd, exc)

    # -- closing ---------------------------------------------------------

    def close(self) -> None:
        """Close gracefully: flush, shut down writing, drain input, close.

        Flushing and draining are each bounded by ``linger`` seconds.
        ``on_data`` is no longer called. Idempotent.
        """
        if self._closed or self._closing:
            return
        self._closing = True
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
        if self._queue:
            raise ValueError(f"{self._buffered} bytes still queued; wait for on_drain")
        self._closed = self._closing = True
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
