"""TLS: wss:// client, TLS server, the TLS Stream, and interop with ``websockets``.

The certificate is generated at test time with the ``openssl`` command: a
self-signed EC certificate for localhost, 127.0.0.1 and ::1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import threading

import pytest

import evws
from evws.reactor.stream import Stream
from evws.reactor.tls import TlsSocket, tls_handshake, wrap_server
from tests import wire
from tests.certs import self_signed
from tests.conftest import TIMEOUT, run_until

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """(cert_file, key_file, combined_file) for localhost / 127.0.0.1 / ::1."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(directory)
    combined = directory / "combined.pem"
    combined.write_bytes(key.read_bytes() + cert.read_bytes())
    return str(cert), str(key), str(combined)


@pytest.fixture
def client_ctx(certs):
    return ssl.create_default_context(cafile=certs[0])


@pytest.fixture
def server_ctx(certs):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs[0], certs[1])
    return ctx


class TlsEcho:
    """An evws TLS echo server on a loopback port; records establish outcomes."""

    def __init__(self, loop, host="127.0.0.1", **server_options):
        self.server = evws.Server(loop=loop, max_payload_size=None, **server_options)
        self.outcomes: list = []
        self.listener = evws.tcp_server(host, 0, self.on_accept, loop=loop)
        self.port = self.listener.port

    def on_accept(self, sock, host, port):
        def established(cv):
            try:
                conn = cv.recv()
            except evws.HandshakeError as exc:
                self.outcomes.append(exc)
                sock.close()  # detached by TLS: a harmless no-op
                return
            self.outcomes.append(conn)
            conn.on("each_message", lambda c, m: c.send(m))
        self.server.establish(sock).cb(established)

    def close(self):
        self.listener.close()


@pytest.fixture
def tls_echo(loop, certs):
    echo = TlsEcho(loop, ssl_cert_file=certs[0], ssl_key_file=certs[1])
    yield echo
    echo.close()


def round_trip(loop, conn, payloads):
    got = []
    conn.on("each_message", lambda c, m: got.append(m.body))
    for payload in payloads:
        conn.send(payload)
    run_until(loop, lambda: len(got) == len(payloads))
    return got


# -- evws <-> evws ------------------------------------------------------------------


def test_wss_round_trip_and_clean_close(loop, tls_echo, client_ctx):
    conn = evws.connect(f"wss://127.0.0.1:{tls_echo.port}/", loop=loop,
                        ssl_context=client_ctx).recv(timeout=TIMEOUT)
    assert isinstance(conn.stream.sock, TlsSocket)
    assert conn.stream.sock.version().startswith("TLS")   # SSLSocket's TLS details, delegated
    assert conn.stream.sock.getpeername()[0] == "127.0.0.1"
    big = bytes(range(256)) * 4096  # 1 MiB: many TLS records, partial writes
    assert round_trip(loop, conn, [b"tls", big, "é" * 70000]) == [
        b"tls", big, "é".encode() * 70000]
    server_conn = tls_echo.outcomes[0]
    assert isinstance(server_conn.stream.sock, TlsSocket)
    conn.close(4000, "done")
    run_until(loop, lambda: conn.finished and server_conn.finished)
    assert conn.close_code == 4000 and conn.close_error is None
    assert server_conn.close_code == 4000 and server_conn.close_error is None


def test_hostname_is_verified_by_name(loop, tls_echo, client_ctx):
    conn = evws.connect(f"wss://localhost:{tls_echo.port}/", loop=loop,
                        ssl_context=client_ctx).recv(timeout=TIMEOUT)
    assert round_trip(loop, conn, ["by name"]) == [b"by name"]


def test_cert_file_holding_the_key(loop, certs, client_ctx):
    echo = TlsEcho(loop, ssl_cert_file=certs[2])
    try:
        conn = evws.connect(f"wss://127.0.0.1:{echo.port}/", loop=loop,
                            ssl_context=client_ctx).recv(timeout=TIMEOUT)
        assert round_trip(loop, conn, [b"combined"]) == [b"combined"]
    finally:
        echo.close()


def test_server_ssl_context(loop, server_ctx, client_ctx):
    echo = TlsEcho(loop, ssl_context=server_ctx)
    try:
        conn = evws.connect(f"wss://127.0.0.1:{echo.port}/", loop=loop,
                            ssl_context=client_ctx).recv(timeout=TIMEOUT)
        assert round_trip(loop, conn, [b"ctx"]) == [b"ctx"]
    finally:
        echo.close()


