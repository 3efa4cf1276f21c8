"""Child processes on the loop: AnyEvent->child and AnyEvent::Util::run_cmd.

:func:`child` calls a function once a child process exits; :func:`run_cmd`
starts a command, feeds its stdin and collects its stdout and stderr on the
loop, and hands back a :class:`~evws.reactor.CondVar` of
``(status, out, err)``. Nothing blocks and no thread is used.

How an exit is noticed, and why:

- **pidfd** (Linux 5.3 and later, ``os.pidfd_open``): a file descriptor that
  becomes readable when the process exits. It is one more fd in the poller,
  works from any thread's loop, and touches no process-wide state.
- **SIGCHLD** otherwise (or when ``pidfd_open`` is refused, e.g. by a
  seccomp filter): the loop watches SIGCHLD (:meth:`Loop.signal`, so the main
  thread only) and, on each signal, calls ``waitpid(pid, WNOHANG)`` for every
  *watched* pid. Never ``waitpid(-1)``: children that someone else started
  (a ``subprocess.Popen`` the program waits for itself) are not reaped behind
  their owner's back. Signals coalesce, so each one checks every watched pid.

Either way the status is collected with ``waitpid``, which reaps the child.
If something else reaped it first (``Popen.wait`` on the same pid, or
SIGCHLD set to ``SIG_IGN``), the real status is lost; evws then reports exit
code 255 and logs a warning, as asyncio's child watchers do.
"""

from __future__ import annotations

import errno
import logging
import os
import signal as _signal
import subprocess
from typing import Any, Callable, Sequence

from ..errors import WaitTimeout
from .condvar import CondVar
from .loop import IoWatcher, Loop, SignalWatcher, Timer, call_safely, get_loop

__all__ = ["ExitStatus", "ChildWatcher", "child", "run_cmd"]

log = logging.getLogger("evws.process")

#: Use pidfds where the platform has them; tests set it to False to exercise
#: the SIGCHLD path. Read when a loop makes its first child watcher.
USE_PIDFD = hasattr(os, "pidfd_open")

# What waitpid cannot tell any more (the child was reaped elsewhere): "exit 255".
_LOST_STATUS = 255 << 8

_READ_SIZE = 65536


class ExitStatus(int):
    """A child's status as ``os.waitpid`` returns it (Perl's ``$?``), with names.

    It *is* that int, so Perl-style code (``status >> 8``, ``status & 127``,
    ``status == 0`` for success) ports unchanged; the properties spare the
    bit fiddling.
    """

    __slots__ = ()

    @property
    def returncode(self) -> int:
        """As ``subprocess``: the exit code, or ``-N`` when signal N killed it."""
        return os.waitstatus_to_exitcode(self)

    @property
    def exit_code(self) -> int | None:
        """The code passed to ``exit()``; ``None`` if a signal ended the process."""
        return os.WEXITSTATUS(self) if os.WIFEXITED(self) else None

    @property
    def signal(self) -> int | None:
        """The number of the signal that killed the process, or ``None``."""
        return os.WTERMSIG(self) if os.WIFSIGNALED(self) else None

    def __repr__(self) -> str:
        if os.WIFSIGNALED(self):
            try:
                name = _signal.Signals(os.WTERMSIG(self)).name
            except ValueError:
                name = str(os.WTERMSIG(self))
            return f"<ExitStatus {int(self)} killed by {name}>"
        return f"<ExitStatus {int(self)} exit {self.returncode}>"


class ChildWatcher:
    """Guard for :func:`child`: ``cancel()`` stops watching (idempotent).

    ``status`` is ``None`` until the child exited, then its
    :class:`ExitStatus`. A cancelled watcher's child is not reaped by evws.
    """

    __slots__ = ("_reaper", "pid", "fn", "active", "status")

    def __init__(self, reaper: _Reaper, pid: int, fn: Callable[[int, ExitStatus], Any]) -> None:
        self._reaper = reaper
        self.pid = pid
        self.fn = fn
        self.active = True
        self.status: ExitStatus | None = None

    def cancel(self) -> None:
        if self.active:
            self.active = False
            self._reaper.remove(self)

    def __repr__(self) -> str:
        state = "active" if self.active else f"done {self.status!r}" if self.status is not None \
            else "cancelled"
        return f"<ChildWatcher pid={self.pid} {state}>"


