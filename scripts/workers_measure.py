#!/usr/bin/env python3
"""Measure evws worker processes on one port (the numbers in README "Worker processes").

Two measurements, each against a real supervisor (this script with
``--serve``, run as a subprocess) on loopback:

``spread``
    How evenly the kernel (SO_REUSEPORT) spreads connections: open
    ``--connections`` (2,000) WebSocket connections at once, each asks its
    worker for its index, and count connections per worker; at 2 and 4
    workers, ``--rounds`` times each. Reports max/min.

``rolling``
    How many connection attempts fail during a rolling restart under load:
    ``--clients`` concurrent loops of connect + handshake + echo + close
    (an attempt is counted when it starts inside the window) run while the
    supervisor gets SIGHUP, until it logs "rolling restart done" (plus
    0.2 s). An attempt fails to connect when the connect is refused or
    reset or the handshake fails (a 503 from a worker that is stopping); or
    it is cut when the connection closes (1012: the old worker had accepted
    it) before the echo came back. The two are counted apart. Run with
    ``net.ipv4.tcp_migrate_req`` = 0 and = 1 when the kernel has it and the
    script may set it (the value is put back afterwards).

Usage (bounded: about 30 s in all on 2 cores)::

    python3 scripts/workers_measure.py            # both
    python3 scripts/workers_measure.py spread --rounds 3
    python3 scripts/workers_measure.py rolling --rounds 3 --clients 8

The load generator is one evws loop (one process, no threads); the stderr of
the supervisor is watched on that loop too.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import evws
import evws.workers

MIGRATE = "/proc/sys/net/ipv4/tcp_migrate_req"


# -- the server side -----------------------------------------------------------------------


def serve(workers: int) -> int:
    """The supervised server: answers ``who`` with the worker's index, echoes the rest."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    reservation = evws.workers.reserve_port("127.0.0.1", 0)
    port = reservation.getsockname()[1]

    def worker(ctx: evws.WorkerContext) -> None:
        reservation.close()
        server = evws.Server(ping_interval=None, compression=None, loop=ctx.loop)

        def on_message(conn: evws.Connection, message: evws.Message) -> None:
            if message.is_text and message.body == b"who":
                conn.send(str(ctx.index))
            else:
                conn.send(message)

        def on_accept(sock, host, peer_port):
            def established(cv):
                try:
                    conn = cv.recv_all()[0]
                except evws.HandshakeError as exc:
                    if exc.response:
                        try:
                            sock.send(exc.response)
                        except OSError:
                            pass
                    sock.close()
                    return
                conn.on("each_message", on_message)
            server.establish(sock).cb(established)

        ctx.listen(server, "127.0.0.1", port, on_accept, backlog=1024)

    status = evws.run_workers(worker, workers, graceful_timeout=5.0,
                              on_ready=lambda: print(f"ready {port}", file=sys.stderr, flush=True))
    reservation.close()
    return status


# -- the client side -----------------------------------------------------------------------


