"""An HTTP CONNECT tunnel (RFC 9110 9.3.6) without I/O: the request, and the proxy's answer.

A client behind an HTTP proxy first asks the proxy for a byte pipe to the
origin: ``CONNECT host:port HTTP/1.1``. A 2xx answer turns the connection into
that pipe, and TLS (for ``wss://``) and the WebSocket handshake then run
through it as if the proxy were not there; any other final status is the
proxy's refusal. :class:`ConnectTunnel` writes the request and reads the
answer from whatever bytes the caller feeds it (whole, byte by byte, or with
the tunnel's first bytes behind the head), so every case is a unit test; the
driver that owns the socket is :mod:`evws.proxy`.

What the answer may hold, and why each rule:

- 1xx interim heads (RFC 9110 15.2) are skipped: only the final answer says
  whether the tunnel is open.
- On a 2xx, ``Content-Length`` and ``Transfer-Encoding`` are ignored (RFC 9110
  9.3.6: "A client MUST ignore any Content-Length or Transfer-Encoding header
  fields received in a successful response to CONNECT"): every byte after
  the head belongs to the tunnel, and is kept in :attr:`ConnectTunnel.leftover`.
- A refusal's body is not read: the connection is useless after it, and its
  status and headers (``Proxy-Authenticate`` for a 407) are what a program can
  act on.
"""

from __future__ import annotations

import base64

from ..errors import HandshakeError, ProxyError
from .http import DEFAULT_MAX_SIZE, Headers, ResponseHead, ResponseHeadParser, serialize_request

__all__ = ["ConnectTunnel", "authority", "basic_credentials", "connect_request", "refusal"]


def basic_credentials(username: str, password: str) -> str:
    """The value of a Basic ``Proxy-Authorization`` field (RFC 7617): ``Basic base64(user:pass)``.

    UTF-8, as RFC 7617 2.1's ``charset="UTF-8"`` asks (proxies that only know
    Latin-1 see the same bytes for ASCII credentials).
    """
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def authority(host: str, port: int) -> str:
    """``host:port`` as a CONNECT target and its ``Host`` field (RFC 9110 7.2): IPv6 in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect_request(host: str, port: int, *, proxy_authorization: str | None = None) -> bytes:
    """The ``CONNECT host:port`` request head that asks a proxy for a tunnel.

    The port is always written (RFC 9110 9.3.6: the target is
    ``authority-form``, host and port), and ``Host`` repeats it, as RFC 9112
    3.2 asks of every HTTP/1.1 request.

    Raises:
        ValueError: a host or credentials that would break the request line
            or a field (spaces, CR/LF...).
    """
    target = authority(host, port)
    headers = [("Host", target)]
    if proxy_authorization is not None:
        headers.append(("Proxy-Authorization", proxy_authorization))
    return serialize_request("CONNECT", target, headers)


class ConnectTunnel:
    """One CONNECT exchange, sans I/O: send :meth:`request`, feed the answer to :meth:`receive_data`.

    ``receive_data`` returns ``True`` once the proxy answered 2xx (the tunnel
    is open: :attr:`response` is its head, :attr:`leftover` any bytes that
    came after it) and ``False`` while the answer is incomplete.

    Args:
        host, port: the origin to reach (the WebSocket server).
        proxy_authorization: a ready ``Proxy-Authorization`` value (see
            :func:`basic_credentials`), or ``None`` to send none.
        max_size: the largest answer head accepted.
    """

    def __init__(self, host: str, port: int, *, proxy_authorization: str | None = None,
                 max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.host = host
        self.port = port
        self.max_size = max_size
        self._request = connect_request(host, port, proxy_authorization=proxy_authorization)
        self._authorized = proxy_authorization is not None
        self._parser = ResponseHeadParser(max_size)
        #: the proxy's 2xx head, once the tunnel is open
        self.response: ResponseHead | None = None
        #: bytes received after the 2xx head: the first bytes of the tunnel
        self.leftover = b""

    @property
    def is_open(self) -> bool:
        """True once the proxy answered 2xx."""
        return self.response is not None

    def request(self) -> bytes:
        """The bytes to send to the proxy first."""
        return self._request

    def receive_data(self, data: bytes) -> bool:
        """Add bytes read from the proxy; ``True`` once the tunnel is open.

        Raises:
            ProxyError: a final status other than 2xx (``.status`` and
                ``.headers`` set), or an answer that is not HTTP or too large.
            RuntimeError: called after the tunnel opened (its bytes are the
                origin's, not the proxy's).
        """
        if self.response is not None:
            raise RuntimeError("the tunnel is open: what follows is the origin's, not the proxy's")
        while True:
            try:
                head = self._parser.feed(data)
            except HandshakeError as exc:
                raise ProxyError(f"the proxy's answer to CONNECT is not valid HTTP: {exc}") from exc
            if head is None:
                return False
            data = self._parser.leftover
            if 100 <= head.status < 200:
                self._parser = ResponseHeadParser(self.max_size)  # interim: the next head is final
                continue
            if 200 <= head.status < 300:
                self.response = head
                self.leftover = data
                return True
            raise refusal(head, self.host, self.port, authorized=self._authorized)

    def receive_eof(self) -> None:
        """The proxy closed the connection before the tunnel opened.

        Raises:
            ProxyError: always (status ``None``); after the tunnel opened an
                EOF is the origin's business, and this does nothing.
        """
        if self.response is None:
            raise ProxyError(f"the proxy closed the connection before answering CONNECT "
                             f"{authority(self.host, self.port)}")


def refusal(head: ResponseHead, host: str, port: int, *, authorized: bool) -> ProxyError:
    """The :class:`ProxyError` a non-2xx answer to ``CONNECT host:port`` deserves.

    A 407's message says what to do about it: give credentials when none were
    sent, check them when they were, or know that evws speaks Basic only.
    """
    reason = f" {head.reason}" if head.reason else ""
    hint = ""
    if head.status == 407:
        scheme = (head.headers.get("Proxy-Authenticate") or "Basic").split(" ", 1)[0]
        if scheme.lower() != "basic":
            hint = f" (the proxy asks for {scheme} authentication; evws sends Basic only)"
        elif authorized:
            hint = " (the credentials of the proxy URL were refused)"
        else:
            hint = " (no credentials sent: put them in the proxy URL, http://user:pass@host:port)"
    return ProxyError(f"the proxy refused CONNECT {authority(host, port)}: "
                      f"{head.status}{reason}{hint}", status=head.status,
                      headers=Headers(head.headers.items()))
