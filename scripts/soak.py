#!/usr/bin/env python3
"""Soak test: many raw-socket clients against an evws echo server, for a bounded time.

    python3 scripts/soak.py [--duration SECONDS] [--clients N] [--workers W] [--seed S]

Three kinds of process, all on loopback:

* the server (``--serve``): an evws echo server with a short keepalive,
  answering ``stats`` on its stdin with its descriptor count, RSS, live
  connections and the number of ERROR log records (an exception that reached
  the loop is logged there, so "escaped exceptions" are counted, not missed);
* W client workers (``--client-worker``), each driving its share of the N
  clients on a plain ``selectors`` loop with frames built by hand (not evws:
  a bug shared by both ends could hide itself). Each client sends messages of
  random type and size (0 B .. --max-size, log-uniform), sometimes in several
  fragments with a Ping between them, keeps a few in flight, and checks every
  echo against a CRC-32 carried in the message and against what it sent, in
  order. It answers the server's keepalive Pings. At random it leaves: a clean
  close (Close handshake, then EOF), an RST (SO_LINGER 0), or mid-frame (half
  a frame, then RST or FIN); then it reconnects;
* this driver, which starts them, waits, and judges.

It prints messages sent, received and verified (for connections that ended
cleanly the three must be equal: nothing lost or corrupted), the server's
descriptor count and RSS at start, after a warm-up and at the end, and exits
non-zero on any loss, corruption, descriptor leak, RSS not back within 10 %
of the warmed-up baseline, escaped exception, or a server that died.

Why a warm-up baseline for RSS (a first round of min(15 s, duration/4) with
every client): it grows the allocators' arenas and heaps to their working
size, and neither pymalloc nor glibc gives all of that back even once every
object is freed (measured: repeated rounds end within a few MiB of each
other, with no trend). What must not happen is growth *after* that, which is
what a leak looks like. Before each measurement the server runs
``gc.collect()`` and glibc's ``malloc_trim(0)`` so that RSS shows memory in
use rather than allocator caches. As an exact check of Python objects the
number of allocated blocks (``sys.getallocatedblocks()``) must also return
to within 1 % of the baseline: one leaked object per connection would
exceed that many times over. The descriptor count is compared with the
true start (the listening server before any client).

Not part of the test suite (it runs for --duration seconds); see README.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import errno
import gc
import hashlib
import json
import logging
import os
import random
import selectors
import socket
import struct
import subprocess
import sys
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# -- shared helpers --------------------------------------------------------------


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# -- the server process -----------------------------------------------------------


class ErrorCounter(logging.Handler):
    """Counts ERROR records: evws logs every exception that reaches its loop."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.samples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.samples) < 5:
            self.samples.append(self.format(record))


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: RSS then includes the allocator's cache


def serve(args: argparse.Namespace) -> int:
    sys.path.insert(0, ROOT)
    import evws

    counter = ErrorCounter()
    counter.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logging.getLogger().addHandler(counter)
    logging.getLogger().setLevel(logging.WARNING)
    loop = evws.get_loop()
    server = evws.Server(loop=loop, ping_interval=args.ping_interval, ping_timeout=5.0,
                         close_timeout=5.0, handshake_timeout=5.0)

    def on_accept(sock, host, port):
        def established(cv):
            try:
                conn = cv.recv()
            except evws.HandshakeError:
                sock.close()  # e.g. a client that left mid-handshake
                return
            conn.on("each_message", lambda c, m: c.send(m))
        server.establish(sock).cb(established)

    listener = server.listen("127.0.0.1", 0, on_accept, backlog=4096)
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    gc.collect()
    _malloc_trim()
    start = {"fds": fd_count(), "rss_kib": rss_kib(),  # listening, before any client
             "blocks": sys.getallocatedblocks()}
    print(json.dumps({"port": listener.port, **start}), flush=True)

    pending = b""

    def stats() -> dict:
        # Measure what is in use, not what allocators keep cached: collect
        # cycles, then let glibc hand freed heap pages back (malloc_trim).
        gc.collect()
        _malloc_trim()
        return {"fds": fd_count(), "rss_kib": rss_kib(), "blocks": sys.getallocatedblocks(),
                "connections": len(server.connections),
                "errors": counter.count, "error_samples": counter.samples}

    def on_command() -> None:
        nonlocal pending
        try:
            data = os.read(stdin, 4096)
        except BlockingIOError:
            return
        if not data:
            data = b"quit\n"
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            command = line.strip().decode()
            if command == "stats":
                print(json.dumps(stats()), flush=True)
            elif command == "quit":
                watcher.cancel()
                server.shutdown(timeout=5).cb(lambda cv: loop.stop())
                return

    watcher = loop.io(stdin, "r", on_command)
    loop.run()
    print(json.dumps(stats()), flush=True)
    return 0


