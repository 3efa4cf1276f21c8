#!/usr/bin/env python3
"""Benchmark evws against its peers, side by side, in one run.

    python3 benchmarks/run.py                          # every workload, every peer, 1 round (~6 min)
    python3 benchmarks/run.py --pin -r 7 -W echo       # the README's echo table: 7 rounds, per-round ratios
    python3 benchmarks/run.py -W churn,tls -d 2        # two workloads, shorter cells
    python3 benchmarks/run.py --servers evws,websockets -m 50x16,4x1M -n 0

Workloads (``-W``/``--workload``, comma-separated; default all):

* ``echo``: the four echo cells (``-m``, default 1x16,50x16,50x4K,4x1M:
  connections x message size, closed loop) and N idle connections (``-n``):
  round trips/s, server CPU us per round trip, RSS per idle connection.
* ``churn``: 50 slots (``--churn``) each looping open TCP, handshake, one
  16 B echo, closing handshake, close: handshakes/s, server CPU us each.
* ``fanout``: 1,000 clients (``--fanout``); one of them publishes 16 B and
  1 KiB messages (``--fanout-sizes``) that the server sends to all of them,
  at most 8 broadcasts outstanding: deliveries/s, p99 publish-to-receive
  latency, server CPU us per delivery.
* ``tls``: 50 x 4 KiB echo over wss:// (a self-signed certificate made at
  run time, into a temporary folder).
* ``deflate``: 50 x 4 KiB echo of compressible text, permessage-deflate
  negotiated on both ends (the client compresses too).
* ``many``: 10,000 connections (``--many``), each sending one 16 B message a
  second for 10 s (``--many-duration``): server CPU (cores, and us per
  message), RSS, echo latency.

Peers (``--servers``; default all that can run): ``evws`` (``examples/
echo_server.py --max-payload-size 0``; ``peers/evws_echo.py`` for TLS,
``peers/evws_broadcast.py`` for fan-out), ``websockets``, ``picows`` (on
uvloop), ``aiohttp`` and ``node-ws`` (``peers/*``). The Python peers are
installed on first use into a venv under ``~/.cache/evws-benchmarks`` from
``benchmarks/requirements-peers.txt`` (== pins); Node ``ws`` with ``npm ci``
from ``benchmarks/package-lock.json`` into the same cache. A peer that cannot
be installed, or that lacks a feature (picows has no permessage-deflate), is
skipped with the reason printed. ``--no-install`` uses only what is there.

The load comes from a separate process, ``wsbench`` (``wsbench.c``, compiled
here with the system C compiler on first use; with OpenSSL and zlib when
their headers are found, else the tls/deflate workloads are skipped), a
single-threaded epoll client in C whose own CPU per message is small next to
the kernel's loopback cost; see its header for the method of each mode.
``--generator wsload`` uses the shared harness's ``wsload`` binary for the
echo workload (it has no other modes).

Every cell (workload x server) gets a freshly started server on a fresh port,
and for each cell all servers run back to back, so slow drift in machine load
hits them alike. Ratios are always "how many times better evws is" (evws /
peer for rates, peer / evws for CPU and memory), so above 1 means evws is
ahead. Compare ratios, and server CPU microseconds per unit (the steadiest
figure on a noisy machine), rather than absolute rates. With ``-r N`` a table
per workload gives the spread of the ratio from round to round: a difference
smaller than that spread is noise. ``--pin`` puts the servers on one CPU and
the load generator on another.

Bounds: a server gets 20 s to listen, a load run warm-up + duration + 60 s
(+ 60 s to open connections in the many mode, 90 s in the idle mode);
servers are stopped with SIGTERM, then SIGKILL after 3 s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "evws-benchmarks")
SHARED_CACHE = os.path.join(
    os.environ.get("EVWS_TOOLS_HOME")
    or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "evws-tools"),
    "bench")

DEFAULT_MATRIX = "1x16,50x16,50x4K,4x1M"
WORKLOADS = ("echo", "churn", "fanout", "tls", "deflate", "many")
PEERS = ("evws", "websockets", "picows", "aiohttp", "node-ws")
PYTHON_PEERS = {"websockets": "websockets", "picows": "picows", "aiohttp": "aiohttp"}   # peer -> module


# --- peers: installing them ---------------------------------------------------------------

def _requirement_groups(path: str) -> dict[str, list[str]]:
    """peer -> its pinned requirements, from the ``# peer: NAME`` sections of the file."""
    groups: dict[str, list[str]] = {}
    current = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("# peer:"):
                current = line.split(":", 1)[1].split()[0]
                groups[current] = []
            elif line and not line.startswith("#") and current:
                groups[current].append(line)
    return groups


