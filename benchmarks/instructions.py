#!/usr/bin/env python3
"""Instructions the echo server executes per round trip (callgrind), for one or more checkouts.

    python3 benchmarks/instructions.py                          # this checkout, 20,000 round trips
    python3 benchmarks/instructions.py --tree /tmp/old --tree . # old vs new in one run
    python3 benchmarks/instructions.py -n 5000 --annotate 15    # quicker, top 15 C functions
    python3 benchmarks/instructions.py --cprofile               # Python calls per round trip instead

Why instructions: wall-clock rates on this (shared, 2-core) machine move by
15-60 % between rounds, and a change worth a few per cent of the server's
Python path is lost in that. The number of instructions the server process
executes for a fixed workload does not depend on the load next to it, so
``valgrind --tool=callgrind`` counts are repeatable to a fraction of a per
cent and two trees can be compared in one run. They do not see cache misses
or the kernel (a syscall counts as the instructions around it), so they rank
changes to the Python path; they do not predict the round trip rate.

Method, per tree: ``examples/echo_server.py`` of that tree (``--port 0
--no-compression``, the tree first on ``sys.path`` and ``PYTHONPATH``) runs
under callgrind; a plain-Python client in this process (not measured)
connects over loopback and sends 16-byte masked BINARY frames, each waiting
for its echo. Between phases the client sends the server ``SIGUSR1``: a
handler installed around the example calls ``CALLGRIND_DUMP_STATS`` (a
10-line helper compiled on the fly against ``valgrind/callgrind.h``) and
acknowledges on a pipe, so each dump holds exactly one phase:

1. start-up, the handshake and 200 warm-up round trips (discarded);
2. ``-n`` round trips on ONE connection: a loop turn, one ``recv`` and one
   ``send`` per message;
3. 49 more connections, their handshakes and 20 warm-up round trips each (discarded);
4. ``-n`` round trips spread over the 50 connections, each with one frame
   in flight (several ready sockets per poll, as in ``run.py``'s 50 x 16 B).

Reported: instructions of phases 2 and 4 divided by their round trips.
``PYTHONHASHSEED=0`` keeps dict layouts, hence counts, the same between runs.
``--cprofile`` runs the same phases without valgrind under ``cProfile``
(started and saved by the same signal) and prints Python function calls per
round trip and the top functions of each measured phase.
"""

from __future__ import annotations

import argparse
import glob
import os
import pstats
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

HELPER_C = r"""
#include <valgrind/callgrind.h>
void evws_cg_dump(void) { CALLGRIND_DUMP_STATS; }
"""

# Runs in the server process: puts the tree first, installs the phase marker,
# then runs the tree's echo example as __main__.
WRAPPER = r"""
import os, runpy, signal, sys
tree, mode, helper, ack, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
sys.path.insert(0, tree)
import evws
if not os.path.abspath(evws.__file__).startswith(os.path.abspath(tree) + os.sep):
    sys.exit(f"evws imported from {evws.__file__}, not from {tree}")
phase = [0]
if mode == "callgrind":
    import ctypes
    dump = ctypes.CDLL(helper).evws_cg_dump
    def mark(signum, frame):
        dump()
        os.write(ack, b"m")
else:
    import cProfile
    prof = [cProfile.Profile()]
    prof[0].enable()
    def mark(signum, frame):
        prof[0].disable()
        phase[0] += 1
        prof[0].dump_stats(f"{out}.{phase[0]}")
        prof[0] = cProfile.Profile()
        prof[0].enable()
        os.write(ack, b"m")
signal.signal(signal.SIGUSR1, mark)
example = os.path.join(tree, "examples", "echo_server.py")
sys.argv = [example, "--port", "0", "--no-compression"]
runpy.run_path(example, run_name="__main__")
"""

PAYLOAD = bytes(range(16))
MASK = b"\x11\x22\x33\x44"
FRAME = bytes((0x82, 0x80 | len(PAYLOAD))) + MASK + bytes(
    b ^ MASK[i & 3] for i, b in enumerate(PAYLOAD))
REPLY = bytes((0x82, len(PAYLOAD))) + PAYLOAD
REQUEST = ("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n\r\n")
TIMEOUT = 600.0  # the server runs ~50x slower under callgrind


