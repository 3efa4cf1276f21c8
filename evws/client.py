"""The client side: ``connect(url)``, ``Client`` and ``connection_pair()``.

Modelled on AnyEvent::WebSocket::Client: ``Client(**defaults).connect(url)``
returns a :class:`~evws.reactor.CondVar` that yields a client-side
:class:`~evws.Connection` (the same class as the server's: the protocol
object decides masking and who closes TCP, so no frame logic is repeated).

One connect is a chain of non-blocking steps on the loop, all inside one
``timeout``: the transport -- ``tcp_connect`` (every ``getaddrinfo`` address
in turn; the name lookup itself blocks), or a tunnel through an HTTP proxy
(:mod:`evws.proxy`: ``CONNECT``, from ``proxy=`` or the environment), or
``unix_connect`` for ``unix_socket=`` --, the TLS handshake for ``wss://``
(the same ``start_tls`` as the server's, with the URL's host as SNI through
a proxy too), then the HTTP upgrade (RFC 6455 4.1): a
sans-I/O :class:`~evws.protocol.client.ClientProtocol` over a
:class:`~evws.reactor.stream.Stream`, driven by the same ``Connection`` as a
server's, from the request's first byte to the last frame.

What a failed connect croaks with -- one rule: trouble in the transport is
an ``OSError``, trouble in the server's answer a ``HandshakeError``:

- name lookup, connect, TLS (certificate...) or reset: the ``OSError`` as
  raised (``socket.gaierror``, ``ConnectionRefusedError``,
  ``ssl.SSLCertVerificationError``...), so ``except OSError`` works as it
  does for any socket code (for the proxy itself too: a proxy that is down
  is a ``ConnectionRefusedError``);
- a proxy that refuses the tunnel (407, 403, 502...), hangs up or answers
  nonsense: :class:`~evws.ProxyError` with ``.status`` and ``.headers``;
- ``timeout`` seconds passed, in any step: :class:`~evws.WaitTimeout` (a
  ``TimeoutError`` and a ``WebSocketError``);
- a status other than 101: :class:`~evws.HandshakeError` with ``.status``,
  ``.body`` (read per ``Content-Length``, or to EOF, at most
  ``max_error_body`` bytes) and ``.headers``;
- a 101 that does not check out (wrong ``Sec-WebSocket-Accept``, a
  subprotocol or extension not offered) or a server that closes before its
  answer is complete: ``HandshakeError`` (``.status`` 101 or, for an answer
  cut short or malformed, 400 as :class:`ResponseHeadParser` reports it).

A connect in flight is given up with ``cv.cancel()`` (:meth:`CondVar.cancel
<evws.reactor.condvar.CondVar.cancel>`): whatever the step -- TCP connecting,
the proxy's ``CONNECT``, TLS, the HTTP upgrade, a redirect hop -- its socket
is closed at once, its timers and watchers go, and the CondVar croaks
:class:`~evws.ConnectCancelled` (``cancel()`` returns False, doing nothing,
once the CondVar is ready: close the ``Connection`` then).

Redirects (301, 302, 303, 307, 308 with a ``Location``) are followed, at
most ``max_redirects`` times (default 10; 0: a 3xx is a ``HandshakeError``
with ``.headers`` holding ``Location``), one ``timeout`` for the whole chain;
one that cannot be followed croaks :class:`~evws.RedirectError`. The rules
are in :mod:`evws.redirect`.
"""

from __future__ import annotations

import base64
import errno
import socket
import ssl
import time
from typing import Any, Callable, Iterable, Optional
from urllib.parse import unquote, urlsplit