def ensure_python_peers(install: bool) -> tuple[dict[str, str], dict[str, str]]:
    """(peer -> python executable, peer -> reason it is skipped) for the Python peers.

    All of them go into one venv in the cache, from requirements-peers.txt;
    when the whole file does not install, each peer's section is tried on its
    own, so one unavailable package skips one peer, not all of them.
    """
    reqs = os.path.join(HERE, "requirements-peers.txt")
    venv = os.path.join(BUILD, "venv")
    python = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, "requirements.sha256")
    digest = hashlib.sha256(open(reqs, "rb").read()).hexdigest()
    log = os.path.join(BUILD, "install.log")
    if install and (not os.path.isfile(stamp) or open(stamp).read() != digest):
        os.makedirs(BUILD, exist_ok=True)
        print(f"run.py: installing the Python peers into {venv} (log: {log})", file=sys.stderr, flush=True)
        with open(log, "ab") as out:
            try:
                if not os.access(python, os.X_OK):
                    subprocess.run([sys.executable, "-m", "venv", venv], stdout=out, stderr=out,
                                   check=True, timeout=300)
                pip = [python, "-m", "pip", "install", "-q"]
                if subprocess.run(pip + ["-r", reqs], stdout=out, stderr=out, timeout=600).returncode:
                    for pins in _requirement_groups(reqs).values():
                        subprocess.run(pip + pins, stdout=out, stderr=out, timeout=600)
                else:
                    with open(stamp, "w") as f:
                        f.write(digest)
            except (subprocess.SubprocessError, OSError) as exc:
                print(f"run.py: could not set up the venv: {exc}", file=sys.stderr)
    found: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for peer, module in PYTHON_PEERS.items():
        for exe in (python, sys.executable) if peer == "websockets" else (python,):
            if os.access(exe, os.X_OK) and subprocess.run(
                    [exe, "-c", f"import {module}"], capture_output=True, timeout=60).returncode == 0:
                found[peer] = exe
                break
        else:
            skipped[peer] = (f"`import {module}` fails in {venv} (not installable here? see {log})"
                             if install else f"not installed in {venv} (--no-install)")
    return found, skipped


def ensure_node(install: bool) -> tuple[str | None, str]:
    """(a folder holding the npm ``ws`` package, or None, and the reason when None)."""
    if not shutil.which("node"):
        return None, "no `node` on PATH"
    own = os.path.join(BUILD, "node")
    lock = os.path.join(HERE, "package-lock.json")
    if install and shutil.which("npm"):
        cached_lock = os.path.join(own, "package-lock.json")
        if not (os.path.isfile(os.path.join(own, "node_modules", "ws", "package.json"))
                and os.path.isfile(cached_lock) and open(cached_lock).read() == open(lock).read()):
            os.makedirs(own, exist_ok=True)
            for name in ("package.json", "package-lock.json"):
                shutil.copyfile(os.path.join(HERE, name), os.path.join(own, name))
            print(f"run.py: npm ci (ws, bufferutil) into {own}", file=sys.stderr, flush=True)
            with open(os.path.join(BUILD, "install.log"), "ab") as out:
                try:
                    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=own,
                                   stdout=out, stderr=out, timeout=300)
                except (subprocess.SubprocessError, OSError):
                    pass
    folder = _node_path()
    return (folder, "") if folder else (None, "npm `ws` is not installed (npm ci failed, or no npm)")


def _node_path() -> str | None:
    """A folder holding the npm ``ws`` package, or None (node-ws is then skipped)."""
    candidates = [os.path.join(BUILD, "node", "node_modules")] + os.environ.get("NODE_PATH", "").split(
        os.pathsep) + [os.path.join(HERE, "node_modules"), os.path.join(SHARED_CACHE, "node_modules")]
    for folder in candidates:
        if folder and os.path.isfile(os.path.join(folder, "ws", "package.json")):
            return folder
    return None


