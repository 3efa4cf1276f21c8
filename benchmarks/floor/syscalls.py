#!/usr/bin/env python3
"""Syscalls and wake-ups per round trip at 1 connection x 16 B, for evws, its peers and two floors.

    python3 benchmarks/floor/syscalls.py                  # evws, node-ws, picows, raw-epoll-py, c-echo; -d 3
    python3 benchmarks/floor/syscalls.py --servers evws,c-echo -d 5 --pin

For each server: start it, drive it with ``wsbench -c 1 -s 16`` (run.py's
load generator), and count the server's syscalls over the measured window
with ``perf stat`` on syscall tracepoints (no ptrace, so the rate is not
disturbed), divided by the round trips wsbench completed in that window.
``--tool strace`` uses ``strace -c -f`` instead, where perf or its
tracepoints are missing (strace slows the server several times; the counts
per round trip stay right, the rate does not).

The floors: ``raw-epoll-py`` (raw_epoll_echo.py: Python on select.epoll, one
recv and one send per message, no WebSocket library) and ``c-echo``
(c_echo.c: the same in C). They say what any Python server, and any server
at all, costs on this load: the gap between evws and them is what evws'
own code adds.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench_run", os.path.join(os.path.dirname(HERE), "run.py"))
run = importlib.util.module_from_spec(spec)
sys.modules["bench_run"] = run
spec.loader.exec_module(run)

RECV = ("recvfrom", "recvmsg", "read")
SEND = ("sendto", "sendmsg", "write", "writev")
WAIT = ("epoll_wait", "epoll_pwait", "epoll_pwait2")
CTL = ("epoll_ctl",)
NAMED = RECV + SEND + WAIT + CTL


def floor_commands() -> dict[str, list[str]]:
    c_src, c_bin = os.path.join(HERE, "c_echo.c"), os.path.join(run.BUILD, "c_echo")
    if not os.access(c_bin, os.X_OK) or os.path.getmtime(c_bin) < os.path.getmtime(c_src):
        os.makedirs(run.BUILD, exist_ok=True)
        subprocess.run([shutil.which("cc") or "gcc", "-O2", "-o", c_bin, c_src], check=True, timeout=120)
    return {"raw-epoll-py": [sys.executable, os.path.join(HERE, "raw_epoll_echo.py"), "--port", "{port}"],
            "c-echo": [c_bin, "--port", "{port}"]}


def perf_counts(pid: int, seconds: float) -> dict[str, float]:
    events = ["raw_syscalls:sys_enter", "context-switches", "task-clock"] + [
        f"syscalls:sys_enter_{name}" for name in NAMED]
    out = subprocess.run(["perf", "stat", "-x", ",", "-e", ",".join(events), "-p", str(pid), "--",
                          "sleep", str(seconds)], capture_output=True, text=True, timeout=seconds + 30)
    counts: dict[str, float] = {}
    for line in out.stderr.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[0].replace(".", "", 1).isdigit():
            counts[parts[2].removeprefix("syscalls:sys_enter_").removeprefix("raw_syscalls:sys_enter")
                   or "total"] = float(parts[0])
    if "total" not in counts:
        raise RuntimeError(f"perf stat gave no syscall counts: {out.stderr[-300:]}")
    return counts


def strace_counts(pid: int, seconds: float) -> dict[str, float]:
    proc = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(seconds)   # the measuring window itself, not a synchronisation
    proc.send_signal(2)
    err = proc.communicate(timeout=30)[1]
    counts = {"total": 0.0}
    for line in err.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            counts[parts[-1]] = float(parts[3])
            counts["total"] += float(parts[3])
    return counts


def dso_shares(pid: int, seconds: float) -> str:
    """Where the server's CPU time goes, by binary (kernel, libpython, ...), from perf record's cpu-clock samples."""
    data = os.path.join(run.BUILD, f"perf-{pid}.data")
    subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4000", "-o", data, "-p", str(pid), "--",
                    "sleep", str(seconds)], capture_output=True, timeout=seconds + 30)
    out = subprocess.run(["perf", "report", "-i", data, "--sort", "dso", "--stdio", "-q"], capture_output=True,
                         text=True, timeout=120).stdout
    os.unlink(data)
    shares = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith("%") and float(parts[0][:-1]) >= 2:
            shares.append(f"{os.path.basename(parts[-1])} {parts[0]}")
    return ", ".join(shares)


def measure(name: str, argv: list[str], gen: str, a: argparse.Namespace, log) -> dict:  # type: ignore[no-untyped-def]
    server_cpus = load_cpus = None
    if a.pin:
        cpus = sorted(os.sched_getaffinity(0))
        server_cpus, load_cpus = {cpus[0]}, {cpus[1]}
    server = run.Server(name, argv, log, server_cpus)
    try:
        load = subprocess.Popen([gen, "-p", str(server.port), "-c", "1", "-s", "16", "-d", str(a.duration),
                                 "-w", str(a.warmup), "-P", str(server.proc.pid)], stdout=subprocess.PIPE,
                                text=True, preexec_fn=run._pinned(load_cpus))
        time.sleep(a.warmup + 0.05)   # wsbench's window opens after its warm-up
        if a.dso:
            counts, shares = {"total": 1.0}, dso_shares(server.proc.pid, a.duration - 0.1)
        else:
            counts, shares = (perf_counts if a.tool == "perf" else strace_counts)(server.proc.pid, a.duration - 0.1), ""
        result = run.json.loads(load.communicate(timeout=a.duration + 60)[0].strip().splitlines()[-1])
    finally:
        server.stop()
    rts = result["rt_per_s"] * (a.duration - 0.1)
    per = {k: v / rts for k, v in counts.items() if k not in ("task-clock", "context-switches")}
    return {"rt_per_s": result["rt_per_s"], "server_us": result["server_cpu"] / result["rt_per_s"] * 1e6,
            "p50_us": result["p50_us"], "shares": shares, "cs": counts.get("context-switches", -1) / rts, "per": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="evws,node-ws,picows,raw-epoll-py,c-echo")
    ap.add_argument("-d", "--duration", type=float, default=3.0)
    ap.add_argument("-w", "--warmup", type=float, default=1.0)
    ap.add_argument("--tool", choices=("perf", "strace"), default="perf")
    ap.add_argument("--pin", action="store_true", help="server on the first CPU, wsbench on the second")
    ap.add_argument("--dso", action="store_true",
                    help="instead of counting syscalls, sample the server (perf record, cpu-clock) and print "
                         "its CPU time by binary: kernel vs interpreter vs extension modules")
    a = ap.parse_args()
    pythons, _ = run.ensure_python_peers(True)
    run.ensure_node(True)
    commands = floor_commands()
    ctx = run.Context(pythons=pythons)
    gen = run.build_generator("wsbench")
    rows = []
    with open(os.path.join(run.BUILD, "servers.log"), "ab") as log:
        for name in a.servers.split(","):
            argv = commands.get(name) or run.peer_command(name, "echo", ctx)
            if isinstance(argv, str):
                print(f"{name}: skipped ({argv})", file=sys.stderr)
                continue
            r = measure(name, argv, gen, a, log)
            print(f"{name}: {r['rt_per_s']:.0f} rt/s", file=sys.stderr, flush=True)
            rows.append((name, r))
    if a.dso:
        print("\n1 x 16 B, server CPU time by binary (perf record -e cpu-clock)\n")
        print("| server | rt/s | server CPU us/rt | shares (>= 2 %) |\n|---|---|---|---|")
        for name, r in rows:
            print(f"| {name} | {r['rt_per_s']:,.0f} | {r['server_us']:.1f} | {r['shares']} |")
        return
    print(f"\n1 x 16 B, per round trip, server side ({a.tool}; D={a.duration:g} s{', pinned' if a.pin else ''})\n")
    print("| server | rt/s | p50 us | server CPU us | syscalls | epoll waits | recv | send | epoll_ctl "
          "| other | ctx switches |")
    print("|---" * 11 + "|")
    for name, r in rows:
        per = r["per"]
        named = {k: sum(per.get(x, 0) for x in names) for k, names in
                 (("wait", WAIT), ("recv", RECV), ("send", SEND), ("ctl", CTL))}
        other = per["total"] - sum(named.values())
        print(f"| {name} | {r['rt_per_s']:,.0f} | {r['p50_us']:.0f} | {r['server_us']:.1f} | {per['total']:.2f} "
              f"| {named['wait']:.2f} | {named['recv']:.2f} | {named['send']:.2f} | {named['ctl']:.2f} "
              f"| {other:.2f} | {r['cs']:.2f} |")


if __name__ == "__main__":
    main()
