#!/usr/bin/env python3
"""Benchmark the evws echo server against its peers, side by side, in one run.

    python3 benchmarks/run.py                 # the default matrix, ~1 min
    python3 benchmarks/run.py --pin -r 7      # the README's table: 7 rounds, per-round ratios
    python3 benchmarks/run.py -d 2 -n 1000    # quicker
    python3 benchmarks/run.py --servers evws,websockets -m 50x16,4x1M -n 0

Servers: ``evws`` (``examples/echo_server.py --max-payload-size 0``),
``websockets`` (``peers/websockets_echo.py`` on this Python; its C speedups are
used when installed) and ``node-ws`` (``peers/node_ws_echo.js``; only when
``node`` and the npm ``ws`` package can be found: in ``$NODE_PATH``, in
``benchmarks/node_modules`` or in the shared bench cache, see ``_node_path``).

The load comes from a separate process, ``wsbench`` (``wsbench.c``, compiled
here with the system C compiler on first use), a single-threaded epoll client
in C whose own CPU per round trip is small next to the kernel's loopback cost;
see its header for the method. ``--generator wsload`` uses the shared
harness's ``wsload`` binary instead, when it is built.

Every cell (workload x server) gets a freshly started server on a fresh port,
and for each workload all servers run back to back, so slow drift in machine
load hits them alike. Compare ratios, and server CPU microseconds per round
trip (the steadiest figure on a noisy machine), rather than absolute rates.
With ``-r N`` a last table gives, per workload, the spread of the ratio from
round to round: a difference smaller than that spread is noise. ``--pin``
puts the servers on one CPU and the load generator on another.

Bounds: a server gets 20 s to listen, a load run warm-up + duration + 40 s
(idle mode 90 s); servers are stopped with SIGTERM, then SIGKILL after 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "evws-benchmarks")
SHARED_CACHE = os.path.join(
    os.environ.get("EVWS_TOOLS_HOME")
    or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "evws-tools"),
    "bench")

DEFAULT_MATRIX = "1x16,50x16,50x4K,4x1M"


def _node_path() -> str | None:
    """A folder holding the npm ``ws`` package, or None (node-ws is then skipped)."""
    candidates = os.environ.get("NODE_PATH", "").split(os.pathsep) + [
        os.path.join(HERE, "node_modules"), os.path.join(SHARED_CACHE, "node_modules")]
    for folder in candidates:
        if folder and os.path.isfile(os.path.join(folder, "ws", "package.json")):
            return folder
    return None


def server_commands() -> dict[str, list[str]]:
    """name -> argv (with ``{port}``) of every server that can run here."""
    servers = {
        "evws": [sys.executable, os.path.join(ROOT, "examples", "echo_server.py"),
                 "--max-payload-size", "0", "--port", "{port}"],
        "websockets": [sys.executable, os.path.join(HERE, "peers", "websockets_echo.py"),
                       "--port", "{port}"],
    }
    if shutil.which("node") and _node_path():
        servers["node-ws"] = ["node", os.path.join(HERE, "peers", "node_ws_echo.js"), "--port", "{port}"]
    return servers


def build_generator(kind: str) -> str:
    """Path of the load generator binary, compiling ``wsbench.c`` if needed."""
    if kind == "wsload":
        path = os.path.join(SHARED_CACHE, "wsload")
        if not os.access(path, os.X_OK):
            sys.exit(f"run.py: {path} is not built (run ../shared/bench/setup.sh), or use --generator wsbench")
        return path
    src = os.path.join(HERE, "wsbench.c")
    binary = os.path.join(BUILD, "wsbench")
    if not os.access(binary, os.X_OK) or os.path.getmtime(binary) < os.path.getmtime(src):
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if not cc:
            sys.exit("run.py: a C compiler is needed to build the load generator (wsbench.c)")
        os.makedirs(BUILD, exist_ok=True)
        subprocess.run([cc, "-O2", "-Wall", "-o", binary + ".tmp", src], check=True, timeout=120)
        os.replace(binary + ".tmp", binary)
    return binary


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
    return int(text[:-1] if mult > 1 else text) * mult


def fmt_size(n: int) -> str:
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Server:
    """One server process in its own process group, with a bounded start and stop."""

    def __init__(self, name: str, argv: list[str], log,  # type: ignore[no-untyped-def]
                 cpus: set[int] | None = None) -> None:
        self.name = name
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        node_path = _node_path()
        if node_path:
            env["NODE_PATH"] = node_path
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        log.write(f"=== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     env=env, start_new_session=True, preexec_fn=_pinned(cpus))
        deadline = time.monotonic() + 20
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start listening (exit {self.proc.returncode})")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)   # our child's own group
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(3)


def _pinned(cpus: set[int] | None):  # type: ignore[no-untyped-def]
    """A preexec_fn that pins the child to ``cpus`` before it execs (so do all its threads)."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def run_load(argv: list[str], timeout: float, cpus: set[int] | None = None) -> dict:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                             preexec_fn=_pinned(cpus))
    except subprocess.TimeoutExpired:
        return {"error": "load generator timed out"}
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"bad generator output (rc {out.returncode}): {out.stderr[-200:]}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default=None,
                    help="comma-separated subset of evws,websockets,node-ws (default: all that can run)")
    ap.add_argument("-m", "--matrix", default=DEFAULT_MATRIX, help=f"CxS cells (default {DEFAULT_MATRIX})")
    ap.add_argument("-d", "--duration", type=float, default=3.0, help="measured seconds per cell (default 3)")
    ap.add_argument("-w", "--warmup", type=float, default=1.0, help="warm-up seconds per cell (default 1)")
    ap.add_argument("-n", "--idle", type=int, default=5000, help="idle connections (default 5000; 0 skips)")
    ap.add_argument("-r", "--rounds", type=int, default=1, help="repeat and report medians (default 1)")
    ap.add_argument("-t", "--text", action="store_true", help="text messages instead of binary")
    ap.add_argument("--generator", choices=("wsbench", "wsload"), default="wsbench")
    ap.add_argument("--pin", action="store_true",
                    help="run each server on the first CPU and the load generator on the second "
                         "(needs two CPUs): they no longer compete for one core")
    ap.add_argument("--json", help="also write the raw results to this file")
    a = ap.parse_args()

    available = server_commands()
    names = a.servers.split(",") if a.servers else list(available)
    for name in names:
        if name not in available:
            ap.error(f"unknown or unavailable server {name!r} (available: {', '.join(available)})")
    gen = build_generator(a.generator)
    server_cpus = load_cpus = None
    if a.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            ap.error("--pin needs at least two CPUs")
        server_cpus, load_cpus = {cpus[0]}, {cpus[1]}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # the servers inherit it
    if a.idle and hard < a.idle + 100:
        print(f"warning: the file limit ({hard}) is below {a.idle} connections", file=sys.stderr)

    cells = [(int(c), parse_size(s)) for c, s in (x.lower().split("x") for x in a.matrix.split(",") if x)]
    work = [("rt", c, s) for c, s in cells] + ([("idle", a.idle, 16)] if a.idle else [])
    os.makedirs(BUILD, exist_ok=True)
    log_path = os.path.join(BUILD, "servers.log")
    results: dict[tuple[str, str], list[dict]] = {}
    started = time.monotonic()
    with open(log_path, "ab") as log:
        for rnd in range(a.rounds):
            for kind, c, s in work:
                key = f"{c} x {fmt_size(s)}" if kind == "rt" else f"{c} idle"
                for name in names:
                    try:
                        server = Server(name, available[name], log, server_cpus)
                    except RuntimeError as exc:
                        results.setdefault((name, key), []).append({"error": str(exc)})
                        print(f"  {name}: {exc} (see {log_path})", file=sys.stderr)
                        continue
                    try:
                        pid = str(server.proc.pid)
                        if kind == "rt":
                            argv = [gen, "-p", str(server.port), "-c", str(c), "-s", str(s),
                                    "-d", str(a.duration), "-w", str(a.warmup), "-P", pid]
                            r = run_load(argv + (["-t"] if a.text else []), a.warmup + a.duration + 40,
                                         load_cpus)
                        else:
                            mode = ["-m", "idle"] if a.generator == "wsbench" else ["-m", "conns"]
                            r = run_load([gen, "-p", str(server.port), *mode, "-n", str(c), "-P", pid,
                                          "-T", "60"], 90, load_cpus)
                    finally:
                        server.stop()
                    results.setdefault((name, key), []).append(r)
                    print(f"[{time.monotonic() - started:4.0f}s r{rnd + 1}] {key:<14} {name:<11} "
                          f"{_summary(kind, r)}", file=sys.stderr, flush=True)

    print(_tables(names, work, results, a))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "results": [{"server": n, "cell": k, "runs": v}
                                                   for (n, k), v in results.items()]}, f, indent=1)