# --- peers: their commands per workload ---------------------------------------------------

@dataclass
class Context:
    """What a peer command may need: the interpreters found and the certificate files."""
    pythons: dict[str, str] = field(default_factory=dict)
    cert: str = ""
    key: str = ""


def peer_command(name: str, workload: str, ctx: Context) -> list[str] | str:
    """argv (with ``{port}``) of server ``name`` for ``workload``, or why it cannot take part."""
    tls = ["--tls-cert", ctx.cert, "--tls-key", ctx.key]
    peer = os.path.join(HERE, "peers")
    if name == "evws":
        if workload == "tls":
            return [sys.executable, os.path.join(peer, "evws_echo.py"), "--port", "{port}", *tls]
        if workload == "fanout":
            return [sys.executable, os.path.join(peer, "evws_broadcast.py"), "--port", "{port}"]
        return [sys.executable, os.path.join(ROOT, "examples", "echo_server.py"),
                "--max-payload-size", "0", "--port", "{port}"]
    if name == "node-ws":
        argv = ["node", os.path.join(peer, "node_ws_echo.js"), "--port", "{port}"]
    elif name in PYTHON_PEERS:
        if name not in ctx.pythons:
            return "not installed"
        if name == "picows" and workload == "deflate":
            return "picows has no permessage-deflate"
        argv = [ctx.pythons[name], os.path.join(peer, f"{name}_echo.py"), "--port", "{port}"]
    else:
        return "unknown server"
    extra = {"tls": tls, "deflate": ["--deflate"], "fanout": ["--broadcast"]}.get(workload, [])
    return argv + extra


def evws_broadcast_mode() -> str:
    """How peers/evws_broadcast.py fans out here (it decides the same way, and logs it)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    probe = subprocess.run([sys.executable, "-c",
                            "import os, importlib, evws; b = importlib.import_module('evws.broadcast'); "
                            "print(os.path.dirname(b.__file__) == os.path.dirname(evws.__file__))"],
                           env=env, capture_output=True, text=True, timeout=60)
    if probe.returncode:
        return "a loop over server.connections calling conn.send (evws.broadcast is not importable)"
    if probe.stdout.strip() != "True":
        return ("a loop over server.connections calling conn.send (evws.broadcast is importable only "
                "from another checkout, which would mix two trees)")
    return "evws.broadcast.broadcast()"


def make_certificate(folder: str) -> tuple[str, str] | str:
    """A self-signed certificate for 127.0.0.1 in ``folder``: (cert, key) paths, or why not."""
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if not shutil.which("openssl"):
            return "neither the `cryptography` package nor the openssl command is available"
        out = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                              "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                              "-addext", "subjectAltName=IP:127.0.0.1"], capture_output=True, timeout=60)
        return (cert, key) if out.returncode == 0 else f"openssl req failed: {out.stderr[-200:]!r}"
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(private.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=2))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(private, hashes.SHA256()))
    with open(cert, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key, "wb") as f:
        f.write(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return cert, key


# --- the load generator -------------------------------------------------------------------

def _has_header(cc: str, header: str) -> bool:
    probe = subprocess.run([cc, "-E", "-x", "c", "-"], input=f"#include <{header}>\n", capture_output=True,
                           text=True, timeout=60)
    return probe.returncode == 0


def build_generator(kind: str) -> str:
    """Path of the load generator binary, compiling ``wsbench.c`` if needed.

    OpenSSL and zlib are linked in when their headers are there; without
    them the binary lacks -S / -z and ``generator_features`` says so.
    """
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
        flags, libs = [], []
        if _has_header(cc, "openssl/ssl.h"):
            libs += ["-lssl", "-lcrypto"]
        else:
            flags.append("-DNO_TLS")
            print("run.py: no OpenSSL headers (apt-get install libssl-dev): wsbench is built without TLS",
                  file=sys.stderr)
        if _has_header(cc, "zlib.h"):
            libs.append("-lz")
        else:
            flags.append("-DNO_ZLIB")
            print("run.py: no zlib headers (apt-get install zlib1g-dev): wsbench is built without deflate",
                  file=sys.stderr)
        subprocess.run([cc, "-O2", "-Wall", *flags, "-o", binary + ".tmp", src, *libs], check=True, timeout=120)
        os.replace(binary + ".tmp", binary)
    return binary


def generator_features(binary: str) -> dict[str, int]:
    """{"tls": 0|1, "deflate": 0|1} of a wsbench binary (all 0 for anything else)."""
    try:
        out = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=30)
        return {"tls": 0, "deflate": 0, **json.loads(out.stdout)}
    except (ValueError, OSError, subprocess.SubprocessError):
        return {"tls": 0, "deflate": 0}


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
    return int(text[:-1] if mult > 1 else text) * mult


def fmt_size(n: int) -> str:
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def parse_workloads(text: str | None) -> list[str]:
    """The ``--workload`` list, in the canonical order, or ValueError naming the unknown ones."""
    if not text or text == "all":
        return list(WORKLOADS)
    wanted = [w.strip() for w in text.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(unknown)} (known: {', '.join(WORKLOADS)})")
    return [w for w in WORKLOADS if w in wanted]


# --- the cells of each workload -----------------------------------------------------------

@dataclass
class Cell:
    """One row of a workload's table: what the generator is told and which field is the result."""
    workload: str
    key: str                 # the row label, and the results' key
    gen_args: list[str]      # wsbench arguments after -p PORT -P PID
    metric: str              # the field compared (a rate, unless lower_better)
    unit: str                # what one unit of the metric is, for "server CPU us per <unit>"
    lower_better: bool = False
    timeout: float = 60.0


