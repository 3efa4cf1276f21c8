"""evws.testing, the pytest plugin: run as a user's suite would, through pytester.

Each test writes a small test file, runs pytest on it in-process with
``-p evws.testing`` and checks the outcome and the report. Plugin autoloading
is turned off for those inner runs: once evws is installed with its
``pytest11`` entry point, autoloading would register the plugin a second time
(under the entry point's name) next to ``-p evws.testing``.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import sys

import pytest

pytest_plugins = ["pytester"]

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def run(pytester, monkeypatch):
    """``run(source, *args)``: write ``source`` as a test file and run pytest on it."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    # The inner run must import this checkout's evws, whatever its cwd.
    monkeypatch.syspath_prepend(str(ROOT))
    pytester.makeini("[pytest]\nevws_settle_timeout = 0.5\n")

    def go(source: str, *args: str):
        pytester.makepyfile(test_user=source)
        return pytester.runpytest("-p", "evws.testing", "-p", "no:cacheprovider", *args)
    return go


def test_a_passing_user_suite(run):
    result = run('''
import evws
from evws.testing import run_until

seen = []

def test_the_loop_is_current_and_private(evws_loop):
    assert evws.get_loop() is evws_loop
    assert evws.CondVar().loop is evws_loop
    seen.append(evws_loop)

def test_each_test_gets_a_fresh_loop_and_the_old_one_is_closed(evws_loop):
    assert seen and seen[0] is not evws_loop and seen[0].closed

def test_echo_handler(ws_pair):
    server_side, client_side = ws_pair()
    server_side.on("each_message", lambda conn, message: conn.send(message))
    got = evws.CondVar()
    client_side.on("next_message", lambda conn, message: got.send(message))
    client_side.send("ping")
    assert run_until(got).decoded_body == "ping"

def test_a_connection_closed_at_the_end_may_finish_in_teardown(evws_loop):
    server_side, client_side = evws.connection_pair(evws_loop)
    client_side.close()          # still closing when the test returns: not a leak

def test_run_until_raises_what_was_croaked(evws_loop):
    cv = evws.CondVar()
    evws_loop.timer(0.01, lambda: cv.croak(ValueError("boom")))
    try:
        run_until(cv)
    except ValueError as exc:
        assert str(exc) == "boom"
    else:
        raise AssertionError("not raised")
''')
    result.assert_outcomes(passed=5)


def test_a_leaked_socket_fails_the_test_and_is_named(run):
    result = run('''
import socket
import evws

KEPT = []

def test_leaks_a_listener(evws_loop):
    KEPT.append(evws.tcp_server("127.0.0.1", 0, lambda sock, host, port: None))

def test_leaks_a_plain_socket(evws_loop):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    KEPT.append(sock)

def test_closes_what_it_opens(evws_loop):
    listener = evws.tcp_server("127.0.0.1", 0, lambda sock, host, port: None)
    listener.close()
''')
    result.assert_outcomes(passed=3, errors=2)
    out = result.stdout.str()
    assert "ERROR at teardown of test_leaks_a_listener" in out
    assert "ERROR at teardown of test_leaks_a_plain_socket" in out
    assert "test_closes_what_it_opens" not in out.split("short test summary")[-1]
    assert "evws_loop: test_user.py::test_leaks_a_listener left work behind" in out
    # The listener: its accept watcher on the loop, and its socket with the address.
    assert "still registered on the loop:" in out
    assert "fn=evws.reactor.tcp.TcpServer._watch.<locals>.<lambda>" in out
    assert "file descriptors opened by the test and still open:" in out
    assert out.count("<socket.socket fd=") >= 2
    assert "laddr=('127.0.0.1'" in out


def test_a_leaked_timer_fails_the_test(run):
    result = run('''
def test_leaks_a_timer(evws_loop):
    def ring():
        pass
    evws_loop.timer(60, ring)

def test_leaks_a_deferred_call_only_briefly(evws_loop):
    evws_loop.call_soon(print)   # runs during teardown's settling: nothing left

def test_cancels_its_timer(evws_loop):
    evws_loop.timer(60, lambda: None).cancel()
''')
    result.assert_outcomes(passed=3, errors=1)
    out = result.stdout.str()
    assert "ERROR at teardown of test_leaks_a_timer" in out
    assert "<Timer when=" in out and "fn=test_user.test_leaks_a_timer.<locals>.ring active>" in out
    assert "file descriptors" not in out  # a timer holds no fd


def test_a_failed_test_is_not_reported_again_for_leaks(run):
    result = run('''
def test_fails_with_a_timer_left(evws_loop):
    evws_loop.timer(60, lambda: None)
    assert False, "the real failure"
''')
    result.assert_outcomes(failed=1)
    assert "left work behind" not in result.stdout.str()


def test_run_until_fails_after_its_timeout_instead_of_hanging(run):
    result = run('''
import evws
from evws.testing import run_until

def test_never_ready(evws_loop):
    cv = evws.CondVar()
    guard = evws_loop.timer(60, lambda: cv.send("too late"))
    try:
        run_until(cv, timeout=0.2)
    finally:
        guard.cancel()

def test_nothing_could_make_it_ready(evws_loop):
    run_until(evws.CondVar(), timeout=0.1)
''')
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "run_until: <CondVar pending> not ready after 0.2 s; still registered on the loop:" in out
    assert "test_never_ready.<locals>.<lambda> active>" in out
    assert "run_until: <CondVar pending> not ready after 0.1 s; still registered on the loop: nothing" in out


