"""``evws.reconnecting``: backoff, restarts, stopping, giving up -- over loopback TCP.

Delays are tiny and jitter is 0 where the schedule is asserted: the tests check
the delays the client *chose* (its ``reconnect`` events), never wall time.
"""

from __future__ import annotations

import socket

import pytest

import evws
from evws.reconnect import ReconnectPolicy, retryable
from tests.conftest import run_until

FAST = dict(initial_delay=0.01, max_delay=0.05, factor=2.0, jitter=0.0)


class Recorder:
    """Every event of a ReconnectingClient, in order; checks finish comes once."""

    def __init__(self, client: evws.ReconnectingClient):
        self.client = client
        self.events: list = []
        for name in ("connect", "disconnect", "reconnect", "message", "finish"):
            client.on(name, self.recorder(name))

    def recorder(self, name):
        def record(*args):
            self.events.append((name, *args))
        return record

    def of(self, name):
        # (An assert in a listener would only be logged: check here instead.)
        finishes = [i for i, e in enumerate(self.events) if e[0] == "finish"]
        assert finishes in ([], [len(self.events) - 1]), f"finish not once and last: {self.events}"
        return [e[1:] for e in self.events if e[0] == name]

    @property
    def finished(self):
        return bool(self.of("finish"))


def no_timers_or_watchers(loop):
    return not [t for _, _, t in loop._timers if t.active] and not loop._io


class Site:
    """An evws server on a fixed loopback port; ``mode`` says what it does with a connection."""

    def __init__(self, loop, port=0, mode="echo"):
        self.loop = loop
        self.mode = mode
        self.server = evws.Server(loop=loop, ping_interval=None)
        self.accepted = 0
        self.listener = evws.tcp_server("127.0.0.1", port, self.on_accept, loop=loop)
        self.port = self.listener.port
        self.url = f"ws://127.0.0.1:{self.port}/"

    def on_accept(self, sock, host, port):
        self.accepted += 1

        def established(cv):
            try:
                conn = cv.recv_all()[0]
            except evws.HandshakeError as exc:
                sock.send(exc.response)
                sock.close()
                return
            if self.mode == "close":
                conn.close(1012, "restarting")
            else:
                conn.on("each_message", lambda c, m: c.send(m))
        self.server.establish(sock).cb(established)

    def stop(self):
        """Close the listener and every connection (abort: no closing handshake)."""
        self.listener.close()
        for conn in self.server.connections:
            conn.stream.abort()


@pytest.fixture
def sites(loop):
    made = []

    def make(**options):
        made.append(Site(loop, **options))
        return made[-1]
    yield make
    for s in made:
        s.stop()


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_backoff_grows_then_gives_up_with_the_last_error(loop, sites):
    site = sites(mode="close")
    policy = ReconnectPolicy(**FAST, max_attempts=5, reset_after=60)
    client = evws.reconnecting(site.url, policy, loop=loop, ping_interval=None)
    rec = Recorder(client)
    run_until(loop, lambda: rec.finished)
    assert len(rec.of("connect")) == 5 and len(rec.of("disconnect")) == 5
    schedule = [(attempt, delay) for attempt, delay, _cause in rec.of("reconnect")]
    assert schedule == [(2, 0.01), (3, 0.02), (4, 0.04), (5, 0.05)]  # capped at max_delay
    ((error,),) = rec.of("finish")
    assert isinstance(error, evws.ConnectionClosed) and error.code == 1012
    assert client.error is error and client.finished and client.connection is None
    site.stop()
    run_until(loop, lambda: no_timers_or_watchers(loop))  # nothing of the client's left


def test_refused_connects_give_up_after_max_attempts(loop):
    policy = ReconnectPolicy(**FAST, max_attempts=3)
    client = evws.reconnecting(f"ws://127.0.0.1:{closed_port()}/", policy, loop=loop)
    rec = Recorder(client)
    run_until(loop, lambda: rec.finished)
    assert [a for a, _, _ in rec.of("reconnect")] == [2, 3]
    assert all(isinstance(c, ConnectionRefusedError) for _, _, c in rec.of("reconnect"))
    ((error,),) = rec.of("finish")
    assert isinstance(error, ConnectionRefusedError)
    assert rec.of("connect") == [] and client.attempt == 3
    assert no_timers_or_watchers(loop)


def test_server_restarted_on_the_same_port(loop, sites):
    site = sites()
    client = evws.reconnecting(site.url, ReconnectPolicy(**FAST), loop=loop)
    rec = Recorder(client)
    run_until(loop, lambda: rec.of("connect"))
    first = client.connection
    port = site.port
    site.stop()
    # Down: a few refused connects, each waiting longer.
    run_until(loop, lambda: len(rec.of("reconnect")) >= 4)
    assert rec.of("disconnect") == [(first,)]
    delays = [d for _, d, _ in rec.of("reconnect")]
    assert delays == sorted(delays) and delays[0] < delays[-1]
    again = sites(port=port)  # SO_REUSEADDR: the same port at once
    run_until(loop, lambda: len(rec.of("connect")) == 2)
    conn = client.connection
    assert conn is not None and conn is not first and again.accepted >= 1
    conn.send("back")
    run_until(loop, lambda: rec.of("message"))
    assert rec.of("message")[0][0] is conn and rec.of("message")[0][1].decoded_body == "back"
    client.close()
    run_until(loop, lambda: rec.finished)
    assert rec.of("finish") == [(None,)] and conn.close_code == 1000


