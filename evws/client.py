"""The client side: ``connect(url)``, ``Client`` and ``connection_pair()``.

Modelled on AnyEvent::WebSocket::Client: ``Client(**defaults).connect(url)``
returns a :class:`~evws.reactor.CondVar` that yields a client-side
:class:`~evws.Connection` (the same class as the server's: the protocol
object decides masking and who closes TCP, so no frame logic is repeated).

One connect is a chain of non-blocking steps on the loop, all inside one
``timeout``: ``tcp_connect`` (every ``getaddrinfo`` address in turn; the
name lookup itself blocks), the TLS handshake for ``wss://``, then the HTTP
upgrade (RFC 6455 4.1) read with a :class:`ResponseHeadParser` through a
:class:`~evws.reactor.stream.Stream` that the connection keeps afterwards.

What a failed connect croaks with -- one rule: trouble in the transport is
an ``OSError``, trouble in the server's answer a ``HandshakeError``:

- name lookup, connect, TLS (certificate...) or reset: the ``OSError`` as
  raised (``socket.gaierror``, ``ConnectionRefusedError``,
  ``ssl.SSLCertVerificationError``...), so ``except OSError`` works as it
  does for any socket code;
- ``timeout`` seconds passed, in any step: :class:`~evws.WaitTimeout` (a
  ``TimeoutError`` and a ``WebSocketError``);
- a status other than 101: :class:`~evws.HandshakeError` with ``.status``,
  ``.body`` (read per ``Content-Length``, or to EOF, at most
  ``max_error_body`` bytes) and ``.headers``;
- a 101 that does not check out (wrong ``Sec-WebSocket-Accept``, a
  subprotocol or extension not offered) or a server that closes before its
  answer is complete: ``HandshakeError`` (``.status`` 101 or, for an answer
  cut short or malformed, 400 as :class:`ResponseHeadParser` reports it).

Redirects are not followed (a 3xx is a ``HandshakeError`` with ``.headers``
holding ``Location``).
"""

from __future__ import annotations

import base64
import errno
import socket
import ssl
import time
from typing import Any, Iterable, Optional, Union
from urllib.parse import unquote, urlsplit

from .connection import (
    DEFAULT_HIGH_WATER,
    DEFAULT_LOW_WATER,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    Connection,
)
from .errors import HandshakeError, RecursiveWaitError, WaitTimeout
from .protocol import deflate as _deflate
from .protocol.handshake import build_request, check_response, generate_key
from .protocol.http import Headers, HeadersLike, ResponseHead, ResponseHeadParser
from .protocol.websocket import Side, WebSocketProtocol
from .reactor.condvar import CondVar
from .reactor.loop import Loop, get_loop
from .reactor.stream import Stream
from .reactor.tcp import tcp_connect
from .reactor.tls import client_context, tls_handshake, wrap_client

__all__ = ["Client", "connect", "connection_pair", "parse_url"]

#: Options :meth:`Client.connect` understands, with their defaults.
DEFAULTS: dict[str, Any] = {
    "subprotocols": None,
    "headers": None,
    "origin": None,
    "ssl_context": None,
    "max_payload_size": 1 << 20,
    "max_fragments": 1 << 17,
    "compression": "deflate",
    "timeout": 10.0,
    "close_timeout": 10.0,
    "ping_interval": DEFAULT_PING_INTERVAL,
    "ping_timeout": DEFAULT_PING_TIMEOUT,
    "high_water": DEFAULT_HIGH_WATER,
    "low_water": DEFAULT_LOW_WATER,
    "max_handshake_size": 16384,
    "max_error_body": 65536,
    "loop": None,
}

Compression = Union[str, None, "_deflate.DeflateConfig"]


