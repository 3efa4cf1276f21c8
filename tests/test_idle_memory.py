"""Python heap held by an idle server connection (issue 4: <= 3 KiB RSS each at 5000).

``benchmarks/run.py -n 5000`` measures RSS against the real example; this is the
fast in-process guard: open connections over socketpairs with the example's
listeners, and count what stays allocated per connection with ``tracemalloc``.
"""

from __future__ import annotations

import gc
import socket
import tracemalloc

import evws
from evws.protocol.handshake import generate_key
from tests import wire
from tests.conftest import run_until

# Python heap per idle connection, in bytes. It was ~3.7 KiB before the
# Request, headers, keepalive and listeners were made lean, ~2.4 KiB after;
# RSS adds roughly 0.4 KiB (allocator slack, the fd's watcher) on top.
BUDGET = 2800
N = 300


def echo(connection, message):
    connection.send(message)


def finish(connection):
    pass


def test_idle_connection_heap_stays_under_budget(loop):
    server = evws.Server(loop=loop)  # the defaults: keepalive on, compression offered
    peers = []

    def established(cv):
        conn = cv.recv()
        conn.on("each_message", echo)
        conn.on("finish", finish)

    def accept():
        sock, peer = socket.socketpair()
        peer.setblocking(False)
        peer.sendall(wire.upgrade_request(key=generate_key()))
        server.establish(sock).cb(established)
        peers.append(peer)

    def settle(count):
        run_until(loop, lambda: len(server.connections) == count
                  and all(c._keepalive is not None for c in server.connections))
        for peer in peers:
            try:
                while peer.recv(65536):
                    pass
            except BlockingIOError:
                pass

    for _ in range(20):  # warm up: first-use caches, interned strings, the ticker
        accept()
    settle(20)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(N):
            accept()
        settle(20 + N)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # The test's own peer socket objects and list are not the server's.
    peer_sockets = N * (socket.socket.__basicsize__ + 16 + 8)
    per_connection = (after - before - peer_sockets) / N
    try:
        assert per_connection < BUDGET, f"{per_connection:.0f} B of Python heap per idle connection"
    finally:
        for peer in peers:
            peer.close()
        run_until(loop, lambda: not server.connections)