from .connection import Connection
from .errors import ConnectCancelled, HandshakeError, RecursiveWaitError, WaitTimeout
from .options import DEFAULTS as _OPTION_DEFAULTS
from .options import Compression, Options, deflate_config_of
from .protocol.client import ClientProtocol
from .protocol.http import Headers, HeadersLike
from .proxy import Proxy, ProxySetting, open_tunnel, resolve_proxy
from .reactor.condvar import CondVar
from .reactor.loop import Loop, get_loop
from .reactor.stream import Stream
from .reactor.tcp import tcp_connect, unix_connect
from .reactor.tls import client_context, start_tls
from .redirect import follow_redirects, without_credentials

__all__ = ["Client", "connect", "connection_pair", "parse_url"]

#: Options :meth:`Client.connect` understands, with their defaults: the
#: per-connect ones, then those of :class:`~evws.Options` (one source).
DEFAULT_PING_INTERVAL = _OPTION_DEFAULTS.ping_interval
DEFAULT_PING_TIMEOUT = _OPTION_DEFAULTS.ping_timeout

DEFAULTS: dict[str, Any] = {
    "subprotocols": None,
    "headers": None,
    "origin": None,
    "ssl_context": None,
    "loop": None,
    "compression": "deflate",
    "timeout": _OPTION_DEFAULTS.handshake_timeout,
    "proxy": True,
    "unix_socket": None,
    **{name: getattr(_OPTION_DEFAULTS, name) for name in (
        "max_payload_size", "max_fragments", "close_timeout", "ping_interval", "ping_timeout",
        "high_water", "low_water", "max_handshake_size", "max_error_body", "max_redirects")},
}


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


class Client:
    """A WebSocket client with default options, as AnyEvent::WebSocket::Client.

    ``Client(**defaults).connect(url, **overrides)``: the options are those
    of :func:`connect`, plus ``max_fragments`` (most frames per message),
    ``ping_interval``/``ping_timeout``/``high_water``/``low_water`` (keepalive
    and flow control, as on the server's connections), ``max_handshake_size``
    (largest response head), ``max_error_body`` (how much of a refusal's
    body is kept) and ``max_redirects`` (most redirects followed, default 10;
    0: none; see :mod:`evws.redirect`).

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

        See the module docstring for what it croaks with; ``cancel()`` on
        the CondVar gives the connect up (it croaks
        :class:`~evws.ConnectCancelled`).

        Raises:
            ValueError: ``url`` is not a usable ws:// or wss:// URL, or an
                option has an unusable value (raised at once, not croaked).
            ProxyError: the proxy URL (given, or from the environment) is
                unusable (raised at once).
            TypeError: an unknown option.
        """
        unknown = set(overrides) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown connect option(s): {', '.join(sorted(unknown))}")
        settings = {**self.defaults, **overrides}
        return _follow_redirects(url, settings, self._connect_once)

    def _connect_once(self, url: str, settings: dict[str, Any]) -> CondVar:
        """One hop of :meth:`connect`: TCP, TLS and the handshake to ``url``."""
        secure, host, port, resource, host_header = parse_url(url)
        loop = settings["loop"] or get_loop()
        options = _options(settings)
        headers = list(_header_items(settings["headers"]))
        if credentials := _userinfo(url):
            headers.append(("Authorization", "Basic " + credentials))

        def protocol() -> ClientProtocol:
            return ClientProtocol(
                host_header, resource, subprotocols=settings["subprotocols"] or (),
                origin=settings["origin"], headers=headers, deflate_config=options.deflate,
                max_handshake_size=options.max_handshake_size,
                max_error_body=options.max_error_body,
                max_payload_size=options.max_payload_size, max_fragments=options.max_fragments)

        protocol()  # a bad header or resource raises now, not after connecting
        unix_socket = settings["unix_socket"]
        if unix_socket is not None and isinstance(settings["proxy"], str):
            raise ValueError("give unix_socket or proxy, not both")
        proxy = None if unix_socket is not None else resolve_proxy(
            settings["proxy"], secure, host, port)
        cv = CondVar(loop)
        ssl_ctx = (settings["ssl_context"] or client_context()) if secure else None
        _Connect(loop, cv, options, protocol).start(host, port, ssl_ctx, proxy=proxy,
                                                    unix_socket=unix_socket)
        return cv