class _Reaper:
    """One per loop (``loop._reaper``): the watched pids and how they are watched."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.use_pidfd = USE_PIDFD
        self.watchers: dict[int, list[ChildWatcher]] = {}
        self.pidfds: dict[int, tuple[int, IoWatcher]] = {}
        self.sigchld: SignalWatcher | None = None

    def add(self, pid: int, fn: Callable[[int, ExitStatus], Any]) -> ChildWatcher:
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            raise ValueError(f"pid must be a positive int, not {pid!r}")
        _check_child(pid)
        watcher = ChildWatcher(self, pid, fn)
        watchers = self.watchers.get(pid)
        if watchers is not None:
            watchers.append(watcher)
            return watcher
        self.watchers[pid] = [watcher]
        try:
            self._start(pid)
        except BaseException:
            del self.watchers[pid]
            watcher.active = False
            raise
        return watcher

    def _start(self, pid: int) -> None:
        if self.use_pidfd:
            try:
                fd = os.pidfd_open(pid)
            except OSError as exc:
                if exc.errno not in (errno.ENOSYS, errno.EPERM, errno.EACCES):
                    raise
                log.info("pidfd_open refused (%s): watching children with SIGCHLD", exc)
                self.use_pidfd = False
            else:
                try:
                    io = self.loop.io(fd, "r", lambda: self.reap(pid))
                except BaseException:
                    os.close(fd)
                    raise
                self.pidfds[pid] = (fd, io)
                return
        if self.sigchld is None:
            self.sigchld = self.loop.signal(_signal.SIGCHLD, self._on_sigchld)
        # The child may have exited before the handler was there: look once.
        self.loop.call_soon(self.reap, pid)

    def _on_sigchld(self, signum: int) -> None:
        for pid in list(self.watchers):
            self.reap(pid)

    def reap(self, pid: int) -> None:
        """Collect ``pid``'s status if it exited; then call its watchers."""
        if pid not in self.watchers:
            return
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            log.warning("child %d was reaped by someone else: its status is lost, "
                        "reporting exit code 255", pid)
            got, status = pid, _LOST_STATUS
        if got == 0:
            return  # still running (a SIGCHLD for another child)
        watchers = self.watchers.pop(pid)
        self._stop(pid)
        result = ExitStatus(status)
        for w in watchers:
            if w.active:
                w.active = False
                w.status = result
                call_safely(w.fn, (pid, result))

    def remove(self, watcher: ChildWatcher) -> None:
        watchers = self.watchers.get(watcher.pid)
        if watchers is None or watcher not in watchers:
            return
        watchers.remove(watcher)
        if not watchers:
            del self.watchers[watcher.pid]
            self._stop(watcher.pid)

    def _stop(self, pid: int) -> None:
        entry = self.pidfds.pop(pid, None)
        if entry is not None:
            entry[1].cancel()
            os.close(entry[0])
        if not self.watchers and self.sigchld is not None:
            self.sigchld.cancel()  # puts the previous SIGCHLD handler back
            self.sigchld = None

    def close(self) -> None:
        """The loop closes: release every pidfd and the SIGCHLD handler."""
        for watchers in self.watchers.values():
            for w in watchers:
                w.active = False
        self.watchers.clear()
        for pid in list(self.pidfds):
            self._stop(pid)
        self._stop(0)


def _check_child(pid: int) -> None:
    """Refuse a pid that is not an unreaped child of ours, without reaping it."""
    if not hasattr(os, "waitid"):
        return
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        raise ChildProcessError(
            errno.ECHILD, f"process {pid} is not a child of this process (or was reaped already)"
        ) from None


def child(pid: int, fn: Callable[[int, ExitStatus], Any], *,
          loop: Loop | None = None) -> ChildWatcher:
    """Call ``fn(pid, status)`` on the loop once child ``pid`` exits (AnyEvent->child).

    ``status`` is an :class:`ExitStatus` (the ``waitpid`` int, with
    ``returncode``, ``exit_code`` and ``signal``); the child is reaped. It
    works for a child that already exited, and several watchers of one pid
    are all called, in the order they were added. Unlike AnyEvent, ``pid``
    0 ("any child") is refused: reaping children one did not ask about
    breaks their owners.

    Without pidfds (not Linux >= 5.3) this watches SIGCHLD, which needs the
    main thread; see the module docstring.

    Raises:
        ValueError: ``pid`` is not a positive int (or, on the SIGCHLD path,
            this is not the main thread).
        ChildProcessError: ``pid`` is not an unreaped child of this process.
    """
    loop = loop if loop is not None else get_loop()
    if loop.closed:
        raise RuntimeError("the loop is closed")
    reaper: _Reaper | None = loop._reaper
    if reaper is None:
        reaper = loop._reaper = _Reaper(loop)
    return reaper.add(pid, fn)