def workload_cells(workload: str, a: argparse.Namespace) -> list[Cell]:
    d, w = ["-d", str(a.duration)], ["-w", str(a.warmup)]
    bound = a.warmup + a.duration + 60
    if workload == "churn":
        c = a.churn
        return [Cell("churn", f"churn {c}", ["-m", "churn", "-c", str(c), *d, *w], "hs_per_s", "handshake",
                     timeout=bound)]
    if workload == "fanout":
        return [Cell("fanout", f"fanout {a.fanout} x {fmt_size(s)}",
                     ["-m", "fanout", "-n", str(a.fanout), "-s", str(s), "-q", "8", *d, *w],
                     "deliveries_per_s", "delivery", timeout=bound + 60)
                for s in (parse_size(x) for x in a.fanout_sizes.split(",") if x)]
    if workload == "tls":
        return [Cell("tls", "tls 50 x 4 KiB", ["-S", "-c", "50", "-s", "4096", *d, *w], "rt_per_s", "round trip",
                     timeout=bound)]
    if workload == "deflate":
        return [Cell("deflate", "deflate 50 x 4 KiB", ["-z", "-t", "-c", "50", "-s", "4096", *d, *w],
                     "rt_per_s", "round trip", timeout=bound)]
    if workload == "many":
        dm = a.many_duration
        return [Cell("many", f"many {a.many}", ["-m", "many", "-n", str(a.many), "-i", "1", "-d", str(dm),
                                                "-w", "1", "-T", str(dm + 120)],
                     "server_cpu", "message", lower_better=True, timeout=dm + 150)]
    raise ValueError(workload)


