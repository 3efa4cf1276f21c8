"""What a test that starts processes checks at the end: nothing of them is left.

``Baseline()`` records this process's open file descriptors and child
processes; ``baseline.check(pids)`` asserts that no child was added and the fd count
is what it was, and that every pid in ``pids`` (grandchildren such as the workers of a
supervisor, or a browser's helpers) is gone.
"""

from __future__ import annotations

import os
import pathlib


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
        left = {pid for pid in pids if alive(pid)}
        assert not left, f"processes still running: {sorted(left)}"
        new = child_pids() - self.children - set(replaced)
        assert not new, f"child processes left behind: {sorted(new)}"
        assert fd_count() == self.fds, f"file descriptors: {self.fds} before, {fd_count()} after"
