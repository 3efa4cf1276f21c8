"""A tiny HTTP CONNECT proxy on the evws loop, for the client's proxy tests.

It reads one request head (evws's own RequestHeadParser), checks Basic
credentials when it has some, then either refuses with the status a test asks
for, or connects to the target and pipes bytes both ways between two Streams.
``mode`` makes it misbehave on purpose: ``"hang"`` never answers, ``"eof"``
closes without answering, ``"chatty"`` sends bytes after its 200.
"""

from __future__ import annotations

import base64

import evws
from evws.protocol.http import RequestHeadParser
from evws.reactor.stream import Stream


class ConnectProxy:
    """Listens on 127.0.0.1; ``.port``, ``.requests`` (the heads it read), ``.close()``."""

    def __init__(self, loop: evws.Loop, *, credentials: tuple[str, str] | None = None,
                 refuse: int | None = None, mode: str = "pipe") -> None:
        self.loop = loop
        self.credentials = credentials
        self.refuse = refuse
        self.mode = mode
        self.requests: list = []
        self.streams: list[Stream] = []
        self.listener = evws.tcp_server("127.0.0.1", 0, self.accept, loop=loop)
        self.port = self.listener.port
        self.url = f"http://127.0.0.1:{self.port}"

    def accept(self, sock, host, port) -> None:
        client = Stream(sock, self.loop)
        self.streams.append(client)
        parser = RequestHeadParser()

        def on_data(data: bytes) -> None:
            head = parser.feed(data)
            if head is not None:
                client.on_data = None
                client.pause_reading()
                self.requests.append(head)
                self.answer(client, head, parser.leftover)

        client.on_data = on_data
        client.start_reading()

    def refuse_with(self, client: Stream, status: int, reason: str, extra: str = "") -> None:
        body = f"{status} {reason}\n".encode()
        client.write(f"HTTP/1.1 {status} {reason}\r\n{extra}Content-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode() + body)
        client.close()

    def answer(self, client: Stream, head, leftover: bytes) -> None:
        if self.mode == "hang":
            client.on_data = lambda data: None
            client.resume_reading()  # to see the client's EOF (no on_eof: the stream closes)
            return
        if self.mode == "eof":
            client.close()
            return
        if head.method != "CONNECT":
            self.refuse_with(client, 405, "Method Not Allowed")
            return
        if self.credentials is not None:
            expected = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
            if head.headers.get("Proxy-Authorization") != expected:
                self.refuse_with(client, 407, "Proxy Authentication Required",
                                 'Proxy-Authenticate: Basic realm="test"\r\n')
                return
        if self.refuse is not None:
            self.refuse_with(client, self.refuse, "Refused")
            return
        host, _, port = head.target.rpartition(":")

        def connected(cv: evws.CondVar) -> None:
            if cv.error is not None:
                self.refuse_with(client, 502, "Bad Gateway")
                return
            upstream = Stream(cv.recv(), self.loop)
            self.streams.append(upstream)
            client.write(b"HTTP/1.1 200 Connection established\r\n\r\n"
                         + (b"surprise" if self.mode == "chatty" else b""))
            self.pipe(client, upstream, leftover)

        evws.tcp_connect(host.strip("[]"), int(port), self.loop, timeout=5).cb(connected)

    def pipe(self, client: Stream, upstream: Stream, leftover: bytes) -> None:
        if leftover:
            upstream.write(leftover)
        for a, b in ((client, upstream), (upstream, client)):
            a.on_data = b.write
            a.on_eof = b.shutdown_write
            a.on_close = lambda error, b=b: b.close()
        client.resume_reading()
        upstream.start_reading()

    def close(self) -> None:
        self.listener.close()
        for stream in self.streams:
            stream.abort()
