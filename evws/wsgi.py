"""A WSGI server on the evws loop: the Python answer to Twiggy + ``establish_psgi``.

Perl users run AnyEvent::WebSocket::Server inside Twiggy, a PSGI server on the
same event loop, and upgrade with ``establish_psgi``. :func:`serve` does the
same for any WSGI application (Flask, Django, plain functions)::

    server = evws.Server()

    def app(environ, start_response):
        if environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            connection = server.establish_wsgi(environ).recv()  # ready at once
            connection.on("each_message", lambda conn, msg: conn.send(msg))
            return []                       # ignored: the socket was taken over
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    evws.wsgi.serve(app, "127.0.0.1", 8000)
    evws.get_loop().run()

What it does, and why:

- HTTP/1.1 framing (keep-alive rules, chunked encoding, pipelining, ``Expect:
  100-continue``) is left to ``h11``, a sans-I/O HTTP/1.1 library that fits a
  selectors loop; it is the ``evws[wsgi]`` extra so the core stays lean.
- The request body is read completely, within ``max_body_size`` (413 beyond),
  before the application runs: ``wsgi.input`` is a ``BytesIO``, so reading it
  never blocks the loop. The request head is bounded by ``max_head_size``
  (431 beyond) and a whole request by ``request_timeout`` (408).
- A response without ``Content-Length`` goes out chunked (HTTP/1.1 clients) or
  delimited by closing the connection (HTTP/1.0). A list or tuple body gets a
  ``Content-Length`` computed for it. The body iterable is consumed lazily,
  pausing while more than ``HIGH_WATER`` bytes wait for the socket, so a large
  streamed response does not pile up in memory. Its ``close()`` is always called.
- ``environ["evws.socket"]`` is the client socket and ``environ["evws.leftover"]``
  the bytes received beyond the request, which is what
  :meth:`evws.Server.establish_wsgi` needs. When it succeeds it sets
  ``environ["evws.upgraded"]``; the WSGI server then detaches from the socket
  without closing it and ignores whatever the view returns (return ``[]`` from
  a plain WSGI app, any response from a Flask view). The establish CondVar is
  ready when ``establish_wsgi`` returns, so call ``recv()`` on it (it does not
  block) and attach handlers before the view returns: they then see even the
  frames that came with the request. A failed upgrade croaks with a
  ``HandshakeError`` and leaves the socket to the WSGI server, so the view
  answers it like any HTTP request.

Views run on the loop, as in Twiggy: a slow view (a blocking database query,
``time.sleep``) stalls every connection on the loop, WebSocket ones included.
Keep views quick, or hand slow work to a thread and answer over a connection.
"""

from __future__ import annotations

import io
import logging
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

try:
    import h11
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("evws.wsgi needs h11: pip install 'evws[wsgi]' (or pip install h11)") from exc

from .reactor.loop import Loop, Timer, get_loop
from .reactor.stream import Stream
from .reactor.tcp import TcpServer, tcp_server

__all__ = ["LEFTOVER_KEY", "SOCKET_KEY", "UPGRADED_KEY", "WSGIServer", "serve"]

log = logging.getLogger("evws.wsgi")

#: environ key of the client socket (read by ``Server.establish_wsgi``)
SOCKET_KEY = "evws.socket"
#: environ key of the bytes received after the request (the first WebSocket frames)
LEFTOVER_KEY = "evws.leftover"
#: environ key set by ``Server.establish_wsgi`` once it owns the socket
UPGRADED_KEY = "evws.upgraded"

