"""Worker processes on one port: a supervisor that runs on the evws loop.

One evws process uses one core. To use several, :func:`run` forks ``workers``
processes; each calls ``main(ctx)``, which binds its *own* listener with
``reuse_port=True`` (``SO_REUSEPORT``: the kernel spreads new connections over
the listeners of a port) and returns; the worker then runs its loop. Nothing is
shared between workers but the port::

    def main(ctx):
        server = evws.Server()
        ctx.listen(server, "127.0.0.1", 8765, on_accept)   # reuse_port=True, and
        ...                                                 # shut down on stop

    sys.exit(evws.run_workers(main, workers=4))

The supervisor (the parent process) is itself an evws program: one thread,
its own :class:`~evws.reactor.loop.Loop`, signals through ``loop.signal``,
children reaped with ``waitpid`` when ``SIGCHLD`` arrives (and on every
heartbeat tick, in case signals were merged). Each worker has a control
channel, one end of a ``socketpair``, carrying text lines:

- parent -> worker: ``ping`` (heartbeat), ``stop CODE SECONDS REASON``;
- worker -> parent: ``ready`` (``main`` returned: it is listening), ``pong``.

What the supervisor does:

- **crash**: a worker that exits is replaced after an exponential backoff
  (``backoff`` doubling up to ``max_backoff``). A death before the worker was
  ready, or within ``min_uptime`` seconds of its start, is a *start-up
  failure*; after ``max_startup_failures`` of them in a row in one slot the
  supervisor stops every worker and :func:`run` returns 1 instead of looping.
- **hang**: the heartbeat is answered by the worker's *loop* (no thread), so
  a worker whose loop is stuck (a blocking call, an endless loop) misses it;
  after ``heartbeat_timeout`` seconds without an answer it gets ``SIGKILL``
  and is replaced. A worker that is not ready within ``startup_timeout`` is
  killed the same way.
- **SIGTERM / SIGINT**: every worker is told to stop: its servers stop
  accepting, close their connections with 1001 (queued data is sent first)
  and the worker exits; one still alive after ``graceful_timeout`` seconds
  gets ``SIGKILL``. Then :func:`run` returns 0. A second signal kills at once.
- **SIGHUP**: rolling restart, one slot at a time: fork the replacement, wait
  until it reports ``ready`` (it is listening, so the port never lacks a
  listener), then tell the old worker to stop with 1012 (service restart) and
  wait for it to exit before the next slot. A replacement that fails to come
  up aborts the roll; the old workers keep serving.

Workers ignore SIGINT and SIGHUP (a Ctrl-C in a terminal reaches the whole
process group: the supervisor alone decides), treat SIGTERM as a graceful
stop, and stop gracefully too when the supervisor disappears (their end of
the control channel reads EOF).

Fork rules: create loops, servers and sockets inside ``main``, not before
:func:`run`. A forked child shares the parent's epoll instance, so the worker
closes its copy of every loop it inherited without unregistering anything
(unregistering would remove the parent's registrations) and gets a fresh
default loop (``ctx.loop``, also what ``evws.get_loop()`` returns there).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections import deque
from typing import Any, Callable, Optional

from .reactor.condvar import CondVar
from .reactor.loop import IoWatcher, Loop, Timer, set_loop
from .reactor.tcp import TcpServer, listen_socket

__all__ = ["run", "Supervisor", "WorkerContext", "reserve_port"]

log = logging.getLogger("evws.workers")

#: the reason sent with each close code the supervisor asks for
REASONS = {1001: "server shutting down", 1012: "service restart"}

#: signals blocked around ``fork`` so that none reaches the child before it
#: stopped sharing the parent's signal wakeup socket
_FORK_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}

#: the longest control line accepted; longer means the peer is not evws
_MAX_LINE = 4096


def reserve_port(host: Optional[str], port: int = 0) -> socket.socket:
    """Bind ``host:port`` with ``SO_REUSEPORT`` but do not listen: a port for the workers.

    With ``port=0`` each worker would bind a different free port; reserve one
    in the supervisor first and give its number to the workers. A bound
    socket that does not listen takes no connections (only listeners share a
    port's connections), it only keeps the port from being taken by another
    program while workers come and go. Close it when the supervisor is done.
    """
    return listen_socket(host, port, 0, reuse_port=True, listen=False)


class _Channel:
    """Newline-framed text lines over one end of a socketpair, driven by a loop."""

    def __init__(self, loop: Loop, sock: socket.socket, on_line: Callable[[str], Any],
                 on_eof: Callable[[], Any]) -> None:
        self.loop = loop
        self.sock = sock
        self.on_line = on_line
        self.on_eof = on_eof
        self.closed = False
        self._in = bytearray()
        self._out = bytearray()
        sock.setblocking(False)
        self._reader: Optional[IoWatcher] = loop.io(sock, "r", self._readable)
        self._writer: Optional[IoWatcher] = None

    def send(self, line: str) -> None:
        if self.closed:
            return
        self._out += line.encode("utf-8", "replace") + b"\n"
        self._flush()

    def _flush(self) -> None:
        if self.closed:
            return
        try:
            sent = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._lost()
            return
        del self._out[:sent]
        if self._out and self._writer is None:
            self._writer = self.loop.io(self.sock, "w", self._flush)
        elif not self._out and self._writer is not None:
            self._writer.cancel()
            self._writer = None

    def _readable(self) -> None:
        try:
            data = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._lost()
            return
        self._in += data
        while not self.closed:
            end = self._in.find(b"\n")
            if end < 0:
                if len(self._in) > _MAX_LINE:
                    log.warning("control channel: line too long, dropping the channel")
                    self._lost()
                return
            line = self._in[:end].decode("utf-8", "replace")
            del self._in[:end + 1]
            self.on_line(line)

    def _lost(self) -> None:
        if not self.closed:
            self.close()
            self.on_eof()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for watcher in (self._reader, self._writer):
            if watcher is not None:
                watcher.cancel()
        self._reader = self._writer = None
        self.sock.close()


# -- the worker side ------------------------------------------------------------------


class WorkerContext:
    """What ``main(ctx)`` gets in a worker process.

    Attributes:
        index: the worker's slot, ``0 .. workers-1`` (a replacement keeps it).
        generation: how many workers held this slot before (0 for the first).
        loop: the worker's fresh loop (also its default: ``evws.get_loop()``).
        pid: the worker's process id.
        stopping: set once a stop was asked for; ``stop_code`` says which.

    Register what must shut down gracefully: :meth:`add_server` (its
    ``shutdown(code, reason, timeout)`` is called) or :meth:`on_stop` for
    anything else. :meth:`listen` does the common case in one call.
    """

    def __init__(self, index: int, generation: int, loop: Loop) -> None:
        self.index = index
        self.generation = generation
        self.loop = loop
        self.pid = os.getpid()
        self.stopping = False
        self.stop_code: Optional[int] = None
        self._servers: list[Any] = []
        self._hooks: list[Callable[[int, str], Any]] = []

    def listen(self, server: Any, host: Optional[str], port: int,
               fn: Callable[[socket.socket, str, int], Any], **options: Any) -> TcpServer:
        """``server.listen(host, port, fn, reuse_port=True, **options)``, and :meth:`add_server`."""
        options.setdefault("reuse_port", True)
        listener: TcpServer = server.listen(host, port, fn, **options)
        self.add_server(server)
        return listener

    def add_server(self, server: Any) -> None:
        """Shut ``server`` (an :class:`evws.Server`) down when the worker is told to stop.

        ``shutdown`` closes its listeners first (no new connection), then its
        connections with the stop's close code (1001 or 1012).
        """
        if server not in self._servers:
            self._servers.append(server)

    def on_stop(self, fn: Callable[[int, str], Any]) -> None:
        """Call ``fn(code, reason)`` when the worker is told to stop.

        ``fn`` may return a :class:`~evws.CondVar`: the worker exits once it
        is ready (or when the stop's time is up). Use it for listeners that
        are not an ``evws.Server``'s (``tcp_server``, ``evws.wsgi``).
        """
        self._hooks.append(fn)

    def _stop(self, code: int, reason: str, timeout: float) -> None:
        """Stop everything registered; stop the loop when all of it is done."""
        if self.stopping:
            return
        self.stopping = True
        self.stop_code = code
        loop = self.loop
        done = CondVar(loop)
        # Whatever a hook does, the worker leaves in time (the supervisor
        # would SIGKILL it a little later otherwise).
        guard = loop.timer(timeout + 0.5, loop.stop)

        def finished(_cv: CondVar) -> None:
            guard.cancel()
            loop.stop()

        done.begin(finished)
        for server in self._servers:
            done.begin()
            try:
                server.shutdown(code, reason, timeout=timeout).cb(lambda _cv: done.end())
            except Exception:
                log.exception("worker %d: shutting down %r failed", self.index, server)
                done.end()
        for hook in self._hooks:
            try:
                result = hook(code, reason)
            except Exception:
                log.exception("worker %d: stop hook %r failed", self.index, hook)
                continue
            if isinstance(result, CondVar):
                done.begin()
                result.cb(lambda _cv: done.end())
        done.end()

    def __repr__(self) -> str:
        return f"<WorkerContext index={self.index} generation={self.generation} pid={self.pid}>"


def _run_worker(main: Callable[[WorkerContext], Any], index: int, generation: int,
                sock: socket.socket, graceful_timeout: float,
                old_mask: set[int | signal.Signals]) -> int:
    """The body of a worker process; returns its exit status."""
    loop = Loop()
    set_loop(loop)  # what evws.get_loop() returns in this process
    ctx = WorkerContext(index, generation, loop)
    budget = graceful_timeout * 0.8
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    term = loop.signal(signal.SIGTERM,
                       lambda _s: ctx._stop(1001, REASONS[1001], budget))
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def on_line(line: str) -> None:
        if line == "ping":
            channel.send("pong")
        elif line.startswith("stop "):
            parts = line.split(" ", 3)
            try:
                code, seconds = int(parts[1]), float(parts[2])
            except (IndexError, ValueError):
                log.warning("worker %d: bad control line %r", index, line)
                return
            ctx._stop(code, parts[3] if len(parts) > 3 else "", seconds)
        else:
            log.warning("worker %d: unknown control line %r", index, line)

    def on_eof() -> None:
        log.warning("worker %d: the supervisor is gone; stopping", index)
        ctx._stop(1001, REASONS[1001], budget)

    channel = _Channel(loop, sock, on_line, on_eof)
    try:
        try:
            main(ctx)
        except Exception as exc:
            # One line for the log, the traceback once, on stderr (the evws
            # logger may be silent; log.exception too would print it twice).
            log.error("worker %d: main() failed: %s: %s", index, type(exc).__name__, exc)
            traceback.print_exc()
            return 1
        channel.send("ready")
        loop.run()
        return 0
    finally:
        term.cancel()
        channel.close()
        loop.close()


# -- the supervisor ---------------------------------------------------------------------


class _Worker:
    """The supervisor's record of one worker process."""

    __slots__ = ("slot", "generation", "pid", "channel", "started", "ready_at",
                 "last_heard", "retiring", "kill_timer", "kill_reason")

    def __init__(self, slot: int, generation: int, pid: int) -> None:
        self.slot = slot
        self.generation = generation
        self.pid = pid
        self.channel: Optional[_Channel] = None
        self.started = time.monotonic()
        self.ready_at: Optional[float] = None
        self.last_heard = self.started
        self.retiring = False  # told to stop: its exit is expected
        self.kill_timer: Optional[Timer] = None
        self.kill_reason = ""

    def __repr__(self) -> str:
        return f"worker {self.slot} (pid {self.pid})"


class _Slot:
    """One of the ``workers`` places: its current worker and its failure count."""

    __slots__ = ("index", "current", "generations", "failures", "restart_timer")

    def __init__(self, index: int) -> None:
        self.index = index
        self.current: Optional[_Worker] = None
        self.generations = 0
        self.failures = 0  # start-up failures in a row
        self.restart_timer: Optional[Timer] = None


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class Supervisor:
    """Forks and watches ``workers`` processes running ``main(ctx)``; see the module docstring.

    Args:
        main: ``main(ctx)`` sets a worker up (binds its listeners with
            ``reuse_port=True``, registers what must shut down) and returns;
            the worker is *ready* then and runs ``ctx.loop``. An exception
            exits the worker with status 1.
        workers: how many worker processes (``>= 1``).
        heartbeat_interval: seconds between heartbeats (and reaping checks).
        heartbeat_timeout: a ready worker that has not answered for this long
            is considered hung: ``SIGKILL`` and replaced.
        graceful_timeout: seconds a stopping worker has before ``SIGKILL``;
            its servers get 80% of it to close their connections.
        startup_timeout: seconds a new worker has to become ready.
        min_uptime: a worker that dies sooner than this after its start (or
            before it was ready) counts as a start-up failure.
        max_startup_failures: start-up failures in a row (in one slot) after
            which the supervisor gives up and returns 1.
        backoff: the first restart delay; it doubles with each start-up
            failure in a row, up to ``max_backoff``.
        on_ready: called (in the supervisor, on its loop) once, when every
            slot's first worker is ready: the port is served from then on.
    """

    def __init__(self, main: Callable[[WorkerContext], Any], workers: int = 2, *,
                 heartbeat_interval: float = 1.0, heartbeat_timeout: float = 10.0,
                 graceful_timeout: float = 10.0, startup_timeout: float = 30.0,
                 min_uptime: float = 1.0, max_startup_failures: int = 5,
                 backoff: float = 0.1, max_backoff: float = 10.0,
                 on_ready: Optional[Callable[[], Any]] = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        for name, value in (("heartbeat_interval", heartbeat_interval),
                            ("heartbeat_timeout", heartbeat_timeout),
                            ("graceful_timeout", graceful_timeout),
                            ("startup_timeout", startup_timeout)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, not {value}")
        if max_startup_failures < 1:
            raise ValueError("max_startup_failures must be at least 1")
        self.main = main
        self.workers = workers
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.graceful_timeout = graceful_timeout
        self.startup_timeout = startup_timeout
        self.min_uptime = min_uptime
        self.max_startup_failures = max_startup_failures
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.on_ready = on_ready
        self._all_ready = False
        self.loop: Optional[Loop] = None
        self.status = 0
        self._slots = [_Slot(i) for i in range(workers)]
        self._live: dict[int, _Worker] = {}  # pid -> worker, until reaped
        self._stopping = False
        # rolling restart: slots still to do, the replacement coming up, the
        # old worker going away
        self._roll: deque[int] = deque()
        self._rolling = False
        self._roll_again = False
        self._roll_new: Optional[_Worker] = None
        self._roll_old: Optional[_Worker] = None

    @property
    def pids(self) -> list[int]:
        """The pids of the current worker of each slot (``0`` while a slot has none)."""
        return [s.current.pid if s.current is not None else 0 for s in self._slots]

    # -- running -------------------------------------------------------------

    def run(self) -> int:
        """Start the workers and supervise them until stopped; returns the exit status.

        0 after SIGTERM/SIGINT (every worker stopped), 1 when workers kept
        dying at start-up. Must be called from the main thread, with no other
        loop watching signals.
        """
        loop = self.loop = Loop()
        watchers = []
        try:
            watchers = [loop.signal(signal.SIGTERM, self._on_stop_signal),
                        loop.signal(signal.SIGINT, self._on_stop_signal),
                        loop.signal(signal.SIGHUP, lambda _s: self.reload()),
                        loop.signal(signal.SIGCHLD, lambda _s: self._reap())]
            ticker = loop.timer(self.heartbeat_interval, self._tick,
                                interval=self.heartbeat_interval)
            for slot in self._slots:
                self._spawn(slot)
            if self._live:
                loop.run()
            ticker.cancel()
        finally:
            self._kill_all_now()
            for watcher in watchers:
                watcher.cancel()
            loop.close()
            self.loop = None
        return self.status

    def stop(self, status: int = 0) -> None:
        """Stop every worker gracefully (close code 1001); ``run`` then returns ``status``."""
        if self._stopping:
            return
        self._stopping = True
        self.status = status
        self._roll.clear()
        self._roll_again = False
        for slot in self._slots:
            if slot.restart_timer is not None:
                slot.restart_timer.cancel()
                slot.restart_timer = None
        for worker in list(self._live.values()):
            self._retire(worker, 1001)
        self._check_done()

    def reload(self) -> None:
        """Rolling restart (what SIGHUP does); a reload asked for during one runs after it."""
        if self._stopping:
            return
        if self._rolling:
            self._roll_again = True
            return
        log.info("rolling restart of %d workers", self.workers)
        self._rolling = True
        self._roll.extend(range(self.workers))
        self._roll_step()

    def _on_stop_signal(self, signum: int) -> None:
        if self._stopping:
            log.warning("signal %d again: killing the workers now", signum)
            for worker in list(self._live.values()):
                self._kill(worker, "second stop signal")
            return
        log.info("signal %d: stopping %d workers", signum, len(self._live))
        self.stop(0)

    # -- processes -----------------------------------------------------------

    def _spawn(self, slot: _Slot, replacement: bool = False) -> _Worker:
        """Fork a worker for ``slot``; it is the slot's current one unless a ``replacement``.

        A replacement (rolling restart) becomes current when it reports ready.
        """
        assert self.loop is not None
        slot.restart_timer = None
        parent_end, child_end = socket.socketpair()
        generation = slot.generations
        slot.generations += 1
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _FORK_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            parent_end.close()
            child_end.close()
            raise
        if pid == 0:  # the worker: never returns into the supervisor's stack
            status = 1
            try:
                parent_end.close()
                self._forget_in_child()
                status = _run_worker(self.main, slot.index, generation, child_end,
                                     self.graceful_timeout, old_mask)
            except BaseException:
                traceback.print_exc()
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except (OSError, ValueError):
                        pass
                os._exit(status)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        child_end.close()
        worker = _Worker(slot.index, generation, pid)
        worker.channel = _Channel(self.loop, parent_end,
                                  lambda line: self._on_line(worker, line), lambda: None)
        self._live[pid] = worker
        if not replacement:
            slot.current = worker
        log.info("%r started", worker)
        return worker

    def _forget_in_child(self) -> None:
        """In a new worker: drop the supervisor's loop, channels and default loop."""
        assert self.loop is not None
        self.loop.abandon()
        inherited = set_loop(None)
        if inherited is not None:
            inherited.abandon()
        for worker in self._live.values():
            if worker.channel is not None:
                worker.channel.close()

    def _on_line(self, worker: _Worker, line: str) -> None:
        worker.last_heard = time.monotonic()
        if line == "pong":
            return
        if line == "ready":
            self._on_ready(worker)
            return
        log.warning("%r sent an unknown control line %r", worker, line)

    def _on_ready(self, worker: _Worker) -> None:
        worker.ready_at = time.monotonic()
        log.info("%r ready", worker)
        if worker.retiring:
            return
        if not self._all_ready and all(s.current is not None and s.current.ready_at is not None
                                       for s in self._slots):
            self._all_ready = True
            if self.on_ready is not None:
                try:
                    self.on_ready()
                except Exception:
                    log.exception("on_ready callback %r failed", self.on_ready)
        if worker is self._roll_new:
            slot = self._slots[worker.slot]
            old = slot.current
            slot.current = worker
            self._roll_new = None
            if old is not None and old.pid in self._live:
                self._roll_old = old
                self._retire(old, 1012)
            else:
                self._loop_call(self._roll_step)

    def _retire(self, worker: _Worker, code: int) -> None:
        """Ask ``worker`` to stop with ``code``; SIGKILL it after ``graceful_timeout``."""
        assert self.loop is not None
        if worker.retiring:
            return
        worker.retiring = True
        slot = self._slots[worker.slot]
        if slot.current is worker:
            slot.current = None
        log.info("stopping %r (close code %d)", worker, code)
        if worker.channel is not None:
            worker.channel.send(f"stop {code} {self.graceful_timeout * 0.8:.3f} {REASONS.get(code, '')}")
        worker.kill_timer = self.loop.timer(
            self.graceful_timeout,
            lambda: self._kill(worker, f"still running {self.graceful_timeout} s after stop"))

    def _kill(self, worker: _Worker, reason: str) -> None:
        if worker.pid not in self._live or worker.kill_reason:
            return
        log.warning("%r %s: SIGKILL", worker, reason)
        worker.kill_reason = reason
        try:
            os.kill(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._reap()

    def _tick(self) -> None:
        """Heartbeats, start-up deadlines, and a reaping pass (signals can merge)."""
        self._reap()
        now = time.monotonic()
        for worker in list(self._live.values()):
            if worker.kill_reason:
                continue
            if worker.ready_at is None:
                if now - worker.started > self.startup_timeout:
                    self._kill(worker, f"not ready within {self.startup_timeout} s")
                continue
            slot = self._slots[worker.slot]
            if slot.current is worker and slot.failures and now - worker.started >= self.min_uptime:
                slot.failures = 0  # it came up and stayed up: the crash loop is over
            silent = now - worker.last_heard
            if silent > self.heartbeat_timeout:
                self._kill(worker, f"hung: no heartbeat answer for {silent:.1f} s")
            elif worker.channel is not None:
                worker.channel.send("ping")

    def _reap(self) -> None:
        for worker in list(self._live.values()):
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: status unknown
                pid, status = worker.pid, 255 << 8
            if pid:
                self._exited(worker, status)

    def _exited(self, worker: _Worker, status: int) -> None:
        del self._live[worker.pid]
        if worker.channel is not None:
            worker.channel.close()
        if worker.kill_timer is not None:
            worker.kill_timer.cancel()
        log.info("%r exited: %s", worker, _describe(status))
        slot = self._slots[worker.slot]
        if slot.current is worker:
            slot.current = None
        if worker is self._roll_old:
            self._roll_old = None
            self._loop_call(self._roll_step)
        if self._stopping:
            self._check_done()
            return
        if worker.retiring:
            return
        now = time.monotonic()
        early = worker.ready_at is None or now - worker.started < self.min_uptime
        slot.failures = slot.failures + 1 if early else 0
        if worker is self._roll_new:
            self._roll_new = None
            self._abort_roll(f"the new worker {slot.index} failed")
        if slot.failures >= self.max_startup_failures:
            log.error("giving up: worker %d died %d times in a row at start-up",
                      slot.index, slot.failures)
            self.stop(1)
            return
        if slot.current is None and slot.restart_timer is None and not (
                self._roll_new is not None and self._roll_new.slot == slot.index):
            delay = min(self.max_backoff, self.backoff * 2 ** max(slot.failures - 1, 0))
            log.info("restarting worker %d in %.2f s", slot.index, delay)
            assert self.loop is not None
            slot.restart_timer = self.loop.timer(delay, lambda: self._restart(slot))

    def _restart(self, slot: _Slot) -> None:
        slot.restart_timer = None
        if self._stopping or slot.current is not None:
            return
        try:
            self._spawn(slot)
        except OSError as exc:  # fork failed (EAGAIN, ENOMEM): try again later
            delay = self.max_backoff
            log.error("cannot start worker %d (%s); again in %.1f s", slot.index, exc, delay)
            assert self.loop is not None
            slot.restart_timer = self.loop.timer(delay, lambda: self._restart(slot))

    def _abort_roll(self, why: str) -> None:
        log.error("rolling restart aborted: %s; the other workers keep serving", why)
        self._roll.clear()
        self._loop_call(self._roll_step)

    def _roll_step(self) -> None:
        """Start the next slot of a rolling restart, or finish it."""
        if self._stopping or self._roll_new is not None or self._roll_old is not None:
            return
        while self._roll:
            slot = self._slots[self._roll.popleft()]
            if slot.current is None or slot.current.ready_at is None:
                continue  # coming up anyway (crashed and restarting): new code already
            try:
                self._roll_new = self._spawn(slot, replacement=True)
            except OSError as exc:
                self._abort_roll(f"cannot start a new worker {slot.index} ({exc})")
            return
        if self._rolling:
            self._rolling = False
            log.info("rolling restart done")
            if self._roll_again:
                self._roll_again = False
                self.reload()

    def _check_done(self) -> None:
        if self._stopping and not self._live and self.loop is not None:
            log.info("all workers stopped")
            self.loop.stop()

    def _loop_call(self, fn: Callable[[], Any]) -> None:
        if self.loop is not None and not self.loop.closed:
            self.loop.call_soon(fn)

    def _kill_all_now(self) -> None:
        """Leaving ``run`` with workers alive (an exception): SIGKILL and reap them."""
        for worker in list(self._live.values()):
            try:
                os.kill(worker.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(worker.pid, 0)
            except ChildProcessError:
                pass
            except OSError as exc:  # pragma: no cover - EINTR is retried by Python
                if exc.errno != errno.EINTR:
                    raise
            if worker.channel is not None:
                worker.channel.close()
            if worker.kill_timer is not None:
                worker.kill_timer.cancel()
        self._live.clear()
        for slot in self._slots:
            if slot.restart_timer is not None:
                slot.restart_timer.cancel()
                slot.restart_timer = None
            slot.current = None


def run(main: Callable[[WorkerContext], Any], workers: int = 2, **options: Any) -> int:
    """Run ``main(ctx)`` in ``workers`` supervised processes; returns the exit status.

    ``Supervisor(main, workers, **options).run()``: see :class:`Supervisor`
    for the options and the module docstring for what each signal does.
    Typical use: ``sys.exit(evws.run_workers(main, workers=4))``.
    """
    return Supervisor(main, workers, **options).run()