def _follow_redirects(url: str, settings: dict[str, Any],
                      connect_once: Callable[[str, dict[str, Any]], CondVar]) -> CondVar:
    """:meth:`Client.connect`, redirects followed by the rules of :mod:`evws.redirect`."""
    def hop(target: str, *, timeout: Optional[float], drop_credentials: bool) -> CondVar:
        headers = settings["headers"]
        if drop_credentials:
            headers = without_credentials(headers)
        return connect_once(target, {**settings, "timeout": timeout, "headers": headers})

    return follow_redirects(url, hop, loop=settings["loop"] or get_loop(),
                            max_redirects=settings["max_redirects"], timeout=settings["timeout"])


def _options(settings: dict[str, Any]) -> Options:
    """The :class:`Options` of one connect, from the keyword arguments."""
    return Options(
        max_payload_size=settings["max_payload_size"], max_fragments=settings["max_fragments"],
        max_handshake_size=settings["max_handshake_size"], handshake_timeout=settings["timeout"],
        close_timeout=settings["close_timeout"], ping_interval=settings["ping_interval"],
        ping_timeout=settings["ping_timeout"], high_water=settings["high_water"],
        low_water=settings["low_water"], deflate=deflate_config_of(settings["compression"]),
        max_error_body=settings["max_error_body"], max_redirects=settings["max_redirects"])


