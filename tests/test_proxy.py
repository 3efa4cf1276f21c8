"""The client through HTTP proxies over loopback: a tiny CONNECT proxy on the evws
loop (credentials, refusals, misbehaviour), Debian's real tinyproxy, and the
environment (http_proxy, https_proxy, no_proxy) with monkeypatch."""

from __future__ import annotations

import os
import select
import shutil
import socket
import ssl
import subprocess
import time

import pytest

import evws
from evws.proxy import (
    Proxy,
    bypasses_proxy,
    environment_proxy,
    parse_proxy_url,
    resolve_proxy,
)
from tests.certs import self_signed
from tests.conftest import TIMEOUT, run_until
from tests.http_proxy import ConnectProxy


@pytest.fixture(autouse=True)
def no_cgi(monkeypatch):
    """conftest clears the proxy variables; REQUEST_METHOD changes how HTTP_PROXY is read."""
    monkeypatch.delenv("REQUEST_METHOD", raising=False)


class Echo:
    """An evws echo server on 127.0.0.1 (TLS with ``ssl_context``); records SNI names."""

    def __init__(self, loop, ssl_context=None):
        self.server_names: list = []
        if ssl_context is not None:
            ssl_context.sni_callback = lambda sslobj, name, ctx: self.server_names.append(name)
        self.server = evws.Server(loop=loop, ssl_context=ssl_context)
        self.listener = evws.tcp_server("127.0.0.1", 0, self.accept, loop=loop)
        self.port = self.listener.port

    def accept(self, sock, host, port):
        def established(cv):
            if cv.error is not None:
                sock.close()
                return
            cv.recv_all()[0].on("each_message", lambda c, m: c.send(m))
        self.server.establish(sock).cb(established)

    def close(self):
        self.listener.close()


@pytest.fixture
def echo(loop):
    server = Echo(loop)
    yield server
    server.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    return self_signed(tmp_path_factory.mktemp("proxy-tls"))


@pytest.fixture
def tls_echo(loop, certs):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certs[0]), str(certs[1]))
    server = Echo(loop, ctx)
    yield server
    server.close()


@pytest.fixture
def client_ctx(certs):
    return ssl.create_default_context(cafile=str(certs[0]))


@pytest.fixture
def proxy(loop):
    server = ConnectProxy(loop)
    yield server
    server.close()


def proxy_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def via(conn) -> int:
    """The port the client's socket is connected to: the proxy's, when tunnelled."""
    return conn.stream.sock.getpeername()[1]


def echo_once(loop, conn, text="through the tunnel"):
    got = []
    conn.on("each_message", lambda c, m: got.append(m.decoded_body))
    conn.send(text)
    run_until(loop, lambda: got)
    assert got == [text]
    conn.close()
    run_until(loop, lambda: conn.finished)


# -- the evws-loop proxy ----------------------------------------------------------------


def test_ws_through_a_connect_proxy(loop, echo, proxy):
    conn = evws.connect(f"ws://127.0.0.1:{echo.port}/chat", proxy=proxy.url,
                        loop=loop).recv(timeout=TIMEOUT)
    echo_once(loop, conn)
    [head] = proxy.requests
    assert (head.method, head.target) == ("CONNECT", f"127.0.0.1:{echo.port}")
    assert head.headers["Host"] == f"127.0.0.1:{echo.port}"
    assert "Proxy-Authorization" not in head.headers


def test_wss_through_a_connect_proxy_verifies_the_origin_with_its_name_as_sni(
        loop, tls_echo, proxy, client_ctx):
    conn = evws.connect(f"wss://localhost:{tls_echo.port}/", proxy=proxy.url,
                        ssl_context=client_ctx, loop=loop).recv(timeout=TIMEOUT)
    echo_once(loop, conn)
    assert tls_echo.server_names == ["localhost"]
    assert proxy.requests[0].target == f"localhost:{tls_echo.port}"