class Supervisor:
    """The server subprocess; its stderr lines are read on the loop."""

    def __init__(self, loop: evws.Loop, workers: int) -> None:
        self.loop = loop
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(workers)],
                                     stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        assert self.proc.stderr is not None
        self.fd = self.proc.stderr.fileno()
        os.set_blocking(self.fd, False)
        self.lines: list[str] = []
        self.partial = b""
        self.watcher = loop.io(self.fd, "r", self._readable)
        self.port = 0

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        if not data:
            self.watcher.cancel()
            return
        *lines, self.partial = (self.partial + data).split(b"\n")
        self.lines.extend(line.decode(errors="replace") for line in lines)

    def wait_for(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if text in line:
                    return line
            seen = len(self.lines)
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"supervisor: no {text!r} within {timeout} s: {self.lines[-5:]}")
            self.loop.run_once(0.05)

    def start(self) -> None:
        self.port = int(self.wait_for("ready ").split()[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while self.proc.poll() is None and time.monotonic() < deadline:
                self.loop.run_once(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.watcher.cancel()
        self.proc.stderr.close()  # type: ignore[union-attr]


def run_until(loop: evws.Loop, condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out ({timeout} s) waiting for {what}")
        loop.run_once(0.05)


def spread_round(loop: evws.Loop, port: int, connections: int, in_flight: int = 64) -> Counter:
    """Open ``connections`` at once (``in_flight`` handshakes at a time); count per worker."""
    url = f"ws://127.0.0.1:{port}/"
    counts: Counter = Counter()
    conns: list[evws.Connection] = []
    state = {"started": 0, "pending": 0, "failed": 0}

    def start_one() -> None:
        state["started"] += 1
        state["pending"] += 1

        def opened(cv: evws.CondVar) -> None:
            try:
                conn = cv.recv()
            except (OSError, evws.WebSocketError):
                state["failed"] += 1
                state["pending"] -= 1
                return
            conns.append(conn)

            def answer(c: evws.Connection, m: evws.Message) -> None:
                counts[m.decoded_body] += 1
                state["pending"] -= 1
            conn.on("next_message", answer)
            conn.send("who")

        evws.connect(url, loop=loop, timeout=10, compression=None).cb(opened)

    def pump() -> bool:
        while state["pending"] < in_flight and state["started"] < connections:
            start_one()
        return state["started"] == connections and state["pending"] == 0

    run_until(loop, pump, 60, f"{connections} connections")
    for conn in conns:
        conn.close()
    run_until(loop, lambda: all(not c.is_read_open for c in conns), 20, "closing")
    if state["failed"]:
        print(f"  ({state['failed']} connections failed)")
    return counts


def measure_spread(rounds: int, connections: int, worker_counts: list[int]) -> None:
    loop = evws.Loop()
    print(f"spread: {connections} concurrent connections, {rounds} rounds per row")
    print("| workers | connections per worker (each round) | max/min (each round) |")
    print("| --- | --- | --- |")
    for workers in worker_counts:
        sup = Supervisor(loop, workers)
        try:
            sup.start()
            per_round, ratios = [], []
            for _ in range(rounds):
                counts = spread_round(loop, sup.port, connections)
                values = [counts.get(str(i), 0) for i in range(workers)]
                per_round.append("/".join(map(str, values)))
                ratios.append(f"{max(values) / max(min(values), 1):.2f}")
            print(f"| {workers} | {'; '.join(per_round)} | {', '.join(ratios)} |", flush=True)
        finally:
            sup.stop()
    loop.close()


def rolling_round(loop: evws.Loop, workers: int, clients: int, warmup: float = 0.5) -> dict:
    sup = Supervisor(loop, workers)
    stats: Counter = Counter()
    try:
        sup.start()
        url = f"ws://127.0.0.1:{sup.port}/"
        window = {"on": False, "stop": False}
        live: set = set()

        def attempt(slot: int) -> None:
            if window["stop"]:
                live.discard(slot)
                return
            # An attempt belongs to the window it started in, whatever its outcome.
            counted = window["on"]

            def count(what: str) -> None:
                if counted:
                    stats[what] += 1

            count("attempts")

            def opened(cv: evws.CondVar) -> None:
                try:
                    conn = cv.recv()
                except evws.HandshakeError as exc:
                    count(f"handshake {exc.status}" if exc.status != 400 else "handshake cut")
                    loop.call_soon(attempt, slot)
                    return
                except ConnectionRefusedError:
                    count("refused")
                    loop.call_soon(attempt, slot)
                    return
                except (OSError, evws.WebSocketError) as exc:
                    count(type(exc).__name__)
                    loop.call_soon(attempt, slot)
                    return
                got = []

                def echoed(c: evws.Connection, m: evws.Message) -> None:
                    got.append(m)
                    count("ok")
                    c.close()

                def finished(c: evws.Connection) -> None:
                    if not got:
                        count(f"closed {c.close_code}")
                    attempt(slot)
                conn.on("next_message", echoed)
                conn.on("finish", finished)
                conn.send("x" * 16)

            evws.connect(url, loop=loop, timeout=5, compression=None,
                         close_timeout=2).cb(opened)

        for slot in range(clients):
            live.add(slot)
            attempt(slot)
        t0 = time.monotonic()
        run_until(loop, lambda: time.monotonic() - t0 > warmup, 5, "warm-up")
        window["on"] = True
        started = time.monotonic()
        sup.proc.send_signal(signal.SIGHUP)
        sup.wait_for("rolling restart done", timeout=20)
        done = time.monotonic()
        run_until(loop, lambda: time.monotonic() - done > 0.2, 5, "cool-down")
        window["on"] = False
        window["stop"] = True
        run_until(loop, lambda: not live, 15, "the load to stop")
        stats["roll_ms"] = int((done - started) * 1000)
    finally:
        sup.stop()
    return dict(stats)


def read_migrate() -> str | None:
    try:
        with open(MIGRATE) as f:
            return f.read().strip()
    except OSError:
        return None


def write_migrate(value: str) -> bool:
    try:
        with open(MIGRATE, "w") as f:
            f.write(value)
    except OSError:
        return False
    return read_migrate() == value


def measure_rolling(rounds: int, clients: int, workers: int) -> None:
    loop = evws.Loop()
    original = read_migrate()
    settings: list[str | None] = [None]
    if original is None:
        print(f"rolling: {MIGRATE} does not exist: this kernel cannot migrate requests")
    elif write_migrate("0") and write_migrate("1"):
        settings = ["0", "1"]
    else:
        print(f"rolling: {MIGRATE} is {original} and cannot be changed here (not root?)")
        settings = [original]
    print(f"rolling restart of {workers} workers under {clients} concurrent "
          "connect+handshake+echo+close loops; counts from SIGHUP to 0.2 s after the roll")
    print("| tcp_migrate_req | round | roll (ms) | attempts | ok | failed to connect "
          "| closed 1012 before the echo | failures by kind |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    totals: dict[str | None, list[int]] = {}
    try:
        for setting in settings:
            if setting is not None and original is not None:
                write_migrate(setting)
            for r in range(1, rounds + 1):
                stats = rolling_round(loop, workers, clients)
                kinds = {k: v for k, v in stats.items()
                         if k not in ("attempts", "ok", "roll_ms", "closed 1012")}
                failed = sum(kinds.values())
                detail = ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) or "-"
                print(f"| {setting if setting is not None else 'n/a'} | {r} | {stats['roll_ms']} "
                      f"| {stats.get('attempts', 0)} | {stats.get('ok', 0)} | {failed} "
                      f"| {stats.get('closed 1012', 0)} | {detail} |", flush=True)
                totals[setting] = [a + b for a, b in zip(
                    totals.get(setting, [0, 0, 0]),
                    [stats.get("attempts", 0), failed, stats.get("closed 1012", 0)])]
        for setting, (attempts, failed, cut) in totals.items():
            print(f"tcp_migrate_req={setting}: {failed} of {attempts} attempts failed to connect, "
                  f"{cut} closed with 1012 before the echo")
    finally:
        if original is not None and read_migrate() != original:
            write_migrate(original)
        loop.close()


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        return serve(int(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=["spread", "rolling", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="workers for 'rolling'")
    args = parser.parse_args()
    if args.what in ("spread", "both"):
        measure_spread(args.rounds, args.connections, [2, 4])
    if args.what in ("rolling", "both"):
        measure_rolling(args.rounds, args.clients, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