# --- running servers and the generator ----------------------------------------------------

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
    ap.add_argument("-W", "--workload", default=None,
                    help=f"comma-separated subset of {','.join(WORKLOADS)} (default: all)")
    ap.add_argument("--servers", "--peers", dest="servers", default=None,
                    help=f"comma-separated subset of {','.join(PEERS)} (default: all that can run); "
                         "the first is the baseline of every ratio")
    ap.add_argument("-m", "--matrix", default=DEFAULT_MATRIX, help=f"echo: CxS cells (default {DEFAULT_MATRIX})")
    ap.add_argument("-d", "--duration", type=float, default=3.0, help="measured seconds per cell (default 3)")
    ap.add_argument("-w", "--warmup", type=float, default=1.0, help="warm-up seconds per cell (default 1)")
    ap.add_argument("-n", "--idle", type=int, default=5000, help="echo: idle connections (default 5000; 0 skips)")
    ap.add_argument("--churn", type=int, default=50, help="churn: connections in flight (default 50)")
    ap.add_argument("--fanout", type=int, default=1000, help="fanout: clients (default 1000)")
    ap.add_argument("--fanout-sizes", default="16,1K", help="fanout: message sizes (default 16,1K)")
    ap.add_argument("--many", type=int, default=10000, help="many: connections (default 10000)")
    ap.add_argument("--many-duration", type=float, default=10.0,
                    help="many: measured seconds, one message per connection per second (default 10)")
    ap.add_argument("-r", "--rounds", type=int, default=1, help="repeat and report medians (default 1)")
    ap.add_argument("-t", "--text", action="store_true", help="echo: text messages instead of binary")
    ap.add_argument("--generator", choices=("wsbench", "wsload"), default="wsbench")
    ap.add_argument("--pin", action="store_true",
                    help="run each server on the first CPU and the load generator on the second "
                         "(needs two CPUs): they no longer compete for one core")
    ap.add_argument("--no-install", action="store_true", help="do not install peers; use what is there")
    ap.add_argument("--json", help="also write the raw results to this file")
    a = ap.parse_args()
    try:
        workloads = parse_workloads(a.workload)
    except ValueError as exc:
        ap.error(str(exc))

    pythons, skipped = ensure_python_peers(not a.no_install)
    node, why_not_node = ensure_node(not a.no_install)
    if node is None:
        skipped["node-ws"] = why_not_node
    names = a.servers.split(",") if a.servers else [p for p in PEERS if p not in skipped]
    for name in names:
        if name not in PEERS:
            ap.error(f"unknown server {name!r} (known: {', '.join(PEERS)})")
        if name in skipped:
            ap.error(f"server {name!r} cannot run here: {skipped[name]}")
    for name, reason in skipped.items():
        print(f"run.py: peer {name} skipped: {reason}", file=sys.stderr)

    gen = build_generator(a.generator)
    features = generator_features(gen) if a.generator == "wsbench" else {"tls": 0, "deflate": 0}
    not_run: dict[str, str] = {}
    if a.generator == "wsload":
        not_run.update({w: "the wsload generator has only the echo modes" for w in workloads if w != "echo"})
    if not features["tls"]:
        not_run.setdefault("tls", "wsbench was built without OpenSSL (apt-get install libssl-dev)")
    if not features["deflate"]:
        not_run.setdefault("deflate", "wsbench was built without zlib (apt-get install zlib1g-dev)")
    ctx = Context(pythons=pythons)
    cert_dir = tempfile.mkdtemp(prefix="evws-bench-cert-")
    try:
        if "tls" in workloads and "tls" not in not_run:
            made = make_certificate(cert_dir)
            if isinstance(made, str):
                not_run["tls"] = made
            else:
                ctx.cert, ctx.key = made
        for w in workloads:
            if w in not_run:
                print(f"run.py: workload {w} skipped: {not_run[w]}", file=sys.stderr)
        workloads = [w for w in workloads if w not in not_run]
        _run(a, names, workloads, gen, ctx)
    finally:
        shutil.rmtree(cert_dir, ignore_errors=True)


