"""The WebSocket opening handshake (RFC 6455 section 4), sans I/O.

Server side: :func:`parse_request` turns a parsed HTTP head into a
:class:`Request` (no policy, so a handshake callback can look at anything),
:func:`check_request` applies the RFC 6455 4.2.1 checks and raises a
:class:`~evws.errors.HandshakeError` carrying the right HTTP answer, and
:func:`default_response` is the 101 that accepts it. :class:`Response` is what
a user's handshake callback edits (subprotocol, cookies, extra headers) before
it is written with :meth:`Response.to_bytes`.

Client side: :func:`build_request` writes the request and
:func:`check_response` verifies the server's answer (RFC 6455 4.1).

The models are Perl's Protocol::WebSocket::Request and ::Response, whose
attribute names the API keeps.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, TypeVar, overload

from evws.errors import HandshakeError
from evws.protocol.http import (
    FIELD_VALUE,
    TOKEN,
    Headers,
    HeadersLike,
    RequestHead,
    ResponseHead,
    http_error,
    serialize_request,
    serialize_response,
    split_header_list,
)

__all__ = [
    "GUID",
    "Request",
    "Response",
    "accept_key",
    "generate_key",
    "parse_request",
    "check_request",
    "default_response",
    "choose_subprotocol",
    "build_request",
    "check_response",
    "split_header_list",
]

# RFC 6455 1.3: the globally unique identifier appended to the key.
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_VERSION = "13"

_T = TypeVar("_T")


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value answering ``key`` (RFC 6455 4.2.2).

    "base64-encoded SHA-1 of the concatenation of the |Sec-WebSocket-Key|
    (as a string, not base64-decoded) with the string
    '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'".
    """
    digest = hashlib.sha1((key + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def generate_key() -> str:
    """A fresh ``Sec-WebSocket-Key``: 16 random bytes, base64 (RFC 6455 4.1)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def _has_token(values: list[str], token: str) -> bool:
    # Upgrade and Connection are comma-separated lists, compared
    # case-insensitively ("keep-alive, Upgrade" is a valid Connection).
    return any(item.lower() == token for item in split_header_list(values))


def _parse_cookies(values: Iterable[str]) -> dict[str, str]:
    # RFC 6265 5.4: cookie-string = cookie-pair *( ";" SP cookie-pair ).
    # The first pair of a name wins: user agents send the most specific first.
    cookies: dict[str, str] = {}
    for value in values:
        for pair in value.split(";"):
            name, equals, cookie_value = pair.partition("=")
            name = name.strip()
            if not equals or not name:
                continue
            cookie_value = cookie_value.strip()
            if len(cookie_value) >= 2 and cookie_value[0] == cookie_value[-1] == '"':
                cookie_value = cookie_value[1:-1]
            cookies.setdefault(name, cookie_value)
    return cookies


def _resource_name(target: str) -> str:
    # RFC 6455 4.2.1 item 1: the Request-URI is the /resource name/ "or an
    # absolute HTTP/HTTPS URI containing the /resource name/". Reduce the
    # absolute form to the path and query; keep the origin form as sent.
    scheme, sep, rest = target.partition("://")
    if sep and scheme.lower() in ("http", "https", "ws", "wss"):
        slash = rest.find("/")
        query = rest.find("?")
        if slash < 0 or (0 <= query < slash):
            return "/" + (rest[query:] if query >= 0 else "")
        return rest[slash:]
    return target


def _path(request: Request) -> str:
    return request.resource_name.partition("?")[0]


def _query(request: Request) -> str:
    return request.resource_name.partition("?")[2]


def _host(request: Request) -> str | None:
    return request.headers.get("Host")


def _origin(request: Request) -> str | None:
    # Sec-WebSocket-Origin is what drafts 7 to 10 (version 8) sent instead.
    origin = request.headers.get("Origin")
    return request.headers.get("Sec-WebSocket-Origin") if origin is None else origin


def _key(request: Request) -> str | None:
    return request.headers.get("Sec-WebSocket-Key")


def _version(request: Request) -> int | None:
    text = request.headers.get_all("Sec-WebSocket-Version")
    if len(text) == 1 and text[0].isdigit() and text[0].isascii():
        return int(text[0])
    return None


def _subprotocols(request: Request) -> list[str]:
    return split_header_list(request.headers.get_all("Sec-WebSocket-Protocol"))


def _extensions(request: Request) -> list[str]:
    return split_header_list(request.headers.get_all("Sec-WebSocket-Extensions"))


def _cookies(request: Request) -> dict[str, str]:
    return _parse_cookies(request.headers.get_all("Cookie"))


class _Derived(Generic[_T]):
    """A :class:`Request` attribute worked out from its headers when read.

    Every connection keeps its request, so the request stores only what was
    sent (the request line and the headers) and derives the rest on demand:
    a dataclass holding them all cost ~1 KiB per idle connection.
    A value given to the constructor or assigned later is stored and wins.
    A mutable value (list, dict) is stored the first time it is read, so
    changing it in place sticks as it would with a plain attribute.
    """

    __slots__ = ("name", "derive", "mutable")

    def __init__(self, derive: Callable[[Request], _T], *, mutable: bool = False) -> None:
        self.name = ""
        self.derive = derive
        self.mutable = mutable

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, request: None, owner: type | None = None) -> _Derived[_T]: ...
    @overload
    def __get__(self, request: Request, owner: type | None = None) -> _T: ...

    def __get__(self, request: Request | None, owner: type | None = None) -> _T | _Derived[_T]:
        if request is None:
            return self
        value = self.peek(request)
        if self.mutable and (request._stored is None or self.name not in request._stored):
            self.__set__(request, value)
        return value

    def peek(self, request: Request) -> _T:
        """The value, without storing a mutable one (for evws' own reads)."""
        stored = request._stored
        if stored is not None and self.name in stored:
            return stored[self.name]  # type: ignore[no-any-return]
        return self.derive(request)

    def __set__(self, request: Request, value: _T) -> None:
        if request._stored is None:
            request._stored = {}
        request._stored[self.name] = value


class Request:
    """A client's opening handshake, as a handshake callback sees it.

    Built by :func:`parse_request` from whatever the client sent, valid or
    not: checking is :func:`check_request`'s job. ``resource_name`` is the
    request target as sent (path plus ``?query``); ``path`` and ``query`` are
    that split at the first ``?``, not percent-decoded. ``peer`` is set by
    the API layer to the peer address, when it knows it. ``host``,
    ``origin``, ``key``, ``version``, ``subprotocols``, ``extensions`` and
    ``cookies`` are read from ``headers`` unless given (None: from the
    headers) or assigned.
    """

    __slots__ = ("method", "resource_name", "headers", "peer", "http_version", "_stored")

    path = _Derived(_path)
    query = _Derived(_query)
    host = _Derived(_host)
    origin = _Derived(_origin)
    key = _Derived(_key)
    version = _Derived(_version)
    subprotocols = _Derived(_subprotocols, mutable=True)
    extensions = _Derived(_extensions, mutable=True)
    cookies = _Derived(_cookies, mutable=True)

    def __init__(
        self,
        method: str = "GET",
        resource_name: str = "/",
        path: str | None = None,
        query: str | None = None,
        host: str | None = None,
        origin: str | None = None,
        key: str | None = None,
        version: int | None = None,
        subprotocols: list[str] | None = None,
        extensions: list[str] | None = None,
        headers: Headers | None = None,
        cookies: dict[str, str] | None = None,
        peer: tuple[Any, ...] | None = None,
        http_version: str = "HTTP/1.1",
    ) -> None:
        self.method = method
        self.resource_name = resource_name
        self.headers = Headers() if headers is None else headers
        self.peer = peer
        self.http_version = http_version
        #: values given or assigned, and mutable ones once read (None: none yet)
        self._stored: dict[str, Any] | None = None
        given = {"path": path, "query": query, "host": host, "origin": origin, "key": key,
                 "version": version, "subprotocols": subprotocols, "extensions": extensions,
                 "cookies": cookies}
        for name, value in given.items():
            if value is not None:
                setattr(self, name, value)

    _PUBLIC = ("method", "resource_name", "path", "query", "host", "origin", "key", "version",
               "subprotocols", "extensions", "headers", "cookies", "peer", "http_version")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self._PUBLIC)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._PUBLIC)
        return f"Request({fields})"


def parse_request(head: RequestHead) -> Request:
    """Build a :class:`Request` from a parsed head. Applies no policy."""
    return Request(
        method=head.method,
        resource_name=_resource_name(head.target),
        headers=head.headers,
        http_version=head.version,
    )


def check_request(request: Request) -> None:
    """Apply the server-side checks of RFC 6455 4.2.1 to ``request``.

    Each refusal raises :class:`HandshakeError` with a ready response:

    * 400: the method is not GET (RFC 6455 only allows GET; 405 would also
      need an ``Allow`` header and says nothing more useful to a WebSocket
      client), HTTP older than 1.1, no or several ``Host``, no ``websocket``
      in ``Upgrade``, no ``upgrade`` in ``Connection``, a request body, a
      missing, repeated or malformed ``Sec-WebSocket-Key``;
    * 426 with ``Sec-WebSocket-Version: 13``: a missing or other version
      (RFC 6455 4.4), checked before the key because clients of old drafts
      send keys of another form.
    """
    # One scan of the fields for every lookup below.
    fields = request.headers.by_name()
    none: list[str] = []
    # 4.2.1 item 1: "An HTTP/1.1 or higher GET request".
    if request.method != "GET":
        raise http_error(400, f"WebSocket handshake must use GET, not {request.method}")
    version = request.http_version
    match = None if version == "HTTP/1.1" else re.fullmatch(r"HTTP/([0-9])\.([0-9])", version)
    if version != "HTTP/1.1" and (match is None or (int(match[1]), int(match[2])) < (1, 1)):
        raise http_error(400, f"WebSocket handshake needs HTTP/1.1 or later, not {request.http_version}")
    if not request.resource_name.startswith("/"):
        raise http_error(400, f"invalid WebSocket resource name: {request.resource_name}")
    # 4.2.1 item 2 (and RFC 7230 5.4: no Host, or several, is a 400).
    hosts = fields.get("host", none)
    if len(hosts) != 1:
        raise http_error(400, "missing Host header" if not hosts else "more than one Host header")
    # A handshake has no body; one would be read as frames.
    if "transfer-encoding" in fields:
        raise http_error(400, "WebSocket handshake must not have a body (Transfer-Encoding)")
    lengths = fields.get("content-length", none)
    if any(length.strip() != "0" for length in lengths):
        raise http_error(400, "WebSocket handshake must not have a body (Content-Length)")
    # 4.2.1 item 3: "An |Upgrade| header field containing the value
    # "websocket", treated as an ASCII case-insensitive value."
    if not _has_token(fields.get("upgrade", none), "websocket"):
        raise http_error(400, "missing 'Upgrade: websocket' header")
    # 4.2.1 item 4: "A |Connection| header field that includes the token
    # "Upgrade", treated as an ASCII case-insensitive value."
    if not _has_token(fields.get("connection", none), "upgrade"):
        raise http_error(400, "missing 'Connection: Upgrade' header")
    # 4.2.1 item 6 and 4.4: "If this version does not match a version
    # understood by the server, the server MUST abort the WebSocket handshake
    # [...] and instead send an appropriate HTTP error code (such as 426
    # Upgrade Required) and a |Sec-WebSocket-Version| header field".
    if request.version != 13:
        found = ", ".join(fields.get("sec-websocket-version", none)) or "none"
        raise http_error(
            426,
            f"unsupported WebSocket version ({found}); this server speaks version 13",
            [("Sec-WebSocket-Version", _VERSION)],
        )
    # 4.2.1 item 5: "A |Sec-WebSocket-Key| header field with a base64-encoded
    # value that, when decoded, is 16 bytes in length."
    keys = fields.get("sec-websocket-key", none)
    if len(keys) != 1:
        raise http_error(
            400, "missing Sec-WebSocket-Key header" if not keys else "more than one Sec-WebSocket-Key header"
        )
    if not _is_valid_key(keys[0]):
        raise http_error(400, f"invalid Sec-WebSocket-Key: {keys[0]}")


def _is_valid_key(key: str) -> bool:
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return False
    return len(raw) == 16


@dataclass
class Response:
    """The server's answer to a handshake, as a handshake callback edits it.

    With ``status`` 101, :meth:`to_bytes` writes the upgrade fields, the
    ``Sec-WebSocket-Accept`` computed from ``key``, then the chosen
    ``subprotocol``, ``extensions``, one ``Set-Cookie`` per cookie and the
    extra ``headers``. With another status only the status line, cookies and
    extra headers are written (the caller supplies any body semantics).
    A cookie value is written verbatim after ``name=``, so attributes may
    follow it (``"v; Path=/; HttpOnly"``).
    """

    status: int = 101
    headers: Headers = field(default_factory=Headers)
    subprotocol: str | None = None
    cookies: dict[str, str] = field(default_factory=dict)
    key: str | None = None
    extensions: str | None = None

    @property
    def accept(self) -> str | None:
        """The ``Sec-WebSocket-Accept`` value, or None without a key."""
        return None if self.key is None else accept_key(self.key)

    def to_bytes(self) -> bytes:
        """The complete HTTP response.

        Raises:
            ValueError: CR, LF, NUL (or another control byte) or non-ASCII in
                any field, a cookie name that is not a token, or status 101
                without a ``key``.
        """
        fields: list[tuple[str, str]] = []
        if self.status == 101:
            if self.key is None:
                raise ValueError("a 101 response needs the request's key")
            if not FIELD_VALUE.fullmatch(self.key):
                # The key is only hashed, but "CR/LF in anything" is refused
                # all the same: it is a sign of a forged request object.
                raise ValueError(f"invalid Sec-WebSocket-Key: {self.key!r}")
            # RFC 6455 4.2.2 item 5.
            fields += [
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Accept", accept_key(self.key)),
            ]
            if self.subprotocol is not None:
                fields.append(("Sec-WebSocket-Protocol", self.subprotocol))
            if self.extensions is not None:
                fields.append(("Sec-WebSocket-Extensions", self.extensions))
        for name, value in self.cookies.items():
            # RFC 6265 4.1.1: cookie-name = token
            if not isinstance(name, str) or not TOKEN.fullmatch(name):
                raise ValueError(f"invalid cookie name: {name!r}")
            fields.append(("Set-Cookie", f"{name}={value}"))
        try:
            fields += self.headers.items() if type(self.headers) is Headers else Headers(self.headers).items()
        except TypeError as exc:  # e.g. an int value: refuse it like a bad one
            raise ValueError(str(exc)) from None
        return serialize_response(self.status, fields)


def default_response(request: Request) -> Response:
    """The 101 response that accepts ``request`` with no subprotocol."""
    return Response(key=request.key)


def choose_subprotocol(offered: Iterable[str], supported: Iterable[str]) -> str | None:
    """The first of ``supported`` (the server's order of preference) that the
    client ``offered``, or ``None``.

    Why the server's order: the client lists what it can speak, the server
    knows which of its versions it prefers (RFC 6455 4.2.2 leaves the choice
    to the server; ``websockets`` decides the same way).
    """
    offers = set(offered)
    return next((name for name in supported if name in offers), None)


def build_request(
    host: str,
    resource: str,
    key: str,
    *,
    subprotocols: Iterable[str] = (),
    extensions: str | None = None,
    origin: str | None = None,
    headers: HeadersLike = (),
) -> bytes:
    """Write a client's opening handshake (RFC 6455 4.1).

    Args:
        host: the ``Host`` value (with ``:port`` when not the default).
        resource: the resource name, ``/path?query``.
        key: the ``Sec-WebSocket-Key`` (see :func:`generate_key`); keep it to
            check the answer with :func:`check_response`.
        subprotocols: offered subprotocols, in order of preference.
        extensions: the ``Sec-WebSocket-Extensions`` value to offer, if any.
        origin: the ``Origin`` value, if any.
        headers: extra fields, written last.

    Raises:
        ValueError: a resource not starting with "/", or a field with CR, LF
            or other control bytes.
    """
    if not resource.startswith("/"):
        raise ValueError(f"resource name must start with '/': {resource!r}")
    fields = [
        ("Host", host),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", _VERSION),
    ]
    offered = list(subprotocols)
    if offered:
        fields.append(("Sec-WebSocket-Protocol", ", ".join(offered)))
    if extensions is not None:
        fields.append(("Sec-WebSocket-Extensions", extensions))
    if origin is not None:
        fields.append(("Origin", origin))
    fields += Headers(headers).items()
    return serialize_request("GET", resource, fields)


def check_response(
    head: ResponseHead,
    key: str,
    *,
    subprotocols_offered: Iterable[str] = (),
    extensions_offered: bool = False,
) -> tuple[str | None, str | None]:
    """Verify a server's answer to our handshake (RFC 6455 4.1, client side).

    Returns:
        ``(subprotocol, extensions)``: the subprotocol the server chose (or
        None) and the raw ``Sec-WebSocket-Extensions`` value (or None).

    Raises:
        HandshakeError: with ``.status`` set to the status received, for a
            status other than 101, a missing ``Upgrade: websocket`` or
            ``Connection: Upgrade``, a wrong ``Sec-WebSocket-Accept``, a
            subprotocol that was not offered, or extensions that were not.
    """
    status = head.status
    headers = head.headers
    subprotocols_offered = list(subprotocols_offered)

    def fail(message: str) -> HandshakeError:
        return HandshakeError(message, status=status)

    # "If the status code received from the server is not 101, the client
    # handles the response per HTTP [RFC2616] procedures."
    if status != 101:
        raise fail(f"server refused the WebSocket handshake: {status} {head.reason}".rstrip())
    # "If the response lacks an |Upgrade| header field or the |Upgrade| header
    # field contains a value that is not an ASCII case-insensitive match for
    # the value "websocket", the client MUST _Fail the WebSocket Connection_."
    if not _has_token(headers.get_all("Upgrade"), "websocket"):
        raise fail("server response lacks 'Upgrade: websocket'")
    if not _has_token(headers.get_all("Connection"), "upgrade"):
        raise fail("server response lacks 'Connection: Upgrade'")
    accepts = headers.get_all("Sec-WebSocket-Accept")
    expected = accept_key(key)
    if len(accepts) != 1 or accepts[0].strip() != expected:
        raise fail(
            f"wrong Sec-WebSocket-Accept: expected {expected!r}, got "
            f"{', '.join(accepts) if accepts else 'none'}"
        )
    # "If the response includes a |Sec-WebSocket-Protocol| header field and
    # this header field indicates the use of a subprotocol that was not
    # present in the client's handshake [...] the client MUST _Fail_".
    subprotocol = None
    chosen = split_header_list(headers.get_all("Sec-WebSocket-Protocol"))
    if chosen:
        if len(chosen) > 1:
            raise fail(f"server chose several subprotocols: {', '.join(chosen)}")
        if chosen[0] not in subprotocols_offered:
            raise fail(f"server chose subprotocol {chosen[0]!r}, which was not offered")
        subprotocol = chosen[0]
    extensions = None
    offered_extensions = headers.get_all("Sec-WebSocket-Extensions")
    if offered_extensions:
        if not extensions_offered:
            raise fail(
                "server answered with extensions that were not offered: "
                + ", ".join(offered_extensions)
            )
        extensions = ", ".join(offered_extensions)
    return subprotocol, extensions
