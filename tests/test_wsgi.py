"""evws.wsgi: WSGI apps (plain and Flask) on the evws loop, and the upgrade to WebSocket.

The evws loop runs in a background thread (``served``); the tests are blocking
clients with socket timeouts, so every wait is bounded. Requests are written by
hand; responses are parsed with h11 where framing is not what is being tested.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import socket
import sys
import threading
import time

import pytest

import evws
from tests import wire

h11 = pytest.importorskip("h11")
evws_wsgi = pytest.importorskip("evws.wsgi")

TIMEOUT = 5.0
ROOT = pathlib.Path(__file__).resolve().parent.parent


# -- harness -------------------------------------------------------------------

@contextlib.contextmanager
def served(app_factory, **options):
    """Serve ``app_factory(server)`` on a private loop in a thread; yield (port, wsgi_server)."""
    loop = evws.Loop()
    ws_server = evws.Server(loop=loop)
    http = evws_wsgi.serve(app_factory(ws_server), "127.0.0.1", 0, loop=loop, **options)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            while not stop.is_set():
                loop.run_once(0.02)
        except BaseException as exc:  # noqa: BLE001 - surfaced in the test below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield http.port, http
    finally:
        stop.set()
        thread.join(TIMEOUT)
        http.close()
        loop.close()
    assert not errors, errors


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.settimeout(TIMEOUT)
    return sock


def recv_until_eof(sock: socket.socket) -> bytes:
    data = b""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            return data
        data += chunk
    pytest.fail(f"no EOF within {TIMEOUT} s; got {data[:200]!r}")


class Client:
    """A keep-alive HTTP client: raw requests out, h11-parsed responses in."""

    def __init__(self, port: int) -> None:
        self.sock = connect(port)
        self.parser = h11.Connection(h11.CLIENT)
        self.raw = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next response: (status, headers with lower-case names, body)."""
        status, headers, body = None, {}, b""
        while True:
            event = self.parser.next_event()
            if event is h11.NEED_DATA:
                data = self.sock.recv(65536)
                self.raw += data
                self.parser.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                if self.parser.our_state is h11.DONE and self.parser.their_state is h11.DONE:
                    self.parser.start_next_cycle()
                return status, headers, body
            elif isinstance(event, h11.ConnectionClosed):
                pytest.fail(f"connection closed before a complete response: {self.raw!r}")

    def get(self, path: str, *extra: str) -> tuple[int, dict[str, str], bytes]:
        # The parser tracks our side too: tell it a request went out.
        self.parser.send(h11.Request(method="GET", target=path,
                                     headers=[("Host", "t")] + [tuple(h.split(": ", 1)) for h in extra]))
        self.parser.send(h11.EndOfMessage())
        head = f"GET {path} HTTP/1.1\r\nHost: t\r\n" + "".join(h + "\r\n" for h in extra) + "\r\n"
        self.send(head.encode())
        return self.response()

    def at_eof(self) -> bool:
        return self.sock.recv(1) == b""

    def close(self) -> None:
        self.sock.close()


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the Flask application ----------------------------------------------------------

flask = pytest.importorskip("flask")


def flask_factory(server):
    app = load_example("flask_app").create_app(server)

    @app.get("/stream")
    def stream():
        return flask.Response((f"part{i};" for i in range(3)), mimetype="text/plain")

    return app


def test_flask_keep_alive_404_and_page():
    with served(flask_factory) as (port, _):
        client = Client(port)
        status, headers, body = client.get("/")
        assert status == 200 and b"WebSocket echo" in body
        assert headers["content-length"] == str(len(body))
        status, _, _ = client.get("/missing")
        assert status == 404
        status, _, body = client.get("/")          # still the same connection
        assert status == 200 and b"WebSocket echo" in body
        client.close()


def test_flask_chunked_response_on_the_wire():
    with served(flask_factory) as (port, _):
        sock = connect(port)
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        raw = recv_until_eof(sock)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"\r\ntransfer-encoding: chunked" in head.lower()
        assert b"content-length" not in head.lower()
        assert body == b"6\r\npart0;\r\n6\r\npart1;\r\n6\r\npart2;\r\n0\r\n\r\n"
        sock.close()


def test_http_10_response_is_close_delimited():
    with served(flask_factory) as (port, _):
        sock = connect(port)
        sock.sendall(b"GET /stream HTTP/1.0\r\n\r\n")
        raw = recv_until_eof(sock)
        assert raw.startswith(b"HTTP/1.1 200 ")
        assert raw.endswith(b"\r\n\r\npart0;part1;part2;")
        sock.close()


