"""pytest fixtures for testing code built on evws: a pytest plugin.

``pip install evws`` registers this module with pytest (entry point
``pytest11``, name ``evws``), so a project's own test suite gets, with no
import and no ``conftest.py``:

- ``evws_loop`` -- a fresh private :class:`~evws.Loop`, current for the test
  (``evws.get_loop()`` returns it, so ``CondVar()``, ``connect()`` and
  ``Server()`` use it) and put back afterwards. At teardown it fails the test
  if the test left anything behind: a timer, io watcher, deferred call,
  signal or idle watcher still registered on the loop, or (on Linux) a file
  descriptor still open that was not open before. The failure lists each
  one by name -- whose callback, which socket and address -- because "fd 12
  leaked" alone sends you hunting.
- ``ws_pair(**options)`` -- :func:`evws.connection_pair` on ``evws_loop``:
  ``(server_side, client_side)`` over a socketpair; closed at teardown.
- ``ws_server(fn, **server_options)`` -- serves ``fn(conn)`` (or
  ``each_message=fn(conn, message)``) on a free loopback port and returns its
  ``ws://127.0.0.1:PORT/`` URL; shut down at teardown.
- :func:`run_until` ``(cv, timeout=5.0)`` -- a plain function: run the loop
  until a CondVar is ready and return its value, or fail the test with a
  clear message after ``timeout`` seconds instead of hanging.

Why the leak check is in the loop fixture: a callback library leaks in ways
no assertion sees -- a keepalive timer of a connection nobody closed keeps
firing, a listener's socket stays bound -- and in a long-running server
these add up. Each test is the unit that can be blamed.

Teardown waits for what is already ending: it runs the loop for up to
``evws_settle_timeout`` seconds (ini option, default 2) while anything is
still registered, so a connection the test closed may finish its closing
handshake and its lingering TCP close. What is still there after that is
reported. A test that already failed is not reported again for leaks (its
clean-up was probably skipped by the failure); the loop is closed anyway.

Without the installed entry point (a source checkout), load it with
``pytest -p evws.testing``. The entry point is registered under that same
name, ``evws.testing``, so naming it in ``-p`` or ``pytest_plugins`` as well
is harmless (pytest refuses one plugin under two names).
``-p no:evws.testing`` turns it off.
"""

from __future__ import annotations

import gc
import os
import socket
import time
from typing import Any, Callable, Generator, Iterator

import pytest

from .client import connection_pair
from .connection import Connection
from .errors import WaitTimeout
from .reactor.condvar import CondVar
from .reactor.loop import Loop, set_loop
from .reactor.stream import Stream
from .server import Server

__all__ = ["run_until", "evws_loop", "ws_pair", "ws_server"]

#: The default of the ``evws_settle_timeout`` ini option (seconds).
SETTLE_TIMEOUT = 2.0

# Where Linux lists the process's open file descriptors; elsewhere the fd
# part of the leak check is skipped.
_FD_DIR = "/proc/self/fd"

# item -> {"setup"|"call"|"teardown": TestReport}, so teardown knows whether the test passed.
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("evws_settle_timeout",
                  "seconds evws_loop runs the loop at teardown, while anything is still "
                  f"registered, before it reports leaks (default {SETTLE_TIMEOUT})",
                  default=str(SETTLE_TIMEOUT))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Keep each phase's report on the item: the leak check is skipped after a failure."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    item.stash.setdefault(_REPORTS, {})[report.when] = report


# -- run_until -------------------------------------------------------------

