"""The benchmark runner's report (benchmarks/run.py): per-round ratios and --pin.

The benchmark itself is too slow and too machine-dependent for the default
suite; these check the parts that turn its measurements into the README's
claims, with recorded results and a real child process.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.servers import example_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run():
    spec = importlib.util.spec_from_file_location("bench_run", os.path.join(ROOT, "benchmarks", "run.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def rt(rate: float, cpu: float = 0.5) -> dict:
    return {"rt_per_s": rate, "server_cpu": cpu, "errors": 0, "mismatch": 0}


def test_round_ratios_pair_rounds_and_skip_failed_ones(run):
    base = [rt(200), rt(100), {"error": "did not start"}, rt(300)]
    peer = [rt(100), rt(125), rt(100), {"error": "timed out"}]
    assert run._round_ratios(base, peer) == [2.0, 0.8]


def test_tables_show_the_spread_between_rounds(run):
    # Machine drift: the ratio of the medians (1.0) hides that evws was
    # faster in two rounds of three; the per-round table shows it.
    results = {("evws", "1 x 16 B"): [rt(100), rt(220), rt(300)],
               ("node-ws", "1 x 16 B"): [rt(80), rt(220), rt(260)]}
    a = argparse.Namespace(text=False, duration=3, rounds=3)
    text = run._tables(["evws", "node-ws"], [("rt", 1, 16)], results, a)
    assert "| 1 x 16 B | 220 | 220 (1.00x) |" in text
    assert "| 1 x 16 B | 1.15x [1.00 - 1.25], 2/3 |" in text


def test_one_round_has_no_spread_table(run):
    results = {("evws", "1 x 16 B"): [rt(100)], ("node-ws", "1 x 16 B"): [rt(80)]}
    a = argparse.Namespace(text=False, duration=3, rounds=1)
    assert "per round:" not in run._tables(["evws", "node-ws"], [("rt", 1, 16)], results, a)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_pinned_child_runs_on_the_given_cpu(run):
    cpu = max(os.sched_getaffinity(0))
    out = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                         capture_output=True, text=True, timeout=30, preexec_fn=run._pinned({cpu}))
    assert out.stdout.strip() == f"[{cpu}]"
    assert run._pinned(None) is None


# --- the workloads of issue 12: churn, fan-out, TLS, deflate, many connections -------------

def test_workload_list_is_parsed_in_canonical_order(run):
    assert run.parse_workloads(None) == list(run.WORKLOADS)
    assert run.parse_workloads("all") == list(run.WORKLOADS)
    assert run.parse_workloads("many, churn") == ["churn", "many"]
    with pytest.raises(ValueError, match="unknown workload.*bogus"):
        run.parse_workloads("echo,bogus")


def test_requirement_sections_give_each_peer_its_pins(run, tmp_path):
    reqs = tmp_path / "r.txt"
    reqs.write_text("# header\n# peer: websockets\nwebsockets==1.0\n\n# peer: picows (uvloop)\n"
                    "picows==2.0\nuvloop==0.1\n")
    assert run._requirement_groups(str(reqs)) == {"websockets": ["websockets==1.0"],
                                                   "picows": ["picows==2.0", "uvloop==0.1"]}
    # The real file: every Python peer has a section, and every line is an exact pin.
    groups = run._requirement_groups(os.path.join(ROOT, "benchmarks", "requirements-peers.txt"))
    assert set(groups) == set(run.PYTHON_PEERS) | {"python-socketio"}   # the last for fanout_redis.py
    assert all("==" in pin for pins in groups.values() for pin in pins)


def test_peer_commands_per_workload(run):
    ctx = run.Context(pythons={"websockets": "/venv/python", "picows": "/venv/python"}, cert="c.pem", key="k.pem")
    assert run.peer_command("picows", "deflate", ctx) == "picows has no permessage-deflate"
    assert run.peer_command("aiohttp", "echo", ctx) == "not installed"
    ws_tls = run.peer_command("websockets", "tls", ctx)
    assert ws_tls[0] == "/venv/python" and ws_tls[-4:] == ["--tls-cert", "c.pem", "--tls-key", "k.pem"]
    assert run.peer_command("node-ws", "fanout", ctx)[-1] == "--broadcast"
    assert run.peer_command("node-ws", "deflate", ctx)[-1] == "--deflate"
    assert run.peer_command("node-ws", "churn", ctx)[-1] == "{port}"
    # evws: the echo example, except for TLS and fan-out, which have their own scripts.
    assert run.peer_command("evws", "many", ctx)[1].endswith(os.path.join("examples", "echo_server.py"))
    assert run.peer_command("evws", "tls", ctx)[1].endswith("evws_echo.py")
    assert run.peer_command("evws", "fanout", ctx)[1].endswith("evws_broadcast.py")
    for name in run.PEERS:
        for workload in run.WORKLOADS:
            argv = run.peer_command(name, workload, ctx)
            if isinstance(argv, list):
                assert "{port}" in argv and all(os.path.exists(p) for p in argv[1:2])


def args(**over) -> argparse.Namespace:
    base = dict(duration=3.0, warmup=1.0, churn=50, fanout=1000, fanout_sizes="16,1K", many=10000,
                many_duration=10.0)
    return argparse.Namespace(**{**base, **over})


def test_cells_of_each_workload(run):
    fan = run.workload_cells("fanout", args())
    assert [c.key for c in fan] == ["fanout 1000 x 16 B", "fanout 1000 x 1 KiB"]
    assert fan[1].gen_args[:6] == ["-m", "fanout", "-n", "1000", "-s", "1024"]
    (many,) = run.workload_cells("many", args(many=200, many_duration=2))
    assert many.lower_better and many.metric == "server_cpu"
    assert many.gen_args[many.gen_args.index("-d") + 1] == "2"
    (tls,) = run.workload_cells("tls", args())
    assert "-S" in tls.gen_args and tls.gen_args[tls.gen_args.index("-s") + 1] == "4096"
    (deflate,) = run.workload_cells("deflate", args())
    assert {"-z", "-t"} <= set(deflate.gen_args)
    (churn,) = run.workload_cells("churn", args(churn=7))
    assert churn.metric == "hs_per_s" and churn.gen_args[:4] == ["-m", "churn", "-c", "7"]


def test_ratios_read_the_same_way_for_rates_and_costs(run):
    # Rates: base / server. Costs (CPU, memory): server / base. Above 1 = base ahead.
    assert run._round_ratios([{"hs_per_s": 300}], [{"hs_per_s": 100}], "hs_per_s") == [3.0]
    assert run._round_ratios([{"server_cpu": 0.2}], [{"server_cpu": 0.5}], "server_cpu", True) == [2.5]
    # -1 is wsbench's "unknown" (no /proc entry): not a measurement.
    assert run._round_ratios([{"server_cpu": -1}], [{"server_cpu": 0.5}], "server_cpu", True) == []
    assert run._ratio(0.2, 0.5, True) == " (2.50x)" and run._ratio(300, 100, False) == " (3.00x)"
    assert run._ratio(None, 1, False) == ""


def test_cpu_per_unit_is_taken_per_round_then_the_median(run):
    runs = [{"hs_per_s": 1000, "server_cpu": 0.5}, {"hs_per_s": 2000, "server_cpu": 0.5},
            {"hs_per_s": 500, "server_cpu": 0.5}, {"error": "timed out"}]
    assert run.cpu_per_unit(runs, "hs_per_s") == 500.0   # median of 500, 250, 1000 us
    assert run.cpu_per_unit([{"error": "x"}], "hs_per_s") is None


def churn(rate: float, cpu: float = 0.5, p99: float = 900.0, errors: int = 0) -> dict:
    return {"mode": "churn", "hs_per_s": rate, "server_cpu": cpu, "p99_us": p99, "errors": errors,
            "mismatch": 0, "conn_fail": 0}


def test_churn_table_with_rounds(run):
    cells = run.workload_cells("churn", args())
    results = {("evws", "churn 50"): [churn(3000), churn(2000), churn(2600)],
               ("websockets", "churn 50"): [churn(1000), churn(2000, errors=2), churn(1300)]}
    text = run.workload_tables("churn", ["evws", "websockets"], cells, results, 3, ["picows: not run (x)"])
    assert "| churn 50 | 2,600 | 1,300 (2.00x) err=2 |" in text
    # CPU per handshake: evws 0.5 / 2600 -> 192.3 us (median of 166.7, 250, 192.3); websockets 384.6.
    assert "| server CPU us per handshake | 192.3 | 384.6 (2.00x) |" in text
    assert "| p99 latency us | 900 | 900 |" in text
    assert "| churn 50 | 2.00x [1.00 - 3.00], 2/3 |" in text
    assert text.rstrip().endswith("- picows: not run (x)")


def test_many_table_compares_cpu_and_memory_lower_is_better(run):
    cells = run.workload_cells("many", args(many=4))

    def many(cpu: float, rss_kb: float) -> dict:
        return {"mode": "many", "n": 4, "alive": 4, "late": 1, "msgs_per_s": 4.0, "server_cpu": cpu,
                "rss_end_kb": rss_kb, "p99_us": 50.0, "errors": 0, "mismatch": 0, "conn_fail": 0}

    results = {("evws", "many 4"): [many(0.2, 10240)], ("node-ws", "many 4"): [many(0.3, 40960)]}
    text = run.workload_tables("many", ["evws", "node-ws"], cells, results, 1)
    assert "| many 4 | 0.200 | 0.300 (1.50x) |" in text
    assert "| server CPU us per message | 50000.0 | 75000.0 (1.50x) |" in text
    assert "| server RSS at the end MiB | 10.0 | 40.0 (4.00x) |" in text
    assert "| alive / late | 4/4, 1 late | 4/4, 1 late |" in text
    assert "per round" not in text


def test_failed_server_and_empty_workload(run):
    cells = run.workload_cells("tls", args())
    results = {("evws", "tls 50 x 4 KiB"): [{"error": "evws did not start listening (exit 1)"}],
               ("node-ws", "tls 50 x 4 KiB"): [{"rt_per_s": 900.0, "server_cpu": 0.9, "p99_us": 10.0}]}
    text = run.workload_tables("tls", ["evws", "node-ws"], cells, results, 2)
    assert "| tls 50 x 4 KiB | FAILED | 900 |" in text
    assert "| tls 50 x 4 KiB | - |" in text   # no round with both results
    assert "no server could run it" in run.workload_tables("deflate", [], [], {}, 1, ["picows: x"])


def test_generator_summaries_of_every_mode(run):
    assert "hs/s" in run._summary("churn", churn(10))
    fan = {"deliveries_per_s": 5.0, "p99_us": 1.0, "alive": 3, "n": 3, "server_cpu": 0.1, "client_cpu": 0.1}
    assert "3/3 alive" in run._summary("fanout", fan)
    assert run._summary("tls", {"error": "load generator timed out"}) == "ERROR load generator timed out"
    deflated = {"rt_per_s": 5.0, "p50_us": 1.0, "server_cpu": 0.1, "client_cpu": 0.1, "no_deflate": 2}
    assert run._summary("deflate", deflated).endswith("no_deflate 2")


def test_wsbench_builds_without_openssl_and_zlib_and_says_so(run, tmp_path):
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler")
    binary = str(tmp_path / "wsbench")
    subprocess.run([cc, "-O0", "-DNO_TLS", "-DNO_ZLIB", "-o", binary, os.path.join(ROOT, "benchmarks", "wsbench.c")],
                   check=True, timeout=120)
    assert run.generator_features(binary) == {"tls": 0, "deflate": 0}
    refused = subprocess.run([binary, "-p", "1", "-S"], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "without OpenSSL" in refused.stderr
    bad_mode = subprocess.run([binary, "-p", "1", "-m", "nope"], capture_output=True, text=True, timeout=30)
    assert bad_mode.returncode == 2
    assert run.generator_features(str(tmp_path / "missing")) == {"tls": 0, "deflate": 0}


def test_self_signed_certificate_is_usable_by_a_tls_server(run, tmp_path):
    import ssl
    made = run.make_certificate(str(tmp_path))
    assert not isinstance(made, str), made
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*made)


# --- benchmarks/instructions.py: the phases and its client, without valgrind -------------

def test_instructions_script_runs_its_phases_against_a_tree():
    """``--cprofile`` drives the same phases as the callgrind run (real echo server, real
    sockets, the SIGUSR1 phase marks) and reports each measured phase's calls per round trip."""
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "instructions.py"), "--cprofile",
         "-n", "60", "-c", "3", "--tree", ROOT],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "1 connection(s):" in out.stdout and "3 connection(s):" in out.stdout
    assert out.stdout.count("Python-level calls per round trip") == 2
    # Every echo went through the example's handler: one call per round trip.
    assert "1.00/rt  echo  (echo_server.py" in out.stdout


