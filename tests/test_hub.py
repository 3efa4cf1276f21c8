"""evws.Hub with the in-process broker: rooms, membership, delivery, finish.

Real connections (``connection_pair``); Redis is in tests/test_hub_redis*.py.
"""

from __future__ import annotations

import pytest

import evws
from tests.conftest import run_until


def member(loop, **options):
    server_side, client_side = evws.connection_pair(loop, ping_interval=None, compression=None,
                                                    **options)
    got: list[str] = []
    client_side.on("each_message", lambda c, m: got.append(m.decoded_body if m.is_text else m.body))
    return server_side, client_side, got


def test_publish_reaches_every_member_once_on_a_later_turn(loop):
    hub = evws.Hub(loop=loop)
    a, ca, got_a = member(loop)
    b, cb, got_b = member(loop)
    c, cc, got_c = member(loop)
    hub.join(a, "lobby")
    hub.join(b, "lobby")
    hub.join(b, "lobby")  # twice is harmless
    hub.join(c, "other")
    assert hub.members("lobby") == [a, b]
    assert sorted(hub.rooms()) == ["lobby", "other"]
    assert hub.rooms(b) == ["lobby"]
    hub.publish("lobby", "one")
    hub.publish("lobby", b"two")
    hub.publish("nobody-here", "lost in the void")
    assert got_a == []  # not inside publish: on a later loop turn
    run_until(loop, lambda: len(got_a) == 2 and len(got_b) == 2)
    assert got_a == got_b == ["one", b"two"]
    assert got_c == []
    hub.leave(b, "lobby")
    hub.publish("lobby", "three")
    run_until(loop, lambda: len(got_a) == 3)
    loop.run_once(0.01)
    assert got_b == ["one", b"two"]
    assert hub.healthy
    for conn in (a, b, c, ca, cb, cc):
        conn.close()
    run_until(loop, lambda: all(x.finished for x in (a, b, c)))
    hub.close()


def test_members_leave_their_rooms_when_they_finish(loop):
    hub = evws.Hub(loop=loop)
    a, ca, _ = member(loop)
    b, cb, got_b = member(loop)
    for room in ("r1", "r2"):
        hub.join(a, room)
    hub.join(b, "r1")
    # A user removing every finish listener cannot keep a dead member in a room.
    a.remove_all_listeners()
    ca.close()
    run_until(loop, lambda: a.finished)
    assert hub.members("r1") == [b]
    assert hub.rooms() == ["r1"]  # r2 lost its last member
    assert hub.rooms(a) == []
    hub.publish("r1", "still here")
    run_until(loop, lambda: got_b == ["still here"])
    with pytest.raises(evws.ConnectionClosed):
        hub.join(a, "r1")
    cb.close()
    run_until(loop, lambda: b.finished)
    assert hub.rooms() == []
    hub.close()


def test_bad_input_is_refused(loop):
    hub = evws.Hub(loop=loop)
    a, ca, _ = member(loop)
    with pytest.raises(TypeError):
        hub.join(a, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        hub.publish("r", 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        hub.publish("r", evws.Message(b"", opcode=9))
    with pytest.raises(ValueError):
        evws.Hub(loop=loop, slow_policy="wait")
    with pytest.raises(ValueError):
        evws.Hub(hub.broker, loop=loop)  # a broker serves one hub
    hub.close()
    with pytest.raises(RuntimeError):
        hub.publish("r", "x")
    a.close()
    ca.close()
    run_until(loop, lambda: a.finished)


def test_a_slow_member_is_closed_and_reported(loop):
    hub = evws.Hub(loop=loop)
    slow, slow_client, _ = member(loop)
    fast, fast_client, got = member(loop)
    slow.high_water = 16 * 1024
    slow_client.stream.pause_reading()  # this member does not read
    events = []
    hub.on("slow", lambda h, conn, room, action: events.append((conn, room, action)))
    hub.join(slow, "feed")
    hub.join(fast, "feed")
    for i in range(400):
        hub.publish("feed", f"{i:04d}" + "x" * 996)
        if i % 10 == 9:
            loop.run_once(0)
    run_until(loop, lambda: len(got) == 400)
    assert [m[:4] for m in got] == [f"{i:04d}" for i in range(400)]
    assert events == [(slow, "feed", "closed")]
    assert slow.buffered_amount < slow.high_water + 12 * 1024  # one batch beyond high water
    assert not slow.is_write_open
    slow_client.stream.resume_reading()
    run_until(loop, lambda: slow.finished)
    assert slow_client.close_code == 1013
    assert hub.members("feed") == [fast]
    fast.close()
    fast_client.close()
    run_until(loop, lambda: fast.finished)
    hub.close()


def test_recoverable_spec(loop):
    assert evws.Hub(loop=loop, recoverable=True).is_recoverable("x")
    assert not evws.Hub(loop=loop).is_recoverable("x")
    hub = evws.Hub(loop=loop, recoverable={"a", "b"})
    assert hub.is_recoverable("a") and not hub.is_recoverable("c")
    hub = evws.Hub(loop=loop, recoverable=lambda room: room.startswith("log:"))
    assert hub.is_recoverable("log:1") and not hub.is_recoverable("chat")