def test_close_during_backoff_cancels_the_timer(loop):
    policy = ReconnectPolicy(initial_delay=30.0, max_delay=30.0, jitter=0.0)
    client = evws.reconnecting(f"ws://127.0.0.1:{closed_port()}/", policy, loop=loop)
    rec = Recorder(client)
    run_until(loop, lambda: client.waiting)
    assert [(a, d) for a, d, _ in rec.of("reconnect")] == [(2, 30.0)]
    assert [t for _, _, t in loop._timers if t.active]  # the backoff timer
    client.close()
    assert rec.of("finish") == [(None,)]  # at once: nothing was open
    assert not client.waiting and no_timers_or_watchers(loop)
    client.close()  # again: nothing more
    loop.run_once(0.01)
    assert len(rec.of("finish")) == 1


def test_close_while_connected(loop, sites):
    site = sites()
    client = evws.reconnecting(site.url, ReconnectPolicy(**FAST), loop=loop)
    rec = Recorder(client)
    run_until(loop, lambda: rec.of("connect"))
    conn = client.connection
    client.close(4000, "bye")
    run_until(loop, lambda: rec.finished)
    assert conn.close_code == 4000  # echoed by the server
    assert rec.of("disconnect") == [(conn,)] and rec.of("reconnect") == []
    assert rec.of("finish") == [(None,)]
    site.stop()
    run_until(loop, lambda: no_timers_or_watchers(loop))


def test_close_while_connecting(loop, sites):
    site = sites()
    client = evws.reconnecting(site.url, ReconnectPolicy(**FAST), loop=loop)
    rec = Recorder(client)
    client.close()  # the first connect is in flight: cancelled, finish at once
    assert rec.of("connect") == [] and rec.of("finish") == [(None,)]
    site.stop()
    run_until(loop, lambda: no_timers_or_watchers(loop))


def test_a_stable_connection_resets_the_backoff(loop, sites):
    site = sites(mode="close")
    policy = ReconnectPolicy(**FAST, reset_after=0.0)  # every connection counts as stable
    client = evws.reconnecting(site.url, policy, loop=loop)
    rec = Recorder(client)
    run_until(loop, lambda: len(rec.of("reconnect")) >= 4)
    client.close()
    run_until(loop, lambda: rec.finished)
    assert [(a, d) for a, d, _ in rec.of("reconnect")][:4] == [(1, 0.01)] * 4


def test_a_permanent_refusal_is_not_retried(loop, sites):
    site = sites()
    site.server.handshake = lambda request, response: (_ for _ in ()).throw(ValueError("no"))
    client = evws.reconnecting(site.url, ReconnectPolicy(**FAST), loop=loop)
    rec = Recorder(client)
    run_until(loop, lambda: rec.finished)
    ((error,),) = rec.of("finish")
    assert isinstance(error, evws.HandshakeError) and error.status == 403
    assert rec.of("reconnect") == [] and site.accepted == 1


def test_retry_predicate_and_raising_listeners(loop, sites):
    site = sites(mode="close")
    seen = []

    def retry(error):
        seen.append(error)
        return len(seen) < 3

    client = evws.reconnecting(site.url, ReconnectPolicy(**FAST), loop=loop, retry=retry)
    client.on("connect", lambda conn: 1 / 0)  # logged, not fatal
    rec = Recorder(client)
    run_until(loop, lambda: rec.finished)
    assert len(rec.of("connect")) == 3 and len(seen) == 3
    assert rec.of("finish")[0][0] is seen[-1]


def test_bad_arguments_raise_at_once(loop):
    with pytest.raises(ValueError):
        evws.reconnecting("http://127.0.0.1/", loop=loop)
    with pytest.raises(TypeError):
        evws.reconnecting("ws://127.0.0.1:9/", loop=loop, no_such_option=1)
    for bad in (dict(initial_delay=0), dict(initial_delay=2, max_delay=1), dict(factor=0.5),
                dict(jitter=1.5), dict(jitter=-0.1), dict(max_attempts=0),
                dict(max_attempts=2.0), dict(reset_after=-1), dict(initial_delay="1")):
        with pytest.raises(ValueError):
            ReconnectPolicy(**bad)


def test_policy_delays():
    policy = ReconnectPolicy(initial_delay=1.0, max_delay=8.0, factor=2.0, jitter=0.5)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert policy.delay(3, 0.999) == pytest.approx(2.002)  # at most half taken off
    assert policy.delay(10_000) == 8.0  # no overflow
    with pytest.raises(ValueError):
        policy.delay(0)
    assert ReconnectPolicy(jitter=0.0).delay(1, 0.9) == 1.0


def test_retryable():
    from evws.protocol.http import Headers
    answered = Headers({"Content-Length": "0"})
    assert retryable(ConnectionRefusedError())
    assert retryable(evws.WaitTimeout("slow"))
    assert retryable(evws.HandshakeError("cut short", status=400))  # no answer: transport
    assert retryable(evws.HandshakeError("busy", status=503, headers=answered))
    assert retryable(evws.HandshakeError("later", status=429, headers=answered))
    assert not retryable(evws.HandshakeError("no", status=403, headers=answered))
    assert not retryable(evws.RedirectError("loop", status=302, headers=answered))
    assert not retryable(evws.ProxyError("auth", status=407))
    assert not retryable(evws.ProxyError("port", status=403))
    assert retryable(evws.ProxyError("origin down", status=502))
    assert retryable(evws.ProxyError("hung up"))  # no answer: transport


def test_start_only_once(loop):
    client = evws.reconnecting(f"ws://127.0.0.1:{closed_port()}/", ReconnectPolicy(**FAST),
                               loop=loop)
    with pytest.raises(RuntimeError):
        client.start()
    client.close()
    run_until(loop, lambda: client.finished)
    assert no_timers_or_watchers(loop)
