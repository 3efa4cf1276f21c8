"""evws.Hub over a real redis-server: rooms across hubs, subscriptions, login, keepalive.

Each test starts its own redis-server (tests/redis_server.py: free loopback
port, no persistence) and two hubs with their own Redis connections in this
process; tests/test_hub_processes.py runs a second real process. Faults
(kills, restarts, drops) are in tests/test_hub_redis_faults.py.
"""

from __future__ import annotations

import os
import signal
import socket

import pytest

import evws
from evws.brokers.redis_link import parse_redis_url
from tests.conftest import run_until
from tests.redis_server import serve

FAST = dict(backoff_initial=0.02, backoff_max=0.2)


@pytest.fixture
def redis():
    yield from serve()


@pytest.fixture
def redis_with_password():
    yield from serve(password="s3cret/p@ss word")


def make_hub(loop, url, **options):
    broker_options = {**FAST, **options.pop("broker", {})}
    hub = evws.Hub(evws.RedisBroker(url, loop=loop, **broker_options), loop=loop, **options)
    run_until(loop, lambda: hub.healthy)
    return hub


def member(loop):
    server_side, client_side = evws.connection_pair(loop, ping_interval=None, compression=None)
    got: list[str] = []
    client_side.on("each_message", lambda c, m: got.append(m.decoded_body))
    return server_side, client_side, got


def finish(loop, *conns):
    for c in conns:
        c.close()
    run_until(loop, lambda: all(c.finished for c in conns))


def test_url_parsing():
    assert parse_redis_url("redis://h:1234/5") == ("h", 1234, 5, None, None)
    assert parse_redis_url("redis://:p%40ss@127.0.0.1") == ("127.0.0.1", 6379, 0, None, "p@ss")
    assert parse_redis_url("redis://user:pw@[::1]:7000/0") == ("::1", 7000, 0, "user", "pw")
    for bad in ("http://h", "rediss://h", "redis://h:port", "redis://h/db"):
        with pytest.raises(evws.BrokerError):
            parse_redis_url(bad)


def test_a_message_reaches_the_members_of_both_hubs_once(loop, redis):
    hub_a = make_hub(loop, redis.url)
    hub_b = make_hub(loop, redis.url)
    a1, ca1, got_a1 = member(loop)
    a2, ca2, got_a2 = member(loop)
    b1, cb1, got_b1 = member(loop)
    hub_a.join(a1, "chat")
    hub_a.join(a2, "chat")
    hub_b.join(b1, "chat")
    # Plain rooms are at most once: publish once both processes listen.
    run_until(loop, lambda: redis.numsub("evws:room:chat") == 2)
    for i in range(20):
        (hub_a if i % 2 else hub_b).publish("chat", f"m{i}")
    expected = [f"m{i}" for i in range(20)]
    run_until(loop, lambda: len(got_a1) >= 20 and len(got_a2) >= 20 and len(got_b1) >= 20)
    # A process does not deliver its own message twice: each exactly once.
    loop.run_once(0.05)
    # Every member sees the same order (Redis's), whoever published.
    assert got_a1 == got_a2 == got_b1
    assert sorted(got_a1) == sorted(expected)
    # From one publisher, publish order.
    assert [m for m in got_a1 if int(m[1:]) % 2] == [m for m in expected if int(m[1:]) % 2]
    finish(loop, a1, a2, b1, ca1, ca2, cb1)
    hub_a.close()
    hub_b.close()


