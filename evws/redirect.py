"""Following HTTP redirects of the client's opening handshake.

Why: a WebSocket endpoint that moved, or sits behind a load balancer that
sends clients to a node, answers the upgrade request with a redirect. RFC
6455 4.1 allows a client to follow it; ``websockets`` does, at most 10 times.
evws follows one when all of this holds (the rules, in one place):

- the answer's status is 301, 302, 303, 307 or 308 and it has a
  ``Location`` field;
- ``max_redirects`` (:class:`~evws.Options`, default 10) is not 0 -- with 0
  the 3xx is the plain :class:`~evws.HandshakeError` it always was;
- the ``Location``, resolved against the URL that answered (RFC 3986 5.2, so
  ``/other``, ``../x`` and ``//host/x`` work), is a ``ws://``/``wss://`` URL,
  or ``http://``/``https://`` taken as ``ws://``/``wss://`` (the mapping the
  WHATWG ``WebSocket`` constructor applies; a fragment is dropped, it means
  nothing to a WebSocket);
- it does not go from ``wss://`` to ``ws://`` (no TLS downgrade);
- fewer than ``max_redirects`` redirects were followed already.

Otherwise the connect croaks :class:`~evws.RedirectError` (a
``HandshakeError`` with the 3xx's ``status``, ``headers`` and ``body``, plus
``location`` and ``url``). Each hop is a fresh connection (the refused one was
closed after its answer was read) made with the same options; the
``timeout`` bounds the whole chain, as ``websockets``' ``open_timeout`` does.
When a hop leaves the origin (scheme, host, port) the ``Authorization``,
``Cookie`` and ``Proxy-Authorization`` fields the caller gave are dropped
from that hop on, so credentials meant for one server do not reach another
(credentials in a URL's user-info belong to that URL and follow it only).

This module holds the policy; :mod:`evws.client` hands it a function that
makes one hop (``hop(url, timeout=..., drop_credentials=...)`` returning the
hop's CondVar), so nothing here knows how a connection is made.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol
from urllib.parse import urljoin, urlsplit, urlunsplit

from .errors import ConnectCancelled, HandshakeError, ProxyError, RedirectError, WaitTimeout
from .protocol.http import Headers, HeadersLike
from .reactor.condvar import CondVar
from .reactor.loop import Loop

__all__ = ["REDIRECT_STATUSES", "CREDENTIAL_FIELDS", "Hop", "is_redirect", "redirect_target",
           "same_origin", "without_credentials", "follow_redirects"]

#: The statuses whose ``Location`` is followed (300 Multiple Choices is not a redirect to one place).
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

#: Request fields that are not sent on to another origin.
CREDENTIAL_FIELDS = ("Authorization", "Cookie", "Proxy-Authorization")

_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}
_DEFAULT_PORTS = {"ws": 80, "wss": 443}


class Hop(Protocol):
    """Makes one connection attempt to ``url``; its CondVar is the connect's result."""

    def __call__(self, url: str, /, *, timeout: Optional[float],
                 drop_credentials: bool) -> CondVar: ...


def is_redirect(error: Optional[BaseException]) -> bool:
    """True for a refused handshake that is a redirect: a 3xx of
    :data:`REDIRECT_STATUSES` with a ``Location`` field."""
    return (isinstance(error, HandshakeError) and not isinstance(error, RedirectError)
            and error.status in REDIRECT_STATUSES
            and error.headers is not None and error.headers.get("Location") is not None)


def redirect_target(url: str, error: HandshakeError) -> str:
    """The ws/wss URL the redirect ``error`` (answered by ``url``) points to.

    Raises:
        RedirectError: an empty ``Location``, another scheme than
            ws/wss/http/https, or ``wss://`` to ``ws://``.
    """
    location = (error.headers.get("Location") or "").strip()

    def refuse(why: str) -> RedirectError:
        return RedirectError(f"cannot follow the {error.status} redirect from {url} to "
                             f"{location!r}: {why}", status=error.status, headers=error.headers,
                             body=error.body, location=location, url=url)

    if not location:
        raise refuse("empty Location")
    try:
        parts = urlsplit(urljoin(url, location))
    except ValueError as exc:  # e.g. an unbalanced "[" in the host
        raise refuse(str(exc)) from exc
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise refuse("not a ws://, wss://, http:// or https:// URL")
    if urlsplit(url).scheme.lower() == "wss" and scheme == "ws":
        raise refuse("a redirect from wss:// to ws:// would drop TLS")
    return str(urlunsplit((scheme, parts.netloc, parts.path, parts.query, "")))


