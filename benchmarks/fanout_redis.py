#!/usr/bin/env python3
"""Fan-out through Redis: one publisher, 1,000 clients, 1 and 2 server processes.

    python3 benchmarks/fanout_redis.py [--clients 1000] [--rate 1000] [--seconds 4]

One command, about a minute: it starts its own redis-server (free loopback
port, no persistence), compiles benchmarks/fanout_client.c (a C epoll client:
a Python one would be the bottleneck at a million frames per second), and for
each server kind and worker count:

1. starts the server processes, each on its own port (every worker is a
   plain process with an evws Hub on a RedisBroker, or the peer);
2. connects ``--clients`` clients spread evenly over the workers, every one
   a member of the room "bench";
3. publishes ``--rate`` messages/s for ``--seconds`` from this process (an
   evws Hub of its own; for the peer, python-socketio's ``RedisManager``
   with ``write_only=True``), each carrying its CLOCK_MONOTONIC send time;
4. reports delivered messages/s (all clients), p50/p99 publish-to-receive
   latency, the servers' CPU (user+system seconds per second of the run)
   and deliveries per server CPU-second.

The peer is python-socketio (AsyncServer on aiohttp with
``AsyncRedisManager``), pinned in the ``python-socketio`` section of
benchmarks/requirements-peers.txt and run from run.py's venv in
``~/.cache/evws-benchmarks`` (installed on first use; ``--no-install`` uses
what is there); skipped with a printed reason when it cannot be installed.
The machine is shared: numbers are provisional, compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
ROOM = "bench"


# -- server processes (run by this same script with --worker) -------------------------

def evws_worker(url: str, port: int) -> None:
    sys.path.insert(0, str(ROOT))
    import evws

    loop = evws.get_loop()
    hub = evws.Hub(evws.RedisBroker(url, loop=loop), loop=loop)
    server = evws.Server(loop=loop, ping_interval=None, compression=None)

    def accepted(sock: socket.socket, host: str, peer_port: int) -> None:
        def established(cv: evws.CondVar) -> None:
            try:
                conn = cv.recv_all()[0]
            except Exception:
                return
            hub.join(conn, ROOM)
        server.establish(sock).cb(established)

    server.listen("127.0.0.1", port, accepted)
    hub.once("healthy", lambda h: print(f"PORT {port}", flush=True))
    loop.signal(signal.SIGTERM, lambda signum: loop.stop())
    loop.run()


def socketio_worker(url: str, port: int) -> None:
    import asyncio

    import socketio  # type: ignore[import-not-found]
    from aiohttp import web

    sio = socketio.AsyncServer(async_mode="aiohttp",
                               client_manager=socketio.AsyncRedisManager(url))

    @sio.event  # type: ignore[misc]
    async def connect(sid: str, environ: dict) -> None:  # type: ignore[type-arg]
        await sio.enter_room(sid, ROOM)

    async def main() -> None:
        app = web.Application()
        sio.attach(app)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.sleep(0.5)  # let the manager's Redis listener subscribe
        print(f"PORT {port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


# -- the driver ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line of the child's stdout within ``timeout`` seconds (fails loudly)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or (proc.poll() is not None and not sel.select(0)):
                raise RuntimeError(f"{proc.args!r}: no line within {timeout} s "
                                   f"(exit {proc.poll()}, got {buf!r})")
            if sel.select(left):
                chunk = os.read(proc.stdout.fileno(), 1)
                if not chunk:
                    raise RuntimeError(f"{proc.args!r} exited ({proc.poll()})")
                buf += chunk
    return buf.decode().strip()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_redis(tmp: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found (Debian: apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tmp, "--logfile", "",
                             "--protected-mode", "no"], stdout=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while "Ready to accept connections" not in read_line(proc, deadline - time.monotonic()):
        pass
    proc.stdout.close()  # type: ignore[union-attr]
    return proc, f"redis://127.0.0.1:{port}/0"


def publish_evws(url: str, rate: int, seconds: float) -> int:
    sys.path.insert(0, str(ROOT))
    import evws

    loop = evws.Loop()
    hub = evws.Hub(evws.RedisBroker(url, loop=loop), loop=loop)
    ready = evws.CondVar(loop)
    hub.once("healthy", lambda h: ready.send())
    ready.recv(timeout=10)
    pad = "x" * 40
    sent = 0
    start = time.monotonic()

    def tick() -> None:
        nonlocal sent
        due = min(int((time.monotonic() - start) * rate), int(rate * seconds))
        while sent < due:
            hub.publish(ROOM, f"t={time.monotonic_ns()};{pad}")
            sent += 1
        if sent >= rate * seconds:
            loop.stop()
    loop.timer(0.001, tick, interval=0.001)
    loop.run()
    # Let the last publishes reach Redis before closing.
    deadline = time.monotonic() + 5
    while hub.broker.pending and time.monotonic() < deadline:  # type: ignore[attr-defined]
        loop.run_once(0.01)
    hub.close()
    loop.close()
    return sent


def publish_socketio(url: str, rate: int, seconds: float) -> int:
    import socketio

    manager = socketio.RedisManager(url, write_only=True)
    pad = "x" * 40
    sent = 0
    start = time.monotonic()
    while sent < rate * seconds:
        due = min(int((time.monotonic() - start) * rate), int(rate * seconds))
        while sent < due:
            manager.emit("m", f"t={time.monotonic_ns()};{pad}", room=ROOM, namespace="/")
            sent += 1
        time.sleep(0.0005)  # pacing the publisher, not synchronisation
    return sent


def peer_python(install: bool) -> tuple[str | None, str]:
    """(the venv's python that imports socketio, redis and aiohttp, or None; why not)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_run", HERE / "run.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = bench
    spec.loader.exec_module(bench)
    bench.ensure_python_peers(install)   # installs every section, this one included
    python = os.path.join(bench.BUILD, "venv", "bin", "python")
    probe = [python, "-c", "import aiohttp, redis, socketio"]
    if not os.access(python, os.X_OK):
        return None, f"no venv at {os.path.dirname(os.path.dirname(python))}"
    done = subprocess.run(probe, capture_output=True, text=True, timeout=60)
    if done.returncode:
        return None, (done.stderr.strip().splitlines() or ["import failed"])[-1]
    return python, ""


def publish_in_peer(python: str, url: str, rate: int, seconds: float) -> int:
    """Run publish_socketio in the peer's venv (this process has no socketio); its count."""
    out = subprocess.run([python, __file__, "--publish", "socketio", "--redis", url, "--rate", str(rate),
                          "--seconds", str(seconds)], capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode:
        raise RuntimeError(f"the socketio publisher failed: {out.stderr[-500:]}")
    return int(out.stdout.split()[-1])


def run_case(kind: str, workers: int, args: argparse.Namespace, url: str,
             client_bin: str, python: str = sys.executable) -> dict[str, object]:
    ports = [free_port() for _ in range(workers)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([python, __file__, "--worker", kind, "--redis", url,
                               "--port", str(p)], stdout=subprocess.PIPE, env=env)
             for p in ports]
    client = None
    try:
        for proc in procs:
            read_line(proc, 20)
        cmd = [client_bin, "-p", ",".join(map(str, ports)), "-n", str(args.clients),
               "-d", str(args.seconds + 1.0)]  # a second more: the tail of the run
        if kind == "socketio":
            cmd += ["-S", "-P", "/socket.io/?EIO=4&transport=websocket"]
        client = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        if read_line(client, 40) != "READY":
            raise RuntimeError("client not ready")
        cpu0 = sum(cpu_seconds(p.pid) for p in procs)
        t0 = time.monotonic()
        if kind == "socketio":
            sent = publish_in_peer(python, url, args.rate, args.seconds)
        else:
            sent = publish_evws(url, args.rate, args.seconds)
        result = json.loads(read_line(client, args.seconds + 20))
        if result["received"] > sent * args.clients:
            raise RuntimeError(f"more messages received than sent: {result}")
        elapsed = time.monotonic() - t0
        cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu0
        delivered = result["received"] / args.seconds
        return {"server": kind, "workers": workers, "sent": sent,
                "expected": sent * args.clients, "received": result["received"],
                "delivered_per_s": delivered, "p50_ms": result["p50_ms"],
                "p99_ms": result["p99_ms"], "server_cpu": cpu / elapsed,
                "per_cpu_s": result["received"] / cpu if cpu else 0.0}
    finally:
        for proc in [client, *procs]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [client, *procs]:
            if proc is None:
                continue
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=1000, help="messages/s published")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--publish", help=argparse.SUPPRESS)
    parser.add_argument("--no-install", action="store_true",
                        help="do not install the peer; use what run.py's venv has")
    args = parser.parse_args()
    if args.worker:
        (socketio_worker if args.worker == "socketio" else evws_worker)(args.redis, args.port)
        return
    if args.publish:
        print(publish_socketio(args.redis, args.rate, args.seconds), flush=True)
        return
    tmp = tempfile.mkdtemp(prefix="evws-fanout-")
    client_bin = os.path.join(tmp, "fanout_client")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("a C compiler is needed for benchmarks/fanout_client.c")
    subprocess.run([cc, "-O2", "-o", client_bin, str(HERE / "fanout_client.c")], check=True)
    kinds = ["evws"]
    peer, why = peer_python(not args.no_install)
    if peer is not None:
        kinds.append("socketio")
    else:
        print(f"python-socketio peer skipped: {why} (benchmarks/requirements-peers.txt)")
    redis_proc, url = start_redis(tmp)
    rows = []
    try:
        for kind in kinds:
            for workers in map(int, args.workers.split(",")):
                print(f"... {kind}, {workers} worker(s)", file=sys.stderr, flush=True)
                try:
                    rows.append(run_case(kind, workers, args, url, client_bin,
                                         peer if kind == "socketio" and peer else sys.executable))
                except (RuntimeError, ValueError) as exc:
                    print(f"{kind} with {workers} worker(s) failed: {exc}")
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nfan-out through Redis: {args.rate} msg/s published for {args.seconds:g} s "
          f"into one room of {args.clients} clients (provisional: shared machine)\n")
    head = (f"{'server':<10}{'workers':>8}{'delivered/s':>13}{'of expected':>12}"
            f"{'p50 ms':>9}{'p99 ms':>9}{'server CPU':>12}{'deliv./CPU-s':>14}")
    print(head)
    print("-" * len(head))
    for r in rows:
        share = r["received"] / r["expected"] if r["expected"] else 0  # type: ignore[operator]
        print(f"{r['server']:<10}{r['workers']:>8}{r['delivered_per_s']:>13,.0f}{share:>11.0%} "
              f"{r['p50_ms']:>8.2f}{r['p99_ms']:>9.2f}{r['server_cpu']:>11.2f} "
              f"{r['per_cpu_s']:>13,.0f}")


if __name__ == "__main__":
    main()