def build_helper(directory: str) -> str:
    src, lib = os.path.join(directory, "cg.c"), os.path.join(directory, "cg.so")
    with open(src, "w") as f:
        f.write(HELPER_C)
    subprocess.run([shutil.which("cc") or "gcc", "-O1", "-shared", "-fPIC", "-o", lib, src],
                   check=True, timeout=120)
    return lib


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(REQUEST.format(port=port).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("server closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake refused: {head[:80]!r}")
    if head.index(b"\r\n\r\n") + 4 != len(head):
        raise RuntimeError("unexpected bytes after the 101")
    return sock


def _echoes(sock: socket.socket, buf: bytes) -> tuple[int, bytes]:
    """Take the complete frames in ``buf``: count the echoes, answer Pings; return (count, rest).

    Pings come from the server's keepalive (every 20 s, so one or two per
    run at most): they get their Pong like from any client.
    """
    count = 0
    while len(buf) >= 2:
        length = buf[1] & 0x7F
        if length >= 126 or buf[1] & 0x80:
            raise RuntimeError(f"unexpected frame {buf[:8]!r}")
        if len(buf) < 2 + length:
            break
        frame, buf = buf[:2 + length], buf[2 + length:]
        if frame[0] == 0x89:
            pong = bytes(b ^ MASK[i & 3] for i, b in enumerate(frame[2:]))
            sock.sendall(bytes((0x8A, 0x80 | length)) + MASK + pong)
        elif frame == REPLY:
            count += 1
        else:
            raise RuntimeError(f"bad echo {frame!r}")
    return count, buf


def round_trips(sock: socket.socket, n: int) -> None:
    """``n`` echoes on one connection, one frame in flight."""
    buf = b""
    for _ in range(n):
        sock.sendall(FRAME)
        got = 0
        while not got:
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError("server closed the connection")
            got, buf = _echoes(sock, buf + chunk)
        if got != 1 or buf:
            raise RuntimeError("more than one echo for one frame")


def round_trips_many(socks: list[socket.socket], n: int) -> int:
    """About ``n`` echoes spread over ``socks``, one frame in flight on each; return the count."""
    each = max(1, n // len(socks))
    left = {s.fileno(): each for s in socks}
    bufs = {s.fileno(): b"" for s in socks}
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ, s)
        s.sendall(FRAME)
    busy = len(socks)
    while busy:
        ready = sel.select(TIMEOUT)
        if not ready:
            raise RuntimeError("no echo within the timeout")
        for key, _ in ready:
            s, fd = key.data, key.fd
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError("server closed a connection")
            got, bufs[fd] = _echoes(s, bufs[fd] + chunk)
            if not got:
                continue
            if got != 1 or bufs[fd]:
                raise RuntimeError("more than one echo for one frame")
            left[fd] -= 1
            if left[fd]:
                s.sendall(FRAME)
            else:
                busy -= 1
    sel.close()
    return each * len(socks)


class Server:
    """One tree's echo example, under callgrind or cProfile, with the phase marker."""

    def __init__(self, tree: str, mode: str, workdir: str, helper: str) -> None:
        self.out = os.path.join(workdir, "out")
        self.ack_r, ack_w = os.pipe()
        wrapper = [sys.executable, "-c", WRAPPER, tree, mode, helper, str(ack_w), self.out]
        if mode == "callgrind":
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}",
                   "--dump-line=no", "--compress-strings=no"] + wrapper
        else:
            cmd = wrapper
        env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=tree)
        self.errlog = open(os.path.join(workdir, "server.err"), "w+")
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=self.errlog,
                                     pass_fds=(ack_w,), cwd=workdir)
        os.close(ack_w)
        self.marks = 0
        self.port = self._port()

    def _port(self) -> int:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            self.errlog.seek(0)
            found = re.search(r"listening on ws://[^:]+:(\d+)/", self.errlog.read())
            if found:
                return int(found.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)  # polling a log file for the port, bounded by the deadline
        self.errlog.seek(0)
        raise RuntimeError(f"server did not start:\n{self.errlog.read()[-2000:]}")

    def mark(self) -> None:
        """End the current phase: the server dumps (or saves) its counts and says so."""
        os.kill(self.proc.pid, signal.SIGUSR1)
        sel = selectors.DefaultSelector()
        sel.register(self.ack_r, selectors.EVENT_READ)
        if not sel.select(TIMEOUT):
            raise RuntimeError("the server did not acknowledge the phase mark")
        sel.close()
        os.read(self.ack_r, 1)
        self.marks += 1

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=60)
        os.close(self.ack_r)
        self.errlog.close()

    def dump_file(self, phase: int) -> str:
        if os.path.exists(f"{self.out}.{phase}"):
            return f"{self.out}.{phase}"
        found = sorted(glob.glob(f"{self.out}*.{phase}"))  # callgrind adds -<tid> sometimes
        if not found:
            raise RuntimeError(f"no dump for phase {phase} in {os.path.dirname(self.out)}")
        return found[0]