def _run(a: argparse.Namespace, names: list[str], workloads: list[str], gen: str, ctx: Context) -> None:
    server_cpus = load_cpus = None
    if a.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            sys.exit("run.py: --pin needs at least two CPUs")
        server_cpus, load_cpus = {cpus[0]}, {cpus[1]}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # the servers inherit it
    need = max(a.idle if "echo" in workloads else 0, a.many if "many" in workloads else 0,
               a.fanout if "fanout" in workloads else 0)
    if hard < need + 100:
        print(f"warning: the file limit ({hard}) is below {need} connections", file=sys.stderr)

    cells = [(int(c), parse_size(s)) for c, s in (x.lower().split("x") for x in a.matrix.split(",") if x)]
    echo_work = [("rt", c, s) for c, s in cells] + ([("idle", a.idle, 16)] if a.idle else [])
    plan: list[tuple[str, object]] = []   # ("echo", (kind, c, s)) or (workload, Cell)
    for w in workloads:
        if w == "echo":
            plan += [("echo", x) for x in echo_work]
        else:
            plan += [(w, c) for c in workload_cells(w, a)]
    unsupported: dict[tuple[str, str], str] = {}
    for w in workloads:
        for name in names:
            argv = peer_command(name, w, ctx)
            if isinstance(argv, str):
                unsupported[(name, w)] = argv
                print(f"run.py: {name} is not a peer of {w}: {argv}", file=sys.stderr)
    fanout_note = evws_broadcast_mode() if "fanout" in workloads and "evws" in names else ""
    if fanout_note:
        print(f"run.py: evws fan-out uses {fanout_note}", file=sys.stderr)

    os.makedirs(BUILD, exist_ok=True)
    log_path = os.path.join(BUILD, "servers.log")
    results: dict[tuple[str, str], list[dict]] = {}
    started = time.monotonic()
    with open(log_path, "ab") as log:
        for rnd in range(a.rounds):
            for w, item in plan:
                if w == "echo":
                    kind, c, s = item  # type: ignore[misc]
                    key = f"{c} x {fmt_size(s)}" if kind == "rt" else f"{c} idle"
                else:
                    cell: Cell = item  # type: ignore[assignment]
                    kind, key = w, cell.key
                for name in names:
                    if (name, w) in unsupported:
                        continue
                    argv = peer_command(name, w, ctx)
                    assert isinstance(argv, list)
                    try:
                        server = Server(name, argv, log, server_cpus)
                    except RuntimeError as exc:
                        results.setdefault((name, key), []).append({"error": str(exc)})
                        print(f"  {name}: {exc} (see {log_path})", file=sys.stderr)
                        continue
                    try:
                        pid = str(server.proc.pid)
                        base = [gen, "-p", str(server.port), "-P", pid]
                        if kind == "rt":
                            argv = base + ["-c", str(c), "-s", str(s), "-d", str(a.duration), "-w", str(a.warmup)]
                            r = run_load(argv + (["-t"] if a.text else []), a.warmup + a.duration + 40,
                                         load_cpus)
                        elif kind == "idle":
                            mode = ["-m", "idle"] if a.generator == "wsbench" else ["-m", "conns"]
                            r = run_load(base + [*mode, "-n", str(c), "-T", "60"], 90, load_cpus)
                        else:
                            r = run_load(base + cell.gen_args, cell.timeout, load_cpus)
                    finally:
                        server.stop()
                    results.setdefault((name, key), []).append(r)
                    print(f"[{time.monotonic() - started:4.0f}s r{rnd + 1}] {key:<20} {name:<11} "
                          f"{_summary(kind, r)}", file=sys.stderr, flush=True)

    out = []
    if "echo" in workloads:
        out.append(_tables(names, echo_work, results, a))
    for w in workloads:
        if w == "echo":
            continue
        ws_names = [n for n in names if (n, w) not in unsupported]
        notes = [f"{n}: not run ({unsupported[(n, w)]})" for n in names if (n, w) in unsupported]
        if w == "fanout" and fanout_note:
            notes.append(f"evws fans out with {fanout_note}")
        out.append(workload_tables(w, ws_names, workload_cells(w, a), results, a.rounds, notes))
    print("\n".join(out))
    print(f"\n(total {time.monotonic() - started:.0f} s; server logs in {log_path})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "results": [{"server": n, "cell": k, "runs": v}
                                                   for (n, k), v in results.items()]}, f, indent=1)