def test_credentials_from_the_proxy_url(loop, echo):
    proxy = ConnectProxy(loop, credentials=("ann", "p@ss:w"))
    try:
        url = f"ws://127.0.0.1:{echo.port}/"
        with pytest.raises(evws.ProxyError, match="no credentials sent") as info:
            evws.connect(url, proxy=proxy.url, loop=loop).recv(timeout=TIMEOUT)
        assert info.value.status == 407
        assert info.value.headers["Proxy-Authenticate"] == 'Basic realm="test"'
        wrong = f"http://ann:nope@127.0.0.1:{proxy.port}"
        with pytest.raises(evws.ProxyError, match="refused") as info:
            evws.connect(url, proxy=wrong, loop=loop).recv(timeout=TIMEOUT)
        assert info.value.status == 407
        right = f"http://ann:p%40ss%3Aw@127.0.0.1:{proxy.port}"
        echo_once(loop, evws.connect(url, proxy=right, loop=loop).recv(timeout=TIMEOUT))
    finally:
        proxy.close()


@pytest.mark.parametrize("status", [403, 502])
def test_refusal_croaks_a_proxy_error_with_the_status(loop, echo, status):
    proxy = ConnectProxy(loop, refuse=status)
    try:
        with pytest.raises(evws.ProxyError) as info:
            evws.connect(f"ws://127.0.0.1:{echo.port}/", proxy=proxy.url,
                         loop=loop).recv(timeout=TIMEOUT)
        assert info.value.status == status
        assert isinstance(info.value, evws.WebSocketError)
    finally:
        proxy.close()


def test_unreachable_origin_is_the_proxys_502(loop, proxy):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(evws.ProxyError) as info:
        evws.connect(f"ws://127.0.0.1:{port}/", proxy=proxy.url, loop=loop).recv(timeout=TIMEOUT)
    assert info.value.status == 502


def test_proxy_that_hangs_up(loop, echo):
    proxy = ConnectProxy(loop, mode="eof")
    try:
        with pytest.raises(evws.ProxyError, match="closed the connection") as info:
            evws.connect(f"ws://127.0.0.1:{echo.port}/", proxy=proxy.url,
                         loop=loop).recv(timeout=TIMEOUT)
        assert info.value.status is None
    finally:
        proxy.close()


def test_proxy_that_talks_before_the_client_is_refused(loop, echo):
    proxy = ConnectProxy(loop, mode="chatty")
    try:
        with pytest.raises(evws.ProxyError, match="8 bytes after its 2xx"):
            evws.connect(f"ws://127.0.0.1:{echo.port}/", proxy=proxy.url,
                         loop=loop).recv(timeout=TIMEOUT)
    finally:
        proxy.close()


def test_silent_proxy_counts_in_the_connect_timeout(loop, echo):
    proxy = ConnectProxy(loop, mode="hang")
    try:
        cv = evws.connect(f"ws://127.0.0.1:{echo.port}/", proxy=proxy.url, timeout=0.3,
                          loop=loop)
        with pytest.raises(evws.WaitTimeout, match="through the proxy") as info:
            cv.recv(timeout=TIMEOUT)
        assert isinstance(info.value.__cause__, TimeoutError)
        run_until(loop, lambda: proxy.streams and proxy.streams[0].closed)  # our socket closed
    finally:
        proxy.close()


def test_proxy_down_is_a_connection_refused(loop, echo):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(ConnectionRefusedError):
        evws.connect(f"ws://127.0.0.1:{echo.port}/", proxy=f"http://127.0.0.1:{port}",
                     loop=loop).recv(timeout=TIMEOUT)


@pytest.mark.parametrize("url, words", [
    ("socks5://127.0.0.1:1080", "SOCKS"),
    ("https://127.0.0.1:3128", "https:// proxies"),
    ("ftp://h:1", "not an http"),
    ("http://:3128", "no host"),
    ("http://h:99999", "bad port"),
    ("http://h:3128/path", "no path"),
])
def test_bad_proxy_urls_raise_at_once(loop, url, words):
    with pytest.raises(evws.ProxyError, match=words):
        evws.connect("ws://127.0.0.1:1/", proxy=url, loop=loop)


