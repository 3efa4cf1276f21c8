"""Start an example server as a subprocess on a free port, with bounded waits."""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def example_server(script: str, *args: str, timeout: float = 10.0):
    """Run examples/<script> --port 0; yield the port it printed, then stop it."""
    with example_process(script, *args, timeout=timeout) as (_proc, port):
        yield port


@contextlib.contextmanager
def example_process(script: str, *args: str, timeout: float = 10.0):
    """As :func:`example_server`, yielding ``(process, port)`` (for a test that needs its pid)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / script), "--port", "0", *args],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
    try:
        deadline = time.monotonic() + timeout
        port = None
        while port is None:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{script} did not start (exit {proc.poll()})")
            line = proc.stderr.readline()
            match = re.search(r"ws://[^:]+:(\d+)/", line)
            if match:
                port = int(match.group(1))
        yield proc, port
        assert proc.poll() is None, f"{script} died during the test"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()
