"""The benchmark runner's report (benchmarks/run.py): per-round ratios and --pin.

The benchmark itself is too slow and too machine-dependent for the default
suite; these check the parts that turn its measurements into the README's
claims, with recorded results and a real child process.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys

import pytest

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