#: pull more of a response body only while fewer bytes than this wait for the socket
HIGH_WATER = 256 * 1024

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class WSGIServer:
    """Serves one WSGI application on an evws loop; returned by :func:`serve`.

    ``.host``/``.port`` are where it listens (``None`` when fed sockets through
    :meth:`handle` only); :meth:`close` stops listening and closes idle
    keep-alive connections, while requests in progress finish. See
    :func:`serve` for the arguments.
    """

    def __init__(self, app: WSGIApp, *, loop: Loop | None = None,
                 max_head_size: int = 16384, max_body_size: int | None = 1 << 20,
                 request_timeout: float | None = 30.0, server_name: str | None = None,
                 server_port: int | None = None, url_scheme: str = "http") -> None:
        self.app = app
        self.loop = loop if loop is not None else get_loop()
        self.max_head_size = max_head_size
        self.max_body_size = max_body_size
        self.request_timeout = request_timeout
        self.server_name = server_name
        self.server_port = server_port
        self.url_scheme = url_scheme
        self.listener: TcpServer | None = None
        self._connections: set[_HttpConnection] = set()
        self._closed = False

    @property
    def host(self) -> str | None:
        return self.listener.host if self.listener is not None else None

    @property
    def port(self) -> int | None:
        return self.listener.port if self.listener is not None else None

    def listen(self, host: str | None, port: int, backlog: int = 1024) -> None:
        """Accept connections on ``host:port`` (see :func:`evws.tcp_server`)."""
        self.listener = tcp_server(host, port, self.handle, loop=self.loop, backlog=backlog)

    def handle(self, sock: socket.socket, peer_host: str = "", peer_port: int = 0) -> None:
        """Serve HTTP on an accepted socket (a ``tcp_server`` callback)."""
        if self._closed:
            sock.close()
            return
        conn = _HttpConnection(self, sock, peer_host, peer_port)
        self._connections.add(conn)
        conn.start()

    @property
    def connections(self) -> int:
        """How many HTTP connections are open (upgraded ones no longer count)."""
        return len(self._connections)

    def close(self) -> None:
        """Stop listening; close idle connections now and busy ones after their response."""
        self._closed = True
        if self.listener is not None:
            self.listener.close()
        for conn in list(self._connections):
            conn.shutdown()

    def __enter__(self) -> WSGIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<WSGIServer {self.host}:{self.port} app={self.app!r}>"


def serve(app: WSGIApp, host: str | None, port: int, *, loop: Loop | None = None,
          max_head_size: int = 16384, max_body_size: int | None = 1 << 20,
          request_timeout: float | None = 30.0, server_name: str | None = None,
          url_scheme: str = "http", backlog: int = 1024) -> WSGIServer:
    """Run the WSGI application ``app`` on ``host:port``, on the evws loop.

    Nothing happens until the loop runs (``evws.get_loop().run()``).

    Args:
        app: a PEP 3333 application (``app(environ, start_response)``).
        host: address to bind; ``None`` = all interfaces.
        port: ``0`` = any free port (read it back from ``.port``).
        loop: the loop to run on (default: ``get_loop()``).
        max_head_size: largest request line + headers (431 beyond).
        max_body_size: largest request body (413 beyond; ``None`` = no limit).
        request_timeout: seconds a client has to send a complete request,
            counted from the end of the previous response on a keep-alive
            connection; an idle connection is then closed (``None`` = never).
        server_name: ``SERVER_NAME`` (default: the bound address).
        url_scheme: ``wsgi.url_scheme`` (say ``"https"`` behind a TLS proxy).

    Returns:
        a :class:`WSGIServer` guard with ``.port`` and ``.close()``.
    """
    server = WSGIServer(app, loop=loop, max_head_size=max_head_size, max_body_size=max_body_size,
                        request_timeout=request_timeout, server_name=server_name,
                        url_scheme=url_scheme)
    server.listen(host, port, backlog)
    return server


class _Upgraded(Exception):
    """Internal: the view handed the socket to ``establish_wsgi``."""