def parse_url(url: str) -> tuple[bool, str, int, str, str]:
    """Split a ``ws://`` or ``wss://`` URL (RFC 6455 3).

    Returns ``(secure, host, port, resource_name, host_header)``: ``host``
    without IPv6 brackets (for ``getaddrinfo``), the resource name
    ``/path?query``, and the ``Host`` value (brackets kept, port only when
    not the scheme's default).

    Raises:
        ValueError: another scheme, no host, a bad port, or a fragment
            (RFC 6455 3: "Fragment identifiers are meaningless in the
            context of WebSocket URIs and MUST NOT be used").
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise ValueError(f"not a WebSocket URL (ws:// or wss://): {url!r}")
    if parts.fragment or url.endswith("#"):
        raise ValueError(f"a WebSocket URL cannot have a fragment: {url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in {url!r}")
    port = parts.port  # ValueError for a port out of range or not a number
    secure = scheme == "wss"
    default_port = 443 if secure else 80
    if port is None:
        port = default_port
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    host_header = f"[{host}]" if ":" in host else host
    if port != default_port:
        host_header += f":{port}"
    return secure, host, port, resource, host_header


def _deflate_config(compression: Compression) -> Optional[_deflate.DeflateConfig]:
    """``"deflate"`` -> default config, a DeflateConfig as is, None/False -> off."""
    if not compression:
        return None
    if compression == "deflate":
        return _deflate.DeflateConfig()
    if isinstance(compression, _deflate.DeflateConfig):
        return compression
    raise ValueError(f"compression must be 'deflate', a DeflateConfig or None, not {compression!r}")


class Client:
    """A WebSocket client with default options, as AnyEvent::WebSocket::Client.

    ``Client(**defaults).connect(url, **overrides)``: the options are those
    of :func:`connect`, plus ``max_fragments`` (most frames per message),
    ``ping_interval``/``ping_timeout``/``high_water``/``low_water`` (keepalive
    and flow control, as on the server's connections), ``max_handshake_size``
    (largest response head) and ``max_error_body`` (how much of a refusal's
    body is kept).

    Raises:
        TypeError: an unknown option.
    """

    def __init__(self, **defaults: Any) -> None:
        unknown = set(defaults) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown Client option(s): {', '.join(sorted(unknown))}")
        self.defaults = {**DEFAULTS, **defaults}

    def connect(self, url: str, **overrides: Any) -> CondVar:
        """Open a WebSocket to ``url``; a CondVar yields the client ``Connection``.

        See the module docstring for what it croaks with.

        Raises:
            ValueError: ``url`` is not a usable ws:// or wss:// URL, or an
                option has an unusable value (raised at once, not croaked).
            TypeError: an unknown option.
        """
        unknown = set(overrides) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown connect option(s): {', '.join(sorted(unknown))}")
        options = {**self.defaults, **overrides}
        secure, host, port, resource, host_header = parse_url(url)
        loop = options["loop"] or get_loop()
        cv = CondVar(loop)
        ssl_ctx = None
        if secure:
            ssl_ctx = options["ssl_context"] or client_context()
        handshake = _ClientHandshake(loop, cv, host_header, resource, options)
        if parts := _userinfo(url):
            handshake.extra_headers.append(("Authorization", "Basic " + parts))
        handshake.connect(host, port, ssl_ctx)
        return cv


def _userinfo(url: str) -> str:
    """Basic credentials from ``ws://user:pass@host/``, base64, or ""."""
    parts = urlsplit(url)
    if parts.username is None:
        return ""
    credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return base64.b64encode(credentials.encode("utf-8")).decode("ascii")


def connect(
    url: str,
    *,
    subprotocols: Optional[Iterable[str]] = None,
    headers: Optional[HeadersLike] = None,
    origin: Optional[str] = None,
    ssl_context: Optional[ssl.SSLContext] = None,
    max_payload_size: Optional[int] = 1 << 20,
    compression: Compression = "deflate",
    timeout: Optional[float] = 10.0,
    close_timeout: float = 10.0,
    loop: Optional[Loop] = None,
    **more: Any,
) -> CondVar:
    """Open a WebSocket to ``url``; the CondVar yields a client-side ``Connection``.

    Args:
        url: ``ws://`` or ``wss://``, host name, IPv4 or ``[IPv6]`` literal,
            optional port (default 80/443), path and query.
        subprotocols: offered in ``Sec-WebSocket-Protocol``, in order; the
            one chosen is ``conn.subprotocol``.
        headers: extra request fields (a mapping or ``(name, value)`` pairs).
        origin: the ``Origin`` field, if any.
        ssl_context: for ``wss://``; by default certificates and host names
            are verified against the system's CAs
            (``ssl.create_default_context()``).
        max_payload_size: largest message accepted (1009 beyond); ``None``
            for no limit.
        compression: ``"deflate"`` offers permessage-deflate (RFC 7692),
            a ``DeflateConfig`` tunes the offer, ``None`` turns it off.
        timeout: seconds for the whole opening (connect, TLS, HTTP); ``None``
            for no limit.
        close_timeout: seconds to wait for the server in a closing handshake.
        loop: the loop to run on (default ``get_loop()``).
        more: the other :class:`Client` options.

    The ``Connection`` also has ``.response``, the server's 101 head
    (``status``, ``headers``), for cookies and custom fields.
    """
    return Client().connect(
        url, subprotocols=subprotocols, headers=headers, origin=origin,
        ssl_context=ssl_context, max_payload_size=max_payload_size, compression=compression,
        timeout=timeout, close_timeout=close_timeout, loop=loop, **more)


class _ClientHandshake:
    """One connect: TCP, TLS, request, response; croaks or yields a Connection."""

    def __init__(self, loop: Loop, cv: CondVar, host_header: str, resource: str,
                 options: dict[str, Any]) -> None:
        self.loop = loop
        self.cv = cv
        self.host_header = host_header
        self.resource = resource
        self.options = options
        self.subprotocols = list(options["subprotocols"] or ())
        self.extra_headers: list[tuple[str, str]] = Headers(options["headers"] or ()).items()
        self.deflate_config = _deflate_config(options["compression"])
        self.key = generate_key()
        timeout = options["timeout"]
        self.deadline: Optional[float] = None if timeout is None else time.monotonic() + timeout
        self.stream: Optional[Stream] = None
        self.timer: Any = None
        self.parser = ResponseHeadParser(max_size=options["max_handshake_size"])
        self.head: Optional[ResponseHead] = None
        self.body = bytearray()
        self.body_wanted: Optional[int] = None  # None: read the body until EOF

    # -- steps ----------------------------------------------------------------

    def remaining(self) -> Optional[float]:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def connect(self, host: str, port: int, ssl_ctx: Optional[ssl.SSLContext]) -> None:
        def connected(tcp: CondVar) -> None:
            try:
                sock = tcp.recv()
            except TimeoutError as exc:
                self.fail(self.timeout_error("connecting", exc))
                return
            except OSError as exc:
                self.fail(exc)
                return
            if ssl_ctx is None:
                self.start_http(sock)
            else:
                self.start_tls(sock, ssl_ctx, host)

        tcp_connect(host, port, self.loop, timeout=self.remaining()).cb(connected)

    def start_tls(self, sock: socket.socket, ctx: ssl.SSLContext, host: str) -> None:
        try:
            # An IP literal is checked against the certificate's IP entries;
            # ssl sends no SNI for it.
            tls_sock = wrap_client(sock, ctx, host)
        except (OSError, ValueError) as exc:
            sock.close()
            self.fail(exc)
            return

        def done(shake: CondVar) -> None:
            try:
                shake.recv()
            except OSError as exc:
                tls_sock.close()
                self.fail(self.timeout_error("in the TLS handshake", exc)
                          if isinstance(exc, TimeoutError) else exc)
                return
            self.start_http(tls_sock)

        tls_handshake(tls_sock, self.loop, timeout=self.remaining()).cb(done)

    def start_http(self, sock: socket.socket) -> None:
        extensions = None
        if self.deflate_config is not None:
            # Deflate spot: the offer comes from evws.protocol.deflate.
            extensions = _deflate.client_offer(self.deflate_config)
        try:
            request = build_request(
                self.host_header, self.resource, self.key, subprotocols=self.subprotocols,
                extensions=extensions, origin=self.options["origin"], headers=self.extra_headers)
        except ValueError as exc:
            sock.close()
            self.fail(exc)
            return
        stream = self.stream = Stream(sock, self.loop, on_data=self.on_data, on_eof=self.on_eof,
                                      on_close=self.on_close)
        remaining = self.remaining()
        if remaining is not None:
            self.timer = self.loop.timer(remaining, self.on_timeout)
        stream.start_reading()
        stream.write(request)

    # -- the answer -----------------------------------------------------------

    def on_data(self, data: bytes) -> None:
        if self.cv.ready:
            return
        if self.head is not None:  # reading a refusal's body
            self.take_body(data)
            return
        try:
            head = self.parser.feed(data)
        except HandshakeError as exc:
            self.fail(exc)
            return
        if head is None:
            return
        self.head = head
        if head.status != 101:
            self.start_body(head)
            return
        self.upgrade(head)

    def upgrade(self, head: ResponseHead) -> None:
        try:
            subprotocol, extensions = check_response(
                head, self.key, subprotocols_offered=self.subprotocols,
                extensions_offered=self.deflate_config is not None)
            params = None
            if self.deflate_config is not None:
                # Deflate spot: check the server's answer to our offer.
                params = _deflate.accept_client(extensions, self.deflate_config)
        except HandshakeError as exc:
            self.fail(exc)
            return
        self.stop_timer()
        stream = self.stream
        assert stream is not None
        # Hold input until the Connection starts, so nothing overtakes the
        # bytes that came after the head (they are the first frames).
        stream.pause_reading()
        options = self.options
        protocol = WebSocketProtocol(Side.CLIENT, max_payload_size=options["max_payload_size"],
                                     max_fragments=options["max_fragments"], deflate=params)
        conn = Connection(stream, protocol, loop=self.loop, close_timeout=options["close_timeout"],
                          subprotocol=subprotocol, ping_interval=options["ping_interval"],
                          ping_timeout=options["ping_timeout"], high_water=options["high_water"],
                          low_water=options["low_water"])
        conn.response = head  # type: ignore[attr-defined]
        self.cv.send(conn)
        # As on the server (NOTES.md): frames that came with the answer are
        # delivered on a later turn, after the CondVar's callbacks ran.
        self.loop.call_soon(conn._start, self.parser.leftover)

    def start_body(self, head: ResponseHead) -> None:
        lengths = head.headers.get_all("Content-Length")
        if len(lengths) == 1 and lengths[0].strip().isdigit():
            self.body_wanted = int(lengths[0].strip())
        elif head.status in (204, 304) or 100 <= head.status < 200:
            self.body_wanted = 0
        self.take_body(self.parser.leftover)

    def take_body(self, data: bytes) -> None:
        limit = self.options["max_error_body"]
        self.body += data
        wanted = limit if self.body_wanted is None else min(self.body_wanted, limit)
        if len(self.body) >= wanted:
            self.refused()

    def refused(self) -> None:
        head = self.head
        assert head is not None
        limit = self.options["max_error_body"]
        wanted = len(self.body) if self.body_wanted is None else self.body_wanted
        error = HandshakeError(
            f"server refused the WebSocket handshake: {head.status} {head.reason}".rstrip(),
            status=head.status, body=bytes(self.body[:min(wanted, limit)]))
        error.headers = head.headers  # type: ignore[attr-defined]
        self.fail(error, polite=True)

    def on_eof(self) -> None:
        if self.cv.ready:
            return
        if self.head is not None:
            self.refused()  # a body delimited by EOF, or cut short: keep what came
            return
        self.fail(HandshakeError("server closed the connection before its handshake answer "
                                 "was complete", status=400))

    def on_close(self, error: Optional[BaseException]) -> None:
        if self.cv.ready:
            return
        if error is None:
            error = ConnectionResetError(errno.ECONNRESET, "connection closed during the handshake")
        self.fail(error)

    def on_timeout(self) -> None:
        self.timer = None
        if self.head is not None and not self.cv.ready:
            self.refused()  # the refusal is the news, not the slow body
            return
        self.fail(self.timeout_error("waiting for the handshake answer", None))

    def timeout_error(self, step: str, cause: Optional[BaseException]) -> WaitTimeout:
        error = WaitTimeout(f"WebSocket connect timed out {step} (timeout={self.options['timeout']} s)")
        error.__cause__ = cause
        return error

    # -- endings ----------------------------------------------------------------

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def fail(self, error: BaseException, polite: bool = False) -> None:
        """Croak ``error``; close TCP gracefully after a refusal, else drop it."""
        self.stop_timer()
        stream = self.stream
        if stream is not None:
            self.stream = None
            stream.on_data = stream.on_eof = None
            stream.on_close = None
            # A refusal was read: leave politely. Anything else (a bad
            # answer, a timeout): RFC 6455 4.1 says fail, i.e. drop TCP.
            if polite:
                stream.close()
            else:
                stream.abort()
        self.cv.croak(error)


def connection_pair(
    loop: Optional[Loop] = None,
    *,
    resource: str = "/",
    handshake: Any = None,
    validator: Any = None,
    subprotocols: Optional[Iterable[str]] = None,
    headers: Optional[HeadersLike] = None,
    origin: Optional[str] = None,
    max_payload_size: Optional[int] = 1 << 20,
    close_timeout: float = 10.0,
    compression: Compression = "deflate",
    ping_interval: Optional[float] = DEFAULT_PING_INTERVAL,
    ping_timeout: Optional[float] = DEFAULT_PING_TIMEOUT,
    timeout: float = 10.0,
) -> tuple[Connection, Connection]:
    """Two handshaken Connections over ``socket.socketpair()``: ``(server_side, client_side)``.

    For unit-testing handlers without TCP: the real :class:`~evws.Server`
    and the real client handshake run on the two ends of a socketpair,
    driven by the loop until both are ready (at most ``timeout`` seconds).
    ``handshake``/``validator`` go to the server (their extra results are
    dropped), the other options to both ends or to the client as in
    :func:`connect`. Run the loop afterwards to exchange messages.

    Raises:
        HandshakeError: a handshake failed (e.g. ``handshake`` rejected it).
        WaitTimeout: not done within ``timeout``.
        RecursiveWaitError: called from inside a loop callback (it has to
            run the loop itself).
    """
    from .server import Server  # server imports nothing from here; avoid a cycle all the same

    loop = loop or get_loop()
    if loop.depth > 0:
        raise RecursiveWaitError("connection_pair() runs the loop: call it outside loop callbacks")
    server_sock, client_sock = socket.socketpair()
    config = _deflate_config(compression)
    server = Server(handshake=handshake, validator=validator, max_payload_size=max_payload_size,
                    close_timeout=close_timeout, handshake_timeout=timeout, loop=loop,
                    ping_interval=ping_interval, ping_timeout=ping_timeout,
                    compression=None if config is None else "deflate", deflate_config=config)
    server_cv = server.establish(server_sock)

    def refused(cv: CondVar) -> None:
        # Answer a refusal as a server program would, so the client side
        # ends at once instead of waiting for its timeout.
        error = cv._error
        if isinstance(error, HandshakeError):
            try:
                server_sock.send(error.response)
                server_sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    server_cv.cb(refused)
    options = {**DEFAULTS, "subprotocols": subprotocols, "headers": headers, "origin": origin,
               "max_payload_size": max_payload_size, "close_timeout": close_timeout,
               "compression": compression, "timeout": timeout, "loop": loop,
               "ping_interval": ping_interval, "ping_timeout": ping_timeout}
    client_cv = CondVar(loop)
    _ClientHandshake(loop, client_cv, "localhost", resource, options).start_http(client_sock)
    deadline = time.monotonic() + timeout
    try:
        for cv in (client_cv, server_cv):
            try:
                cv.recv_all(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:
                pass
        # The server's reason is the real one (the client only saw its answer).
        server_side = server_cv.recv_all(timeout=0)[0]
        client = client_cv.recv(timeout=0)
    except BaseException:
        _abandon(loop, server_cv, client_cv, server_sock, client_sock)
        raise
    return server_side, client


def _abandon(loop: Loop, server_cv: CondVar, client_cv: CondVar,
             server_sock: socket.socket, client_sock: socket.socket) -> None:
    """Undo a failed connection_pair without closing an fd the loop still watches."""
    for cv in (client_cv, server_cv):
        if cv.ready and cv._error is None:
            cv.recv_all()[0].stream.abort()
    if not client_cv.ready:
        client_sock.shutdown(socket.SHUT_RDWR)  # ends both handshakes through EOF
    if not server_cv.ready:
        server_sock.shutdown(socket.SHUT_RDWR)
    deadline = time.monotonic() + 1.0
    while not (server_cv.ready and client_cv.ready) and time.monotonic() < deadline:
        loop.run_once(0.05)
    for cv, sock in ((client_cv, client_sock), (server_cv, server_sock)):
        if cv.ready and cv._error is not None and sock.fileno() >= 0:
            sock.close()