def same_origin(a: str, b: str) -> bool:
    """True when two ws/wss URLs have the same scheme, host and port (RFC 6454)."""
    def origin(url: str) -> tuple[str, Optional[str], Optional[int]]:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        try:
            port = parts.port
        except ValueError:
            port = None
        return scheme, parts.hostname, port or _DEFAULT_PORTS.get(scheme)
    return origin(a) == origin(b)


def without_credentials(headers: Optional[HeadersLike]) -> Optional[Headers]:
    """``headers`` without the :data:`CREDENTIAL_FIELDS` (``None`` stays ``None``)."""
    if headers is None:
        return None
    kept = Headers(headers)
    for name in CREDENTIAL_FIELDS:
        kept.remove(name)
    return kept


def follow_redirects(url: str, hop: Hop, *, loop: Loop, max_redirects: int,
                     timeout: Optional[float]) -> CondVar:
    """Connect through ``hop``, following redirects by the module's rules.

    The first hop is made at once, so what it raises (a bad URL or option)
    reaches the caller; a hop after a redirect that raises ``ValueError``
    (an unusable URL) croaks :class:`~evws.RedirectError` instead, and one
    that raises :class:`~evws.ProxyError` (the new URL's proxy, from the
    environment, is unusable) croaks that. The
    CondVar yields what the last hop's yields, or croaks its error;
    ``cancel()`` on it cancels the hop in flight.
    """
    result = CondVar(loop)
    started = loop.time()
    state: dict[str, Any] = {"url": url, "followed": 0, "drop": False}

    def remaining() -> Optional[float]:
        return None if timeout is None else max(0.0, started + timeout - loop.time())

    def done(cv: CondVar) -> None:
        error = cv.error
        if error is None:
            result.send(*cv.recv_all())
            return
        if not is_redirect(error) or max_redirects == 0:
            result.croak(_after_redirects(error, state["followed"], timeout))
            return
        assert isinstance(error, HandshakeError)
        current = state["url"]
        if state["followed"] >= max_redirects:
            result.croak(RedirectError(
                f"more than {max_redirects} redirect(s); the last, from {current}, "
                f"to {error.headers.get('Location')!r}", status=error.status,
                headers=error.headers, body=error.body,
                location=error.headers.get("Location") or "", url=current))
            return
        try:
            target = redirect_target(current, error)
        except RedirectError as refused:
            result.croak(refused)
            return
        if not same_origin(current, target):
            state["drop"] = True
        state["url"] = target
        state["followed"] += 1
        left = remaining()
        if left is not None and left <= 0:
            result.croak(_after_redirects(WaitTimeout("no time left"), state["followed"], timeout))
            return
        try:
            cv = hop(target, timeout=left, drop_credentials=state["drop"])
        except ProxyError as exc:  # the proxy for the new URL is unusable: the proxy's news
            result.croak(exc)
            return
        except ValueError as exc:
            bad = RedirectError(f"cannot follow the {error.status} redirect from {current} to "
                                f"{target}: {exc}", status=error.status, headers=error.headers,
                                body=error.body, location=error.headers.get("Location") or "",
                                url=current)
            bad.__cause__ = exc
            result.croak(bad)
            return
        state["hop"] = cv
        cv.cb(done)

    def cancel(error: Optional[BaseException]) -> None:
        # The hop in flight croaks (ConnectCancelled by default), and done() passes it on.
        current: CondVar = state["hop"]
        if current.cancellable:
            current.cancel(error)
        result.croak(error or ConnectCancelled("WebSocket connect cancelled"))  # if not yet

    state["hop"] = first = hop(url, timeout=timeout, drop_credentials=False)
    result.on_cancel(cancel)
    first.cb(done)
    return result


def _after_redirects(error: BaseException, followed: int,
                     timeout: Optional[float]) -> BaseException:
    """A timeout after redirects names the whole chain's ``timeout``, not the last hop's share."""
    if followed == 0 or not isinstance(error, WaitTimeout):
        return error
    wrapped = WaitTimeout(f"WebSocket connect timed out after {followed} redirect(s) "
                          f"(timeout={timeout} s)")
    wrapped.__cause__ = error
    return wrapped