# -- the client workers -------------------------------------------------------------


def mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame, built by hand."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    key = os.urandom(4)
    return head + key + mask(payload, key)


_TEXT_POOL: bytes = b""


def make_message(rng: random.Random, max_size: int) -> tuple[int, bytes]:
    """A TEXT or BINARY message whose first 8 bytes are the CRC-32 of the rest, in hex."""
    global _TEXT_POOL
    size = int(2 ** rng.uniform(0, max_size.bit_length())) - 1
    size = min(size, max_size)
    if rng.random() < 0.5:
        if len(_TEXT_POOL) < max_size + 8:  # multi-byte UTF-8 included (é, €)
            alphabet = "abcdefghijklmnopqrstuvwxyzé€ 0123456789"
            _TEXT_POOL = "".join(rng.choice(alphabet) for _ in range(max_size + 8)).encode()
        start = rng.randrange(len(_TEXT_POOL) - size + 1)
        # A random slice may cut a character: drop the pieces so it stays UTF-8.
        body = _TEXT_POOL[start:start + size].decode("utf-8", "ignore").encode()
        opcode = 1
    else:
        body = rng.randbytes(size)
        opcode = 2
    return opcode, b"%08x" % zlib.crc32(body) + body


def check_message(payload: bytes) -> bool:
    return len(payload) >= 8 and payload[:8] == b"%08x" % zlib.crc32(payload[8:])