def instructions(path: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def annotate(path: str, top: int) -> str:
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", path],
                         capture_output=True, text=True, timeout=300).stdout
    # Frames still on the stack at the dump (main, the loop's run) show as
    # 100 %: skip them and the program total.
    lines = [line for line in out.splitlines()
             if re.match(r"\s*[\d,]+ \(", line) and "(100.0%)" not in line]
    return "\n".join(line[:160] for line in lines[:top])


def calls_per_rt(path: str, n: int, top: int) -> str:
    stats = pstats.Stats(path)
    total = sum(v[1] for v in stats.stats.values())  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][1])  # type: ignore[attr-defined]
    text = [f"    {total / n:.2f} Python-level calls per round trip (cProfile, builtins included)"]
    for (file, line, name), (_, ncalls, _, _, _) in rows[:top]:
        where = f"{os.path.basename(file)}:{line}" if line else file
        text.append(f"    {ncalls / n:6.2f}/rt  {name}  ({where})")
    return "\n".join(text)


def measure(tree: str, n: int, conns: int, mode: str, helper: str, top: int) -> dict[str, float]:
    workdir = tempfile.mkdtemp(prefix="evws-instr-")
    server = Server(tree, mode, workdir, helper)
    results: dict[str, float] = {}
    try:
        first = connect(server.port)
        round_trips(first, 200)
        server.mark()                                # 1: start-up and warm-up
        round_trips(first, n)
        server.mark()                                # 2: one connection
        others = [connect(server.port) for _ in range(conns - 1)]
        socks = [first] + others
        round_trips_many(socks, 20 * conns)
        server.mark()                                # 3: handshakes and warm-up
        many = round_trips_many(socks, n)
        server.mark()                                # 4: many connections
        for s in socks:
            s.close()
        for phase, key, count in ((2, "1", n), (4, str(conns), many)):
            path = server.dump_file(phase)
            if mode == "callgrind":
                results[key] = instructions(path) / count
                if top:
                    print(f"  {tree}, {key} connection(s), top functions (self instructions):")
                    print(annotate(path, top))
            else:
                print(f"  {tree}, {key} connection(s):")
                print(calls_per_rt(path, count, top or 40))
    finally:
        server.stop()
    if not os.environ.get("EVWS_KEEP_DUMPS"):
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"  dumps kept in {workdir}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", help="checkout to measure (repeatable; default this one)")
    parser.add_argument("-n", type=int, default=20000, help="round trips per phase (default 20,000)")
    parser.add_argument("-c", "--connections", type=int, default=50,
                        help="connections of the second phase (default 50)")
    parser.add_argument("--annotate", type=int, default=0, metavar="K",
                        help="also print the top K C functions by self instructions")
    parser.add_argument("--cprofile", action="store_true",
                        help="count Python calls per round trip with cProfile instead (no valgrind)")
    args = parser.parse_args()
    trees = [os.path.abspath(t) for t in (args.tree or [ROOT])]
    mode = "cprofile" if args.cprofile else "callgrind"
    helper = ""
    if mode == "callgrind":
        if not shutil.which("valgrind"):
            sys.exit("valgrind not found (apt-get install valgrind)")
        helper = build_helper(tempfile.mkdtemp(prefix="evws-cg-"))
    rows = []
    for tree in trees:
        started = time.monotonic()
        results = measure(tree, args.n, args.connections, mode, helper, args.annotate)
        rows.append((tree, results, time.monotonic() - started))
    if mode == "callgrind":
        print(f"\nserver instructions per round trip, 16 B binary echo, n = {args.n:,}")
        print(f"{'tree':<40} {'1 conn':>12} {str(args.connections) + ' conns':>12}")
        for tree, results, took in rows:
            print(f"{tree:<40} {results['1']:>12,.0f} {results[str(args.connections)]:>12,.0f}"
                  f"   ({took:.0f} s)")


if __name__ == "__main__":
    main()
