"""The evws client against a real third-party server: ``websockets.sync.server`` in a thread.

The evws side runs on a private loop in the test's thread; every wait is bounded.
"""

from __future__ import annotations

import threading

import pytest

import evws
from tests.conftest import TIMEOUT, run_until

sync_server = pytest.importorskip("websockets.sync.server")


def handler(ws):
    """Echo, plus a few commands that make the server do things to the client."""
    for message in ws:
        if message == "fragments please":
            ws.send(["frag", "men", "ted"])
        elif message == "ping me":
            ws.ping(b"server ping")
            ws.send("pinged")
        elif message == "close 4001":
            ws.close(4001, "server says bye")
        elif message == "subprotocol?":
            ws.send(str(ws.subprotocol))
        else:
            ws.send(message)


@pytest.fixture(scope="module")
def ws_server():
    with sync_server.serve(handler, "127.0.0.1", 0, max_size=None,
                           subprotocols=["chat", "superchat"]) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server.socket.getsockname()[1]
        server.shutdown()
        thread.join(TIMEOUT)


OPEN: list = []


@pytest.fixture(autouse=True)
def drop_connections():
    """Abort what a test left open, so the server's shutdown need not wait for it."""
    yield
    while OPEN:
        OPEN.pop().stream.abort()


def open_conn(loop, port, **options):
    options.setdefault("subprotocols", ["chat"])  # this server insists on one
    conn = evws.connect(f"ws://127.0.0.1:{port}/", loop=loop, **options).recv(timeout=TIMEOUT)
    OPEN.append(conn)
    messages, finished = [], []
    conn.on("each_message", lambda c, m: messages.append(m))
    conn.on("finish", lambda c: finished.append(c))
    return conn, messages, finished


@pytest.mark.parametrize("compression", ["deflate", None])
def test_text_binary_large(loop, ws_server, compression):
    conn, messages, _ = open_conn(loop, ws_server, compression=compression)
    big = bytes(range(256)) * 4096
    conn.send("héllo")
    conn.send(b"\x00\xff")
    conn.send(big)
    run_until(loop, lambda: len(messages) == 3)
    assert [m.body for m in messages] == ["héllo".encode(), b"\x00\xff", big]
    assert messages[0].is_text and messages[1].is_binary
    assert ("permessage-deflate" in conn.response.headers.get("Sec-WebSocket-Extensions", "")) \
        == (compression is not None)


def test_fragmented_from_server(loop, ws_server):
    conn, messages, _ = open_conn(loop, ws_server)
    conn.send("fragments please")
    run_until(loop, lambda: messages)
    assert messages[0].decoded_body == "fragmented"


def test_ping_from_server_is_answered(loop, ws_server):
    conn, messages, _ = open_conn(loop, ws_server)
    conn.send("ping me")
    run_until(loop, lambda: messages)
    assert messages[0].decoded_body == "pinged"
    conn.send("still alive")  # the pong went out masked and was accepted
    run_until(loop, lambda: len(messages) == 2)


def test_server_close_code(loop, ws_server):
    conn, _, finished = open_conn(loop, ws_server)
    conn.send("close 4001")
    run_until(loop, lambda: finished)
    assert (conn.close_code, conn.close_reason) == (4001, "server says bye")
    assert conn.close_error is None


@pytest.mark.parametrize("code, reason", [(1000, ""), (1001, "going away"), (4000, "custom")])
def test_client_close_code(loop, ws_server, code, reason):
    conn, _, finished = open_conn(loop, ws_server)
    conn.close(code, reason)
    run_until(loop, lambda: finished)
    assert conn.close_code == code  # websockets echoes it
    assert conn.close_error is None


def test_subprotocol_negotiated(loop, ws_server):
    conn, messages, _ = open_conn(loop, ws_server, subprotocols=["superchat"])
    assert conn.subprotocol == "superchat"
    conn.send("subprotocol?")
    run_until(loop, lambda: messages)
    assert messages[0].decoded_body == "superchat"


def test_refused_by_websockets(loop, ws_server):
    cv = evws.connect(f"ws://127.0.0.1:{ws_server}/", loop=loop, subprotocols=["unknown"])
    # No subprotocol it supports: websockets answers 400 with a text body.
    with pytest.raises(evws.HandshakeError) as info:
        cv.recv(timeout=TIMEOUT)
    assert info.value.status == 400
    assert b"subprotocol" in info.value.body
    assert info.value.headers["Content-Type"].startswith("text/plain")
