"""loop.child and run_cmd with real subprocesses, on both the pidfd and the SIGCHLD path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import evws
from evws.reactor import process
from evws.reactor.process import ExitStatus, run_cmd
from tests.conftest import run_until

PY = sys.executable


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(params=["pidfd", "sigchld"])
def method(request, monkeypatch):
    if request.param == "pidfd":
        if not hasattr(os, "pidfd_open"):
            pytest.skip("no pidfd_open here")
        monkeypatch.setattr(process, "USE_PIDFD", True)
    else:
        monkeypatch.setattr(process, "USE_PIDFD", False)
    return request.param


def spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen([PY, "-c", code], stdin=subprocess.DEVNULL)


def test_exit_codes_signals_and_several_children(loop, method):
    before = open_fds()
    exits: dict[int, ExitStatus] = {}
    procs = [spawn(f"raise SystemExit({code})") for code in (0, 3, 255)]
    sleeper = spawn("import time; time.sleep(30)")
    try:
        watchers = [loop.child(p.pid, lambda pid, st: exits.__setitem__(pid, st))
                    for p in procs + [sleeper]]
        run_until(loop, lambda: len(exits) == 3)
        assert [exits[p.pid].returncode for p in procs] == [0, 3, 255]
        assert [exits[p.pid].exit_code for p in procs] == [0, 3, 255]
        assert exits[procs[0].pid] == 0 and exits[procs[1].pid] >> 8 == 3  # Perl's $?
        assert exits[procs[1].pid].signal is None
        assert sleeper.pid not in exits
        sleeper.send_signal(signal.SIGTERM)
        run_until(loop, lambda: sleeper.pid in exits)
        st = exits[sleeper.pid]
        assert st.signal == signal.SIGTERM and st.returncode == -signal.SIGTERM
        assert st.exit_code is None and "SIGTERM" in repr(st)
        assert all(not w.active for w in watchers)
        assert watchers[1].status == exits[procs[1].pid]
    finally:
        sleeper.kill()
        for p in procs + [sleeper]:
            p.returncode = 0  # reaped by evws: Popen must not wait
    assert loop._reaper.watchers == {}
    if method == "sigchld":
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL  # handler put back
    assert open_fds() == before, "pidfds or signal fds leaked"


def test_child_that_exited_before_watching(loop, method):
    p = spawn("pass")
    # Wait for the exit without reaping: waitid with WNOWAIT blocks until it is a zombie.
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
    got = []
    loop.child(p.pid, lambda pid, st: got.append((pid, st.returncode)))
    assert got == [], "never called inside child()"
    run_until(loop, lambda: bool(got))
    assert got == [(p.pid, 0)]
    p.returncode = 0


def test_cancel_leaves_the_child_unreaped(loop, method):
    p = spawn("import sys; sys.stdin.read()")  # stdin is /dev/null: exits at once
    got = []
    w = loop.child(p.pid, lambda pid, st: got.append(st))
    w.cancel()
    w.cancel()
    assert p.wait(timeout=10) == 0  # Popen still can reap it: evws did not
    for _ in range(5):
        loop.run_once(0.01)
    assert got == []
    assert loop._reaper.watchers == {}


def test_sigchld_path_does_not_reap_other_children(loop, monkeypatch):
    monkeypatch.setattr(process, "USE_PIDFD", False)
    other = spawn("raise SystemExit(7)")      # not watched: its owner waits for it
    watched = spawn("raise SystemExit(5)")
    got = []
    loop.child(watched.pid, lambda pid, st: got.append(st.returncode))
    os.waitid(os.P_PID, other.pid, os.WEXITED | os.WNOWAIT)  # it exited, SIGCHLD was sent
    run_until(loop, lambda: bool(got))
    assert got == [5]
    assert other.wait(timeout=10) == 7, "the unwatched child was reaped behind its owner"
    watched.returncode = 5


def test_two_watchers_of_one_pid(loop, method):
    p = spawn("raise SystemExit(2)")
    got = []
    loop.child(p.pid, lambda pid, st: got.append(("a", st.returncode)))
    loop.child(p.pid, lambda pid, st: got.append(("b", st.returncode)))
    run_until(loop, lambda: len(got) == 2)
    assert got == [("a", 2), ("b", 2)]
    p.returncode = 2


def test_bad_pids(loop, method):
    with pytest.raises(ValueError):
        loop.child(0, lambda pid, st: None)
    with pytest.raises(ValueError):
        loop.child(-5, lambda pid, st: None)
    with pytest.raises(ChildProcessError):
        loop.child(1, lambda pid, st: None)  # init is nobody's child
    p = spawn("pass")
    p.wait(timeout=10)
    with pytest.raises(ChildProcessError):
        loop.child(p.pid, lambda pid, st: None)  # reaped already


def test_loop_close_releases_child_watchers(method):
    lp = evws.Loop()
    before = open_fds()
    p = spawn("import time; time.sleep(30)")
    try:
        w = lp.child(p.pid, lambda pid, st: None)
        lp.close()
        assert not w.active
        assert open_fds() <= before
    finally:
        p.kill()
        p.wait(timeout=10)
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL


# -- run_cmd -------------------------------------------------------------------

def test_run_cmd_collects_status_stdout_stderr(loop, method):
    code = "import sys; sys.stdout.write('out'); sys.stderr.write('err'); sys.exit(4)"
    status, out, err = run_cmd([PY, "-c", code], loop=loop).recv(timeout=10)
    assert (status.returncode, out, err) == (4, b"out", b"err")


def test_run_cmd_feeds_stdin_and_reads_large_output(loop, method):
    data = os.urandom(1 << 20)  # more than a pipe holds: both sides must be pumped
    code = ("import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d); "
            "sys.stderr.buffer.write(d[:1000])")
    status, out, err = run_cmd([PY, "-c", code], stdin=data, loop=loop).recv(timeout=20)
    assert status == 0
    assert out == data and err == data[:1000]


def test_run_cmd_shell_string_cwd_env(loop, method, tmp_path):
    status, out, _ = run_cmd('echo "$GREETING" && pwd', cwd=tmp_path,
                             env={"GREETING": "hi", "PATH": os.environ["PATH"]},
                             loop=loop).recv(timeout=10)
    assert status == 0
    assert out.decode().split("\n")[:2] == ["hi", str(tmp_path)]


def test_run_cmd_child_that_ignores_stdin(loop, method):
    status, out, _ = run_cmd([PY, "-c", "print('done')"], stdin=os.urandom(1 << 20),
                             loop=loop).recv(timeout=10)
    assert (status, out) == (0, b"done\n")


def test_run_cmd_timeout_kills_and_croaks(loop, method):
    before = open_fds()
    cv = run_cmd([PY, "-c", "import time; time.sleep(30)"], loop=loop, timeout=0.2)
    with pytest.raises(evws.WaitTimeout):
        cv.recv(timeout=10)
    run_until(loop, lambda: not loop._reaper.watchers)  # the killed child is reaped
    assert open_fds() == before


def test_run_cmd_missing_program_croaks(loop):
    with pytest.raises(FileNotFoundError):
        run_cmd(["/nonexistent/program"], loop=loop).recv(timeout=10)
    with pytest.raises(ValueError):
        run_cmd([], loop=loop)
    with pytest.raises(TypeError):
        run_cmd(["true"], stdin="text", loop=loop)  # type: ignore[arg-type]


def test_run_cmd_signalled_child(loop, method):
    status, _, _ = run_cmd([PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
                           loop=loop).recv(timeout=10)
    assert status.signal == signal.SIGKILL and status.returncode == -signal.SIGKILL
