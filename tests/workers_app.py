"""A supervised echo server for tests/test_workers.py (run as a script).

Each worker answers ``pid`` with ``pid PID INDEX``, answers ``hang`` with
``hanging`` and then blocks its loop for 30 s (a hung worker), exits at once
on ``crash``, and echoes anything else. The supervisor logs its events on stderr (``evws.workers`` at
INFO, one message per line) and prints ``port N`` once the port is reserved;
with ``--fds`` it prints ``fds before N after M`` (its open descriptors
before and after the supervisor ran) at the end.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import evws
import evws.workers


def count_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--crash-at-start", action="store_true")
    parser.add_argument("--crash-on-restart", action="store_true",
                        help="every worker after a slot's first fails at start-up")
    parser.add_argument("--fds", action="store_true")
    parser.add_argument("--heartbeat-interval", type=float, default=0.2)
    parser.add_argument("--heartbeat-timeout", type=float, default=1.0)
    parser.add_argument("--graceful-timeout", type=float, default=2.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

    before = count_fds()
    reservation = evws.workers.reserve_port("127.0.0.1", 0)
    port = reservation.getsockname()[1]
    print(f"port {port}", file=sys.stderr, flush=True)

    def worker(ctx: evws.WorkerContext) -> None:
        reservation.close()  # the supervisor's; a worker has its own listener
        if args.crash_at_start or (args.crash_on_restart and ctx.generation > 0):
            raise RuntimeError("broken at start-up")
        server = evws.Server(ping_interval=None, close_timeout=2.0)

        def on_message(conn: evws.Connection, message: evws.Message) -> None:
            text = message.decoded_body if message.is_text else ""
            if text == "pid":
                conn.send(f"pid {os.getpid()} {ctx.index}")
            elif text == "hang":
                conn.send("hanging")  # written at once: the test knows the loop is stuck
                time.sleep(30)  # heartbeats and stop requests go unanswered
            elif text == "crash":
                os._exit(3)
            else:
                conn.send(message)

        def on_accept(sock, host, port_):
            def established(cv):
                try:
                    conn = cv.recv_all()[0]
                except evws.HandshakeError:
                    sock.close()
                    return
                conn.on("each_message", on_message)
            server.establish(sock).cb(established)

        ctx.listen(server, "127.0.0.1", port, on_accept)

    status = evws.run_workers(
        worker, args.workers, heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout, graceful_timeout=args.graceful_timeout,
        startup_timeout=5.0, min_uptime=0.5, max_startup_failures=4, backoff=0.05,
        max_backoff=0.5)
    reservation.close()
    if args.fds:
        print(f"fds before {before} after {count_fds()}", file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