def test_subscribed_on_first_join_and_unsubscribed_on_last_leave(loop, redis):
    hub_a = make_hub(loop, redis.url)
    hub_b = make_hub(loop, redis.url)
    a1, ca1, got_a1 = member(loop)
    a2, ca2, _ = member(loop)
    channel = "evws:room:news"
    assert redis.numsub(channel) == 0
    hub_a.join(a1, "news")
    run_until(loop, lambda: redis.numsub(channel) == 1)
    hub_a.join(a2, "news")  # a second local member: no second subscription
    loop.run_once(0.05)
    assert redis.numsub(channel) == 1
    # hub_b has no member of "news": that traffic never reaches its process.
    hub_b.publish("news", "from b")
    run_until(loop, lambda: got_a1 == ["from b"])
    assert redis.channels() == {channel.encode()}
    hub_a.leave(a1, "news")
    loop.run_once(0.05)
    assert redis.numsub(channel) == 1
    ca2.close()  # the last member finishes: unsubscribed
    run_until(loop, lambda: a2.finished)
    run_until(loop, lambda: redis.numsub(channel) == 0)
    assert redis.channels() == set()
    # Join, leave, join again in one go: subscribed in the end.
    hub_a.join(a1, "news")
    hub_a.leave(a1, "news")
    hub_a.join(a1, "news")
    hub_a.publish("news", "again")  # waits for hub_a's last SUBSCRIBE to be confirmed
    run_until(loop, lambda: got_a1 == ["from b", "again"])
    assert redis.numsub(channel) == 1
    finish(loop, a1, ca1)
    hub_a.close()
    hub_b.close()


def test_a_member_gets_what_its_own_process_publishes_right_after_joining(loop, redis):
    hub = make_hub(loop, redis.url)
    a, ca, got = member(loop)
    hub.join(a, "fresh")
    hub.publish("fresh", "first")  # SUBSCRIBE not confirmed yet: the publish waits for it
    run_until(loop, lambda: got == ["first"])
    finish(loop, a, ca)
    hub.close()


def test_password_and_database(loop, redis_with_password):
    server = redis_with_password
    url = server.url.replace("/0", "/3")
    hub_a = make_hub(loop, url)
    hub_b = make_hub(loop, url)
    a, ca, got = member(loop)
    hub_a.join(a, "secret")
    run_until(loop, lambda: server.command("PUBSUB", "NUMSUB", "evws:room:secret")[1] == 1)
    hub_b.publish("secret", "hush")
    run_until(loop, lambda: got == ["hush"])
    ours = [c for c in server.clients() if c.get("name", "").startswith("evws-")]
    assert len(ours) == 4 and all(c["db"] == "3" for c in ours)
    finish(loop, a, ca)
    hub_a.close()
    hub_b.close()


def test_a_wrong_password_keeps_the_hub_unhealthy_and_publishes_queued(loop,
                                                                       redis_with_password):
    url = redis_with_password.url.replace("p%40ss", "wrong")
    broker = evws.RedisBroker(url, loop=loop, **FAST)
    hub = evws.Hub(broker, loop=loop)
    run_until(loop, lambda: broker._cmd.connections == 0 and broker._cmd.last_error is not None)
    assert "AUTH" in str(broker._cmd.last_error)
    assert not hub.healthy
    hub.publish("r", "waits")
    assert broker.pending == 1
    hub.close()


def test_wait_connected_returns_once_both_connections_are_up(loop, redis):
    broker = evws.RedisBroker(redis.url, loop=loop, **FAST)
    hub = evws.Hub(broker, loop=loop)
    broker.wait_connected(timeout=5)
    assert hub.healthy
    broker.wait_connected(timeout=0)  # already up: returns at once
    hub.close()
    with pytest.raises(evws.BrokerError, match="closed"):
        broker.wait_connected()


def test_wait_connected_raises_the_first_failure_and_the_broker_keeps_trying(
        loop, redis_with_password):
    url = redis_with_password.url.replace("p%40ss", "wrong")
    broker = evws.RedisBroker(url, loop=loop, **FAST)
    hub = evws.Hub(broker, loop=loop)
    with pytest.raises(evws.BrokerError,
                       match=rf"cannot reach Redis at 127\.0\.0\.1:{redis_with_password.port}: "
                             r".*AUTH"):
        broker.wait_connected(timeout=5)
    assert not hub.healthy
    attempts = broker._cmd.last_error
    run_until(loop, lambda: broker._cmd.last_error is not attempts)  # reconnecting
    # A second wait reports a new failure, not the one already seen.
    with pytest.raises(evws.BrokerError, match="AUTH"):
        broker.wait_connected(timeout=5)
    hub.close()


