"""Where a connection's life goes on the server: connection churn, profiled.

The evws echo server runs in this process while ``wsbench -m churn`` (the
load generator ``run.py`` builds) opens TCP, handshakes, echoes 16 B and
closes, ``-c`` slots in flight. Three ways to look, each independent of how
busy the machine is except the first:

    python3 benchmarks/churn_profile.py                # cProfile, top functions
    python3 benchmarks/churn_profile.py --callgrind    # user-space instructions per cycle
    python3 benchmarks/churn_profile.py --strace       # syscalls per cycle

``--callgrind`` runs the server twice under valgrind (short and long) and
divides the difference in instructions by the difference in cycles, so
start-up cancels out; ``--tree DIR`` measures another checkout (an older
commit) the same way, for before/after in one sitting.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def serve(duration: float, slots: int, profile: bool) -> None:
    """The server side: echo until the load generator exits; print cycles done."""
    from run import build_generator  # the same wsbench binary as run.py

    import evws

    server = evws.Server(max_payload_size=None, compression="deflate")
    finished = [0]

    def on_accept(sock, host, port):
        def established(cv):
            try:
                conn = cv.recv()
            except evws.HandshakeError:
                sock.close()
                return
            conn.on("each_message", lambda c, m: c.send(m))
            conn.on("finish", lambda c: finished.__setitem__(0, finished[0] + 1))
        server.establish(sock).cb(established)

    listener = server.listen("127.0.0.1", 0, on_accept)
    loop = evws.get_loop()
    gen = subprocess.Popen([build_generator("wsbench"), "-p", str(listener.port), "-m", "churn",
                            "-c", str(slots), "-d", str(duration), "-w", "1", "-T", "60"],
                           stdout=subprocess.DEVNULL)
    loop.child(gen.pid, lambda pid, status: loop.stop())
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    loop.run()
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    listener.close()
    print(f"cycles {finished[0]}", file=sys.stderr)


def _run_child(tree: str, wrapper: list[str], duration: float, slots: int) -> tuple[str, int]:
    env = dict(os.environ, PYTHONPATH=tree, PYTHONHASHSEED="0")
    proc = subprocess.run([*wrapper, sys.executable, os.path.abspath(__file__), "--serve",
                           "-d", str(duration), "-c", str(slots)],
                          env=env, cwd=tree, capture_output=True, text=True, timeout=900)
    match = re.search(r"cycles (\d+)", proc.stderr)
    if not match:
        sys.exit(f"churn_profile: the server did not report its cycles:\n{proc.stderr[-2000:]}")
    return proc.stderr, int(match[1])


def callgrind(tree: str, slots: int) -> None:
    if not shutil.which("valgrind"):
        sys.exit("churn_profile: valgrind is not installed (apt-get install valgrind)")
    counts = []
    with tempfile.TemporaryDirectory() as tmp:
        for duration in (2, 8):
            out = os.path.join(tmp, f"cg.{duration}")
            err, cycles = _run_child(tree, ["valgrind", "--tool=callgrind",
                                            f"--callgrind-out-file={out}"], duration, slots)
            total = re.search(r"Collected : (\d+)", err)
            if not total:
                sys.exit(f"churn_profile: no callgrind total:\n{err[-2000:]}")
            counts.append((int(total[1]), cycles))
    (i1, c1), (i2, c2) = counts
    print(f"{tree}: {(i2 - i1) / max(c2 - c1, 1):,.0f} instructions per churn cycle "
          f"(user space; {c1} and {c2} cycles)")


def strace(tree: str, slots: int) -> None:
    if not shutil.which("strace"):
        sys.exit("churn_profile: strace is not installed (apt-get install strace)")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "strace")
        _err, cycles = _run_child(tree, ["strace", "-c", "-o", out], 3, slots)
        rows = []
        for line in open(out):
            parts = line.split()
            if len(parts) >= 5 and parts[-1].isidentifier() and parts[3].isdigit():
                rows.append((int(parts[3]), parts[-1]))
    print(f"{tree}: syscalls per churn cycle ({cycles} cycles)")
    for calls, name in sorted(rows, reverse=True):
        if calls / cycles >= 0.05 and name not in ("wait4", "total"):
            print(f"  {name:14s} {calls / cycles:5.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--callgrind", action="store_true", help="instructions per cycle (valgrind)")
    ap.add_argument("--strace", action="store_true", help="syscalls per cycle (strace -c)")
    ap.add_argument("--tree", default=os.path.dirname(HERE), help="the evws checkout to measure")
    ap.add_argument("-c", type=int, default=20, help="connections in flight (default 20)")
    ap.add_argument("-d", type=float, default=3, help="seconds of load (cProfile mode)")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve(a.d, a.c, profile=False)
    elif a.callgrind:
        callgrind(os.path.abspath(a.tree), a.c)
    elif a.strace:
        strace(os.path.abspath(a.tree), a.c)
    else:
        serve(a.d, a.c, profile=True)


if __name__ == "__main__":
    main()