def _header_items(headers: Optional[HeadersLike]) -> Iterable[tuple[str, str]]:
    return () if headers is None else Headers(headers).items()


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
    proxy: ProxySetting = True,
    unix_socket: Optional[str] = None,
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
        proxy: ``True`` (default): the proxy the environment gives
            (``https_proxy`` for wss://, ``http_proxy`` for ws://, unless
            ``no_proxy`` excludes the host; see :mod:`evws.proxy`); ``None``:
            connect directly; ``"http://[user:pass@]host:port"``: tunnel
            through that HTTP proxy with CONNECT (Basic credentials from the
            userinfo), whatever the environment says.
        unix_socket: connect to this Unix-domain socket instead of the URL's
            host and port, which still give ``Host``, the path, and, for
            wss://, the TLS server name. No proxy is used.
        more: the other :class:`Client` options.

    The ``Connection`` also has ``.response``, the server's 101 head
    (``status``, ``headers``), for cookies and custom fields. ``cancel()``
    on the CondVar gives the connect up at whatever step it is (it croaks
    :class:`~evws.ConnectCancelled`; see :mod:`evws.client`).
    """
    return Client().connect(
        url, subprotocols=subprotocols, headers=headers, origin=origin,
        ssl_context=ssl_context, max_payload_size=max_payload_size, compression=compression,
        timeout=timeout, close_timeout=close_timeout, loop=loop, proxy=proxy,
        unix_socket=unix_socket, **more)


class _Connect:
    """One connect: TCP, TLS, then the Connection runs the handshake; all in one deadline."""

    def __init__(self, loop: Loop, cv: CondVar, options: Options,
                 protocol: Any) -> None:
        self.loop = loop
        self.cv = cv
        self.options = options
        self.protocol = protocol
        timeout = options.handshake_timeout
        self.deadline: Optional[float] = None if timeout is None else time.monotonic() + timeout
        #: the step in flight (transport, TLS, handshake), what cancel() stops, and its name
        self.step: Optional[CondVar] = None
        self.stage = "connecting"

    def remaining(self) -> Optional[float]:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def start(self, host: str, port: int, ssl_ctx: Optional[ssl.SSLContext], *,
              proxy: Optional[Proxy] = None, unix_socket: Optional[str] = None) -> None:
        step = ("connecting" if proxy is None and unix_socket is None else
                f"connecting through the proxy {proxy}" if proxy is not None else
                f"connecting to {unix_socket}")

        def connected(tcp: CondVar) -> None:
            error = tcp.error
            if error is not None:
                self.cv.croak(self.timeout_error(step, error)
                              if isinstance(error, TimeoutError) else error)
            elif self.cv.ready:  # cancelled while the socket was on its way
                tcp.recv().close()
            elif ssl_ctx is None:
                self.open(tcp.recv())
            else:
                # An IP literal is checked against the certificate's IP
                # entries; ssl sends no SNI for it.
                self.begin("in the TLS handshake", start_tls(
                    tcp.recv(), ssl_ctx, self.loop, server_side=False, server_hostname=host,
                    timeout=self.remaining())).cb(tls_done)

        def tls_done(tls: CondVar) -> None:
            error = tls.error
            if error is not None:
                self.cv.croak(self.timeout_error("in the TLS handshake", error)
                              if isinstance(error, TimeoutError) else error)
            elif self.cv.ready:
                tls.recv().close()
            else:
                self.open(tls.recv())

        self.cv.on_cancel(self.cancel)
        self.begin(step, self.transport(host, port, proxy, unix_socket)).cb(connected)

    def begin(self, stage: str, step: CondVar) -> CondVar:
        """Make ``step`` the one :meth:`cancel` stops."""
        self.stage = stage
        self.step = step
        return step

    def cancel(self, error: Optional[BaseException]) -> None:
        """``cv.cancel()``: cancel the step in flight, whose callback croaks ``self.cv``."""
        step = self.step
        error = error or ConnectCancelled(f"WebSocket connect cancelled {self.stage}")
        if step is not None and not step.ready:
            step.cancel(error)
        self.cv.croak(error)  # (already croaked through the step's callback, as a rule)

    def transport(self, host: str, port: int, proxy: Optional[Proxy],
                  unix_socket: Optional[str]) -> CondVar:
        """The connected socket the handshake runs on: a Unix socket, a proxy's tunnel, or TCP."""
        if unix_socket is not None:
            return unix_connect(unix_socket, self.loop, timeout=self.remaining())
        if proxy is not None:
            return open_tunnel(proxy, host, port, self.loop, timeout=self.remaining())
        return tcp_connect(host, port, self.loop, timeout=self.remaining())

    def open(self, sock: socket.socket) -> None:
        handshake = self.begin("waiting for the handshake answer", CondVar(self.loop))
        handshake.cb(self.opened)
        open_client(sock, self.protocol(), self.options, self.loop, handshake,
                    timeout=self.remaining(), timeout_text=self.options.handshake_timeout)

    def opened(self, handshake: CondVar) -> None:
        """The handshake's result is the connect's (the same turn: nothing overtakes it)."""
        if handshake.error is not None:
            self.cv.croak(handshake.error)
        elif self.cv.ready:  # cannot happen (cancel goes through the handshake); be safe
            handshake.recv_all()[0].stream.abort()
        else:
            self.cv.send(*handshake.recv_all())

    def timeout_error(self, step: str, cause: Optional[BaseException]) -> WaitTimeout:
        return _timeout_error(step, self.options.handshake_timeout, cause)


def _timeout_error(step: str, timeout: Optional[float], cause: Optional[BaseException]) -> WaitTimeout:
    error = WaitTimeout(f"WebSocket connect timed out {step} (timeout={timeout} s)")
    error.__cause__ = cause
    return error


