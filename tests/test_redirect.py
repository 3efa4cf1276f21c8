"""The client follows redirects of the opening handshake (evws.redirect).

The servers are evws servers on loopback whose handshake callback answers
some paths with a 30x (``http_error(..., extra_headers=[("Location", ...)])``)
and accepts the others as echo connections, so every hop is a real TCP (or
TLS) connection.
"""

from __future__ import annotations

import shutil
import ssl

import pytest

import evws
from evws.errors import RedirectError
from evws.protocol.http import Headers, http_error
from evws.redirect import redirect_target, same_origin, without_credentials
from tests.certs import self_signed
from tests.conftest import TIMEOUT, run_until


class Site:
    """An evws server: ``routes[path] = (status, location)`` redirects, other paths echo."""

    def __init__(self, loop, routes=None, **server_options):
        self.routes = dict(routes or {})
        self.hits: list = []  # (path, request headers) of every request
        self.server = evws.Server(handshake=self.handshake, loop=loop, **server_options)
        self.listener = evws.tcp_server("127.0.0.1", 0, self.on_accept, loop=loop)
        self.port = self.listener.port

    def url(self, path, scheme="ws"):
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def handshake(self, request, response):
        self.hits.append((request.path, request.headers))
        route = self.routes.get(request.path)
        if route is not None:
            status, location = route
            raise http_error(status, "moved", extra_headers=[("Location", location)])
        return response

    def on_accept(self, sock, host, port):
        def established(cv):
            try:
                conn = cv.recv_all()[0]
            except evws.HandshakeError as exc:
                if self.server.ssl_context is None and exc.response:
                    sock.send(exc.response)
                sock.close()
                return
            conn.on("each_message", lambda c, m: c.send(m))
        self.server.establish(sock).cb(established)

    @property
    def paths(self):
        return [path for path, _ in self.hits]

    def close(self):
        self.listener.close()


@pytest.fixture
def site(loop):
    made = []

    def make(routes=None, **options):
        made.append(Site(loop, routes, **options))
        return made[-1]
    yield make
    for s in made:
        s.close()


def echo_once(loop, conn, text="hi"):
    got = []
    conn.on("each_message", lambda c, m: got.append(m.decoded_body))
    conn.send(text)
    run_until(loop, lambda: got)
    conn.close()
    run_until(loop, lambda: conn.finished)
    return got[0]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_each_redirect_status_is_followed(loop, site, status):
    s = site({"/old": (status, "/new")})
    conn = evws.connect(s.url("/old"), loop=loop).recv(timeout=TIMEOUT)
    assert s.paths == ["/old", "/new"]
    assert echo_once(loop, conn) == "hi"


def test_relative_forms_and_query(loop, site):
    s = site({"/a/b": (302, "../c?x=1"), "/c": (307, "//127.0.0.1:{port}/d/e#frag")})
    s.routes["/c"] = (307, s.routes["/c"][1].format(port=s.port))
    conn = evws.connect(s.url("/a/b"), loop=loop).recv(timeout=TIMEOUT)
    assert s.paths == ["/a/b", "/c", "/d/e"]
    assert s.hits[1][1]  # a real request reached /c
    conn.close()
    run_until(loop, lambda: conn.finished)


def test_cross_origin_drops_credentials_same_origin_keeps_them(loop, site):
    target = site()
    first = site({"/same": (302, "/hop"), "/hop": (302, target.url("/end"))})
    headers = {"Authorization": "Bearer secret", "Cookie": "s=1", "X-Keep": "yes"}
    conn = evws.connect(first.url("/same"), loop=loop, headers=headers).recv(timeout=TIMEOUT)
    (_, same), (_, hop) = first.hits
    assert same.get("Authorization") == hop.get("Authorization") == "Bearer secret"
    assert hop.get("Cookie") == "s=1"
    ((_, end),) = target.hits
    assert end.get("Authorization") is None and end.get("Cookie") is None
    assert end.get("X-Keep") == "yes"
    conn.close()
    run_until(loop, lambda: conn.finished)


def test_http_location_is_taken_as_ws(loop, site):
    target = site()
    s = site({"/x": (301, target.url("/y", scheme="http"))})
    conn = evws.connect(s.url("/x"), loop=loop).recv(timeout=TIMEOUT)
    assert target.paths == ["/y"]
    conn.close()
    run_until(loop, lambda: conn.finished)


@pytest.mark.parametrize("limit", [1, 3])
def test_too_many_redirects(loop, site, limit):
    s = site({"/loop": (302, "/loop")})
    cv = evws.connect(s.url("/loop"), loop=loop, max_redirects=limit)
    with pytest.raises(RedirectError) as info:
        cv.recv(timeout=TIMEOUT)
    assert isinstance(info.value, evws.HandshakeError)
    assert info.value.status == 302 and info.value.location == "/loop"
    assert f"more than {limit} redirect" in str(info.value)
    assert len(s.hits) == limit + 1


def test_default_limit_is_ten(loop, site):
    assert evws.Options().max_redirects == 10
    s = site({"/loop": (307, "/loop")})
    with pytest.raises(RedirectError):
        evws.connect(s.url("/loop"), loop=loop).recv(timeout=TIMEOUT)
    assert len(s.hits) == 11