def run_until(cv: CondVar, timeout: float = 5.0) -> Any:
    """Run ``cv``'s loop until ``cv`` is ready; return what ``cv.recv()`` returns.

    A croaked CondVar raises what was croaked, as ``recv()`` does. If it is
    not ready after ``timeout`` seconds the test fails, with what is still
    registered on the loop (an empty list means nothing could ever make it
    ready: a callback that should have called ``send`` was never set up).

    Raises:
        RecursiveWaitError: called from inside a loop callback.
    """
    __tracebackhide__ = True
    try:
        return cv.recv(timeout=timeout)
    except WaitTimeout:
        if cv.ready:
            raise  # croaked with a WaitTimeout of its own (a connect timeout, say)
    listing = "".join(f"\n    {p!r}" for p in cv.loop.pending()) or " nothing"
    pytest.fail(f"run_until: {cv!r} not ready after {timeout} s; "
                f"still registered on the loop:{listing}")


# -- evws_loop and its leak check --------------------------------------------

def _open_fds() -> dict[int, str] | None:
    """fd -> what it points to (``socket:[inode]``, a path...); None where unknown."""
    try:
        names = os.listdir(_FD_DIR)
    except OSError:
        return None
    fds: dict[int, str] = {}
    for name in names:
        try:
            fds[int(name)] = os.readlink(f"{_FD_DIR}/{name}")
        except (OSError, ValueError):
            continue  # the listing's own fd, closed by now
    return fds


def _new_fds(before: dict[int, str], after: dict[int, str]) -> dict[int, str]:
    """What is open now and was not then (an fd number reused for something else counts)."""
    return {fd: target for fd, target in after.items() if before.get(fd) != target}


def _describe_fd(fd: int, target: str) -> str:
    """``fd 12: <socket.socket ... laddr=('127.0.0.1', 41234)>``, or the link target."""
    for obj in gc.get_objects():
        if isinstance(obj, socket.socket):
            try:
                if obj.fileno() == fd:
                    return f"fd {fd}: {obj!r}"
            except OSError:
                continue
    return f"fd {fd}: {target}"