def test_request_body_limits():
    with served(flask_factory, max_body_size=1000) as (port, _):
        client = Client(port)
        body = bytes(range(256)) * 3
        client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        client.parser.send(h11.Request(method="POST", target="/echo",
                                       headers=[("Host", "t"), ("Content-Length", str(len(body)))]))
        client.parser.send(h11.Data(data=body))
        client.parser.send(h11.EndOfMessage())
        assert client.response()[::2] == (200, body)
        client.close()

        sock = connect(port)                      # declared too large: refused before reading it
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n")
        raw = recv_until_eof(sock)
        assert raw.startswith(b"HTTP/1.1 413 ") and b"connection: close" in raw.lower()
        sock.close()

        sock = connect(port)                      # chunked, grows too large
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"200\r\n" + b"a" * 512 + b"\r\n" + b"200\r\n" + b"b" * 512 + b"\r\n")
        assert recv_until_eof(sock).startswith(b"HTTP/1.1 413 ")
        sock.close()


def test_request_head_limit_and_malformed_request():
    with served(flask_factory, max_head_size=2048) as (port, _):
        sock = connect(port)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n")
        assert recv_until_eof(sock).startswith(b"HTTP/1.1 431 ")
        sock.close()
        sock = connect(port)
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert recv_until_eof(sock).startswith(b"HTTP/1.1 400 ")
        sock.close()


def test_flask_websocket_upgrade_with_websockets_client():
    from websockets.sync.client import connect as ws_connect

    with served(flask_factory) as (port, http):
        with ws_connect(f"ws://127.0.0.1:{port}/ws", open_timeout=TIMEOUT,
                        close_timeout=TIMEOUT) as ws:
            ws.send("héllo")
            assert ws.recv(timeout=TIMEOUT) == "héllo"
            ws.send(b"\x00\xff" * 40000)
            assert ws.recv(timeout=TIMEOUT) == b"\x00\xff" * 40000
            assert http.connections == 0          # the WSGI server let go of the socket
        client = Client(port)                     # plain HTTP still served on the same port
        assert client.get("/")[0] == 200
        client.close()


def test_upgrade_after_keep_alive_request_and_frames_in_the_same_segment():
    """A request, then an upgrade on the same connection with a frame right behind it."""
    with served(flask_factory) as (port, _):
        client = Client(port)
        assert client.get("/")[0] == 200
        client.send(wire.upgrade_request(path="/ws") + wire.frame(1, b"early"))
        head = b""
        while b"\r\n\r\n" not in head:
            head += client.sock.recv(65536)
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        while len(rest) < 7:
            rest += client.sock.recv(65536)
        assert rest == b"\x81\x05early"
        client.close()


def test_non_upgrade_request_to_ws_view_gets_http_answer():
    with served(flask_factory) as (port, _):
        client = Client(port)
        status, _, body = client.get("/ws")
        assert status == 400 and body
        assert client.get("/")[0] == 200           # the connection is still usable
        client.close()


# -- plain WSGI: environ, start_response, close() ------------------------------------

