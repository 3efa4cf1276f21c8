"""TLS on the loop: contexts, wrapping, and a non-blocking handshake.

Why a module of its own: the TLS handshake must not block the single-threaded
loop, so it is driven here by readiness watchers -- ``do_handshake()`` on a
non-blocking :class:`ssl.SSLSocket` raises ``SSLWantReadError`` or
``SSLWantWriteError`` until it is done, and each tells which readiness to
wait for next. Once the handshake is over the socket is an ordinary stream
for :class:`~evws.reactor.stream.Stream`, which knows the remaining TLS traps
(``pending()`` bytes, close_notify).

Wrapping a socket with ``SSLContext.wrap_socket`` *detaches* the plain socket
object: its ``fileno()`` becomes -1, closing it is a no-op and sending on it
raises ``OSError``. From then on only the returned ``SSLSocket`` is usable.
"""

from __future__ import annotations

import errno
import socket
import ssl

from ..errors import Cancelled
from .condvar import CondVar
from .loop import IoWatcher, Loop, Timer, get_loop

__all__ = ["server_context", "client_context", "wrap_server", "wrap_client", "tls_handshake",
           "start_tls"]


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


def wrap_server(sock: socket.socket, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    """Wrap an accepted socket for the server side, handshake not started.

    ``sock`` is detached by this call (see the module docstring).
    """
    sock.setblocking(False)
    return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)


def wrap_client(sock: socket.socket, ctx: ssl.SSLContext, server_hostname: str | None) -> ssl.SSLSocket:
    """Wrap a connected socket for the client side, handshake not started.

    ``server_hostname`` is sent as SNI (not for IP literals) and checked
    against the certificate when the context has ``check_hostname``.
    """
    sock.setblocking(False)
    return ctx.wrap_socket(sock, server_side=False, do_handshake_on_connect=False,
                           server_hostname=server_hostname)


class _Handshaker:
    """Drives ``do_handshake`` by waiting for whatever readiness it asks for."""

    __slots__ = ("loop", "sock", "cv", "watcher", "mode", "timer")

    def __init__(self, loop: Loop, sock: ssl.SSLSocket, cv: CondVar) -> None:
        self.loop = loop
        self.sock = sock
        self.cv = cv
        self.watcher: IoWatcher | None = None
        self.mode = ""
        self.timer: Timer | None = None

    def step(self) -> None:
        if self.cv.ready:
            return
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.wait("r")
        except ssl.SSLWantWriteError:
            self.wait("w")
        except OSError as exc:  # ssl.SSLError, ConnectionResetError, ...
            self.stop()
            self.cv.croak(exc)
        else:
            self.stop()
            self.cv.send(self.sock)

    def wait(self, mode: str) -> None:
        if self.mode == mode and self.watcher is not None:
            return
        if self.watcher is not None:
            self.watcher.cancel()
        self.mode = mode
        self.watcher = self.loop.io(self.sock, mode, self.step)

    def timed_out(self, after: float) -> None:
        self.timer = None
        self.stop()
        self.cv.croak(TimeoutError(errno.ETIMEDOUT, f"TLS handshake not done within {after} s"))

    def cancel(self, error: BaseException | None) -> None:
        self.stop()
        self.cv.croak(error or Cancelled("TLS handshake cancelled"))

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            self.watcher = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def tls_handshake(sock: ssl.SSLSocket, loop: Loop | None = None, *,
                  timeout: float | None = None) -> CondVar:
    """Run the TLS handshake of a non-blocking ``SSLSocket`` without blocking the loop.

    Returns a CondVar that yields ``sock`` once the handshake is done, or
    croaks with what ``do_handshake`` raised (``ssl.SSLError``, e.g.
    ``SSLCertVerificationError``, or another ``OSError`` such as a reset), or
    with ``TimeoutError`` after ``timeout`` seconds, or, after
    ``cv.cancel()``, with :class:`~evws.errors.Cancelled`. The socket is never
    closed here: the caller owns it either way.
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

    Returns a CondVar yielding the ready ``SSLSocket``, or croaking with what
    wrapping raised (``OSError``, or ``ValueError`` for unusable settings) or
    the handshake raised (an ``OSError``; ``TimeoutError`` after ``timeout``).
    On failure the socket is closed (the wrapped one, or ``sock`` itself when
    wrapping failed), so the caller has nothing to clean up; that holds for
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
