"""TLS on the loop: contexts, the TLS socket, and a non-blocking handshake.

Why a module of its own: the TLS handshake must not block the single-threaded
loop, so it is driven here by readiness watchers. Once it is done the
connection is an ordinary stream for :class:`~evws.reactor.stream.Stream`.

Why memory BIOs (:class:`TlsSocket`) and not ``ssl.SSLSocket``: an
``SSLSocket`` reads through OpenSSL's socket BIO with read-ahead off (CPython
has no switch for it), so every record costs two ``read`` syscalls, one for
its 5-byte header and one for its body, and what OpenSSL has decrypted but
not handed out is invisible to ``select``. Here the stream reads whatever
the kernel holds with one ``recv``, feeds it to OpenSSL
(``ssl.MemoryBIO``), and takes out all the plaintext there is; what OpenSSL
writes is sent from the outgoing BIO through the stream's ordinary write
queue (ciphertext can be sent in any pieces, unlike a retried ``SSL_write``).
asyncio's and uvloop's TLS work the same way (benchmarks/PROFILE.md,
phase 10).
"""

from __future__ import annotations

import errno
import socket
import ssl
from typing import Any

from ..errors import Cancelled
from .condvar import CondVar
from .loop import IoWatcher, Loop, Timer, get_loop

__all__ = ["TlsSocket", "server_context", "client_context", "wrap_server", "wrap_client",
           "tls_handshake", "start_tls"]

_WAIT = (BlockingIOError, InterruptedError)


class TlsSocket:
    """A TLS connection over a plain non-blocking socket: an ``ssl.SSLObject`` and two memory BIOs.

    What a :class:`~evws.reactor.stream.Stream` is given for TLS, and what
    ``conn.stream.sock`` is on a TLS connection. The TLS information methods
    of ``ssl.SSLSocket`` (``version()``, ``cipher()``, ``getpeercert()``,
    ``selected_alpn_protocol()``, ``server_hostname``, ...) are those of
    :attr:`ssl_object`; socket methods (``fileno()``, ``getpeername()``,
    ``setsockopt()``, ``close()``, ...) those of :attr:`raw`.

    Made from a plain socket, it takes its fd over: the socket given is left
    detached (``fileno()`` -1, closing it does nothing), as after
    ``SSLContext.wrap_socket``.

    Attributes:
        raw: the TCP (or Unix) socket, non-blocking.
        ssl_object: the ``ssl.SSLObject`` (the TLS state).
        incoming, outgoing: the ``ssl.MemoryBIO`` s between the two.
    """

    __slots__ = ("raw", "ssl_object", "incoming", "outgoing")

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None) -> None:
        # Take the fd over and leave ``sock`` detached, as ``wrap_socket`` does:
        # a caller that closes its socket after a failed handshake (the usual
        # AnyEvent pattern) must not close the fd under the stream that is
        # still answering on it.
        raw = socket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        raw.setblocking(False)
        self.raw = raw
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.ssl_object = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server_side,
                                       server_hostname=server_hostname)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not defined here: TLS details, then socket methods.
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return getattr(self.ssl_object, name)
        except AttributeError:
            return getattr(self.raw, name)

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        self.raw.close()

    def __repr__(self) -> str:
        return f"<TlsSocket fd={self.raw.fileno()} {self.ssl_object.version() or 'handshaking'}>"


