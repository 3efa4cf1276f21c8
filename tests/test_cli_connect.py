"""``python -m evws connect``: --proxy / --no-proxy, --max-redirects, --reconnect, Ctrl-C.

Run as subprocesses like tests/test_cli.py (its helpers): servers on the test's
loop are driven by ``finish``/``run_until`` while the command runs; servers
that are stopped and restarted are ``python -m evws serve`` subprocesses on a
fixed port, so that waiting on the client's stderr needs no loop at all.
"""

from __future__ import annotations

import select
import signal
import socket
import subprocess

import pytest

import evws
from evws.protocol.http import http_error
from tests.conftest import run_until
from tests.http_proxy import ConnectProxy
from tests.test_cli import ENV, TIMEOUT, Lines, cli_server, evws_cmd, finish, free_port, run_connect


class Site:
    """An evws echo server on the test's loop; ``routes[path] = status`` refuses or redirects."""

    def __init__(self, loop, routes=None) -> None:
        self.routes = dict(routes or {})
        self.paths: list[str] = []
        self.server = evws.Server(handshake=self.handshake, loop=loop)
        self.listener = self.server.listen("127.0.0.1", 0, self.accept)
        self.url = f"ws://127.0.0.1:{self.listener.port}"

    def handshake(self, request, response):
        self.paths.append(request.path)
        status = self.routes.get(request.path)
        if status is not None:
            raise http_error(status, "go elsewhere" if status < 400 else "not you",
                             extra_headers=[("Location", "/echo")] if status < 400 else ())
        return response

    def accept(self, sock, host, port) -> None:
        def established(cv):
            if isinstance(cv.error, evws.HandshakeError):  # the socket is ours again: answer
                sock.send(cv.error.response)
                sock.close()
            elif cv.error is None:
                cv.recv_all()[0].on("each_message", lambda c, m: c.send(m))
            else:
                sock.close()
        self.server.establish(sock).cb(established)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def site(loop):
    made = []

    def make(routes=None):
        made.append(Site(loop, routes))
        return made[-1]
    yield make
    for s in made:
        s.close()


@pytest.fixture
def proxy(loop):
    server = ConnectProxy(loop)
    yield server
    server.close()