def test_server_tls_options_are_checked(certs, server_ctx):
    with pytest.raises(ValueError):
        evws.Server(ssl_context=server_ctx, ssl_cert_file=certs[0])
    with pytest.raises(ValueError):
        evws.Server(ssl_key_file=certs[1])
    with pytest.raises(ssl.SSLError):
        evws.Server(ssl_cert_file=certs[0])  # no key anywhere


def test_untrusted_certificate_croaks_both_ends(loop, tls_echo):
    # Default verification: the self-signed certificate is not trusted.
    cv = evws.connect(f"wss://127.0.0.1:{tls_echo.port}/", loop=loop)
    with pytest.raises(ssl.SSLCertVerificationError):
        cv.recv(timeout=TIMEOUT)
    run_until(loop, lambda: tls_echo.outcomes)
    error = tls_echo.outcomes[0]
    assert isinstance(error, evws.HandshakeError)
    assert isinstance(error.__cause__, ssl.SSLError)


def test_certificate_for_another_name_croaks(loop, certs, tmp_path):
    """Trusted, but issued for example.test only: 127.0.0.1 must not match."""
    cert, key = self_signed(tmp_path, "example.test", "DNS:example.test")
    echo = TlsEcho(loop, ssl_cert_file=str(cert), ssl_key_file=str(key))
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        cv = evws.connect(f"wss://127.0.0.1:{echo.port}/", loop=loop, ssl_context=ctx)
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            cv.recv(timeout=TIMEOUT)
        # Verification off, on the caller's explicit say-so: then it connects.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = evws.connect(f"wss://127.0.0.1:{echo.port}/", loop=loop,
                            ssl_context=ctx).recv(timeout=TIMEOUT)
        assert round_trip(loop, conn, [b"unverified"]) == [b"unverified"]
    finally:
        echo.close()


def test_plain_client_on_tls_server(loop, tls_echo):
    cv = evws.connect(f"ws://127.0.0.1:{tls_echo.port}/", loop=loop, timeout=TIMEOUT)
    with pytest.raises((evws.HandshakeError, OSError)):
        cv.recv(timeout=TIMEOUT)
    run_until(loop, lambda: tls_echo.outcomes)
    error = tls_echo.outcomes[0]
    assert isinstance(error, evws.HandshakeError)
    assert isinstance(error.__cause__, ssl.SSLError)


def test_tls_handshake_timeout_on_the_server(loop, certs):
    echo = TlsEcho(loop, ssl_cert_file=certs[0], ssl_key_file=certs[1], handshake_timeout=0.2)
    silent = socket.create_connection(("127.0.0.1", echo.port), timeout=TIMEOUT)
    try:
        run_until(loop, lambda: echo.outcomes)
        assert isinstance(echo.outcomes[0], evws.HandshakeError)
        assert echo.outcomes[0].status == 408
    finally:
        silent.close()
        echo.close()


def test_http_refusal_is_answered_over_tls(loop, certs, client_ctx):
    def handshake(request, response):
        raise ValueError("nope")
    echo = TlsEcho(loop, ssl_cert_file=certs[0], ssl_key_file=certs[1], handshake=handshake)
    try:
        cv = evws.connect(f"wss://127.0.0.1:{echo.port}/", loop=loop, ssl_context=client_ctx)
        with pytest.raises(evws.HandshakeError) as info:
            cv.recv(timeout=TIMEOUT)
        assert info.value.status == 403  # evws answered on the TLS socket itself
    finally:
        echo.close()


def test_close_sends_close_notify(loop, tls_echo, certs):
    """A raw TLS peer with suppress_ragged_eofs=False: EOF without close_notify would raise."""
    ctx = ssl.create_default_context(cafile=certs[0])
    raw = socket.create_connection(("127.0.0.1", tls_echo.port), timeout=TIMEOUT)
    raw.setblocking(False)
    peer = ctx.wrap_socket(raw, server_hostname="127.0.0.1", do_handshake_on_connect=False,
                           suppress_ragged_eofs=False)
    try:
        ssl_peer_handshake(loop, peer)
        peer.setblocking(True)
        peer.settimeout(0)
        buffer = bytearray()

        def read_until(pred):
            def check():
                try:
                    data = peer.recv(65536)
                except (ssl.SSLWantReadError, BlockingIOError):
                    return pred()
                if not data:
                    buffer.extend(b"<EOF>")
                buffer.extend(data)
                return pred()
            run_until(loop, check)

        peer.sendall(wire.upgrade_request())
        read_until(lambda: b"\r\n\r\n" in buffer)
        assert buffer.startswith(b"HTTP/1.1 101 ")
        del buffer[:buffer.index(b"\r\n\r\n") + 4]
        peer.sendall(wire.frame(wire.CLOSE, wire.close_payload(1000)))
        # The server echoes the close, sends close_notify (recv -> b""), then FIN.
        read_until(lambda: buffer.endswith(b"<EOF>"))
        frames, _ = wire.parse_frames(bytes(buffer[:-5]))
        assert frames == [(True, wire.CLOSE, wire.close_payload(1000))]
    finally:
        peer.close()


