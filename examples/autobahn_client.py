#!/usr/bin/env python3
"""Autobahn|Testsuite echo client: the evws client against ``wstest -m fuzzingserver``.

    python3 examples/autobahn_client.py ws://127.0.0.1:9004 [--agent evws] [--no-compression]

The protocol is the one Autobahn's documentation gives for testing a client:
ask ``/getCaseCount`` (the server sends the number as one text message), then
for each case N connect to ``/runCase?case=N&agent=AGENT`` and echo every
message back exactly as it came (text as text, binary as binary) until the
server closes, and finally connect to ``/updateReports?agent=AGENT`` so the
server writes its reports. The verdicts are the fuzzingserver's; this script
only plays its part. scripts/autobahn_client.sh runs it all in one command.

Cases run one after another on one evws loop, each bounded by
``--case-timeout``. Exit status: 0 when every case connection was made and
finished and the reports were updated, 1 otherwise (a connect failure, a
case that never finished); the conformance verdicts are in the reports.
"""

import argparse
import sys
import time
from urllib.parse import quote

import evws


def open_connection(url: str, args: argparse.Namespace) -> evws.Connection:
    """Connect with the options this client uses for every case."""
    return evws.connect(
        url,
        max_payload_size=None,            # group 9 sends messages up to 16 MiB
        compression=None if args.no_compression else "deflate",
        ping_interval=None,               # no unsolicited pings in a case's transcript
        timeout=args.case_timeout,
        close_timeout=args.case_timeout,
    ).recv()


def case_count(base: str, args: argparse.Namespace) -> int:
    """``/getCaseCount``: one text message holding the number of cases."""
    conn = open_connection(f"{base}/getCaseCount", args)
    done = evws.CondVar()
    count: list[int] = []
    conn.on("each_message", lambda c, m: count.append(int(m.decoded_body)))
    conn.on("finish", lambda c: done.send())
    done.recv(timeout=args.case_timeout)
    if not count:
        raise RuntimeError("/getCaseCount closed without sending the count")
    return count[0]


def run_case(base: str, number: int, args: argparse.Namespace) -> bool:
    """Echo everything in case ``number`` until the server closes; False on trouble."""
    url = f"{base}/runCase?case={number}&agent={quote(args.agent)}"
    try:
        conn = open_connection(url, args)
    except (OSError, evws.WebSocketError) as exc:
        print(f"case {number}: cannot connect: {exc}", file=sys.stderr)
        return False
    done = evws.CondVar()

    @conn.on("each_message")
    def echo(conn, message):
        if conn.is_write_open:
            conn.send(message)

    conn.on("finish", lambda c: done.send())
    try:
        done.recv(timeout=args.case_timeout)
    except evws.WaitTimeout:
        print(f"case {number}: did not finish within {args.case_timeout} s", file=sys.stderr)
        conn.stream.abort()
        return False
    return True


def update_reports(base: str, args: argparse.Namespace) -> None:
    """``/updateReports``: the server writes its reports, then closes."""
    conn = open_connection(f"{base}/updateReports?agent={quote(args.agent)}", args)
    done = evws.CondVar()
    conn.on("finish", lambda c: done.send())
    done.recv(timeout=args.case_timeout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="ws://127.0.0.1:9004",
                        help="the fuzzingserver's base URL (default ws://127.0.0.1:9004)")
    parser.add_argument("--agent", default="evws", help="agent name in the reports (default evws)")
    parser.add_argument("--no-compression", action="store_true",
                        help="do not offer permessage-deflate (groups 12-13 then fail)")
    parser.add_argument("--case-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="longest a single case may take (default 60)")
    args = parser.parse_args()
    base = args.url.rstrip("/")

    started = time.monotonic()
    try:
        total = case_count(base, args)
    except (OSError, evws.WebSocketError, RuntimeError, ValueError) as exc:
        print(f"autobahn_client: cannot get the case count from {base}: {exc}", file=sys.stderr)
        return 1
    print(f"autobahn_client: {total} cases from {base}", file=sys.stderr, flush=True)
    failures = [n for n in range(1, total + 1) if not run_case(base, n, args)]
    try:
        update_reports(base, args)
    except (OSError, evws.WebSocketError) as exc:
        print(f"autobahn_client: cannot update the reports: {exc}", file=sys.stderr)
        return 1
    print(f"autobahn_client: {total} cases in {time.monotonic() - started:.1f} s, "
          f"{len(failures)} without a clean run{': ' + str(failures) if failures else ''}",
          file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
