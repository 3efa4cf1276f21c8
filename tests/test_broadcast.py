"""evws.broadcast: one frame for many connections, fallbacks, and the slow-member policy.

Real connections: ``connection_pair`` (socketpairs, the real handshake) and
raw peers that read (or do not read) the server's bytes themselves.
"""

from __future__ import annotations

import socket

import pytest

import evws
from evws.broadcast import SLOW_CLOSE_CODE
from tests import wire
from tests.conftest import Peer, open_connection, run_until


def pairs(loop, n, **options):
    made = [evws.connection_pair(loop, ping_interval=None, **options) for _ in range(n)]
    return [s for s, _ in made], [c for _, c in made]


def collect(conns):
    got = {c: [] for c in conns}
    for c in conns:
        c.on("each_message", lambda conn, msg: got[conn].append((msg.opcode, msg.body)))
    return got


def close_all(loop, conns):
    for c in conns:
        c.close()
    run_until(loop, lambda: all(c.finished for c in conns))


def test_one_frame_for_every_plain_server_side_connection(loop):
    servers, clients = pairs(loop, 5, compression=None)
    got = collect(clients)
    assert all(s.accepts_prepared for s in servers)
    prepared = evws.prepare(["hello", b"\x00\x01", evws.Message("x" * 5000)])
    # The frames are serialised once: the chunks are the wire bytes of all three.
    assert b"".join(prepared.chunks) == (wire.frame(1, b"hello", mask=None)
                                         + wire.frame(2, b"\x00\x01", mask=None)
                                         + wire.frame(1, b"x" * 5000, mask=None))
    result = evws.broadcast(servers, prepared)
    assert result == (5, 0, 0, ())
    run_until(loop, lambda: all(len(v) == 3 for v in got.values()))
    for messages in got.values():
        assert messages == [(1, b"hello"), (2, b"\x00\x01"), (1, b"x" * 5000)]
    close_all(loop, servers + clients)


def test_the_bytes_on_the_wire_are_the_same_frame_for_each_member(loop):
    server = evws.Server(loop=loop, ping_interval=None, compression=None)
    members, peers = [], []
    for _ in range(3):
        conn, _, peer = open_connection(loop, server)
        members.append(conn)
        peers.append(peer)
    evws.broadcast(members, "same bytes")
    for peer in peers:
        assert peer.read_frames(1) == [(True, 1, b"same bytes")]
    for peer in peers:
        peer.close()
    run_until(loop, lambda: all(c.finished for c in members))


def test_deflate_and_client_side_connections_fall_back_to_send(loop):
    deflated, deflate_clients = pairs(loop, 2, compression="deflate")
    plain, plain_clients = pairs(loop, 2, compression=None)
    assert not any(s.accepts_prepared for s in deflated)
    assert all(s.accepts_prepared for s in plain)
    assert not any(c.accepts_prepared for c in plain_clients)  # they mask
    got = collect(deflate_clients + plain_clients)
    got_by_servers = collect(plain)
    assert evws.broadcast(deflated + plain, "to clients").sent == 4
    # Client-side members: frames must be masked, else the server fails them (1002).
    assert evws.broadcast(plain_clients, b"to servers").sent == 2
    run_until(loop, lambda: all(v == [(1, b"to clients")] for v in got.values())
              and all(v == [(2, b"to servers")] for v in got_by_servers.values()))
    assert all(s.is_write_open for s in plain)
    close_all(loop, deflated + plain + deflate_clients + plain_clients)