def test_password_stays_out_of_messages_and_repr():
    with pytest.raises(evws.ProxyError) as info:
        parse_proxy_url("socks5://ann:secret@h:1")
    assert "secret" not in str(info.value) and "ann:***@h:1" in str(info.value)
    assert "secret" not in repr(parse_proxy_url("http://ann:secret@h:1"))


def test_parse_proxy_url_defaults():
    assert parse_proxy_url("proxy.example:3128") == Proxy("proxy.example", 3128)
    assert parse_proxy_url("http://proxy.example/") == Proxy("proxy.example", 80)
    assert parse_proxy_url("http://[::1]:8080").host == "::1"
    assert str(parse_proxy_url("http://[::1]:8080")) == "http://[::1]:8080"
    assert parse_proxy_url("http://a%20b:c%40d@h:1").authorization == "Basic YSBiOmNAZA=="


def test_unix_socket_and_proxy_exclude_each_other(loop, tmp_path):
    with pytest.raises(ValueError, match="not both"):
        evws.connect("ws://localhost/", unix_socket=str(tmp_path / "s"),
                     proxy="http://127.0.0.1:3128", loop=loop)


# -- the environment --------------------------------------------------------------------


def test_http_proxy_is_used_for_ws(loop, echo, proxy, monkeypatch):
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:1")  # would fail: not for ws://
    echo_once(loop, evws.connect(f"ws://127.0.0.1:{echo.port}/", loop=loop).recv(timeout=TIMEOUT))
    assert len(proxy.requests) == 1