def _summary(kind: str, r: dict) -> str:
    if "error" in r:
        return "ERROR " + r["error"]
    bad = f"errors {r.get('errors', 0) + r.get('mismatch', 0) + r.get('conn_fail', 0)}"
    cpu = f"cpu srv {r.get('server_cpu', -1):.2f} cli {r.get('client_cpu', -1):.2f}"
    if kind == "rt":
        return (f"{r['rt_per_s']:9.0f} rt/s  p50 {r['p50_us']:7.0f} us  cpu srv {r['server_cpu']:.2f} "
                f"cli {r['client_cpu']:.2f}  errors {r['errors'] + r['mismatch'] + r['conn_fail']}")
    if kind == "idle":
        return f"{r['echo_ok']} echoed  {r['kb_per_conn']:.1f} KiB/conn"
    if kind == "churn":
        return f"{r['hs_per_s']:9.0f} hs/s  p99 {r['p99_us']:7.0f} us  {cpu}  {bad}"
    if kind == "fanout":
        return (f"{r['deliveries_per_s']:9.0f} deliveries/s  p99 {r['p99_us']:7.0f} us  {r['alive']}/{r['n']} "
                f"alive  {cpu}  {bad}")
    if kind == "many":
        return (f"{r['alive']}/{r['n']} alive  {r['msgs_per_s']:7.0f} msg/s  late {r['late']}  "
                f"rss {r['rss_end_kb'] / 1024:.1f} MiB  {cpu}  {bad}")
    return (f"{r['rt_per_s']:9.0f} rt/s  p50 {r['p50_us']:7.0f} us  {cpu}  {bad}"
            + (f"  no_deflate {r['no_deflate']}" if r.get("no_deflate") else ""))


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
    def cpu_text(runs: list[dict]) -> str:
        rate, cpu = _median(runs, "rt_per_s"), _median(runs, "server_cpu")
        return f"{cpu / rate * 1e6:.1f}" if rate and cpu is not None else "-"

    def share_text(runs: list[dict]) -> str:
        share = kernel_share(runs)
        return "-" if share is None else f"{share:.0f}"

    for title, text in (("server CPU microseconds per round trip (lower is better)", cpu_text),
                        ("server CPU in the kernel, % of the server's CPU time (the rest is user space)",
                         share_text)):
        out += [f"\n{title}\n", head, rule]
        for kind, c, s in work:
            if kind == "rt":
                key = f"{c} x {fmt_size(s)}"
                cells = [text(results.get((name, key), [])) for name in names]
                out.append("| " + " | ".join([key, *cells]) + " |")
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
                row.append(_spread(ratios))
            out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def _spread(ratios: list[float]) -> str:
    """median [lowest - highest], rounds ahead/rounds, or "-" when no round has both results."""
    if not ratios:
        return "-"
    return (f"{statistics.median(ratios):.2f}x [{min(ratios):.2f} - {max(ratios):.2f}], "
            f"{sum(r > 1 for r in ratios)}/{len(ratios)}")


def _round_ratios(base_runs: list[dict], runs: list[dict], field: str = "rt_per_s",
                  lower_better: bool = False) -> list[float]:
    """How many times better the base was than the server, in each round both ran without error.

    For a rate that is base / server, for a cost (``lower_better``: CPU,
    memory) server / base, so above 1 always means the base is ahead. The
    servers of one round ran seconds apart, so these ratios show how much of
    a difference the machine's own drift can make between rounds.
    """
    pairs = [(b[field], r[field]) for b, r in zip(base_runs, runs)
             if _usable(b, field) and _usable(r, field)]
    return [r / b if lower_better else b / r for b, r in pairs]


def _usable(run: dict, field: str) -> bool:
    """A run whose ``field`` is a positive measurement (failed runs and -1 "unknown" are not)."""
    value = run.get(field)
    return "error" not in run and isinstance(value, (int, float)) and value > 0


def _ratio(base: float | None, value: float | None, lower_better: bool) -> str:
    if not base or not value:
        return ""
    return f" ({value / base if lower_better else base / value:.2f}x)"


def cpu_per_unit(runs: list[dict], metric: str) -> float | None:
    """Median over rounds of server CPU microseconds per unit of ``metric`` (a rate), per round."""
    values = [r["server_cpu"] / r[metric] * 1e6 for r in runs if _usable(r, metric) and _usable(r, "server_cpu")]
    return statistics.median(values) if values else None


def kernel_share(runs: list[dict]) -> float | None:
    """Median over rounds of the server's CPU time spent in the kernel, in % of its CPU time.

    Why: whether a server's cost is its own code or the kernel's TCP work
    (which no server avoids) decides what a faster implementation can win.
    ``server_sys`` is the server's ``stime`` over the window (``/proc/PID/stat``);
    on loopback it includes the delivery of what the server sends to the
    peer's socket, so it is the same work for every server on the same load.
    """
    values = [100.0 * r["server_sys"] / r["server_cpu"] for r in runs
              if _usable(r, "server_cpu") and isinstance(r.get("server_sys"), (int, float))
              and r["server_sys"] >= 0]
    return statistics.median(values) if values else None


def _errors(runs: list[dict]) -> int:
    return sum(r.get("errors", 0) + r.get("mismatch", 0) + r.get("conn_fail", 0) + r.get("no_deflate", 0)
               for r in runs if "error" not in r)