def test_wait_connected_refused_and_silent(loop):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    broker = evws.RedisBroker(f"redis://127.0.0.1:{port}/0", loop=loop, **FAST)
    with pytest.raises(evws.BrokerError, match=rf"127\.0\.0\.1:{port}: .*refused"):
        broker.wait_connected(timeout=5)
    broker.close()
    # Listening but never answering: the timeout, saying so.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        broker = evws.RedisBroker(f"redis://127.0.0.1:{port}/0", loop=loop, **FAST)
        with pytest.raises(evws.BrokerError, match=r"no answer within 0\.2 s"):
            broker.wait_connected(timeout=0.2)
        broker.close()


def test_publish_beyond_the_bound_fails_loudly(loop):
    # Nothing listens on this port: Redis is "down" from the start.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    broker = evws.RedisBroker(f"redis://127.0.0.1:{port}/0", loop=loop, max_pending=5, **FAST)
    hub = evws.Hub(broker, loop=loop)
    for i in range(5):
        hub.publish("r", f"{i}")
    with pytest.raises(evws.BrokerUnavailable) as info:
        hub.publish("r", "one too many")
    assert info.value.pending == 5
    broker.max_pending_bytes = 10
    broker.max_pending = 100
    with pytest.raises(evws.BrokerUnavailable):
        hub.publish("r", "x" * 11)
    hub.close()


def test_keepalive_pings_and_socket_options(loop, redis):
    hub = make_hub(loop, redis.url, broker=dict(ping_interval=0.05))
    broker = hub.broker
    for link in (broker._sub, broker._cmd):
        sock = link._stream.sock
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30

    def pings() -> int:
        stats = redis.command("INFO", "commandstats").decode()
        line = [x for x in stats.splitlines() if x.startswith("cmdstat_ping:")]
        return int(line[0].split("calls=")[1].split(",")[0]) if line else 0
    a, ca, _ = member(loop)
    hub.join(a, "idle")  # the subscriber pings in subscribed mode too
    run_until(loop, lambda: pings() >= 6)
    assert hub.healthy
    finish(loop, a, ca)
    hub.close()


def test_a_hung_redis_is_detected_by_the_ping_and_the_hub_recovers(loop, redis):
    hub = make_hub(loop, redis.url, broker=dict(ping_interval=0.1, ping_timeout=0.3))
    events = []
    hub.on("unhealthy", lambda h, error: events.append(("down", type(error).__name__)))
    hub.on("healthy", lambda h: events.append(("up", None)))
    a, ca, got = member(loop)
    hub.join(a, "r")
    os.kill(redis.proc.pid, signal.SIGSTOP)  # alive, silent: what a dead middlebox looks like
    try:
        run_until(loop, lambda: not hub.healthy)
        assert events[0] == ("down", "TimeoutError")
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    run_until(loop, lambda: hub.healthy and events[-1] == ("up", None))
    hub.publish("r", "back")
    run_until(loop, lambda: got == ["back"])
    finish(loop, a, ca)
    hub.close()


def test_an_error_reply_to_a_publish_is_reported(loop, redis):
    hub = make_hub(loop, redis.url, recoverable=True)
    failures = []
    hub.on("publish_failed", lambda h, room, error: failures.append((room, str(error))))
    redis.command("SET", "evws:stream:broken", "not a stream")  # XADD will refuse it
    hub.publish("broken", "x")
    run_until(loop, lambda: failures)
    assert failures[0][0] == "broken" and "WRONGTYPE" in failures[0][1]
    assert hub.healthy and hub.broker.pending == 0
    hub.close()