def test_zero_means_do_not_follow(loop, site):
    s = site({"/old": (302, "/new")})
    cv = evws.Client(max_redirects=0).connect(s.url("/old"), loop=loop)
    with pytest.raises(evws.HandshakeError) as info:
        cv.recv(timeout=TIMEOUT)
    assert not isinstance(info.value, RedirectError)
    assert info.value.status == 302 and info.value.headers["Location"] == "/new"
    assert s.paths == ["/old"]


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/x", "", "ws://127.0.0.1:99999/",
                                      "https:///nohost", "ws://[::1/"])
def test_bad_location(loop, site, location):
    s = site({"/old": (302, location)})
    with pytest.raises(RedirectError) as info:
        evws.connect(s.url("/old"), loop=loop).recv(timeout=TIMEOUT)
    assert info.value.status == 302 and info.value.url == s.url("/old")
    assert s.paths == ["/old"]


def test_not_a_redirect_status_is_a_plain_refusal(loop, site):
    s = site({"/old": (300, "/new")})  # 300 Multiple Choices: nothing to follow
    with pytest.raises(evws.HandshakeError) as info:
        evws.connect(s.url("/old"), loop=loop).recv(timeout=TIMEOUT)
    assert not isinstance(info.value, RedirectError) and info.value.status == 300


def test_bad_max_redirects_raises_at_once(loop):
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(ValueError):
            evws.connect("ws://127.0.0.1:9/", loop=loop, max_redirects=bad)


def test_no_fd_or_timer_left_after_a_chain(loop, site):
    s = site({"/1": (302, "/2"), "/2": (302, "/3")})
    conn = evws.connect(s.url("/1"), loop=loop).recv(timeout=TIMEOUT)
    conn.close()
    run_until(loop, lambda: conn.finished)
    s.close()
    run_until(loop, lambda: not loop._io)  # every hop's socket closed and unwatched
    run_until(loop, lambda: not [t for _, _, t in loop._timers if t.active])


def test_timeout_covers_the_whole_chain(loop, site):
    # The last hop never answers: the connect fails after `timeout`, not per hop.
    import socket as socketlib
    silent = socketlib.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        s = site({"/old": (302, f"ws://127.0.0.1:{silent.getsockname()[1]}/")})
        cv = evws.connect(s.url("/old"), loop=loop, timeout=0.3)
        with pytest.raises(evws.WaitTimeout) as info:
            cv.recv(timeout=TIMEOUT)
        assert "after 1 redirect" in str(info.value) and "timeout=0.3" in str(info.value)
    finally:
        silent.close()


# -- TLS: no downgrade --------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    return self_signed(tmp_path_factory.mktemp("redirect-tls"))


def test_wss_to_ws_is_refused_wss_to_wss_followed(loop, site, certs):
    cert, key = certs
    plain = site()
    secure = site({"/down": (302, plain.url("/x")), "/up": (302, "/ok")},
                  ssl_cert_file=str(cert), ssl_key_file=str(key))
    ctx = ssl.create_default_context(cafile=str(cert))
    with pytest.raises(RedirectError) as info:
        evws.connect(secure.url("/down", "wss"), loop=loop, ssl_context=ctx).recv(timeout=TIMEOUT)
    assert "drop TLS" in str(info.value)
    assert plain.hits == []
    conn = evws.connect(secure.url("/up", "wss"), loop=loop, ssl_context=ctx).recv(timeout=TIMEOUT)
    assert secure.paths[-2:] == ["/up", "/ok"]
    assert echo_once(loop, conn) == "hi"


def test_ws_to_wss_is_followed(loop, site, certs):
    cert, key = certs
    secure = site(ssl_cert_file=str(cert), ssl_key_file=str(key))
    plain = site({"/up": (301, secure.url("/s", "https"))})
    ctx = ssl.create_default_context(cafile=str(cert))
    conn = evws.connect(plain.url("/up"), loop=loop, ssl_context=ctx).recv(timeout=TIMEOUT)
    assert secure.paths == ["/s"]
    assert echo_once(loop, conn) == "hi"


# -- the pure rules -----------------------------------------------------------------


def refusal(status, location):
    return evws.HandshakeError("refused", status=status, headers=Headers({"Location": location}))


def test_redirect_target_rules():
    assert redirect_target("ws://h/a/b", refusal(302, "c")) == "ws://h/a/c"
    assert redirect_target("wss://h/a", refusal(302, "https://o:8/p?q")) == "wss://o:8/p?q"
    assert redirect_target("ws://h/a", refusal(302, "HTTP://o/")) == "ws://o/"
    with pytest.raises(RedirectError):
        redirect_target("wss://h/a", refusal(302, "ws://h/a"))
    with pytest.raises(RedirectError):
        redirect_target("wss://h/a", refusal(302, "http://h/a"))


def test_same_origin_and_credentials():
    assert same_origin("ws://H:80/a", "ws://h/b")
    assert not same_origin("ws://h/", "wss://h/")
    assert not same_origin("ws://h/", "ws://h:81/")
    kept = without_credentials([("authorization", "x"), ("X-A", "1"), ("COOKIE", "c")])
    assert kept is not None and kept.items() == [("X-A", "1")]
    assert without_credentials(None) is None
