"""Every exception evws raises on purpose, in one tree.

::

    WebSocketError
    ├── HandshakeError        opening handshake refused; carries .status and a ready .response
    │   └── RedirectError     (client) a redirect that cannot be followed: too many, a bad
    │                         Location, or wss:// to ws://
    ├── ProtocolError         the peer broke RFC 6455; carries the .close_code to fail with (1002)
    │   ├── InvalidUTF8       text or close reason is not UTF-8 (1007)
    │   └── PayloadTooBig     a message exceeds max_payload_size (1009)
    ├── ConnectionClosed      using a connection after it closed (e.g. send after close)
    ├── CroakError            what CondVar.croak("message") raises from recv()
    ├── Cancelled             CondVar.cancel() stopped the work behind a result
    │   └── ConnectCancelled  (client) a connect was cancelled, at whatever step it was
    ├── WaitTimeout           CondVar.recv(timeout=...) ran out of time (also a TimeoutError)
    ├── RecursiveWaitError    a blocking recv() from inside a loop callback (also a RuntimeError)
    ├── BrokerError           a Hub's broker (Redis) failed or refused something
    │   └── BrokerUnavailable the broker is down (or slow) and its publish queue is full
    ├── ProxyError            an HTTP proxy refused the tunnel (.status), hung up, or its URL is bad
    └── LineTooLong           Stream.read_line met a line over max_size (also a ValueError)

Why one tree: a user who wants "anything evws refused" writes one ``except``;
each error carries its remedy (an HTTP answer, a close code) so that the code
which catches it does not have to translate it again.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "WebSocketError",
    "HandshakeError",
    "RedirectError",
    "ProtocolError",
    "InvalidUTF8",
    "PayloadTooBig",
    "ConnectionClosed",
    "CroakError",
    "Cancelled",
    "ConnectCancelled",
    "WaitTimeout",
    "RecursiveWaitError",
    "BrokerError",
    "BrokerUnavailable",
    "ProxyError",
    "LineTooLong",
]


class WebSocketError(Exception):
    """Root of every evws error."""


class HandshakeError(WebSocketError):
    """The opening handshake failed.

    ``status`` is the HTTP status the failure deserves (400 malformed, 403
    rejected, 426 wrong version, 431 head too large, or, on the client side, the
    status the server answered). ``response`` holds complete HTTP response bytes
    that a server may write on the still-open socket (empty on the client side).
    ``body`` is the response body received by a client, if any, and
    ``headers`` the response's header fields (an :class:`evws.protocol.http.Headers`).
    """

    def __init__(
        self,
        message: str,
        status: int = 400,
        response: bytes = b"",
        body: bytes = b"",
        headers: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.response = response
        self.body = body
        self.headers = headers


class RedirectError(HandshakeError):
    """The client met a redirect it will not follow.

    Raised (croaked by ``connect``) for more than ``max_redirects`` redirects,
    a ``Location`` that is not a usable ws/wss (or http/https) URL, and a
    redirect from ``wss://`` to ``ws://`` (a TLS downgrade). ``status``,
    ``headers`` and ``body`` are those of the 3xx answer; ``location`` is its
    ``Location`` value and ``url`` the URL that answered it.
    """

    def __init__(self, message: str, *, status: int, headers: Any = None, body: bytes = b"",
                 location: str = "", url: str = "") -> None:
        super().__init__(message, status=status, body=body, headers=headers)
        self.location = location
        self.url = url


class ProtocolError(WebSocketError):
    """The peer violated RFC 6455; the connection fails with ``close_code``."""

    close_code = 1002

    def __init__(self, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        if close_code is not None:
            self.close_code = close_code


class InvalidUTF8(ProtocolError):
    """A text message or a close reason is not valid UTF-8 (RFC 6455 8.1)."""

    close_code = 1007


class PayloadTooBig(ProtocolError):
    """A message is larger than the configured ``max_payload_size``."""

    close_code = 1009


class ConnectionClosed(WebSocketError):
    """The connection is closed (or closing) and cannot do what was asked."""

    def __init__(self, message: str = "connection is closed", code: int | None = None,
                 reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class CroakError(WebSocketError):
    """Raised by ``CondVar.recv()`` when ``croak`` was given a plain message."""


class Cancelled(WebSocketError):
    """What a CondVar croaks when :meth:`~evws.CondVar.cancel` stopped the work behind it.

    Only producers that can stop their work accept ``cancel()`` (the connect
    helpers: ``tcp_connect``, ``unix_connect``, the TLS handshake, a proxy
    tunnel, the client's opening handshake); their sockets, timers and
    watchers are gone by the time it is croaked.
    """


class ConnectCancelled(Cancelled):
    """A client connect (``connect``, ``Client.connect``) was cancelled.

    Croaked by the connect's CondVar after ``cv.cancel()``, whatever step
    the connect was at (TCP, proxy ``CONNECT``, TLS, HTTP upgrade, a
    redirect hop): that step's socket is closed and nothing of it is left
    on the loop.
    """


class WaitTimeout(WebSocketError, TimeoutError):
    """``CondVar.recv(timeout=...)`` gave up before the condvar became ready."""


class RecursiveWaitError(WebSocketError, RuntimeError):
    """A blocking ``recv()`` was called from inside a loop callback.

    Waiting there would need the loop that is already running below us; AnyEvent
    calls this a recursive blocking wait. Use ``cv.cb(...)`` instead.
    """


class BrokerError(WebSocketError):
    """A :class:`~evws.Hub`'s broker failed: a bad Redis URL, a refused AUTH, an error reply."""


class BrokerUnavailable(BrokerError):
    """``Hub.publish`` could not take a message: the broker has been down (or
    too slow) for longer than its bounded publish queue covers.

    Raised to the caller instead of dropping the message silently; nothing of
    it was queued. ``pending`` is how many messages were already waiting.
    """

    def __init__(self, message: str, pending: int = 0) -> None:
        super().__init__(message)
        self.pending = pending


class ProxyError(WebSocketError):
    """An HTTP proxy did not open the tunnel a client asked for with CONNECT.

    ``status`` is the proxy's answer when it refused (407 proxy authentication
    required, 403 forbidden, 502 bad gateway...), and ``headers`` its header
    fields (``Proxy-Authenticate`` for a 407); both are ``None`` when there was
    no answer to speak of: an unusable proxy URL (raised at once by
    ``connect``), a proxy that closed the connection or answered something that
    is not HTTP. Reaching the proxy itself is transport, so a proxy that is
    down croaks the ``OSError`` (``ConnectionRefusedError``...), as a server
    that is down does.
    """

    def __init__(self, message: str, status: int | None = None, headers: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


class LineTooLong(WebSocketError, ValueError):
    """``Stream.read_line`` met more than ``max_size`` bytes without the separator.

    The stream is closed with this error (its ``on_close`` gets it): a peer
    that never sends a newline must not make the reader buffer forever.
    """
