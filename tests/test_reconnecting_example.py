"""examples/reconnecting_client.py against examples/echo_server.py, stopped and restarted.

The server runs on one fixed port, stopped (SIGTERM: it closes with 1001) and
started again; the client must say it is retrying, come back on its own,
send its --hello again (the echo proves the new connection works), and stop
with exit 0 on SIGINT. Every wait has a deadline (``Lines`` reads the pipes
on threads).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.servers import ROOT, example_server
from tests.test_cli import TIMEOUT, Lines, free_port


def start_client(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(ROOT / "examples" / "reconnecting_client.py"),
                             *args], env=env, text=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_reconnects_after_the_server_restarts_and_stops_on_sigint():
    port = free_port()
    url = f"ws://127.0.0.1:{port}/"
    proc = None
    try:
        with example_server("echo_server.py", "--port", str(port)):
            proc = start_client(url, "--hello", "hello again", "--initial-delay", "0.05",
                                "--max-delay", "0.5")
            out, err = Lines(proc.stdout), Lines(proc.stderr)
            err.wait_for(r"connected to ws://")
            out.wait_for(r"^hello again$")
        err.wait_for(r"disconnected \(1001 ")
        err.wait_for(r"connect #2 in \d+\.\d\d s")
        err.wait_for(r"connect #\d+ in \d+\.\d\d s \(ConnectionRefusedError")  # still down
        with example_server("echo_server.py", "--port", str(port)):
            err.wait_for(r"connected to ws://")
            out.wait_for(r"^hello again$")  # the new connection works
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=TIMEOUT) == 0
        rest = err.rest()
        assert "signal 2: stopping" in rest and "Traceback" not in rest
        assert out.rest() == "hello again\n" * 2  # one echo per connection, nothing else
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_sigint_while_waiting_to_retry_stops_at_once():
    proc = start_client(f"ws://127.0.0.1:{free_port()}/", "--initial-delay", "30",
                        "--max-delay", "30")
    try:
        err = Lines(proc.stderr)
        err.wait_for(r"connect #2 in \d+\.\d\d s \(ConnectionRefusedError")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=TIMEOUT) == 0  # not after the 15-30 s wait
        assert "Traceback" not in err.rest()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_a_refusal_that_retrying_cannot_fix_exits_1():
    with example_server("handshake_path.py") as port:  # 400 for a path it does not know
        proc = start_client(f"ws://127.0.0.1:{port}/nothing/here")
        try:
            assert proc.wait(timeout=TIMEOUT) == 1
            err = proc.stderr.read()
            assert "giving up: HandshakeError" in err and "connect #" not in err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