def test_ws_pair_honours_its_options_and_closes_the_pairs(run):
    result = run('''
import evws
from evws.testing import run_until

MADE = []

def test_options(ws_pair):
    def handshake(request, response):
        response.subprotocol = request.subprotocols[-1]
        return response
    server_side, client_side = ws_pair(handshake=handshake, subprotocols=["a", "b"],
                                       max_payload_size=10, compression=None,
                                       resource="/room/1")
    MADE.extend((server_side, client_side))
    assert server_side.subprotocol == client_side.subprotocol == "b"
    assert server_side.request.resource_name == "/room/1"
    assert client_side.response.headers.get("sec-websocket-extensions") is None
    done = evws.CondVar()
    client_side.on("finish", lambda conn: done.send())
    client_side.send(b"x" * 11)
    run_until(done)
    assert client_side.close_code == 1009

def test_open_pairs_are_closed_at_teardown(ws_pair):
    MADE.extend(ws_pair())

def test_all_finished(evws_loop):
    assert len(MADE) == 4 and all(conn.finished for conn in MADE)
    assert all(conn.stream.closed for conn in MADE)
    assert MADE[2].close_code == 1000

def test_a_refused_pair_raises_and_leaks_nothing(ws_pair):
    def handshake(request, response):
        raise ValueError("no")
    try:
        ws_pair(handshake=handshake)
    except evws.HandshakeError as exc:
        assert exc.status == 403
    else:
        raise AssertionError("not refused")
''')
    result.assert_outcomes(passed=4)


def test_ws_server_serves_the_websockets_client(run):
    pytest.importorskip("websockets")
    result = run('''
import threading
import pytest
import evws
from evws.testing import run_until
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

def talk(evws_loop, url, text):
    """Run the (blocking) websockets client in a thread while the evws loop serves."""
    cv = evws.CondVar()
    def client():
        try:
            with connect(url, open_timeout=5, close_timeout=5) as ws:
                ws.send(text)
                answer = ws.recv(timeout=5)
            evws_loop.call_soon_threadsafe(cv.send, answer)
        except Exception as exc:
            evws_loop.call_soon_threadsafe(cv.croak, exc)
    thread = threading.Thread(target=client)
    thread.start()
    try:
        return run_until(cv)
    finally:
        thread.join(5)

def test_handler_gets_each_connection(evws_loop, ws_server):
    def handler(conn):
        conn.on("each_message", lambda conn, message: conn.send(message.decoded_body.upper()))
    url = ws_server(handler)
    assert url.startswith("ws://127.0.0.1:") and url.endswith("/")
    assert talk(evws_loop, url, "hello") == "HELLO"
    assert talk(evws_loop, url, "again") == "AGAIN"

def test_each_message(evws_loop, ws_server):
    url = ws_server(each_message=lambda conn, message: conn.send(message))
    assert talk(evws_loop, url, "echo") == "echo"

def test_server_options_and_refusals(evws_loop, ws_server):
    def handshake(request, response):
        raise ValueError("go away")
    url = ws_server(lambda conn: None, handshake=handshake)
    with pytest.raises(InvalidStatus) as info:
        talk(evws_loop, url, "hi")
    assert info.value.response.status_code == 403

def test_connections_still_open_are_closed_at_teardown(ws_server):
    url = ws_server(lambda conn: None)
    client = run_until(evws.connect(url))
    assert not client.finished     # ws_server's shutdown closes both ends: no leak

def test_a_handler_is_required(ws_server):
    with pytest.raises(TypeError):
        ws_server()
''')
    result.assert_outcomes(passed=5)


def test_ws_server_with_tls_gives_a_wss_url(run, tmp_path):
    from tests.certs import self_signed
    cert, key = self_signed(tmp_path)
    result = run(f'''
import ssl
import evws
from evws.testing import run_until

def test_wss(ws_server):
    url = ws_server(each_message=lambda conn, message: conn.send(message),
                    ssl_cert_file={str(cert)!r}, ssl_key_file={str(key)!r})
    assert url.startswith("wss://127.0.0.1:")
    client = run_until(evws.connect(url, ssl_context=ssl.create_default_context(cafile={str(cert)!r})))
    got = evws.CondVar()
    client.on("next_message", lambda conn, message: got.send(message.decoded_body))
    client.send("secret")
    assert run_until(got) == "secret"
''')
    result.assert_outcomes(passed=1)


def test_the_settle_timeout_must_be_a_number(run, pytester):
    pytester.makeini("[pytest]\nevws_settle_timeout = soon\n")
    result = run('''
def test_x(evws_loop):
    pass
''')
    assert "evws_settle_timeout must be a number of seconds, not 'soon'" in result.stdout.str() + \
        result.stderr.str()


def test_setup_py_registers_the_plugin_entry_point():
    """Entry points only take effect once installed; check the metadata itself here
    (tests/test_packaging.py installs the wheel and runs pytest with it)."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    call = next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup")
    entry_points = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "entry_points"))
    assert entry_points["pytest11"] == ["evws.testing = evws.testing"]
    module = importlib.import_module("evws.testing")
    for fixture in ("evws_loop", "ws_pair", "ws_server"):
        assert hasattr(module, fixture), fixture
    assert "pytest" in sys.modules


def test_the_readme_example_runs(run):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Testing your handlers", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    result = run(example)
    result.assert_outcomes(passed=example.count("\ndef test_"))
    assert example.count("\ndef test_") == 4