def test_evws_fanout_peer_uses_the_broadcast_helper_of_this_tree(run):
    # evws/__init__.py exports the function broadcast under the module's name:
    # the probe must look at the module, or fan-out silently falls back to a loop.
    assert run.evws_broadcast_mode() == "evws.broadcast.broadcast()"


def test_kernel_share_is_taken_per_round_then_the_median(run):
    runs = [{"rt_per_s": 10, "server_cpu": 0.5, "server_sys": 0.25},   # 50 %
            {"rt_per_s": 10, "server_cpu": 0.8, "server_sys": 0.2},    # 25 %
            {"rt_per_s": 10, "server_cpu": 1.0, "server_sys": 0.6},    # 60 %
            {"rt_per_s": 10, "server_cpu": 1.0, "server_sys": -1},     # unknown: left out
            {"rt_per_s": 10, "server_cpu": 1.0},                       # an older generator: left out
            {"error": "timed out"}]
    assert run.kernel_share(runs) == 50.0
    assert run.kernel_share([{"error": "x"}]) is None
    cells = run.workload_cells("churn", args())
    results = {("evws", "churn 50"): [dict(churn(3000), server_sys=0.1)],
               ("websockets", "churn 50"): [churn(1000)]}
    text = run.workload_tables("churn", ["evws", "websockets"], cells, results, 1)
    assert "| server CPU in the kernel % | 20 | - |" in text
    echo = run._tables(["evws"], [("rt", 1, 16)], {("evws", "1 x 16 B"): [dict(rt(100), server_sys=0.4)]},
                       argparse.Namespace(text=False, duration=3, rounds=1))
    assert "server CPU in the kernel" in echo and "| 1 x 16 B | 80 |" in echo


def test_wsbench_reports_the_servers_kernel_time(run, tmp_path):
    """A real wsbench run against a real evws echo server: server_sys is measured, within server_cpu."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc or not os.path.exists("/proc/self/stat"):
        pytest.skip("needs a C compiler and /proc")
    binary = str(tmp_path / "wsbench")
    subprocess.run([cc, "-O1", "-DNO_TLS", "-DNO_ZLIB", "-o", binary, os.path.join(ROOT, "benchmarks", "wsbench.c")],
                   check=True, timeout=120)
    with example_process("echo_server.py") as (server, port):
        out = subprocess.run([binary, "-p", str(port), "-c", "2", "-s", "16", "-d", "1", "-w", "0.2",
                              "-P", str(server.pid), "-T", "30"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rt_per_s"] > 0 and result["server_cpu"] > 0
    assert 0 <= result["server_sys"] <= result["server_cpu"] + 0.02   # clock-tick rounding