class Client:
    """One raw WebSocket client; reconnects after each disconnection."""

    IN_FLIGHT = 4

    def __init__(self, worker: Worker, index: int) -> None:
        self.w = worker
        self.index = index
        self.sock: socket.socket | None = None
        self.connect()

    # connection life cycle

    def connect(self) -> None:
        self.generation = getattr(self, "generation", 0) + 1
        self.state = "connecting"
        self.inbuf = b""
        self.outbuf = bytearray()
        self.expected: list[tuple[int, bytes]] = []
        self.sent = self.received = self.verified = 0
        self.messages_left = self.w.rng.randint(1, 60)  # then leave, one way or another
        self.key = base64.b64encode(os.urandom(16))
        self.frag_opcode = 0
        self.frag_parts: list[bytes] = []
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(("127.0.0.1", self.w.port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.w.counts["connect_errors"] += 1
            self.w.later(0.1, self.connect)
            return
        self.sock = sock
        self.w.sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self)
        self.outbuf += (b"GET /soak HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + self.key +
                        b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.w.counts["connections"] += 1

    def drop(self, how: str) -> None:
        """Leave abruptly: RST, or half a frame then RST or FIN."""
        sock = self.sock
        assert sock is not None
        self.w.counts["aborted_" + how] += 1
        self.w.counts["aborted_sent"] += self.sent
        self.w.counts["aborted_verified"] += self.verified
        if how == "midframe":
            data = frame(2, self.w.rng.randbytes(1000))
            try:
                sock.send(data[: self.w.rng.randint(1, len(data) - 1)])
            except OSError:
                pass
        if how == "rst" or (how == "midframe" and self.w.rng.random() < 0.5):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.release()
        self.connect()

    def release(self) -> None:
        if self.sock is not None:
            self.w.sel.unregister(self.sock)
            self.sock.close()
            self.sock = None

    def finished_cleanly(self) -> None:
        c = self.w.counts
        c["clean_closes"] += 1
        c["clean_sent"] += self.sent
        c["clean_received"] += self.received
        c["clean_verified"] += self.verified
        if self.expected:
            c["lost"] += len(self.expected)
            self.w.problem(f"client {self.index}: {len(self.expected)} messages without echo")
        self.release()
        if not self.w.stopping:
            self.connect()

    # sending

    def send_message(self) -> None:
        rng = self.w.rng
        opcode, payload = make_message(rng, self.w.max_size)
        self.expected.append((opcode, payload))
        pieces = rng.choice([1, 1, 1, 2, 3]) if len(payload) > 3 else 1
        cuts = sorted(rng.sample(range(1, len(payload)), pieces - 1)) if pieces > 1 else []
        bounds = [0] + cuts + [len(payload)]
        for i in range(pieces):
            self.outbuf += frame(opcode if i == 0 else 0, payload[bounds[i]:bounds[i + 1]],
                                 fin=i == pieces - 1)
            if i < pieces - 1 and rng.random() < 0.3:
                self.outbuf += frame(9, b"client-ping")
        self.sent += 1
        self.w.counts["sent"] += 1
        self.messages_left -= 1

    def pump_messages(self) -> None:
        if self.state != "open" or self.w.stopping:
            return
        if self.expected and self.w.rng.random() < 0.005:
            # Now and then leave with echoes still due (the server may be mid-write).
            self.drop(self.w.rng.choice(["rst", "midframe"]))
            return
        while len(self.expected) < self.IN_FLIGHT and self.messages_left > 0:
            self.send_message()
        if self.messages_left <= 0 and not self.expected:
            self.leave()

    def leave(self) -> None:
        choice = self.w.rng.random()
        if choice < 0.6:
            self.start_close()
        elif choice < 0.8:
            self.drop("rst")
        else:
            self.drop("midframe")

    def start_close(self) -> None:
        self.outbuf += frame(8, struct.pack("!H", 1000))
        self.state = "closing"

    # I/O

    def on_event(self, events: int) -> None:
        sock = self.sock
        if sock is None:
            return
        if events & selectors.EVENT_WRITE and self.outbuf:
            try:
                n = sock.send(self.outbuf)
                del self.outbuf[:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                return self.unexpected(f"send failed: {exc}")
        if events & selectors.EVENT_READ:
            try:
                data = sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError as exc:
                return self.unexpected(f"recv failed: {exc}")
            if data == b"":
                if self.state == "closed":
                    return self.finished_cleanly()
                return self.unexpected("EOF from the server")
            if data:
                self.inbuf += data
                self.parse()
        if self.sock is not None:
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbuf else 0)
            self.w.sel.modify(self.sock, want, self)

    def unexpected(self, what: str) -> None:
        if self.state == "connecting" and self.w.stopping:
            self.release()
            return
        self.w.counts["unexpected_disconnects"] += 1
        self.w.counts["lost"] += len(self.expected)
        self.w.problem(f"client {self.index} ({self.state}): {what}")
        self.release()
        if not self.w.stopping:
            self.connect()

    def parse(self) -> None:
        if self.state == "connecting":
            end = self.inbuf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.inbuf = self.inbuf[:end], self.inbuf[end + 4:]
            accept = base64.b64encode(hashlib.sha1(self.key + GUID).digest())
            if not head.startswith(b"HTTP/1.1 101 ") or accept not in head:
                return self.unexpected(f"bad handshake answer {head[:60]!r}")
            self.state = "open"
            if self.w.stopping:
                self.start_close()
            self.pump_messages()
        buf = self.inbuf
        pos = 0
        generation = self.generation
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b1 & 0x80:
                return self.unexpected("masked frame from the server")
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n = struct.unpack_from("!H", buf, pos + 2)[0]
                head = 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                n = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if len(buf) - pos < head + n:
                break
            payload = buf[pos + head:pos + head + n]
            pos += head + n
            self.on_frame(bool(b0 & 0x80), b0 & 0x0F, payload)
            if self.sock is None or self.generation != generation:
                return  # that connection ended (and perhaps a new one began)
        self.inbuf = buf[pos:]

    def on_frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode == 9:  # the server's keepalive: answer it
            self.w.counts["pings_answered"] += 1
            if self.state == "open":
                self.outbuf += frame(10, payload)
            return
        if opcode == 10:
            return
        if opcode == 8:
            if self.state != "closing":
                return self.unexpected(f"server closed: {payload[:40]!r}")
            self.state = "closed"  # now wait for the server's EOF
            return
        if self.state == "closed":
            return self.unexpected("data after the Close frame")
        if opcode:
            self.frag_opcode = opcode
            self.frag_parts = []
        self.frag_parts.append(payload)
        if not fin:
            return
        message = b"".join(self.frag_parts)
        self.received += 1
        self.w.counts["received"] += 1
        if not self.expected:
            self.w.counts["corrupt"] += 1
            return self.w.problem(f"client {self.index}: an echo nobody sent")
        want = self.expected.pop(0)
        if (self.frag_opcode, message) == want and check_message(message):
            self.verified += 1
            self.w.counts["verified"] += 1
        else:
            self.w.counts["corrupt"] += 1
            self.w.problem(f"client {self.index}: corrupted echo ({len(message)} bytes)")
        self.pump_messages()


class Worker:
    def __init__(self, port: int, clients: int, duration: float, max_size: int, seed: int) -> None:
        self.port = port
        self.rng = random.Random(seed)
        self.max_size = max_size
        self.sel = selectors.DefaultSelector()
        self.counts: dict[str, int] = {k: 0 for k in (
            "connections", "sent", "received", "verified", "clean_closes", "clean_sent",
            "clean_received", "clean_verified", "aborted_rst", "aborted_midframe",
            "aborted_sent", "aborted_verified", "lost", "corrupt", "unexpected_disconnects",
            "connect_errors", "pings_answered", "unfinished_at_end")}
        self.problems: list[str] = []
        self.stopping = False
        self.timers: list[tuple[float, object]] = []
        self.deadline = time.monotonic() + duration
        self.clients = [Client(self, i) for i in range(clients)]

    def later(self, delay: float, fn) -> None:
        self.timers.append((time.monotonic() + delay, fn))

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)

    def turn(self, timeout: float) -> None:
        for key, events in self.sel.select(timeout):
            if key.data.sock is key.fileobj:  # not a socket replaced earlier this turn
                key.data.on_event(events)
        now = time.monotonic()
        due = [t for t in self.timers if t[0] <= now]
        self.timers = [t for t in self.timers if t[0] > now]
        for _, fn in due:
            fn()

    def run(self) -> dict:
        while time.monotonic() < self.deadline:
            self.turn(0.05)
        # Wind down: every open client closes cleanly; the rest are abandoned.
        self.stopping = True
        self.timers.clear()
        for c in self.clients:
            if c.sock is not None and c.state == "open":
                c.start_close()
                self.sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
        end = time.monotonic() + 15
        while any(c.sock is not None and c.state in ("open", "closing", "closed")
                  for c in self.clients) and time.monotonic() < end:
            self.turn(0.05)
        for c in self.clients:
            if c.sock is not None:
                if c.state in ("open", "closing", "closed"):
                    self.counts["unfinished_at_end"] += 1
                    self.problem(f"client {c.index} did not finish ({c.state})")
                c.release()
        return {"counts": self.counts, "problems": self.problems}


def client_worker(args: argparse.Namespace) -> int:
    result = Worker(args.port, args.clients, args.duration, args.max_size, args.seed).run()
    print(json.dumps(result), flush=True)
    return 0


# -- the driver ------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--clients", type=int, default=500, help="concurrent clients (default 500)")
    parser.add_argument("--workers", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--max-size", type=int, default=65536, help="largest message (default 64 KiB)")
    parser.add_argument("--ping-interval", type=float, default=2.0,
                        help="server keepalive interval (default 2 s, to exercise it)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args)
    if args.client_worker:
        return client_worker(args)

    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    me = [sys.executable, os.path.abspath(__file__)]
    server = subprocess.Popen(me + ["--serve", "--ping-interval", str(args.ping_interval)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask() -> dict:
        server.stdin.write("stats\n")
        server.stdin.flush()
        return json.loads(server.stdout.readline())

    failures: list[str] = []
    try:
        start = json.loads(server.stdout.readline())
        port = start["port"]
        print(f"soak: {args.clients} clients in {args.workers} processes for {args.duration:g} s "
              f"against port {port} (seed {seed})", flush=True)

        def run_clients(duration: float, clients: int, seed_offset: int) -> list[dict]:
            shares = [clients // args.workers + (i < clients % args.workers)
                      for i in range(args.workers)]
            procs = [subprocess.Popen(me + ["--client-worker", "--port", str(port),
                                            "--clients", str(n), "--duration", str(duration),
                                            "--max-size", str(args.max_size),
                                            "--seed", str(seed + seed_offset + i)],
                                      stdout=subprocess.PIPE, text=True)
                     for i, n in enumerate(shares) if n]
            results = []
            for proc in procs:
                out, _ = proc.communicate(timeout=duration + 60)
                if proc.returncode != 0 or not out.strip():
                    failures.append(f"a client worker failed (exit {proc.returncode})")
                    continue
                results.append(json.loads(out.strip().splitlines()[-1]))
            return results

        def settle() -> dict:
            """Wait until the server has no connection left (bounded)."""
            end = time.monotonic() + 20
            while True:
                stats = ask()
                if stats["connections"] == 0 and stats["fds"] <= start["fds"]:
                    return stats
                if time.monotonic() > end:
                    return stats
                time.sleep(0.2)  # polling another process's state, not synchronising a test

        # Warm-up: a short round with every client, then the baseline.
        warm_results = run_clients(min(15.0, args.duration / 4), args.clients, 10_000)
        baseline = settle()
        t0 = time.monotonic()
        results = run_clients(args.duration, args.clients, 0)
        elapsed = time.monotonic() - t0
        end = settle()

        main_sent = sum(r["counts"]["sent"] for r in results)
        total: dict[str, int] = {}
        problems: list[str] = []
        for r in warm_results + results:
            for k, v in r["counts"].items():
                total[k] = total.get(k, 0) + v
            problems += r["problems"]

        print(f"messages: sent {total['sent']}, received {total['received']}, "
              f"verified {total['verified']} (warm-up included; {main_sent / elapsed:.0f}/s over "
              f"the {elapsed:.0f} s run)")
        print(f"  clean connections: {total['clean_closes']}: sent {total['clean_sent']}, "
              f"received {total['clean_received']}, verified {total['clean_verified']}")
        print(f"  aborted connections: rst {total['aborted_rst']}, mid-frame "
              f"{total['aborted_midframe']} (sent {total['aborted_sent']}, verified before "
              f"leaving {total['aborted_verified']})")
        print(f"  connections {total['connections']}, keepalive pings answered "
              f"{total['pings_answered']}, lost {total['lost']}, corrupt {total['corrupt']}, "
              f"unexpected disconnects {total['unexpected_disconnects']}, "
              f"connect errors {total['connect_errors']}")
        print(f"server fds: start {start['fds']}, after warm-up {baseline['fds']}, end {end['fds']}")
        print(f"server RSS: start {start['rss_kib'] / 1024:.1f} MiB, after warm-up "
              f"{baseline['rss_kib'] / 1024:.1f} MiB, end {end['rss_kib'] / 1024:.1f} MiB; "
              f"Python blocks allocated: {start['blocks']}, {baseline['blocks']}, {end['blocks']}")
        print(f"server errors logged: {end['errors']}; live connections at end: {end['connections']}")

        if total["clean_sent"] != total["clean_received"] or \
                total["clean_received"] != total["clean_verified"]:
            failures.append("clean connections lost or corrupted messages")
        for key in ("lost", "corrupt", "unexpected_disconnects", "unfinished_at_end"):
            if total[key]:
                failures.append(f"{key}: {total[key]}")
        if total["sent"] == 0:
            failures.append("no message was exchanged")
        if end["fds"] > start["fds"]:
            failures.append(f"descriptor leak: {start['fds']} -> {end['fds']}")
        if end["rss_kib"] > baseline["rss_kib"] * 1.10:
            failures.append(f"RSS grew more than 10 % after warm-up: "
                            f"{baseline['rss_kib']} -> {end['rss_kib']} KiB")
        if end["blocks"] > baseline["blocks"] * 1.01:
            failures.append(f"Python objects leaked: {baseline['blocks']} -> {end['blocks']} blocks")
        if end["connections"]:
            failures.append(f"{end['connections']} connections still live on the server")
        if end["errors"]:
            failures.append(f"{end['errors']} errors logged by the server: {end['error_samples']}")
        for text in problems[:10]:
            print("  problem:", text)
    finally:
        if server.poll() is None:
            try:
                server.stdin.write("quit\n")
                server.stdin.flush()
            except OSError:
                pass
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            failures.append("the server did not stop on request")
    if server.returncode != 0:
        failures.append(f"the server exited with {server.returncode}")
    if failures:
        print("FAIL: " + "; ".join(failures))
        return 1
    print("OK: nothing lost, corrupted or leaked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