def test_https_proxy_is_used_for_wss(loop, tls_echo, proxy, client_ctx, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:1")
    conn = evws.connect(f"wss://localhost:{tls_echo.port}/", ssl_context=client_ctx,
                        loop=loop).recv(timeout=TIMEOUT)
    echo_once(loop, conn)
    assert len(proxy.requests) == 1 and tls_echo.server_names == ["localhost"]


def test_no_proxy_and_proxy_none_connect_directly(loop, echo, proxy, monkeypatch):
    monkeypatch.setenv("http_proxy", proxy.url)
    url = f"ws://127.0.0.1:{echo.port}/"
    echo_once(loop, evws.connect(url, proxy=None, loop=loop).recv(timeout=TIMEOUT))
    monkeypatch.setenv("NO_PROXY", f"example.com,127.0.0.1:{echo.port}")
    echo_once(loop, evws.connect(url, loop=loop).recv(timeout=TIMEOUT))
    assert proxy.requests == []
    # An explicit proxy wins over no_proxy.
    echo_once(loop, evws.connect(url, proxy=proxy.url, loop=loop).recv(timeout=TIMEOUT))
    assert len(proxy.requests) == 1


def test_explicit_proxy_wins_over_the_environment(loop, echo, proxy, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:1")
    echo_once(loop, evws.connect(f"ws://127.0.0.1:{echo.port}/", proxy=proxy.url,
                                 loop=loop).recv(timeout=TIMEOUT))
    assert len(proxy.requests) == 1


def test_bad_proxy_in_the_environment_raises_at_once(loop, monkeypatch):
    monkeypatch.setenv("http_proxy", "socks5h://127.0.0.1:1080")
    with pytest.raises(evws.ProxyError, match="SOCKS"):
        evws.connect("ws://127.0.0.1:1/", loop=loop)


def test_lower_case_wins_and_empty_is_unset(monkeypatch):
    monkeypatch.setenv("http_proxy", "http://lower:1")
    monkeypatch.setenv("HTTP_PROXY", "http://upper:1")
    assert environment_proxy(False, "h", 80) == "http://lower:1"
    monkeypatch.setenv("http_proxy", "")
    assert environment_proxy(False, "h", 80) == "http://upper:1"
    monkeypatch.delenv("HTTP_PROXY")
    assert environment_proxy(False, "h", 80) is None
    assert resolve_proxy(True, False, "h", 80) is None


def test_upper_case_http_proxy_is_ignored_under_cgi(monkeypatch):
    # httpoxy: a CGI request's "Proxy:" header arrives as HTTP_PROXY.
    monkeypatch.setenv("HTTP_PROXY", "http://attacker:1")
    monkeypatch.setenv("REQUEST_METHOD", "GET")
    assert environment_proxy(False, "h", 80) is None
    monkeypatch.setenv("http_proxy", "http://mine:1")
    assert environment_proxy(False, "h", 80) == "http://mine:1"


def test_resolve_proxy_refuses_other_types():
    with pytest.raises(TypeError):
        resolve_proxy(False, False, "h", 80)


@pytest.mark.parametrize("no_proxy, host, port, bypass", [
    ("*", "anything.example", 443, True),
    ("example.com", "example.com", 443, True),
    ("example.com", "ws.example.com", 443, True),
    ("example.com", "notexample.com", 443, False),
    (".example.com", "example.com", 443, True),
    ("*.example.com", "a.b.example.com", 80, True),
    ("Example.COM.", "ws.example.com", 80, True),
    ("example.com:8443", "ws.example.com", 8443, True),
    ("example.com:8443", "ws.example.com", 443, False),
    (" other.org , example.com ", "example.com", 80, True),
    ("127.0.0.1", "127.0.0.1", 80, True),
    ("127.0.0.1", "127.0.0.2", 80, False),
    ("10.0.0.0/8", "10.1.2.3", 80, True),
    ("10.0.0.0/8", "11.1.2.3", 80, False),
    ("::1", "::1", 80, True),
    ("[::1]:8080", "::1", 8080, True),
    ("[::1]:8080", "::1", 80, False),
    ("fd00::/8", "fd12::1", 80, True),
    ("10.0.0.0/8", "example.com", 80, False),
    ("", "example.com", 80, False),
    (",,", "example.com", 80, False),
])
def test_no_proxy_matching(no_proxy, host, port, bypass):
    assert bypasses_proxy(no_proxy, host, port) is bypass


def test_no_proxy_from_the_environment(monkeypatch):
    monkeypatch.setenv("https_proxy", "http://p:3128")
    monkeypatch.setenv("no_proxy", "internal.example")
    assert environment_proxy(True, "ws.internal.example", 443) is None
    assert environment_proxy(True, "public.example", 443) == "http://p:3128"
    assert resolve_proxy(True, True, "public.example", 443) == Proxy("p", 3128)


# -- Debian's tinyproxy -----------------------------------------------------------------

TINYPROXY = shutil.which("tinyproxy") or ("/usr/bin/tinyproxy" if os.path.exists("/usr/bin/tinyproxy")
                                          else None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def tinyproxy(tmp_path, echo, tls_echo):
    """A private tinyproxy on a free loopback port, allowed to CONNECT to the two echoes.

    Yields ``start(basic_auth=None) -> proxy URL``; each instance is stopped afterwards.
    """
    if TINYPROXY is None:
        pytest.skip("tinyproxy is not installed (apt-get install tinyproxy)")
    procs: list[subprocess.Popen] = []

    def start(basic_auth: tuple[str, str] | None = None) -> str:
        port = free_port()
        conf = tmp_path / f"tinyproxy-{port}.conf"
        lines = [f"Port {port}", "Listen 127.0.0.1", "Timeout 30", "Allow 127.0.0.1",
                 f"ConnectPort {echo.port}", f"ConnectPort {tls_echo.port}", "LogLevel Info",
                 "MaxClients 16"]
        if basic_auth:
            lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
        conf.write_text("\n".join(lines) + "\n")
        # In the foreground (-d) tinyproxy logs to stdout.
        proc = subprocess.Popen([TINYPROXY, "-d", "-c", str(conf)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        procs.append(proc)
        wait_for_line(proc, "Accepting connections", timeout=10)
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def wait_for_line(proc: subprocess.Popen, text: str, timeout: float) -> None:
    """Read the process's output until a line holds ``text``; fail after ``timeout``.

    The pipe stays open afterwards: tinyproxy logs about 1 KiB per request at
    Info, and these tests make a handful, far from the 64 KiB that would stall it.
    """
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    seen = b""
    while text.encode() not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            pytest.fail(f"tinyproxy did not start within {timeout} s: {seen[-2000:]!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            pytest.fail(f"tinyproxy exited ({proc.wait()}): {seen[-2000:]!r}")
        seen += chunk


def test_tinyproxy_ws_and_wss(loop, echo, tls_echo, client_ctx, tinyproxy):
    url = tinyproxy()
    conn = evws.connect(f"ws://127.0.0.1:{echo.port}/", proxy=url, loop=loop).recv(timeout=TIMEOUT)
    assert via(conn) == proxy_port(url)
    echo_once(loop, conn)
    conn = evws.connect(f"wss://localhost:{tls_echo.port}/", proxy=url, ssl_context=client_ctx,
                        loop=loop).recv(timeout=TIMEOUT)
    assert via(conn) == proxy_port(url)
    echo_once(loop, conn)
    assert tls_echo.server_names == ["localhost"]


def test_tinyproxy_refuses_a_port_it_does_not_allow(loop, tinyproxy):
    url = tinyproxy()
    with pytest.raises(evws.ProxyError) as info:
        evws.connect(f"ws://127.0.0.1:{free_port()}/", proxy=url, loop=loop).recv(timeout=TIMEOUT)
    assert info.value.status == 403


def test_tinyproxy_basic_auth(loop, echo, tinyproxy):
    url = tinyproxy(basic_auth=("ann", "s3cret"))
    target = f"ws://127.0.0.1:{echo.port}/"
    with pytest.raises(evws.ProxyError) as info:
        evws.connect(target, proxy=url, loop=loop).recv(timeout=TIMEOUT)
    assert info.value.status == 407
    authed = url.replace("http://", "http://ann:s3cret@")
    conn = evws.connect(target, proxy=authed, loop=loop).recv(timeout=TIMEOUT)
    assert via(conn) == proxy_port(url)
    echo_once(loop, conn)


def test_tinyproxy_from_the_environment(loop, echo, tinyproxy, monkeypatch):
    url = tinyproxy()
    monkeypatch.setenv("HTTP_PROXY", url)
    conn = evws.connect(f"ws://127.0.0.1:{echo.port}/", loop=loop).recv(timeout=TIMEOUT)
    assert via(conn) == proxy_port(url)
    echo_once(loop, conn)



# -- with redirects ----------------------------------------------------------------------


def test_each_redirect_hop_goes_through_the_proxy(loop, proxy):
    from tests.test_redirect import Site
    site = Site(loop, {"/old": (302, "/new")})
    try:
        conn = evws.connect(site.url("/old"), proxy=proxy.url, loop=loop).recv(timeout=TIMEOUT)
        assert via(conn) == proxy.port
        echo_once(loop, conn)
        assert site.paths == ["/old", "/new"]
        assert [head.target for head in proxy.requests] == [f"127.0.0.1:{site.port}"] * 2
    finally:
        site.close()


def test_redirect_to_a_url_whose_proxy_is_unusable_croaks_the_proxy_error(loop, monkeypatch):
    from tests.test_redirect import Site
    site = Site(loop)
    site.routes["/up"] = (301, site.url("/s", "wss"))
    monkeypatch.setenv("https_proxy", "socks5://127.0.0.1:1080")  # only wss:// uses it
    try:
        with pytest.raises(evws.ProxyError, match="SOCKS"):
            evws.connect(site.url("/up"), loop=loop).recv(timeout=TIMEOUT)
    finally:
        site.close()