class Recorder:
    """A plain WSGI app that records its environ and whether close() was called."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.environ = None
        self.closed = 0

    def __call__(self, environ, start_response):
        self.environ = environ
        recorder = self

        class Body:
            def __init__(self, chunks):
                self.chunks = chunks

            def __iter__(self):
                return iter(self.chunks)

            def close(self):
                recorder.closed += 1

        return Body(self.behaviour(environ, start_response))


def test_environ_is_pep_3333():
    def behaviour(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["wsgi.input"].read()]

    app = Recorder(behaviour)
    with served(lambda server: app) as (port, _):
        client = Client(port)
        body = b"name=value"
        client.send(b"POST /a%20b/%C3%A9?x=1&y=%20 HTTP/1.1\r\nHost: example.org:81\r\n"
                    b"Content-Type: application/x-www-form-urlencoded\r\n"
                    b"X-Two: a\r\nX-Two: b\r\nX_Smuggled: no\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        client.parser.send(h11.Request(method="POST", target="/", headers=[("Host", "t"),
                                       ("Content-Length", str(len(body)))]))
        client.parser.send(h11.Data(data=body))
        client.parser.send(h11.EndOfMessage())
        status, headers, echoed = client.response()
        local = client.sock.getsockname()
        client.close()
    env = app.environ
    assert status == 200 and echoed == body and headers["transfer-encoding"] == "chunked"
    assert env["REQUEST_METHOD"] == "POST"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/a b/\xc3\xa9"          # unquoted bytes, latin-1 decoded
    assert env["QUERY_STRING"] == "x=1&y=%20"            # left quoted
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["SERVER_NAME"] == "127.0.0.1" and env["SERVER_PORT"] == str(port)
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["REMOTE_PORT"] == str(local[1])
    assert env["HTTP_HOST"] == "example.org:81"
    assert env["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert env["CONTENT_LENGTH"] == str(len(body))
    assert env["HTTP_X_TWO"] == "a,b"
    assert "HTTP_X_SMUGGLED" not in env
    assert env["wsgi.version"] == (1, 0) and env["wsgi.url_scheme"] == "http"
    assert env["wsgi.multithread"] is False and env["wsgi.multiprocess"] is False
    assert env["wsgi.errors"] is sys.stderr
    assert isinstance(env["evws.socket"], socket.socket)
    assert env["evws.leftover"] == b""
    assert app.closed == 1


def test_exc_info_replaces_headers_and_errors_give_500():
    def behaviour(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/replace":
            start_response("200 OK", [("X-First", "1")])
            try:
                raise ValueError("oops")
            except ValueError:
                start_response("503 Service Unavailable", [("X-Second", "2")], sys.exc_info())
            return [b"sorry"]
        if path == "/raise":
            raise RuntimeError("boom")
        if path == "/late":
            start_response("200 OK", [])

            def gen():
                yield b"first"
                raise RuntimeError("late boom")
            return gen()
        start_response("200 OK", [])
        return [b"ok"]

    app = Recorder(behaviour)
    with served(lambda server: app) as (port, _):
        client = Client(port)
        status, headers, body = client.get("/replace")
        assert (status, body) == (503, b"sorry")
        assert "x-second" in headers and "x-first" not in headers
        client.close()
        sock = connect(port)
        sock.sendall(b"GET /raise HTTP/1.1\r\nHost: t\r\n\r\n")
        assert recv_until_eof(sock).startswith(b"HTTP/1.1 500 ")
        sock.close()
        sock = connect(port)                       # error after the headers: truncated, closed
        sock.sendall(b"GET /late HTTP/1.1\r\nHost: t\r\n\r\n")
        raw = recv_until_eof(sock)
        assert raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b"5\r\nfirst\r\n")
        sock.close()
    assert app.closed == 2                         # /replace and /late (/raise returned nothing)


def test_pipelined_requests_head_and_100_continue():
    def behaviour(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode(), environ["wsgi.input"].read()]

    with served(lambda server: behaviour) as (port, _):
        sock = connect(port)
        sock.sendall(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\nHEAD /two HTTP/1.1\r\nHost: t\r\n\r\n"
                     b"GET /three HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        raw = recv_until_eof(sock)
        parts = raw.split(b"HTTP/1.1 200 OK\r\n")
        assert len(parts) == 4
        assert parts[1].endswith(b"Content-Length: 4\r\n\r\n/one")
        assert parts[2].endswith(b"Content-Length: 4\r\n\r\n")      # HEAD: length, no body
        assert parts[3].endswith(b"\r\n\r\n/three")
        sock.close()

        sock = connect(port)
        sock.sendall(b"POST /p HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 3\r\nConnection: close\r\n\r\n")
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"abc")
        assert (interim + recv_until_eof(sock)).endswith(b"\r\n\r\n/pabc")
        sock.close()


def test_request_timeout_closes_idle_and_answers_408_to_partial():
    def behaviour(environ, start_response):
        start_response("200 OK", [])
        return [b"ok"]

    with served(lambda server: Recorder(behaviour), request_timeout=0.2) as (port, _):
        idle = connect(port)
        partial = connect(port)
        partial.sendall(b"GET / HTTP/1.1\r\nHo")
        assert recv_until_eof(idle) == b""
        assert recv_until_eof(partial).startswith(b"HTTP/1.1 408 ")
        idle.close()
        partial.close()


def test_close_closes_idle_keep_alive_connections():
    def behaviour(environ, start_response):
        start_response("200 OK", [])
        return [b"ok"]

    with served(lambda server: Recorder(behaviour)) as (port, http):
        client = Client(port)
        assert client.get("/")[0] == 200
        # close() must run on the loop's thread: wait for the answer through the socket.
        http.loop.call_soon(http.close)
        assert client.at_eof()
        with pytest.raises(OSError):
            connect(port).close()
        client.close()


def test_plain_wsgi_upgrade_returns_empty_list_and_closes_iterable():
    got = []

    def behaviour(environ, start_response):
        cv = servers[0].establish_wsgi(environ)
        connection = cv.recv()
        connection.on("each_message", lambda c, m: got.append(m.body) or c.send(m))
        return []

    servers = []

    def factory(server):
        servers.append(server)
        return app

    app = Recorder(behaviour)
    with served(factory) as (port, _):
        sock = connect(port)
        sock.sendall(wire.upgrade_request())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 101 ")
        sock.sendall(wire.frame(2, b"\x01\x02"))
        rest = data.partition(b"\r\n\r\n")[2]
        while len(rest) < 4:
            rest += sock.recv(65536)
        assert rest == b"\x82\x02\x01\x02"
        sock.close()
    assert got == [b"\x01\x02"] and app.closed == 1


# -- werkzeug's development server -------------------------------------------------------

def test_establish_wsgi_on_werkzeug_dev_server_socket():
    """werkzeug.socket: the view runs a private evws loop in werkzeug's request thread.

    werkzeug writes the view's response itself after the view returns, so the
    view keeps the connection until it finished and then returns a response
    whose iteration raises ConnectionError, which werkzeug treats as a dropped
    client (the same trick flask-sock uses).
    """
    from websockets.sync.client import connect as ws_connect
    from werkzeug.serving import make_server

    app = flask.Flask(__name__)

    class Taken(flask.Response):
        def __call__(self, environ, start_response):
            raise ConnectionError("the WebSocket connection took the socket")

    @app.route("/ws", websocket=True)
    def ws():
        loop = evws.Loop()
        try:
            connection = evws.Server(loop=loop).establish_wsgi(flask.request.environ).recv()
            connection.on("each_message", lambda c, m: c.send(m))
            done = evws.CondVar(loop)
            connection.on("finish", lambda c: done.send())
            done.recv(timeout=TIMEOUT)
        finally:
            loop.close()
        return Taken()

    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with ws_connect(f"ws://127.0.0.1:{httpd.server_port}/ws", open_timeout=TIMEOUT,
                        close_timeout=TIMEOUT) as client:
            client.send("over werkzeug")
            assert client.recv(timeout=TIMEOUT) == "over werkzeug"
    finally:
        httpd.shutdown()
        thread.join(TIMEOUT)
        httpd.server_close()


# -- examples/chat.py without a browser -------------------------------------------------

def test_chat_example_page_broadcast_and_bad_upgrade():
    from websockets.sync.client import connect as ws_connect

    chat = load_example("chat")
    with served(chat.make_app) as (port, _):
        client = Client(port)
        status, headers, body = client.get("/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b"new WebSocket(" in body
        assert client.get("/nowhere")[0] == 404
        status, _, body = client.get("/ws")        # no Upgrade: an HTTP error, connection kept
        assert status == 400 and body
        assert client.get("/")[0] == 200
        client.close()
        url = f"ws://127.0.0.1:{port}/ws"
        with ws_connect(url, open_timeout=TIMEOUT) as one, ws_connect(url, open_timeout=TIMEOUT) as two:
            for ws in (one, two):  # the welcome comes first, then the room
                assert ws.recv(timeout=TIMEOUT) == f"you are on worker {os.getpid()}"
            one.send("to everyone")
            assert two.recv(timeout=TIMEOUT) == "to everyone"
            assert one.recv(timeout=TIMEOUT) == "to everyone"
            two.send(b"\x00\x01")
            assert one.recv(timeout=TIMEOUT) == b"\x00\x01"


def test_large_streamed_response_arrives_whole():
    chunk = bytes(range(256)) * 256                  # 64 KiB

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (chunk for _ in range(64))            # 4 MiB, more than HIGH_WATER at once

    with served(lambda server: app) as (port, _):
        client = Client(port)
        status, headers, body = client.get("/")
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        assert body == chunk * 64
        assert client.get("/")[2] == chunk * 64      # and the connection is reused
        client.close()


def test_stream_detach_leaves_the_socket_open_for_a_new_owner(loop, socketpair):
    from evws.reactor.stream import Stream

    ours, theirs = socketpair
    first = Stream(ours, loop, on_data=lambda data: pytest.fail("detached stream read"))
    first.start_reading()
    assert first.detach() is ours and first.closed
    with pytest.raises(ValueError):
        first.detach()
    got = []
    second = Stream(ours, loop, on_data=got.append)   # its watcher would clash with a live one
    second.start_reading()
    theirs.sendall(b"for the new owner")
    deadline = time.monotonic() + TIMEOUT
    while not got and time.monotonic() < deadline:
        loop.run_once(0.01)
    assert got == [b"for the new owner"]
    second.abort()