def _settle(loop: Loop, timeout: float) -> None:
    """Run the loop while anything is registered, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not loop.closed and loop.pending():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        loop.run_once(min(remaining, 0.05))


def _settle_timeout(config: pytest.Config) -> float:
    value = config.getini("evws_settle_timeout")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise pytest.UsageError(f"evws_settle_timeout must be a number of seconds, not {value!r}") from None


def _passed(item: pytest.Item) -> bool:
    reports = item.stash.get(_REPORTS, {})
    return all(r.passed for r in reports.values()) and "call" in reports


@pytest.fixture
def evws_loop(request: pytest.FixtureRequest) -> Iterator[Loop]:
    """A fresh :class:`~evws.Loop`, current for the test; fails it if the test leaked.

    See the module docstring for what counts as a leak and how long
    teardown waits for things that are still closing.
    """
    fds_before = _open_fds()
    loop = Loop()
    previous = set_loop(loop)
    try:
        yield loop
    finally:
        item = request.node
        check = _passed(item)
        if check and not loop.closed:
            _settle(loop, _settle_timeout(request.config))
        still = [repr(p) for p in loop.pending()]  # before close() cancels them
        set_loop(previous)
        loop.close()
        leaked_fds: dict[int, str] = {}
        if check and fds_before is not None:
            after = _open_fds()
            if after is not None:
                leaked_fds = _new_fds(fds_before, after)
                if leaked_fds:
                    # Only referenced by garbage cycles? Then not a leak that lasts.
                    gc.collect()
                    after = _open_fds() or {}
                    leaked_fds = _new_fds(fds_before, after)
    if check and (still or leaked_fds):
        lines = [f"evws_loop: {item.nodeid} left work behind"]
        if still:
            lines.append("  still registered on the loop:")
            lines.extend(f"    {p}" for p in still)
        if leaked_fds:
            lines.append("  file descriptors opened by the test and still open:")
            lines.extend(f"    {_describe_fd(fd, target)}" for fd, target in sorted(leaked_fds.items()))
        pytest.fail("\n".join(lines), pytrace=False)


# -- ws_pair ---------------------------------------------------------------------

def _close_all(loop: Loop, connections: list[Connection], timeout: float) -> None:
    """Close ``connections`` properly, waiting up to ``timeout``; abort what is left."""
    if loop.closed:
        for conn in connections:
            conn.stream.abort()
        return
    for conn in connections:
        conn.close()
    deadline = time.monotonic() + timeout
    while any(not (c.finished and c.stream.closed) for c in connections):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or loop.depth > 0:
            break
        loop.run_once(min(remaining, 0.05))
    for conn in connections:
        conn.stream.abort()  # no-op when closed


@pytest.fixture
def ws_pair(evws_loop: Loop, request: pytest.FixtureRequest) -> Iterator[Callable[..., tuple[Connection, Connection]]]:
    """Factory: ``ws_pair(**options)`` is ``evws.connection_pair(evws_loop, **options)``.

    Returns ``(server_side, client_side)``; every pair made is closed (a
    closing handshake, then TCP) at teardown. The options are
    :func:`evws.connection_pair`'s: ``handshake``, ``validator``,
    ``subprotocols``, ``max_payload_size``, ``compression``...
    """
    made: list[Connection] = []

    def make(**options: Any) -> tuple[Connection, Connection]:
        server_side, client_side = connection_pair(evws_loop, **options)
        made.extend((server_side, client_side))
        return server_side, client_side

    yield make
    _close_all(evws_loop, made, _settle_timeout(request.config))


# -- ws_server -------------------------------------------------------------------

def _refuse(loop: Loop, sock: socket.socket, error: BaseException | None) -> None:
    """Answer a refused handshake with its HTTP error (if it has one) and close gracefully."""
    response = getattr(error, "response", None)
    try:
        stream = Stream(sock, loop)
    except OSError:
        sock.close()
        return
    if isinstance(response, bytes) and response:
        stream.write(response)
    stream.close()


@pytest.fixture
def ws_server(evws_loop: Loop, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """Factory: ``ws_server(fn, **server_options)`` serves ``fn`` and returns its URL.

    ``fn(conn)`` is called with each established connection (attach your
    handlers there); or pass ``each_message=fn`` for ``fn(conn, message)``
    on every message. ``server_options`` go to :class:`evws.Server`
    (``handshake``, ``max_payload_size``, ``ssl_context``...; with TLS the
    URL is ``wss://``). It listens on ``127.0.0.1`` on a free port; a refused
    handshake gets its HTTP error answer, a connection that closes before
    completing one (a port probe) is closed quietly. At teardown each server
    stops accepting and closes its connections with 1001.
    """
    servers: list[Server] = []

    def serve(fn: Callable[[Connection], Any] | None = None, *,
              each_message: Callable[[Connection, Any], Any] | None = None,
              **server_options: Any) -> str:
        if (fn is None) == (each_message is None):
            raise TypeError("ws_server needs fn(conn) or each_message=fn(conn, message), one of them")
        server = Server(loop=evws_loop, **server_options)

        def on_accept(sock: socket.socket, host: str, port: int) -> None:
            def established(cv: CondVar) -> None:
                if cv.error is not None:
                    if server.ssl_context is None:  # with TLS evws answered and closed it
                        _refuse(evws_loop, sock, cv.error)
                    return
                conn = cv.recv_all()[0]
                if each_message is not None:
                    conn.on("each_message", each_message)
                elif fn is not None:
                    fn(conn)
            server.establish(sock).cb(established)

        listener = server.listen("127.0.0.1", 0, on_accept)
        servers.append(server)
        scheme = "ws" if server.ssl_context is None else "wss"
        return f"{scheme}://127.0.0.1:{listener.port}/"

    yield serve
    timeout = _settle_timeout(request.config)
    for server in servers:
        done = server.shutdown(timeout=timeout)
        deadline = time.monotonic() + timeout + 1.0
        while not done.ready and not evws_loop.closed and evws_loop.depth == 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            evws_loop.run_once(min(remaining, 0.05))