class _Run:
    """One :func:`run_cmd`: pipes pumped on the loop, the child watched, a deadline."""

    def __init__(self, loop: Loop, cv: CondVar, proc: subprocess.Popen[bytes],
                 stdin: bytes | None, timeout: float | None, name: str) -> None:
        self.loop = loop
        self.cv = cv
        self.proc = proc
        self.name = name
        self.out = bytearray()
        self.err = bytearray()
        self.status: ExitStatus | None = None
        self.readers: dict[int, tuple[IoWatcher, bytearray, Any]] = {}
        self.writer: IoWatcher | None = None
        self.pending = memoryview(stdin) if stdin else memoryview(b"")
        self.timer: Timer | None = None
        for pipe, buf in ((proc.stdout, self.out), (proc.stderr, self.err)):
            assert pipe is not None
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            self.readers[fd] = (loop.io(fd, "r", self._reader(fd)), buf, pipe)
        if proc.stdin is not None:
            os.set_blocking(proc.stdin.fileno(), False)
            self.writer = loop.io(proc.stdin.fileno(), "w", self.writable)
        if timeout is not None:
            self.timer = loop.timer(timeout, lambda: self.timed_out(timeout))
        self.watcher = child(proc.pid, self.exited, loop=loop)

    def _reader(self, fd: int) -> Callable[[], None]:
        return lambda: self.readable(fd)

    def readable(self, fd: int) -> None:
        try:
            data = os.read(fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("%s: reading fd %d failed: %r", self.name, fd, exc)
            data = b""
        if data:
            self.readers[fd][1] += data
            return
        self.close_reader(fd)
        self.check_done()

    def close_reader(self, fd: int) -> None:
        watcher, _, pipe = self.readers.pop(fd)
        watcher.cancel()
        pipe.close()

    def writable(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        while self.pending:
            try:
                n = os.write(stdin.fileno(), self.pending[:_READ_SIZE])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EPIPE: the child closed its stdin; fine
                log.debug("%s: writing stdin failed: %r", self.name, exc)
                break
            self.pending = self.pending[n:]
        self.close_writer()

    def close_writer(self) -> None:
        if self.writer is not None:
            self.writer.cancel()
            self.writer = None
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.close()  # EOF for the child
            except OSError:
                pass

    def exited(self, pid: int, status: ExitStatus) -> None:
        self.status = status
        # Popen must not wait for (or warn about) a child it can no longer reap.
        self.proc.returncode = status.returncode
        self.close_writer()
        self.check_done()

    def check_done(self) -> None:
        # Done once the child exited *and* both pipes reached EOF: output a
        # child wrote just before exiting may still be in the pipes.
        if self.status is None or self.readers or self.cv.ready:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.cv.send(self.status, bytes(self.out), bytes(self.err))

    def timed_out(self, timeout: float) -> None:
        self.timer = None
        if self.status is None:
            try:
                self.proc.kill()  # the child watcher stays and reaps it
            except OSError:
                pass
        self.close_writer()
        for fd in list(self.readers):
            self.close_reader(fd)
        self.cv.croak(WaitTimeout(f"{self.name} still running after {timeout} s; killed"))


def run_cmd(argv: Sequence[str | os.PathLike[str]] | str, *, stdin: bytes | None = None,
            loop: Loop | None = None, timeout: float | None = None,
            cwd: str | os.PathLike[str] | None = None,
            env: dict[str, str] | None = None) -> CondVar:
    """Run a command; a CondVar yields ``(status, out, err)`` once it exited.

    AnyEvent::Util::run_cmd with its stdout and stderr captured: ``out`` and
    ``err`` are bytes, read on the loop without blocking as the child writes
    them (a chatty child never fills a pipe and stalls); ``stdin`` (bytes)
    is written on the loop, then closed; ``None`` gives the child
    ``/dev/null``. ``status`` is an :class:`ExitStatus` (``status == 0`` on
    success, ``status.returncode`` as ``subprocess`` has it). The CondVar is
    ready once the child exited *and* both pipes reached EOF, so a
    grandchild that keeps them open keeps it waiting (as in Perl): give a
    ``timeout``.

    Args:
        argv: the program and its arguments; a ``str`` is run by
            ``/bin/sh -c``, as Perl's run_cmd does with a string.
        timeout: seconds; then the child is killed (SIGKILL) and the CondVar
            croaks :class:`~evws.errors.WaitTimeout`. The child is still
            reaped on the loop.
        cwd, env: as for ``subprocess.Popen``.

    Croaks with the ``OSError`` of a failed start (``FileNotFoundError`` for
    a missing program, ``PermissionError``...).
    """
    loop = loop if loop is not None else get_loop()
    cv = CondVar(loop)
    if isinstance(argv, str):
        args: list[str | os.PathLike[str]] = ["/bin/sh", "-c", argv]
    else:
        args = list(argv)
        if not args:
            raise ValueError("run_cmd needs a program to run")
    if stdin is not None and not isinstance(stdin, (bytes, bytearray, memoryview)):
        raise TypeError(f"stdin must be bytes or None, not {type(stdin).__name__}")
    try:
        proc = subprocess.Popen(
            args, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env)
    except OSError as exc:
        cv.croak(exc)
        return cv
    try:
        _Run(loop, cv, proc, bytes(stdin) if stdin is not None else None, timeout,
             os.fspath(args[0]) if isinstance(args[0], (str, os.PathLike)) else str(args[0]))
    except BaseException:
        proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        raise
    return cv
