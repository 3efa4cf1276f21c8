"""What a test that starts processes checks at the end: nothing of them is left.

``Baseline()`` records this process's open file descriptors and child
processes; ``baseline.check(pids)`` waits (bounded) until every pid in ``pids``
(grandchildren such as the workers of a supervisor, or a browser's helpers)
is gone, then asserts that no child was added and the fd count is what it was.
"""

from __future__ import annotations

import os
import pathlib
import selectors
import time


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def child_pids() -> set[int]:
    """The live children of this process (any thread's), from /proc."""
    pids: set[int] = set()
    for task in pathlib.Path("/proc/self/task").iterdir():
        try:
            pids.update(int(pid) for pid in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            continue
    return pids


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, theirs, ...), from /proc."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        for task in pathlib.Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = {int(p) for p in (task / "children").read_text().split()}
            except (FileNotFoundError, ProcessLookupError):
                continue
            todo.extend(children - found)
            found |= children
    return found


def wait_gone(pids: set[int] | frozenset[int], timeout: float = 10.0) -> set[int]:
    """Wait (on pidfds, bounded) until every pid in ``pids`` exited; return those still alive.

    Works for processes that are not our children (a supervisor's workers, a
    browser's helpers): a pidfd becomes readable when its process ends.
    """
    deadline = time.monotonic() + timeout
    left: set[int] = set()
    with selectors.DefaultSelector() as sel:
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            sel.register(fd, selectors.EVENT_READ, pid)
        try:
            while sel.get_map() and (remaining := deadline - time.monotonic()) > 0:
                for key, _ in sel.select(remaining):
                    sel.unregister(key.fd)
                    os.close(key.fd)
        finally:
            for key in list(sel.get_map().values()):
                left.add(key.data)
                sel.unregister(key.fd)
                os.close(key.fd)
    return {pid for pid in left if alive(pid)}


class Baseline:
    def __init__(self) -> None:
        self.fds = fd_count()
        self.children = child_pids()

    def check(self, pids: set[int] | frozenset[int] = frozenset(),
              replaced: set[int] | frozenset[int] = frozenset()) -> None:
        """Assert that ``pids`` are gone and fds and children are as before.

        ``replaced``: children started during the test on purpose that stay
        (a fixture's server restarted by the test).
        """
        left = wait_gone(pids)
        assert not left, f"processes still running: {sorted(left)}"
        new = child_pids() - self.children - set(replaced)
        assert not new, f"child processes left behind: {sorted(new)}"
        # More is a leak; fewer is an earlier test's socket collected meanwhile.
        assert fd_count() <= self.fds, f"file descriptors: {self.fds} before, {fd_count()} after"