def open_client(sock: socket.socket, protocol: ClientProtocol, options: Options, loop: Loop,
                cv: CondVar, *, timeout: Optional[float], timeout_text: Optional[float]) -> None:
    """Run the client handshake of ``protocol`` on a connected ``sock``; ``cv`` gets the result."""
    def timeout_error() -> BaseException:
        # A refusal whose body is still coming is the news, not the slow body.
        return protocol.refusal() or _timeout_error("waiting for the handshake answer",
                                                    timeout_text, None)

    def lost_error(exc: Optional[BaseException]) -> BaseException:
        return exc or ConnectionResetError(errno.ECONNRESET, "connection closed during the handshake")

    Connection.opening(Stream(sock, loop), protocol, options, loop=loop, cv=cv, timeout=timeout,
                       timeout_error=timeout_error, lost_error=lost_error)


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
    **more: Any,
) -> tuple[Connection, Connection]:
    """Two handshaken Connections over ``socket.socketpair()``: ``(server_side, client_side)``.

    For unit-testing handlers without TCP: the real :class:`~evws.Server`
    and the real client handshake run on the two ends of a socketpair,
    driven by the loop until both are ready (at most ``timeout`` seconds).
    ``handshake``/``validator`` go to the server (their extra results are
    dropped); every other option (those above, and ``max_fragments``,
    ``high_water``, ``low_water``, ``max_handshake_size``, ``max_error_body``
    as for :class:`Client`) goes to both ends as one :class:`~evws.Options`.
    Run the loop afterwards to exchange messages.

    Raises:
        HandshakeError: a handshake failed (e.g. ``handshake`` rejected it).
        WaitTimeout: not done within ``timeout``.
        RecursiveWaitError: called from inside a loop callback (it has to
            run the loop itself).
        TypeError: an unknown option.
    """
    from .server import Server  # server imports nothing from here; avoid a cycle all the same

    unknown = set(more) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown connection_pair option(s): {', '.join(sorted(unknown))}")
    loop = loop or get_loop()
    if loop.depth > 0:
        raise RecursiveWaitError("connection_pair() runs the loop: call it outside loop callbacks")
    settings = {**DEFAULTS, **more, "max_payload_size": max_payload_size,
                "close_timeout": close_timeout, "compression": compression, "timeout": timeout,
                "ping_interval": ping_interval, "ping_timeout": ping_timeout}
    options = _options(settings)
    server_sock, client_sock = socket.socketpair()
    server = Server(handshake=handshake, validator=validator, loop=loop, options=options)
    server_cv = server.establish(server_sock)

    def refused(cv: CondVar) -> None:
        # Answer a refusal as a server program would, so the client side
        # ends at once instead of waiting for its timeout.
        error = cv.error
        if isinstance(error, HandshakeError):
            try:
                server_sock.send(error.response)
                server_sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    server_cv.cb(refused)
    client_cv = CondVar(loop)
    protocol = ClientProtocol(
        "localhost", resource, subprotocols=subprotocols or (), origin=origin,
        headers=list(_header_items(headers)), deflate_config=options.deflate,
        max_handshake_size=options.max_handshake_size, max_error_body=options.max_error_body,
        max_payload_size=options.max_payload_size, max_fragments=options.max_fragments)
    open_client(client_sock, protocol, options, loop, client_cv, timeout=timeout,
                timeout_text=timeout)
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
        if cv.ready and cv.error is None:
            cv.recv_all()[0].stream.abort()
    if not client_cv.ready:
        client_sock.shutdown(socket.SHUT_RDWR)  # ends both handshakes through EOF
    if not server_cv.ready:
        server_sock.shutdown(socket.SHUT_RDWR)
    deadline = time.monotonic() + 1.0
    while not (server_cv.ready and client_cv.ready) and time.monotonic() < deadline:
        loop.run_once(0.05)
    # A refused server hands its socket back open (HandshakeError's contract):
    # ours to close. That also sends the EOF the client's stream waits for.
    if server_cv.ready and server_cv.error is not None and server_sock.fileno() >= 0:
        server_sock.close()
    # The client's socket is never ours to close: after a refusal its Stream
    # closes it gracefully (shut down writing, read until that EOF). Closing
    # it behind the stream's back would leave the loop watching a closed fd,
    # and the next socket to get that number could not be watched at all.
    while client_sock.fileno() >= 0 and time.monotonic() < deadline:
        loop.run_once(0.05)
