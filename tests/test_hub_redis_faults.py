"""evws.Hub over Redis when things break: dropped connections, SIGKILLed and restarted Redis.

Two hubs in this process, each with its own two Redis connections: ``A``
has the members, ``B`` publishes a numbered stream of messages. What is
checked is what members receive: every message exactly once and in order
where the room kind promises it, and ``recovered=False`` reported where it
cannot (Redis restarted without persistence).
"""

from __future__ import annotations

import gc
import os

import pytest

import evws
from tests.conftest import run_until
from tests.redis_server import serve
from tests.test_hub_redis import FAST, finish, make_hub, member


@pytest.fixture
def redis():
    yield from serve()


def fds() -> int:
    gc.collect()  # an unreachable socket object still holds its fd until collected
    return len(os.listdir("/proc/self/fd"))


def numbers(got: list[str]) -> list[int]:
    return [int(m) for m in got]


def ready(loop, redis, hub_pub, room, members):
    """Wait until the members' process listens: subscribed, and a first message went round."""
    run_until(loop, lambda: redis.numsub(f"evws:room:{room}") == 1)
    hub_pub.publish(room, "-1")
    run_until(loop, lambda: all(got == ["-1"] for _, _, got in members))
    for _, _, got in members:
        got.clear()


def recoveries(hub):
    events = []
    hub.on("recovery", lambda h, room, recovered, fetched, reason:
           events.append((room, recovered, fetched, reason)))
    return events


def test_subscriber_connection_dropped_mid_stream_recoverable_room_exactly_once(loop,
                                                                               redis):
    hub_a = make_hub(loop, redis.url, recoverable=True)
    hub_b = make_hub(loop, redis.url, recoverable=True)
    events = recoveries(hub_a)
    members = [member(loop) for _ in range(3)]
    for conn, _, _ in members:
        hub_a.join(conn, "ledger")
    ready(loop, redis, hub_b, "ledger", members)
    tag = hub_a.broker._sub.name
    for i in range(300):
        hub_b.publish("ledger", str(i))
        if i == 100:
            # The subscriber's connection dies; B goes on publishing meanwhile.
            run_until(loop, lambda: all(len(got) >= 50 for _, _, got in members))
            assert redis.kill_clients(tag) == 1
        if i % 5 == 0:
            loop.run_once(0)
    run_until(loop, lambda: all(len(got) >= 300 for _, _, got in members))
    loop.run_once(0.05)
    for _, _, got in members:
        assert numbers(got) == list(range(300))  # exactly once, in order
    assert len(events) == 1
    room, recovered, fetched, reason = events[0]
    assert (room, recovered, reason) == ("ledger", True, "")
    assert fetched > 0  # the gap was really closed from the stream
    assert hub_a.broker._sub.connections == 2
    finish(loop, *[c for m in members for c in m[:2]])
    hub_a.close()
    hub_b.close()


def test_plain_room_subscriber_drop_is_at_most_once_and_reported_unhealthy(loop, redis):
    hub_a = make_hub(loop, redis.url)
    hub_b = make_hub(loop, redis.url)
    health = []
    hub_a.on("unhealthy", lambda h, error: health.append("down"))
    hub_a.on("healthy", lambda h: health.append("up"))
    conn, client, got = member(loop)
    hub_a.join(conn, "chat")
    run_until(loop, lambda: redis.numsub("evws:room:chat") == 1)
    hub_b.publish("chat", "0")
    run_until(loop, lambda: got == ["0"])
    assert redis.kill_clients(hub_a.broker._sub.name) == 1
    run_until(loop, lambda: health == ["down", "up"])
    run_until(loop, lambda: redis.numsub("evws:room:chat") == 1)  # resubscribed
    hub_b.publish("chat", "1")
    run_until(loop, lambda: got == ["0", "1"])
    finish(loop, conn, client)
    hub_a.close()
    hub_b.close()


def test_a_resent_publish_is_delivered_once(loop, redis):
    """What happens when the publisher's connection drops with publishes in flight."""
    for recoverable in (False, True):
        hub = make_hub(loop, redis.url, recoverable=recoverable)
        conn, client, got = member(loop)
        hub.join(conn, "r")
        hub.publish("r", "0")
        run_until(loop, lambda got=got: got == ["0"])
        broker = hub.broker
        hub.publish("r", "1")
        _, command, _ = broker._pending[-1] if broker._pending else broker._in_flight[-1]
        run_until(loop, lambda got=got: got == ["0", "1"])
        # The same bytes again, as after a reconnect that could not know whether
        # Redis had run them: Redis publishes them (and XADDs a second entry).
        broker._in_flight.append(("r", command, 0))
        broker._cmd.send_packed(command, broker._published)
        hub.publish("r", "2")
        run_until(loop, lambda got=got: got[-1:] == ["2"])
        loop.run_once(0.05)
        assert got == ["0", "1", "2"]
        finish(loop, conn, client)
        hub.close()