# -- the TLS Stream ------------------------------------------------------------------


def ssl_peer_handshake(loop, peer: ssl.SSLSocket, done=lambda: True) -> None:
    """Handshake a non-blocking ``ssl.SSLSocket`` peer while the loop runs (the evws end)."""
    state = {"done": False}

    def step() -> bool:
        if not state["done"]:
            try:
                peer.do_handshake()
                state["done"] = True
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
        return state["done"] and done()

    run_until(loop, step)


def tls_socketpair(loop, server_ctx, client_ctx, raw_class=None):
    """(server TlsSocket, client ssl.SSLSocket), handshake done: evws's end and a peer."""
    a, b = socket.socketpair()
    server = wrap_server(a, server_ctx)
    assert a.fileno() == -1   # taken over, as wrap_socket does
    if raw_class is not None:
        server.raw = raw_class(a.family, a.type, a.proto, fileno=server.raw.detach())
    client = client_ctx.wrap_socket(b, server_hostname="localhost", do_handshake_on_connect=False)
    client.setblocking(False)
    cv = tls_handshake(server, loop, timeout=TIMEOUT)
    ssl_peer_handshake(loop, client, lambda: cv.ready)
    assert cv.recv() is server
    return server, client


def test_stream_drains_pending_tls_bytes(loop, server_ctx, client_ctx):
    """With a read size smaller than a record, the rest waits in OpenSSL, unseen by select."""
    server, client = tls_socketpair(loop, server_ctx, client_ctx)
    got = []
    stream = Stream(server, loop, on_data=got.append, read_size=100)
    stream.start_reading()
    client.setblocking(True)
    client.sendall(b"z" * 5000)  # one TLS record; nothing follows it on the wire
    run_until(loop, lambda: sum(map(len, got)) >= 5000)
    assert b"".join(got) == b"z" * 5000
    stream.abort()
    client.close()