class _HttpConnection:
    """One client connection: h11 for the framing, a Stream for the bytes."""

    def __init__(self, server: WSGIServer, sock: socket.socket, peer_host: str,
                 peer_port: int) -> None:
        self.server = server
        self.loop = server.loop
        self.sock = sock
        self.peer = (peer_host, peer_port)
        self.stream = Stream(sock, self.loop)
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=server.max_head_size)
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.timer: Timer | None = None
        self.exchange: _Exchange | None = None
        self.closed = False
        self.shutting_down = False

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        self.stream.on_data = self._on_data
        self.stream.on_eof = self._on_eof
        self.stream.on_close = self._on_close
        self.stream.on_drain = self._on_drain
        self.stream.start_reading()
        self._arm_timer()

    def shutdown(self) -> None:
        """The server is closing: close now if idle, else after this response."""
        self.shutting_down = True
        if self.exchange is None and self.h11.their_state is h11.IDLE:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.stream.close()  # graceful: flush, SHUT_WR, drain, close
            self._forget()

    def _forget(self) -> None:
        self.closed = True
        self._cancel_timer()
        self.server._connections.discard(self)
        if self.exchange is not None:
            exchange, self.exchange = self.exchange, None
            exchange.close_iterable()

    def _on_close(self, error: BaseException | None) -> None:
        if error is not None:
            log.debug("connection from %s:%s failed: %r", *self.peer, error)
        self._forget()

    def _arm_timer(self) -> None:
        self._cancel_timer()
        if self.server.request_timeout is not None:
            self.timer = self.loop.timer(self.server.request_timeout, self._on_timeout)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_timeout(self) -> None:
        self.timer = None
        if self.h11.their_state is h11.IDLE and not self.h11.trailing_data[0]:
            self.close()  # an idle keep-alive connection: nothing to answer
        else:
            self._send_error(408, "request timeout")

    # -- reading requests ---------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        self.h11.receive_data(data)
        self._process()

    def _on_eof(self) -> None:
        self.h11.receive_data(b"")
        self._process()

    def _process(self) -> None:
        """Turn buffered bytes into h11 events until one request is complete."""
        while not self.closed and self.exchange is None:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                log.debug("bad request from %s:%s: %s", *self.peer, exc)
                self._send_error(exc.error_status_hint, str(exc))
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if self.h11.their_state is h11.CLOSED and self.h11.our_state is not h11.SEND_BODY:
                    self.close()
                return
            if isinstance(event, h11.Request):
                if not self._on_request(event):
                    return
            elif isinstance(event, h11.Data):
                self.body += event.data
                limit = self.server.max_body_size
                if limit is not None and len(self.body) > limit:
                    self._send_error(413, f"request body over {limit} bytes")
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._dispatch()
            elif isinstance(event, h11.ConnectionClosed):
                self.close()
                return

    def _on_request(self, request: h11.Request) -> bool:
        self.request = request
        self.body = bytearray()
        # h11 bounds only a head still incomplete; one that arrived whole in a
        # single read is measured here (request line + "name: value\r\n" lines).
        size = len(request.method) + len(request.target) + 12 + sum(
            len(name) + len(value) + 4 for name, value in request.headers)
        if size > self.server.max_head_size:
            self._send_error(431, f"request head over {self.server.max_head_size} bytes")
            return False
        limit = self.server.max_body_size
        if limit is not None:
            for name, value in request.headers:
                if name == b"content-length" and int(value) > limit:
                    self._send_error(413, f"request body over {limit} bytes")
                    return False
        if self.h11.they_are_waiting_for_100_continue:
            self._write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])))
        return True

    # -- running the application ----------------------------------------------

    def _dispatch(self) -> None:
        """A complete request: run the application on it (synchronously, on the loop)."""
        assert self.request is not None
        self._cancel_timer()
        self.stream.pause_reading()  # one request at a time; pipelined ones wait in h11
        environ = self._environ(self.request, bytes(self.body))
        self.body = bytearray()
        exchange = self.exchange = _Exchange(self, environ)
        exchange.run()

    def _environ(self, request: h11.Request, body: bytes) -> dict[str, Any]:
        server = self.server
        target = request.target
        if not target.startswith(b"/"):  # absolute-form (proxies) or "*"
            parts = urlsplit(target)
            target = (parts.path or b"/") + (b"?" + parts.query if parts.query else b"")
        path, _, query = target.partition(b"?")
        sockname = _sockname(self.sock)
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method.decode("ascii"),
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"),
            "SERVER_NAME": server.server_name or sockname[0],
            "SERVER_PORT": str(server.server_port or sockname[1]),
            "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("ascii"),
            "REMOTE_ADDR": self.peer[0],
            "REMOTE_PORT": str(self.peer[1]),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": server.url_scheme,
            "wsgi.input": io.BytesIO(body),
            "wsgi.input_terminated": True,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            SOCKET_KEY: self.sock,
            LEFTOVER_KEY: self.h11.trailing_data[0],
            "evws.loop": self.loop,
        }
        for raw_name, raw_value in request.headers:
            name = raw_name.decode("latin-1")
            if "_" in name:
                continue  # "X_Foo" would pass for "X-Foo": drop it, as gunicorn does
            value = raw_value.decode("latin-1")
            if name == "content-type":
                key = "CONTENT_TYPE"
            elif name == "content-length":
                key = "CONTENT_LENGTH"
            else:
                key = "HTTP_" + name.upper().replace("-", "_")
            if key in environ:
                value = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + value
            environ[key] = value
        if body or "CONTENT_LENGTH" in environ:
            environ["CONTENT_LENGTH"] = str(len(body))  # also for a chunked request body
        return environ

    # -- writing responses ------------------------------------------------

    def _write(self, data: bytes | None) -> None:
        if data and not self.stream.closing:
            self.stream.write(data)

    def _on_drain(self) -> None:
        if self.exchange is not None:
            self.exchange.pump()
        elif not self.closed and self.h11.our_state is h11.DONE:
            self._next_cycle()

    def _response_done(self) -> None:
        """The response is complete: close, or wait for the next request."""
        self.exchange = None
        if self.h11.our_state is h11.MUST_CLOSE or self.shutting_down:
            self.close()
        elif self.stream.buffered_amount == 0:
            self._next_cycle()
        # else _on_drain continues: a view that upgrades the next request
        # must find the socket with nothing of ours still queued.

    def _next_cycle(self) -> None:
        try:
            self.h11.start_next_cycle()
        except h11.LocalProtocolError:
            self.close()
            return
        self.stream.resume_reading()
        self._arm_timer()
        self._process()  # a pipelined request may be buffered already

    def _detach(self) -> None:
        """A view upgraded the connection: let go of the socket, open and unread."""
        self.exchange = None
        self.stream.detach()
        self._forget()

    def _send_error(self, status: int, text: str) -> None:
        """Answer a bad request ourselves and close the connection."""
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = f"{status} {text}\n".encode("utf-8", "replace")
            headers = [("Content-Type", "text/plain; charset=utf-8"),
                       ("Content-Length", str(len(body))), ("Connection", "close"),
                       ("Date", formatdate(usegmt=True))]
            try:
                self._write(self.h11.send(h11.Response(status_code=status, headers=headers)))
                self._write(self.h11.send(h11.Data(data=body)))
                self._write(self.h11.send(h11.EndOfMessage()))
            except h11.LocalProtocolError as exc:
                log.debug("could not send %d: %s", status, exc)
        self.close()