def test_publisher_connection_dropped_during_a_burst(loop, redis):
    hub_a = make_hub(loop, redis.url, recoverable={"r"})
    hub_b = make_hub(loop, redis.url, recoverable={"r"})
    plain, plain_client, got_plain = member(loop)
    rec, rec_client, got_rec = member(loop)
    hub_a.join(plain, "p")
    hub_a.join(rec, "r")
    ready(loop, redis, hub_b, "r", [(rec, rec_client, got_rec)])
    ready(loop, redis, hub_b, "p", [(plain, plain_client, got_plain)])
    for i in range(400):
        hub_b.publish("p", str(i))
        hub_b.publish("r", str(i))
        if i == 200:
            loop.run_once(0)
            redis.kill_clients(hub_b.broker._cmd.name)
    run_until(loop, lambda: len(got_plain) >= 400 and len(got_rec) >= 400)
    loop.run_once(0.05)
    # Nothing lost (unanswered publishes are resent), nothing twice (seq check).
    assert numbers(got_plain) == list(range(400))
    assert numbers(got_rec) == list(range(400))
    assert hub_b.broker._cmd.connections == 2
    finish(loop, plain, plain_client, rec, rec_client)
    hub_a.close()
    hub_b.close()


def test_publish_while_redis_is_down_is_queued_then_delivered(loop, redis):
    hub_a = make_hub(loop, redis.url)
    hub_b = make_hub(loop, redis.url)
    conn, client, got = member(loop)
    hub_a.join(conn, "q")
    redis.kill()
    run_until(loop, lambda: not hub_a.healthy and not hub_b.healthy)
    for i in range(50):
        hub_a.publish("q", str(i))  # A's own members must get these after the restart
    assert hub_a.broker.pending == 50
    redis.start()
    run_until(loop, lambda: len(got) >= 50)
    loop.run_once(0.05)
    assert numbers(got) == list(range(50))
    assert hub_a.broker.pending == 0
    finish(loop, conn, client)
    hub_a.close()
    hub_b.close()


def test_redis_killed_and_restarted_with_persistence_exactly_once(loop, redis):
    redis.restart(appendonly=True)
    baseline = fds()
    hub_a = make_hub(loop, redis.url, recoverable=True)
    hub_b = make_hub(loop, redis.url, recoverable=True)
    events = recoveries(hub_a)
    members = [member(loop) for _ in range(2)]
    for conn, _, _ in members:
        hub_a.join(conn, "orders")
    ready(loop, redis, hub_b, "orders", members)
    for i in range(400):
        hub_b.publish("orders", str(i))
        if i == 150:
            redis.kill()  # SIGKILL mid-stream, publishes in flight
            run_until(loop, lambda: not hub_b.healthy)
        if i == 250:
            redis.start(appendonly=True)  # the AOF brings the stream back
        if i % 4 == 0:
            loop.run_once(0)
    run_until(loop, lambda: all(len(got) >= 400 for _, _, got in members), timeout=15)
    loop.run_once(0.05)
    for _, _, got in members:
        assert numbers(got) == list(range(400))
    assert hub_a.broker.restarts == 1
    assert [(e[0], e[1]) for e in events] == [("orders", True)]
    finish(loop, *[c for m in members for c in m[:2]])
    hub_a.close()
    hub_b.close()
    loop.run_once(0.05)
    assert fds() == baseline


def test_redis_restarted_without_persistence_reports_recovered_false(loop, redis):
    baseline = fds()
    hub_a = make_hub(loop, redis.url, recoverable=True)
    hub_b = make_hub(loop, redis.url, recoverable=True)
    events = recoveries(hub_a)
    conn, client, got = member(loop)
    hub_a.join(conn, "orders")
    ready(loop, redis, hub_b, "orders", [(conn, client, got)])
    for i in range(100):
        hub_b.publish("orders", str(i))
    run_until(loop, lambda: len(got) == 100)
    redis.restart()  # SIGKILL, then a fresh, empty Redis on the same port
    for i in range(100, 150):
        hub_b.publish("orders", str(i))
    run_until(loop, lambda: len(got) >= 150 and events, timeout=10)
    loop.run_once(0.05)
    assert numbers(got) == list(range(150))  # nothing was in flight: nothing lost here
    assert len(events) == 1
    room, recovered, fetched, reason = events[0]
    assert room == "orders" and recovered is False and "run_id" in reason
    assert hub_a.broker.restarts == 1
    finish(loop, conn, client)
    hub_a.close()
    hub_b.close()
    loop.run_once(0.05)
    assert fds() == baseline


def test_close_releases_everything_while_redis_is_down(loop, redis):
    baseline = fds()
    redis.kill()
    broker = evws.RedisBroker(redis.url, loop=loop, **FAST)
    hub = evws.Hub(broker, loop=loop)
    run_until(loop, lambda: broker._cmd.last_error is not None
              and broker._sub.last_error is not None)
    hub.close()
    # A connect attempt may still be in flight: it closes its socket when it ends.
    run_until(loop, lambda: fds() == baseline)