def start(url: str, *args: str, stdin: bytes | None = b"", env=None) -> subprocess.Popen:
    proc = subprocess.Popen(evws_cmd("connect", url, *args), env=env or ENV,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if stdin is not None:
        proc.stdin.write(stdin)
        proc.stdin.close()
    return proc


# -- proxies ---------------------------------------------------------------------------


def test_proxy_option_tunnels_through_that_proxy(loop, site, proxy):
    srv = site()
    code, out, err = finish(loop, start(srv.url + "/echo", "--proxy", proxy.url,
                                        stdin=b"through\n"))
    assert code == 0, err
    assert out == b"through\n"
    assert len(proxy.requests) == 1
    assert (proxy.requests[0].method, proxy.requests[0].target) == (
        "CONNECT", srv.url.removeprefix("ws://"))


def test_proxy_option_wins_over_the_environment(loop, site, proxy):
    srv = site()
    env = {**ENV, "http_proxy": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    code, out, err = finish(loop, start(srv.url + "/echo", "--proxy", proxy.url,
                                        stdin=b"x\n", env=env))
    assert code == 0, err
    assert len(proxy.requests) == 1


def test_no_proxy_option_ignores_the_environment(loop, site, proxy):
    srv = site()
    env = {**ENV, "http_proxy": proxy.url}
    code, out, err = finish(loop, start(srv.url + "/echo", "--no-proxy", stdin=b"direct\n",
                                        env=env))
    assert code == 0, err
    assert out == b"direct\n" and proxy.requests == []
    # Without it the environment's proxy is used.
    code, out, err = finish(loop, start(srv.url + "/echo", stdin=b"env\n", env=env))
    assert code == 0, err
    assert out == b"env\n" and len(proxy.requests) == 1


@pytest.mark.parametrize("args, words", [
    (["--proxy", "socks5://127.0.0.1:1080"], b"--proxy"),
    (["--proxy", "http://127.0.0.1:1", "--no-proxy"], b"not allowed with"),
    (["--proxy", "http://127.0.0.1:1", "--unix", "/tmp/x.sock"], b"--unix and --proxy"),
    (["--max-redirects", "-1"], b"--max-redirects"),
    (["--max-redirects", "many"], b"--max-redirects"),
])
def test_usage_errors_exit_2(args, words):
    result = run_connect("ws://127.0.0.1:1/", *args)
    assert result.returncode == 2, result.stderr
    assert words in result.stderr and result.stdout == b""


# -- redirects -------------------------------------------------------------------------


def test_redirects_are_followed_and_max_redirects_bounds_them(loop, site):
    srv = site({"/old": 302})
    code, out, err = finish(loop, start(srv.url + "/old", stdin=b"moved\n"))
    assert code == 0, err
    assert out == b"moved\n" and srv.paths == ["/old", "/echo"]
    code, out, err = finish(loop, start(srv.url + "/old", "--max-redirects", "0",
                                        stdin=b"moved\n"))
    assert code == 1 and b"302" in err and out == b""
    assert srv.paths == ["/old", "/echo", "/old"]


# -- Ctrl-C while connecting -------------------------------------------------------------


@pytest.fixture
def black_hole():
    """A loopback port whose backlog is full: a connect to it stays in SYN_SENT."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            filler.connect_ex(("127.0.0.1", port))
            if not select.select([], [filler], [], 1.0)[1]:
                break
        else:
            pytest.skip("the listen backlog never filled")
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


def connecting_to(port: int) -> int:
    """Sockets of this machine in SYN_SENT towards 127.0.0.1:port (from /proc/net/tcp)."""
    wanted = f"0100007F:{port:04X}"
    count = 0
    with open("/proc/net/tcp") as table:
        for line in list(table)[1:]:
            fields = line.split()
            if fields[2] == wanted and fields[3] == "02":
                count += 1
    return count


def exited(loop, proc: subprocess.Popen) -> tuple[int, bytes, bytes]:
    """Run the loop until ``proc`` exits by itself, its stdin left open (no EOF)."""
    try:
        run_until(loop, lambda: proc.poll() is not None, timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdin.close()
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    return proc.returncode, out, err


@pytest.mark.parametrize("reconnect", [False, True])
def test_ctrl_c_while_connecting_cancels_the_connect(loop, black_hole, reconnect):
    port = black_hole
    before = connecting_to(port)  # the last filler
    proc = start(f"ws://127.0.0.1:{port}/", "--timeout", "60",
                 *(["--reconnect"] if reconnect else []), stdin=None)
    try:
        # Until the command's SYN is out (the kernel's table: there is no event to wait on).
        run_until(loop, lambda: connecting_to(port) > before or proc.poll() is not None)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=TIMEOUT)  # stdin stays open: the signal alone ends it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert b"Traceback" not in err
    if reconnect:
        assert proc.returncode == 0 and b"interrupted: closing" in err, err
    else:
        assert proc.returncode == 1 and b"interrupted while connecting" in err, err


# -- --reconnect -----------------------------------------------------------------------


def test_reconnect_across_a_server_restart():
    port = free_port()
    url = f"ws://127.0.0.1:{port}/"
    client = None
    try:
        with cli_server("--host", "127.0.0.1", "--port", str(port)):
            client = subprocess.Popen(evws_cmd("connect", "--reconnect", url), env=ENV,
                                      text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
            out, err = Lines(client.stdout), Lines(client.stderr)
            err.wait_for(r"connected to ws://")
            client.stdin.write("one\n")
            client.stdin.flush()
            out.wait_for(r"^one$")
        # The server is gone (SIGTERM: it closed with 1001).
        err.wait_for(r"connection closed: 1001")
        err.wait_for(r"reconnecting in \d+\.\d s \(attempt 2\)$")
        client.stdin.write("while down\n")  # waits for the next connection
        client.stdin.flush()
        with cli_server("--host", "127.0.0.1", "--port", str(port)):
            err.wait_for(r"connected to ws://", timeout=2 * TIMEOUT)  # after the backoff
            out.wait_for(r"^while down$")
            client.stdin.write("two\n")
            client.stdin.flush()
            out.wait_for(r"^two$")
            client.stdin.close()  # EOF ends it
            assert client.wait(timeout=TIMEOUT) == 0
            err.wait_for(r"connection closed: 1000")
        assert "Traceback" not in err.rest()
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()


def test_reconnect_ctrl_c_while_waiting_ends_it():
    proc = subprocess.Popen(evws_cmd("connect", "--reconnect", f"ws://127.0.0.1:{free_port()}/"),
                            env=ENV, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        err = Lines(proc.stderr)
        err.wait_for(r"reconnecting in \d+\.\d s \(attempt 2\): ConnectionRefusedError")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=TIMEOUT) == 0
        assert "interrupted: closing" in err.rest()
        assert proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stdin.close()


def test_reconnect_gives_up_on_a_refusal_retrying_cannot_fix(loop, site):
    srv = site({"/private": 403})
    code, out, err = exited(loop, start(srv.url + "/private", "--reconnect", stdin=None))
    assert code == 1, err
    assert b"403" in err and b"giving up" in err and b"reconnecting" not in err
    assert srv.paths == ["/private"]


def test_reconnect_sends_what_was_read_before_the_first_connect(loop, site):
    srv = site()
    code, out, err = finish(loop, start(srv.url + "/echo", "--reconnect", stdin=b"a\nb\n"))
    assert code == 0, err
    assert out == b"a\nb\n"
    run_until(loop, lambda: not srv.server.connections)
