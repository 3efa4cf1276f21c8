"""HTTP proxies for the client: which proxy a URL goes through, and the tunnel through it.

``connect(url, proxy=...)`` takes ``True`` (the default: the environment
decides, as for curl, requests, websockets and every HTTP client), ``None``
(no proxy), or a proxy URL ``http://[user:pass@]host[:port]`` (always used).
:func:`resolve_proxy` turns that into a :class:`Proxy` or ``None``;
:func:`open_tunnel` connects to the proxy and runs the sans-I/O
:class:`~evws.protocol.proxy.ConnectTunnel` on the loop, and yields the socket
once it is a pipe to the origin, for TLS and the WebSocket handshake to run
through as if the proxy were not there.

The environment (:func:`environment_proxy`), and why each rule:

- ``wss://`` uses ``https_proxy``, ``ws://`` uses ``http_proxy``: the schemes
  they stand for (RFC 6455 3: ws and wss are HTTP and HTTPS's twins);
  ``all_proxy`` and the SOCKS settings it usually holds are not used (SOCKS
  is not supported, see the README).
- The lower-case name wins over the upper-case one (curl's rule; an empty
  value counts as unset). ``HTTP_PROXY`` is ignored when ``REQUEST_METHOD``
  is set: under CGI it would come from a request's ``Proxy:`` header
  ("httpoxy", as Python's ``urllib`` guards too).
- ``no_proxy`` (or ``NO_PROXY``), a comma-separated list, is checked first
  (:func:`bypasses_proxy`): ``*`` is every host; ``example.com``,
  ``.example.com`` and ``*.example.com`` match that domain and its
  subdomains; an IP address or network (``10.0.0.0/8``) matches addresses in
  it; ``host:port`` (``[::1]:8080``) only that port.

A value without a scheme (``proxy.example:3128``) means ``http://``; a proxy
URL without a port uses 80. Only ``http://`` proxies: ``https://`` ones (TLS
to the proxy, then TLS to the origin inside it) and ``socks*://`` raise
:class:`~evws.errors.ProxyError`, as any unusable proxy URL does, when
``connect`` is called.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from typing import Mapping, Optional, Union
from urllib.parse import unquote, urlsplit

from .errors import Cancelled, ProxyError
from .protocol.proxy import ConnectTunnel, basic_credentials
from .reactor.condvar import CondVar
from .reactor.loop import Loop, Timer
from .reactor.stream import Stream
from .reactor.tcp import tcp_connect

__all__ = ["Proxy", "ProxySetting", "bypasses_proxy", "environment_proxy", "open_tunnel",
           "parse_proxy_url", "resolve_proxy"]

#: what ``connect(proxy=...)`` takes: True (the environment), None (none), or a URL
ProxySetting = Union[str, bool, None]

DEFAULT_PROXY_PORT = 80


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy to tunnel through: where it is and the credentials to give it.

    The password is left out of ``repr`` (it ends up in logs and tracebacks).
    """

    host: str
    port: int
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)

    @property
    def authorization(self) -> Optional[str]:
        """The ``Proxy-Authorization`` value, or None without credentials."""
        if self.username is None:
            return None
        return basic_credentials(self.username, self.password or "")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_proxy_url(url: str) -> Proxy:
    """``http://[user:pass@]host[:port][/]`` (or ``host:port``) as a :class:`Proxy`.

    Userinfo is percent-decoded (``p%40ss`` is ``p@ss``).

    Raises:
        ProxyError: another scheme (``https://`` and ``socks5://`` say why
            they are not supported), no host, a bad port, or a path, query
            or fragment (meaningless for a proxy).
    """
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme.startswith("socks"):
        raise ProxyError(f"SOCKS proxies are not supported (only http://): {_redact(url)}")
    if scheme == "https":
        raise ProxyError("https:// proxies (TLS to the proxy) are not supported; "
                         f"use the proxy's http:// port: {_redact(url)}")
    if scheme != "http":
        raise ProxyError(f"not an http:// proxy URL: {_redact(url)}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxyError(f"a proxy URL has no path, query or fragment: {_redact(url)}")
    host = parts.hostname
    if not host:
        raise ProxyError(f"no host in the proxy URL {_redact(url)}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ProxyError(f"bad port in the proxy URL {_redact(url)}: {exc}") from None
    username = None if parts.username is None else unquote(parts.username)
    password = None if parts.password is None else unquote(parts.password)
    return Proxy(host, port or DEFAULT_PROXY_PORT, username, password)


def _redact(url: str) -> str:
    """``url`` without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{hostpart}"


def _env(environ: Mapping[str, str], name: str) -> Optional[str]:
    """``name`` or ``NAME`` from ``environ``, lower case first, empty as unset."""
    for key in (name, name.upper()):
        if key == "HTTP_PROXY" and "REQUEST_METHOD" in environ:
            continue  # httpoxy: under CGI this is a request's "Proxy:" header
        value = environ.get(key, "").strip()
        if value:
            return value
    return None


def _split_host_port(entry: str) -> tuple[str, Optional[int]]:
    """A ``no_proxy`` entry as ``(host, port or None)``: ``[::1]:80``, ``::1``, ``a.b:80``, ``a.b``."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, _, port_text = entry.partition(":")
    else:
        host, port_text = entry, ""  # a bare IPv6 address (or network), or a name
    try:
        return host, int(port_text) if port_text else None
    except ValueError:
        return host, None


def bypasses_proxy(no_proxy: str, host: str, port: int) -> bool:
    """Whether ``host:port`` is excluded from proxying by the ``no_proxy`` list; see the module docstring."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        address: Optional[ipaddress.IPv4Address | ipaddress.IPv6Address] = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry_host, entry_port = _split_host_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        try:
            network = ipaddress.ip_network(entry_host, strict=False)
        except ValueError:
            pass
        else:
            if address is not None and address.version == network.version and address in network:
                return True
            continue
        domain = entry_host.lstrip("*").lstrip(".").rstrip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def environment_proxy(secure: bool, host: str, port: int,
                      environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The proxy URL the environment gives for a ``ws(s)://host:port`` URL, or None.

    ``environ`` defaults to ``os.environ``; the rules are in the module docstring.
    """
    env = os.environ if environ is None else environ
    no_proxy = _env(env, "no_proxy")
    if no_proxy is not None and bypasses_proxy(no_proxy, host, port):
        return None
    return _env(env, "https_proxy" if secure else "http_proxy")


def resolve_proxy(setting: ProxySetting, secure: bool, host: str, port: int,
                  environ: Optional[Mapping[str, str]] = None) -> Optional[Proxy]:
    """The :class:`Proxy` one connect goes through, or None for a direct connection.

    Args:
        setting: ``True`` for the environment (:func:`environment_proxy`),
            ``None`` for no proxy, a URL for that proxy (``no_proxy`` does not
            apply to it: an explicit proxy wins).

    Raises:
        ProxyError: the URL (given, or from the environment) is unusable.
        TypeError: ``setting`` is none of those.
    """
    if setting is None:
        return None
    if setting is True:
        url = environment_proxy(secure, host, port, environ)
        return None if url is None else parse_proxy_url(url)
    if isinstance(setting, str):
        return parse_proxy_url(setting)
    raise TypeError(f"proxy must be a URL, True (the environment) or None, not {setting!r}")


class _Tunnel:
    """One CONNECT exchange on a connected socket, bounded by a timer."""

    def __init__(self, loop: Loop, cv: CondVar, sock: socket.socket, tunnel: ConnectTunnel,
                 proxy: Proxy, timeout: Optional[float]) -> None:
        self.cv = cv
        self.tunnel = tunnel
        self.proxy = proxy
        self.stream = Stream(sock, loop, on_data=self.data, on_eof=self.eof, on_close=self.closed)
        self.timer: Optional[Timer] = None
        if timeout is not None:
            self.timer = loop.timer(timeout, self.timed_out)

    def start(self) -> None:
        self.stream.write(self.tunnel.request())
        self.stream.start_reading()

    def data(self, data: bytes) -> None:
        try:
            if not self.tunnel.receive_data(data):
                return
        except ProxyError as exc:
            self.fail(exc)
            return
        if self.tunnel.leftover:
            # Neither a WebSocket server nor a TLS one speaks first: these
            # bytes are the proxy's (a body it should not have sent), and
            # would corrupt what follows.
            self.fail(ProxyError(f"the proxy {self.proxy} sent {len(self.tunnel.leftover)} bytes "
                                 "after its 2xx answer, before the client spoke"))
            return
        self.cancel_timer()
        try:
            sock = self.stream.detach()
        except ValueError as exc:  # our request still queued: cannot happen after an answer
            self.fail(ProxyError(f"tunnel through {self.proxy} opened early: {exc}"))
            return
        self.cv.send(sock)

    def eof(self) -> None:
        try:
            self.tunnel.receive_eof()
        except ProxyError as exc:
            self.fail(exc)

    def closed(self, error: Optional[Exception]) -> None:
        # A read or write error on the way (ECONNRESET...): transport trouble.
        self.cancel_timer()
        if not self.cv.ready:
            self.cv.croak(error or ProxyError(f"the connection to the proxy {self.proxy} closed"))

    def fail(self, error: BaseException) -> None:
        self.cancel_timer()
        self.cv.croak(error)
        self.stream.abort()

    def timed_out(self) -> None:
        self.timer = None
        self.fail(TimeoutError(f"no answer from the proxy {self.proxy} to CONNECT"))

    def cancel(self, error: Optional[BaseException]) -> None:
        """``cv.cancel()`` while the proxy has not answered: drop the connection to it first."""
        self.cancel_timer()
        self.stream.on_close = None
        self.stream.abort()
        self.cv.croak(error or Cancelled(f"CONNECT through the proxy {self.proxy} cancelled"))

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def open_tunnel(proxy: Proxy, host: str, port: int, loop: Loop, *,
                timeout: Optional[float] = None) -> CondVar:
    """Connect to ``proxy`` and ask it for a tunnel to ``host:port``; a CondVar yields the socket.

    ``timeout`` bounds the whole (TCP connect to the proxy and its answer).
    Croaks with the ``OSError`` of the connect to the proxy (a proxy that is
    down is ``ConnectionRefusedError``), :class:`~evws.errors.ProxyError` when
    the proxy refuses, hangs up or answers nonsense, or ``TimeoutError``;
    ``cv.cancel()`` closes the connection to the proxy, whatever the step,
    and croaks :class:`~evws.errors.Cancelled`.

    Raises:
        ValueError: ``host`` cannot be written in a request line.
    """
    tunnel = ConnectTunnel(host, port, proxy_authorization=proxy.authorization)
    cv = CondVar(loop)
    deadline = None if timeout is None else loop.time() + timeout

    def connected(tcp: CondVar) -> None:
        error = tcp.error
        if error is not None:
            cv.croak(error)
            return
        if cv.ready:  # cancelled while the connected socket was on its way
            tcp.recv().close()
            return
        remaining = None if deadline is None else max(0.0, deadline - loop.time())
        exchange = _Tunnel(loop, cv, tcp.recv(), tunnel, proxy, remaining)
        cv.on_cancel(exchange.cancel)
        exchange.start()

    tcp = tcp_connect(proxy.host, proxy.port, loop, timeout=timeout)
    cv.on_cancel(tcp.cancel)
    tcp.cb(connected)
    return cv