def server_context(cert_file: str, key_file: str | None = None) -> ssl.SSLContext:
    """A server context from a PEM certificate chain and its key.

    ``key_file`` may be ``None`` when ``cert_file`` holds the key too, as
    AnyEvent::WebSocket::Server's ``ssl_cert_file`` allows.

    Raises:
        OSError / ssl.SSLError: the files cannot be read or do not match.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def client_context(cafile: str | None = None) -> ssl.SSLContext:
    """A verifying client context: system CAs (or ``cafile``), hostname check on."""
    return ssl.create_default_context(cafile=cafile)


def wrap_server(sock: socket.socket, ctx: ssl.SSLContext) -> TlsSocket:
    """The server side of TLS over an accepted socket, handshake not started."""
    return TlsSocket(sock, ctx, server_side=True)


def wrap_client(sock: socket.socket, ctx: ssl.SSLContext, server_hostname: str | None) -> TlsSocket:
    """The client side of TLS over a connected socket, handshake not started.

    ``server_hostname`` is sent as SNI (not for IP literals) and checked
    against the certificate when the context has ``check_hostname``.
    """
    return TlsSocket(sock, ctx, server_side=False, server_hostname=server_hostname)


class _Handshaker:
    """Drives ``do_handshake``: what OpenSSL writes goes out, what the peer sends comes in."""

    __slots__ = ("loop", "sock", "cv", "watcher", "mode", "timer", "unsent")

    def __init__(self, loop: Loop, sock: TlsSocket, cv: CondVar) -> None:
        self.loop = loop
        self.sock = sock
        self.cv = cv
        self.unsent = b""  # handshake bytes the kernel did not take yet
        self.watcher: IoWatcher | None = None
        self.mode = ""
        self.timer: Timer | None = None

    def step(self) -> None:
        if self.cv.ready:
            return
        tls = self.sock
        try:
            tls.ssl_object.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        except OSError as exc:  # ssl.SSLError (a bad certificate, ...), or a reset
            self.flush()  # the alert that says why, if the kernel takes it
            self.fail(exc)
            return
        try:
            if not self.flush():
                self.wait("w")  # the rest of our flight first
                return
        except OSError as exc:
            self.fail(exc)
            return
        if done:
            self.stop()
            self.cv.send(tls)
        else:
            self.wait("r")

    def flush(self) -> bool:
        """Send what OpenSSL wrote; True once nothing is left unsent."""
        tls = self.sock
        data = self.unsent + tls.outgoing.read()
        if data:
            try:
                sent = tls.raw.send(data)
            except _WAIT:
                sent = 0
            self.unsent = data[sent:]
        return not self.unsent

    def readable(self) -> None:
        tls = self.sock
        try:
            data = tls.raw.recv(65536)
        except _WAIT:
            return
        except OSError as exc:
            self.fail(exc)
            return
        if not data:
            self.fail(ssl.SSLEOFError(ssl.SSL_ERROR_EOF, "EOF occurred in violation of protocol"))
            return
        tls.incoming.write(data)
        self.step()

    def writable(self) -> None:
        try:
            if self.flush():
                self.step()
        except OSError as exc:
            self.fail(exc)

    def wait(self, mode: str) -> None:
        if self.mode == mode and self.watcher is not None:
            return
        if self.watcher is not None:
            self.watcher.cancel()
        self.mode = mode
        self.watcher = self.loop.io(self.sock.raw, mode,
                                    self.readable if mode == "r" else self.writable)

    def fail(self, error: BaseException) -> None:
        self.stop()
        self.cv.croak(error)

    def timed_out(self, after: float) -> None:
        self.timer = None
        self.fail(TimeoutError(errno.ETIMEDOUT, f"TLS handshake not done within {after} s"))

    def cancel(self, error: BaseException | None) -> None:
        self.fail(error or Cancelled("TLS handshake cancelled"))

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            self.watcher = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def tls_handshake(sock: TlsSocket, loop: Loop | None = None, *,
                  timeout: float | None = None) -> CondVar:
    """Run the TLS handshake of a :class:`TlsSocket` without blocking the loop.

    Returns a CondVar that yields ``sock`` once the handshake is done (and
    everything OpenSSL wrote for it is sent; application data that came with
    the peer's last flight waits in ``sock.incoming`` for the stream), or
    croaks with what ``do_handshake`` raised (``ssl.SSLError``, e.g.
    ``SSLCertVerificationError``), another ``OSError`` such as a reset,
    ``ssl.SSLEOFError`` when the peer closed first, ``TimeoutError`` after
    ``timeout`` seconds, or, after ``cv.cancel()``,
    :class:`~evws.errors.Cancelled`. The socket is never closed here: the
    caller owns it either way.
    """
    loop = loop if loop is not None else get_loop()
    cv = CondVar(loop)
    shaker = _Handshaker(loop, sock, cv)
    if timeout is not None:
        shaker.timer = loop.timer(timeout, lambda: shaker.timed_out(timeout))
    cv.on_cancel(shaker.cancel)
    shaker.step()
    return cv


def start_tls(sock: socket.socket, ctx: ssl.SSLContext, loop: Loop, *, server_side: bool,
              server_hostname: str | None = None, timeout: float | None = None) -> CondVar:
    """Wrap ``sock`` and run the TLS handshake on the loop: the one TLS set-up of both ends.

    Returns a CondVar yielding the ready :class:`TlsSocket`, or croaking with what
    wrapping raised (``OSError``, or ``ValueError`` for unusable settings) or
    the handshake raised (an ``OSError``; ``TimeoutError`` after ``timeout``).
    On failure the socket is closed, so the caller has nothing to clean up; that holds for
    ``cv.cancel()`` too (it croaks :class:`~evws.errors.Cancelled`).
    """
    try:
        tls_sock = (wrap_server(sock, ctx) if server_side
                    else wrap_client(sock, ctx, server_hostname))
    except (OSError, ValueError) as exc:
        sock.close()
        cv = CondVar(loop)
        cv.croak(exc)
        return cv
    result = CondVar(loop)

    def done(shake: CondVar) -> None:
        if shake.error is not None or result.ready:  # failed, or cancelled meanwhile
            tls_sock.close()
            result.croak(shake.error or Cancelled("TLS handshake cancelled"))
        else:
            result.send(tls_sock)

    shake = tls_handshake(tls_sock, loop, timeout=timeout)
    shake.cb(done)
    result.on_cancel(shake.cancel)
    return result
