"""Server-side subprotocol selection: ``Server(subprotocols=..., require_subprotocol=...)``.

Against the evws client and the ``websockets`` client over loopback TCP, and
through ``python -m evws serve --subprotocol ... --require-subprotocol``.
"""

from __future__ import annotations

import subprocess
import threading

import pytest

import evws
from evws.protocol.handshake import choose_subprotocol
from tests.conftest import TIMEOUT, run_until
from tests.test_cli import ENV, cli_server, evws_cmd, run_connect


class Site:
    """An evws echo server with the given Server options; records outcomes."""

    def __init__(self, loop, **server_options):
        self.server = evws.Server(loop=loop, **server_options)
        self.outcomes: list = []
        self.listener = evws.tcp_server("127.0.0.1", 0, self.on_accept, loop=loop)
        self.url = f"ws://127.0.0.1:{self.listener.port}/"

    def on_accept(self, sock, host, port):
        def established(cv):
            try:
                conn = cv.recv_all()[0]
            except evws.HandshakeError as exc:
                self.outcomes.append(exc)
                sock.send(exc.response)
                sock.close()
                return
            self.outcomes.append(conn)
            conn.on("each_message", lambda c, m: c.send(m))
        self.server.establish(sock).cb(established)


@pytest.fixture
def site(loop):
    made = []

    def make(**options):
        made.append(Site(loop, **options))
        return made[-1]
    yield make
    for s in made:
        s.listener.close()


def evws_subprotocol(loop, url, offered):
    conn = evws.connect(url, loop=loop, subprotocols=offered).recv(timeout=TIMEOUT)
    conn.close()
    run_until(loop, lambda: conn.finished)
    return conn.subprotocol


def test_the_servers_preference_wins(loop, site):
    s = site(subprotocols=["chat.v2", "chat.v1"])
    assert evws_subprotocol(loop, s.url, ["chat.v1", "chat.v2"]) == "chat.v2"
    assert s.outcomes[-1].subprotocol == "chat.v2"
    assert evws_subprotocol(loop, s.url, ["chat.v1"]) == "chat.v1"
    assert evws_subprotocol(loop, s.url, ["other"]) is None  # not required: accepted without
    assert evws_subprotocol(loop, s.url, None) is None


@pytest.mark.parametrize("offered", [["other"], None])
def test_required_refuses_with_400_and_a_clear_body(loop, site, offered):
    called = []
    s = site(subprotocols=["chat.v2", "chat.v1"], require_subprotocol=True,
             handshake=lambda request, response: called.append(1) or response)
    with pytest.raises(evws.HandshakeError) as info:
        evws.connect(s.url, loop=loop, subprotocols=offered).recv(timeout=TIMEOUT)
    assert info.value.status == 400
    assert info.value.body == b"no acceptable subprotocol: this server speaks chat.v2, chat.v1"
    assert called == []  # refused before the handshake callback
    run_until(loop, lambda: s.outcomes)
    assert s.outcomes[0].status == 400


def test_the_handshake_callback_sees_the_choice_and_can_override(loop, site):
    seen = []

    def handshake(request, response):
        seen.append(response.subprotocol)
        if request.path == "/older":
            response.subprotocol = "chat.v1"
        elif request.path == "/none":
            response.subprotocol = None
        return response

    s = site(subprotocols=["chat.v2", "chat.v1"], handshake=handshake)
    offer = ["chat.v1", "chat.v2"]
    assert evws_subprotocol(loop, s.url, offer) == "chat.v2"
    assert evws_subprotocol(loop, s.url + "older", offer) == "chat.v1"
    assert evws_subprotocol(loop, s.url + "none", offer) is None
    assert seen == ["chat.v2"] * 3


def test_validator_gets_the_chosen_subprotocol(loop, site):
    s = site(subprotocols=["b", "a"], validator=lambda request: "extra")
    conn = evws.connect(s.url, loop=loop, subprotocols=["a", "b"]).recv(timeout=TIMEOUT)
    assert conn.subprotocol == "b"
    conn.close()
    run_until(loop, lambda: conn.finished)


def test_bad_arguments():
    loop = evws.Loop()
    try:
        with pytest.raises(TypeError):
            evws.Server(subprotocols="chat", loop=loop)
        for bad in (["a b"], ["ok", ""], ["x,y"], ["dup", "dup"], [3]):
            with pytest.raises(ValueError):
                evws.Server(subprotocols=bad, loop=loop)
        with pytest.raises(ValueError):
            evws.Server(require_subprotocol=True, loop=loop)
        server = evws.Server(subprotocols=iter(["a", "b"]), loop=loop)
        assert server.subprotocols == ("a", "b") and not server.require_subprotocol
    finally:
        loop.close()


def test_choose_subprotocol():
    assert choose_subprotocol(["a", "b"], ["b", "a"]) == "b"
    assert choose_subprotocol(["a"], ["b"]) is None
    assert choose_subprotocol([], ["b"]) is None
    assert choose_subprotocol(["a"], []) is None


# -- the websockets client ---------------------------------------------------------


def websockets_talk(loop, url, offered):
    """Connect with the websockets sync client in a thread; its subprotocol or its error."""
    sync_client = pytest.importorskip("websockets.sync.client")
    results: list = []

    def talk():
        try:
            with sync_client.connect(url, subprotocols=offered, open_timeout=TIMEOUT,
                                     close_timeout=TIMEOUT) as ws:
                ws.send("x")
                assert ws.recv(timeout=TIMEOUT) == "x"
                results.append(ws.subprotocol)
        except Exception as exc:  # reported to the main thread
            results.append(exc)

    thread = threading.Thread(target=talk, daemon=True)
    thread.start()
    run_until(loop, lambda: results, timeout=3 * TIMEOUT)
    thread.join(TIMEOUT)
    return results[0]


def test_websockets_client(loop, site):
    s = site(subprotocols=["chat.v2", "chat.v1"])
    assert websockets_talk(loop, s.url, ["chat.v1", "chat.v2"]) == "chat.v2"
    assert websockets_talk(loop, s.url, ["chat.v1"]) == "chat.v1"
    assert websockets_talk(loop, s.url, ["other"]) is None


def test_websockets_client_refused_when_required(loop, site):
    exceptions = pytest.importorskip("websockets.exceptions")
    s = site(subprotocols=["chat.v2"], require_subprotocol=True)
    error = websockets_talk(loop, s.url, ["chat.v1"])
    assert isinstance(error, exceptions.InvalidStatus)
    assert error.response.status_code == 400
    assert b"no acceptable subprotocol" in error.response.body


# -- the command line ----------------------------------------------------------------


def test_cli_require_subprotocol_needs_a_subprotocol():
    for args in (["--require-subprotocol"], ["--subprotocol", "a b"]):
        result = subprocess.run(evws_cmd("serve", "--port", "0", *args), env=ENV,
                                capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode == 2, result
        assert "subprotocol" in result.stderr and result.stdout == ""


def test_cli_serve_prefers_its_order_and_requires():
    with cli_server("--subprotocol", "chat.v2", "--subprotocol", "chat.v1",
                    "--require-subprotocol") as (url, _proc, _err):
        ok = run_connect(url, "--subprotocol", "chat.v1", "--subprotocol", "chat.v2")
        assert ok.returncode == 0, ok.stderr
        assert b"subprotocol chat.v2" in ok.stderr
        refused = run_connect(url, "--subprotocol", "other")
        assert refused.returncode == 1
        assert b"400" in refused.stderr and b"no acceptable subprotocol" in refused.stderr