TITLES = {
    "churn": "connection churn: each slot opens TCP, handshakes, echoes 16 B, closes (closing handshake), "
             "again; handshakes/s",
    "fanout": "broadcast fan-out: one client publishes, the server sends each message to every client "
              "(8 broadcasts outstanding at most); deliveries/s, all clients together",
    "tls": "TLS: echo over wss:// (self-signed certificate, OpenSSL client); round trips/s",
    "deflate": "permessage-deflate: echo of compressible text, compression negotiated and used both ways; "
               "round trips/s",
    "many": "many connections: each sends one 16 B message a second; server CPU in cores over the window "
            "(lower is better)",
}


def workload_tables(workload: str, names: list[str], cells: list[Cell], results: dict, rounds: int,
                    notes: list[str] = ()) -> str:  # type: ignore[assignment]
    """The table of one non-echo workload: its metric with ratios, server CPU per unit, latency,
    memory for the many mode, and, with several rounds, the per-round ratio spread.

    Ratios read "how many times better the first server is" whichever way the
    metric goes, so they compare across workloads at a glance.
    """
    if not names:
        return f"\n{workload}: no server could run it" + "".join(f"\n- {n}" for n in notes)
    base = names[0]
    head = "| cell | " + " | ".join(names) + " |"
    rule = "|---" * (len(names) + 1) + "|"
    out = [f"\n{TITLES[workload]} (median of {rounds}); (x) = how many times better {base} is "
           f"(above 1: {base} ahead)\n", head, rule]
    for cell in cells:
        rate_field = "msgs_per_s" if workload == "many" else cell.metric
        ref = _median(results.get((base, cell.key), []), cell.metric)
        ref_cpu = cpu_per_unit(results.get((base, cell.key), []), rate_field)
        ref_rss = _median(results.get((base, cell.key), []), "rss_end_kb")
        rows: dict[str, list[str]] = {"main": [cell.key], "cpu": [f"server CPU us per {cell.unit}"],
                                      "p99": ["p99 latency us"], "rss": ["server RSS at the end MiB"],
                                      "sys": ["server CPU in the kernel %"],
                                      "ok": ["alive / late"], "z": ["replies compressed %"]}
        for name in names:
            runs = results.get((name, cell.key), [])
            v = _median(runs, cell.metric)
            bad = _errors(runs)
            if v is None:
                text = "FAILED"
            elif workload == "many":
                text = f"{v:.3f}" + (_ratio(ref, v, True) if name != base else "")
            else:
                text = f"{v:,.0f}" + (_ratio(ref, v, False) if name != base else "")
            rows["main"].append(text + (f" err={bad}" if bad else ""))
            cpu = cpu_per_unit(runs, rate_field)
            rows["cpu"].append("-" if cpu is None else f"{cpu:.1f}" + (_ratio(ref_cpu, cpu, True)
                                                                        if name != base else ""))
            share = kernel_share(runs)
            rows["sys"].append("-" if share is None else f"{share:.0f}")
            p99 = _median(runs, "p99_us")
            rows["p99"].append("-" if p99 is None else f"{p99:,.0f}")
            rss = _median(runs, "rss_end_kb")
            rows["rss"].append("-" if rss is None else f"{rss / 1024:.1f}" + (_ratio(ref_rss, rss, True)
                                                                               if name != base else ""))
            alive, late, n = _median(runs, "alive"), _median(runs, "late"), _median(runs, "n")
            rows["ok"].append("-" if alive is None else f"{alive:.0f}/{n or 0:.0f}, {late or 0:.0f} late")
            z = _median(runs, "rx_compressed_pct")
            rows["z"].append("-" if z is None else f"{z:.0f}")
        keep = ["main", "cpu", "sys", "p99"] + {"many": ["rss", "ok"], "deflate": ["z"]}.get(workload, [])
        out += ["| " + " | ".join(rows[k]) + " |" for k in keep]
    if rounds > 1 and len(names) > 1:
        out += [f"\nper round: how many times better {base} was than each server within a round: "
                f"median [lowest - highest], rounds where {base} was ahead\n",
                "| cell | " + " | ".join(names[1:]) + " |", "|---" * len(names) + "|"]
        for cell in cells:
            row = [cell.key]
            for name in names[1:]:
                row.append(_spread(_round_ratios(results.get((base, cell.key), []),
                                                 results.get((name, cell.key), []),
                                                 cell.metric, cell.lower_better)))
            out.append("| " + " | ".join(row) + " |")
    out += [f"- {n}" for n in notes]
    return "\n".join(out)


if __name__ == "__main__":
    main()