class _Exchange:
    """One request/response: ``start_response``, ``write`` and the body iterable."""

    def __init__(self, conn: _HttpConnection, environ: dict[str, Any]) -> None:
        self.conn = conn
        self.environ = environ
        self.status: tuple[int, bytes, list[tuple[str, str]]] | None = None
        self.headers_sent = False
        self.no_body = environ["REQUEST_METHOD"] == "HEAD"
        self.result: Iterable[bytes] | None = None
        self.iterator: Iterator[bytes] | None = None
        self.length: int | None = None  # known for a list/tuple body
        self.closed_iterable = False

    # -- the PEP 3333 callables ---------------------------------------------

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.status is not None:
            raise AssertionError("start_response() called twice without exc_info")
        if not isinstance(status, str) or len(status) < 3 or not status[:3].isdigit():
            raise ValueError(f"invalid WSGI status {status!r}")
        for name, value in headers:
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError(f"WSGI headers must be str pairs, not {(name, value)!r}")
        self.status = (int(status[:3]), status[4:].encode("latin-1"), list(headers))
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy ``write()`` callable: send at once (it cannot wait for the socket)."""
        if self.status is None:
            raise AssertionError("write() called before start_response()")
        self._send(data)

    # -- driving the application ---------------------------------------------

    def run(self) -> None:
        try:
            self.result = self.conn.server.app(self.environ, self.start_response)
            self._check_upgraded()
            if isinstance(self.result, (list, tuple)):
                self.length = sum(len(chunk) for chunk in self.result)
            self.iterator = iter(self.result)
        except _Upgraded:
            self._upgraded()
            return
        except Exception:  # noqa: BLE001 - any app error becomes a 500
            self._failed()
            return
        self.pump()

    def pump(self) -> None:
        """Pull body chunks while the socket keeps up; ``on_drain`` resumes it."""
        conn = self.conn
        try:
            while conn.exchange is self and conn.stream.buffered_amount < HIGH_WATER:
                assert self.iterator is not None
                try:
                    chunk = next(self.iterator)
                except StopIteration:
                    self._finish()
                    return
                self._check_upgraded()
                if chunk:
                    self._send(chunk)
        except _Upgraded:
            self._upgraded()
        except Exception:  # noqa: BLE001 - any app error becomes a 500
            self._failed()

    def _check_upgraded(self) -> None:
        if self.environ.get(UPGRADED_KEY):
            raise _Upgraded()

    def _send(self, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"WSGI body chunks must be bytes, not {type(data).__name__}")
        self._check_upgraded()
        if not self.headers_sent:
            self._send_headers(self.length)
        if data and not self.no_body:
            self.conn._write(self.conn.h11.send(h11.Data(data=bytes(data))))

    def _send_headers(self, length: int | None) -> None:
        if self.status is None:
            raise AssertionError("the application returned before calling start_response()")
        code, reason, headers = self.status
        if code < 200:
            raise ValueError(f"a WSGI application cannot answer {code} without a protocol switch")
        names = {name.lower() for name, _ in headers}
        extra = []
        if "date" not in names:
            extra.append(("Date", formatdate(usegmt=True)))
        if length is not None and "content-length" not in names and "transfer-encoding" not in names:
            extra.append(("Content-Length", str(length)))
        if self.conn.shutting_down:
            extra.append(("Connection", "close"))
        if code in (204, 304):
            self.no_body = True
        response = h11.Response(status_code=code, reason=reason, headers=headers + extra)
        self.headers_sent = True
        self.conn._write(self.conn.h11.send(response))

    def _finish(self) -> None:
        if not self.headers_sent:
            self._send_headers(self.length if self.length is not None else 0)
        self.conn._write(self.conn.h11.send(h11.EndOfMessage()))
        self.close_iterable()
        self.conn._response_done()

    def _upgraded(self) -> None:
        self.close_iterable()
        if self.headers_sent:
            log.error("%s upgraded after sending response headers; closing",
                      self.environ.get("PATH_INFO"))
        self.conn._detach()

    def _failed(self) -> None:
        log.exception("error in WSGI application %r on %s %s", self.conn.server.app,
                      self.environ["REQUEST_METHOD"], self.environ["PATH_INFO"])
        self.close_iterable()
        conn = self.conn
        conn.exchange = None
        if self.headers_sent:
            conn.close()  # the client sees a truncated response
        else:
            conn._send_error(500, "internal server error")

    def close_iterable(self) -> None:
        """PEP 3333: call the iterable's ``close()`` once, whatever happened."""
        if self.closed_iterable:
            return
        self.closed_iterable = True
        close = getattr(self.result, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.exception("error closing the WSGI response iterable")


def _sockname(sock: socket.socket) -> tuple[str, int]:
    try:
        name = sock.getsockname()
    except OSError:
        return ("localhost", 0)
    if isinstance(name, tuple):
        return (str(name[0]), int(name[1]))
    return ("localhost", 0)