class CountingSocket(socket.socket):
    """A socket that counts its ``recv`` calls and how many would have blocked."""

    recvs = 0
    would_block = 0

    def recv(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        self.recvs += 1
        try:
            return super().recv(*args, **kwargs)
        except BlockingIOError:
            self.would_block += 1
            raise


def test_stream_reads_a_record_with_one_recv(loop, server_ctx, client_ctx):
    """One recv per message (an SSLSocket makes two: a record's header, then its body),
    none that meets "would block"."""
    server, client = tls_socketpair(loop, server_ctx, client_ctx, raw_class=CountingSocket)
    got = []
    stream = Stream(server, loop, on_data=got.append)
    stream.start_reading()
    client.setblocking(True)
    raw = server.raw
    assert isinstance(raw, CountingSocket)
    raw.recvs = raw.would_block = 0
    for i in range(5):
        client.sendall(b"m%d" % i * 1000)  # one record each, read before the next is sent
        run_until(loop, lambda n=2000 * (i + 1): sum(map(len, got)) >= n)
    assert b"".join(got) == b"".join(b"m%d" % i * 1000 for i in range(5))
    assert raw.recvs == 5 and raw.would_block == 0
    # Records that wait together in the kernel's buffer are all delivered, in order.
    client.sendall(b"a" * 3000)
    client.sendall(b"b" * 3000)
    run_until(loop, lambda: sum(map(len, got)) >= 10000 + 6000)
    assert b"".join(got)[10000:] == b"a" * 3000 + b"b" * 3000
    stream.abort()
    client.close()


def test_stream_reads_full_records_on_in_one_turn(loop, server_ctx, client_ctx):
    """Bulk data (four 16 KiB records) that waits in the kernel: one readable event, one recv
    (read_size covers it), every record's plaintext delivered at once."""
    server, client = tls_socketpair(loop, server_ctx, client_ctx)
    got = []
    stream = Stream(server, loop, on_data=got.append, read_size=1 << 17)
    client.setblocking(True)
    client.sendall(b"q" * 65536)  # four full records, all in the kernel's buffer first
    stream.start_reading()
    run_until(loop, lambda: sum(map(len, got)) >= 65536)
    assert b"".join(got) == b"q" * 65536
    assert len(got) == 1
    stream.abort()
    client.close()


def test_stream_large_writes_and_close_notify(loop, server_ctx, client_ctx):
    server, client = tls_socketpair(loop, server_ctx, client_ctx)
    closed = []
    stream = Stream(server, loop, on_close=closed.append, linger=TIMEOUT)
    payload = bytes(range(256)) * 16384  # 4 MiB: far more than the socket buffer
    stream.write(payload)
    stream.close()
    received = bytearray()
    eof = []

    def pull():
        while True:
            try:
                data = client.recv(1 << 20)
            except ssl.SSLWantReadError:
                return bool(eof)
            if not data:  # close_notify (a bare FIN would raise SSLEOFError)
                eof.append(True)
                return True
            received.extend(data)

    client_suppress = client.suppress_ragged_eofs
    client.suppress_ragged_eofs = False
    try:
        run_until(loop, pull)
    finally:
        client.suppress_ragged_eofs = client_suppress
    assert bytes(received) == payload
    client.close()  # our FIN ends the server's lingering drain
    run_until(loop, lambda: closed)
    assert closed == [None]


# -- interop with websockets -------------------------------------------------------


def test_websockets_client_against_evws_tls_server(loop, tls_echo, client_ctx):
    sync_client = pytest.importorskip("websockets.sync.client")
    results: list = []

    def talk():
        try:
            with sync_client.connect(f"wss://127.0.0.1:{tls_echo.port}/", ssl=client_ctx,
                                     open_timeout=TIMEOUT, close_timeout=TIMEOUT,
                                     max_size=None) as ws:
                ws.send("over tls")
                results.append(ws.recv(timeout=TIMEOUT))
                ws.send(b"\x00" * 300000)
                results.append(len(ws.recv(timeout=TIMEOUT)))
        except Exception as exc:  # reported to the main thread
            results.append(exc)
        finally:
            results.append("done")

    thread = threading.Thread(target=talk, daemon=True)
    thread.start()
    run_until(loop, lambda: "done" in results, timeout=3 * TIMEOUT)
    thread.join(TIMEOUT)
    assert results == ["over tls", 300000, "done"]
    conn = tls_echo.outcomes[0]
    run_until(loop, lambda: conn.finished)
    assert conn.close_code == 1000


@contextlib.contextmanager
def websockets_tls_echo(server_ctx, on_connect=lambda ws: None):
    """A ``websockets`` sync echo server over TLS in a thread; yields its port."""
    sync_server = pytest.importorskip("websockets.sync.server")

    def handler(ws):
        on_connect(ws)
        for message in ws:
            ws.send(message)

    with sync_server.serve(handler, "127.0.0.1", 0, ssl=server_ctx, max_size=None) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.socket.getsockname()[1]
        finally:
            server.shutdown()
            thread.join(TIMEOUT)


def test_evws_client_against_websockets_tls_server(loop, server_ctx, client_ctx):
    with websockets_tls_echo(server_ctx) as port:
        conn = evws.connect(f"wss://localhost:{port}/", loop=loop,
                            ssl_context=client_ctx).recv(timeout=TIMEOUT)
        assert round_trip(loop, conn, ["hi", b"\x01" * 200000]) == [b"hi", b"\x01" * 200000]
        conn.close()
        run_until(loop, lambda: conn.finished)
        assert conn.close_code == 1000 and conn.close_error is None


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")
def test_wss_over_ipv6(loop, certs, client_ctx):
    echo = TlsEcho(loop, host="::1", ssl_cert_file=certs[0], ssl_key_file=certs[1])
    try:
        conn = evws.connect(f"wss://[::1]:{echo.port}/", loop=loop,
                            ssl_context=client_ctx).recv(timeout=TIMEOUT)
        assert round_trip(loop, conn, ["v6"]) == [b"v6"]
    finally:
        echo.close()


# -- wss:// with permessage-deflate ---------------------------------------------------


def test_wss_with_deflate_evws_both_ends(loop, tls_echo, client_ctx):
    conn = evws.connect(f"wss://localhost:{tls_echo.port}/", loop=loop,
                        ssl_context=client_ctx).recv(timeout=TIMEOUT)
    run_until(loop, lambda: tls_echo.outcomes)
    server_side = tls_echo.outcomes[0]
    assert conn.protocol.deflate is not None
    assert conn.protocol.deflate == server_side.protocol.deflate
    messages = ["squeeze " * 20000, b"\x00" * 500000, bytes(range(256)) * 300, ""]
    expected = [m.encode() if isinstance(m, str) else m for m in messages]
    assert round_trip(loop, conn, messages) == expected
    conn.close()
    run_until(loop, lambda: conn.finished and server_side.finished)
    assert conn.close_code == 1000 and conn.close_error is None


def test_wss_with_deflate_against_websockets(loop, server_ctx, client_ctx):
    agreed: list = []

    def on_connect(ws):
        agreed.append([type(e).__name__ for e in ws.protocol.extensions])

    with websockets_tls_echo(server_ctx, on_connect) as port:
        conn = evws.connect(f"wss://127.0.0.1:{port}/", loop=loop,
                            ssl_context=client_ctx).recv(timeout=TIMEOUT)
        assert conn.protocol.deflate is not None
        messages = ["squeeze " * 20000, b"\x00" * 500000]
        assert round_trip(loop, conn, messages) == [messages[0].encode(), messages[1]]
        run_until(loop, lambda: agreed)
        assert agreed == [["PerMessageDeflate"]]
        conn.close()
        run_until(loop, lambda: conn.finished)
        assert conn.close_code == 1000 and conn.close_error is None


def _raw_records(fd: int) -> list[int]:
    """The TLS record types waiting on ``fd`` (read raw, under the TLS layer)."""
    data = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    types = []
    while len(data) >= 5:
        types.append(data[0])
        data = data[5 + int.from_bytes(data[3:5], "big"):]
    assert not data, "a partial record"
    return types


def test_writev_on_tls_is_one_record_per_message(loop, server_ctx, client_ctx):
    # A frame header and its payload are two chunks; written one by one over
    # TLS they would be two records (and two syscalls) per message.
    server, client = tls_socketpair(loop, server_ctx, client_ctx)
    stream = Stream(server, loop)
    stream.write(b"first")  # whatever OpenSSL sends with its first write goes now
    _raw_records(client.fileno())
    stream.writev([b"\x82\x7e\x10\x00", b"p" * 4096])
    assert _raw_records(client.fileno()) == [23]  # one application_data record
    stream.abort()
    client.close()


def test_data_that_came_with_the_handshake_is_delivered(loop, server_ctx, client_ctx):
    """The client's first bytes right behind its Finished: read with it during the handshake,
    they wait in OpenSSL's incoming BIO (select cannot see them) and reach on_data once the
    stream starts reading."""
    a, b = socket.socketpair()
    server = wrap_server(a, server_ctx)
    client = client_ctx.wrap_socket(b, server_hostname="localhost", do_handshake_on_connect=False)
    client.setblocking(False)
    cv = tls_handshake(server, loop, timeout=TIMEOUT)
    sent = []

    def step() -> bool:
        if not sent:
            try:
                client.do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return False
            client.send(b"early data")   # before the server has run again
            sent.append(True)
        return cv.ready

    run_until(loop, step)
    assert cv.recv() is server
    assert server.incoming.pending or server.ssl_object.pending()   # it did come with the handshake
    got = []
    stream = Stream(server, loop, on_data=got.append)
    stream.start_reading()
    run_until(loop, lambda: b"".join(got) == b"early data")
    stream.abort()
    client.close()


def test_a_corrupt_record_fails_the_stream_with_the_ssl_error(loop, server_ctx, client_ctx):
    server, client = tls_socketpair(loop, server_ctx, client_ctx)
    closed = []
    got = []
    stream = Stream(server, loop, on_data=got.append, on_close=closed.append)
    stream.start_reading()
    client.setblocking(True)
    client.sendall(b"fine")
    run_until(loop, lambda: got == [b"fine"])
    # An application_data record of garbage, under the TLS layer: its MAC cannot check out.
    os.write(client.fileno(), b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
    run_until(loop, lambda: closed)
    assert isinstance(closed[0], ssl.SSLError) and stream.closed
    assert got == [b"fine"]
    client.close()