def _summary(kind: str, r: dict) -> str:
    if "error" in r:
        return "ERROR " + r["error"]
    if kind == "rt":
        return (f"{r['rt_per_s']:9.0f} rt/s  p50 {r['p50_us']:7.0f} us  cpu srv {r['server_cpu']:.2f} "
                f"cli {r['client_cpu']:.2f}  errors {r['errors'] + r['mismatch'] + r['conn_fail']}")
    return f"{r['echo_ok']} echoed  {r['kb_per_conn']:.1f} KiB/conn"


def _median(runs: list[dict], field: str) -> float | None:
    values = [r[field] for r in runs if isinstance(r.get(field), (int, float)) and r[field] >= 0]
    return statistics.median(values) if values else None


def _tables(names: list[str], work: list, results: dict, a: argparse.Namespace) -> str:
    base = names[0]
    head = "| workload | " + " | ".join(names) + " |"
    rule = "|---" * (len(names) + 1) + "|"
    out = [f"\nround trips/s ({'text' if a.text else 'binary'}, D={a.duration:g} s, median of {a.rounds}); "
           f"(x) = {base} / server, so above 1 means {base} is faster; idle rows: server RSS KiB/conn\n",
           head, rule]
    for kind, c, s in work:
        key = f"{c} x {fmt_size(s)}" if kind == "rt" else f"{c} idle"
        row = [key]
        field = "rt_per_s" if kind == "rt" else "kb_per_conn"
        ref = _median(results.get((base, key), []), field)
        for name in names:
            runs = results.get((name, key), [])
            v = _median(runs, field)
            bad = sum(r.get("errors", 0) + r.get("mismatch", 0) for r in runs if "error" not in r)
            if kind == "idle":
                ok = _median(runs, "echo_ok")
                cell = "FAILED" if v is None else f"{v:.1f} KiB ({ok:.0f} ok)"
            elif not v:
                cell = "FAILED"
            else:
                cell = f"{v:,.0f}" + (f" ({ref / v:.2f}x)" if ref and name != base else "")
            row.append(cell + (f" err={bad}" if bad else ""))
        out.append("| " + " | ".join(row) + " |")
    out += ["\nserver CPU microseconds per round trip (lower is better)\n", head, rule]
    for kind, c, s in work:
        if kind != "rt":
            continue
        key = f"{c} x {fmt_size(s)}"
        row = [key]
        for name in names:
            runs = results.get((name, key), [])
            rate, cpu = _median(runs, "rt_per_s"), _median(runs, "server_cpu")
            row.append(f"{cpu / rate * 1e6:.1f}" if rate and cpu is not None else "-")
        out.append("| " + " | ".join(row) + " |")
    if a.rounds > 1 and len(names) > 1:
        out += [f"\nper round: {base} / server within each round (servers run back to back): "
                f"median [lowest - highest], rounds where {base} was faster\n",
                "| workload | " + " | ".join(names[1:]) + " |", "|---" * len(names) + "|"]
        for kind, c, s in work:
            if kind != "rt":
                continue
            key = f"{c} x {fmt_size(s)}"
            row = [key]
            for name in names[1:]:
                ratios = _round_ratios(results.get((base, key), []), results.get((name, key), []))
                row.append(f"{statistics.median(ratios):.2f}x [{min(ratios):.2f} - {max(ratios):.2f}], "
                           f"{sum(r > 1 for r in ratios)}/{len(ratios)}" if ratios else "-")
            out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def _round_ratios(base_runs: list[dict], runs: list[dict]) -> list[float]:
    """base / server rate for each round in which both ran without error.

    The servers of one round ran seconds apart, so these ratios show how
    much of a difference the machine's own drift can make between rounds.
    """
    pairs = zip(base_runs, runs)
    return [b["rt_per_s"] / r["rt_per_s"] for b, r in pairs
            if b.get("rt_per_s", 0) > 0 and r.get("rt_per_s", 0) > 0]


if __name__ == "__main__":
    main()