def test_closed_members_are_passed_over_and_bad_input_is_refused(loop):
    servers, clients = pairs(loop, 2, compression=None)
    servers[0].close()
    assert evws.broadcast(servers, "x").sent == 1
    with pytest.raises(ValueError):
        evws.broadcast(servers, "x", policy="buffer")
    with pytest.raises(TypeError):
        evws.broadcast(servers, 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        evws.prepare([evws.Message(b"", opcode=9)])
    with pytest.raises(evws.ConnectionClosed):
        servers[0].send_prepared([b"\x81\x00"])
    close_all(loop, servers + clients)


def non_reader(loop, server):
    """A member whose peer completes the handshake and then never reads."""
    ours, theirs = socket.socketpair()
    for s in (ours, theirs):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    peer = Peer(loop, theirs)
    cv = server.establish(ours)
    peer.send(wire.upgrade_request())
    conn = cv.recv(timeout=5)
    peer.read_response_head()
    return conn, peer


@pytest.mark.parametrize("policy", ["close", "skip"])
def test_a_member_that_does_not_read_never_delays_the_others(loop, policy):
    server = evws.Server(loop=loop, ping_interval=None, compression=None, close_timeout=0.5)
    slow, slow_peer = non_reader(loop, server)
    slow.high_water = 32 * 1024
    readers, clients = pairs(loop, 3, compression=None)
    got = collect(clients)
    payload = b"m" * 1000
    results = []
    for i in range(300):  # 300 KB: far beyond the slow member's kernel buffers + high water
        results.append(evws.broadcast([slow] + readers, payload + str(i).encode(), policy=policy))
        # The slow member's queue stays bounded by high water plus one message.
        assert slow.buffered_amount <= slow.high_water + 1100
        loop.run_once(0)
    run_until(loop, lambda: all(len(v) == 300 for v in got.values()))
    for messages in got.values():
        assert [m[1] for m in messages] == [payload + str(i).encode() for i in range(300)]
    slowed = [r for r in results if r.slow]
    assert slowed and all(r.slow == (slow,) for r in slowed)
    if policy == "close":
        assert sum(r.closed for r in results) == 1  # closed once, then passed over
        run_until(loop, lambda: slow.finished)  # close_timeout: its peer never answers
        assert slow.protocol.close_sent == (SLOW_CLOSE_CODE, "too slow: messages were dropped")
    else:
        assert sum(r.skipped for r in results) == len(slowed) > 1
        assert slow.is_write_open
        # Once it reads again, it gets what was queued and then the next messages.
        slow_peer.pump(lambda: len(slow_peer.buffer) > 20000)
        run_until(loop, lambda: slow.buffered_amount < slow.high_water)
        assert evws.broadcast([slow], "after").sent == 1
    slow_peer.close()
    close_all(loop, readers + clients)
    run_until(loop, lambda: slow.finished)


def test_a_member_without_flow_control_is_never_slow(loop):
    servers, clients = pairs(loop, 1, compression=None)
    servers[0].high_water = None
    clients[0].stream.pause_reading()
    for _ in range(50):
        assert evws.broadcast(servers, b"z" * 10000).sent == 1
    assert servers[0].buffered_amount > 0
    clients[0].stream.resume_reading()
    close_all(loop, servers + clients)


def test_the_broadcasts_of_one_turn_reach_each_member_in_one_send(loop, monkeypatch):
    """Five broadcasts in one turn: the members get the five frames, in order, from one
    C loop of sends (one send each) when the next turn begins."""
    from evws.reactor import stream as stream_module
    calls = []
    real = stream_module._send_each

    def counting(fds, data):
        calls.append((len(fds), len(data)))
        return real(fds, data)

    monkeypatch.setattr(stream_module, "_send_each", counting)
    server = evws.Server(loop=loop, ping_interval=None, compression=None)
    members, peers = [], []
    for _ in range(4):
        conn, _, peer = open_connection(loop, server)
        members.append(conn)
        peers.append(peer)
    texts = [f"message {i}" for i in range(5)]
    for text in texts:
        assert evws.broadcast(members, text).sent == 4
    assert calls == []   # held until the next turn
    for peer in peers:
        assert peer.read_frames(5) == [(True, 1, t.encode()) for t in texts]
    assert calls == [(4, sum(len(wire.frame(1, t.encode(), mask=None)) for t in texts))]
    for peer in peers:
        peer.close()
    run_until(loop, lambda: all(c.finished for c in members))


def test_what_one_turn_holds_does_not_make_a_member_slow(loop):
    """40 KiB broadcast in one turn to members whose high water is 16 KiB: none of it was
    refused by a kernel, so nobody is slow; it all arrives."""
    servers, clients = pairs(loop, 3, compression=None)
    got = collect(clients)
    for s in servers:
        s.high_water = 16 * 1024
    results = [evws.broadcast(servers, b"%03d" % i + b"p" * 4093) for i in range(10)]
    assert all(r == (3, 0, 0, ()) for r in results)
    assert all(s.buffered_amount >= 40 * 1024 and s.stream.backlog == 0 for s in servers)
    run_until(loop, lambda: all(len(v) == 10 for v in got.values()))
    for messages in got.values():
        assert [m[1][:3] for m in messages] == [b"%03d" % i for i in range(10)]
    assert all(s.is_write_open for s in servers)
    close_all(loop, servers + clients)


def test_a_send_behind_held_frames_pauses_reading_and_the_flush_resumes_it(loop):
    """Flow control sees held bytes through send(): past high water the connection stops
    reading, and the flush at the next turn (on_drain) lets it read again."""
    servers, clients = pairs(loop, 1, compression=None)
    server, client = servers[0], clients[0]
    server.high_water, server.low_water = 1024, 0
    got_server = collect([server])
    got_client = collect([client])
    evws.broadcast([server], b"b" * 900)
    server.send(b"s" * 500)   # joins the held frame: 1,400+ bytes reported, past high water
    assert server.buffered_amount > server.high_water and server.stream.backlog == 0
    assert server._read_paused
    client.send("are you reading?")
    run_until(loop, lambda: got_server[server] == [(1, b"are you reading?")])
    assert not server._read_paused
    run_until(loop, lambda: len(got_client[client]) == 2)
    assert got_client[client] == [(2, b"b" * 900), (2, b"s" * 500)]
    close_all(loop, servers + clients)


def test_a_broadcast_right_before_stop_is_on_the_wire_when_run_returns(loop):
    """The held frames go out at the end of the turn, even the one that stops the loop."""
    import select
    server = evws.Server(loop=loop, ping_interval=None, compression=None)
    members, peers = [], []
    for _ in range(2):
        conn, _, peer = open_connection(loop, server)
        members.append(conn)
        peers.append(peer)

    def last_words():
        evws.broadcast(members, "bye")
        loop.stop()

    loop.call_soon(last_words)
    loop.run()
    for peer in peers:   # read without running the loop again
        assert select.select([peer.sock], [], [], 5)[0]
        assert peer.sock.recv(100) == wire.frame(1, b"bye", mask=None)
    for peer in peers:
        peer.close()
    run_until(loop, lambda: all(c.finished for c in members))
