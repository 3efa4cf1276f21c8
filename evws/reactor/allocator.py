"""Keep freed heap memory for reuse: an opt-in setting of the C allocator, for server programs.

Why this exists: a server that receives large messages allocates a new
``bytes`` for each (the payload its handler gets) and frees it once sent.
With glibc's defaults, freed memory at the top of the heap is handed back to
the kernel as soon as more than about twice the largest recent allocation is
free, and the next message faults the same pages in again: at 4 connections
x 1 MiB echo that was about 100 page faults (400 KiB zeroed by the kernel)
per round trip, a third of the server's CPU (``benchmarks/PROFILE.md``,
phase 12). Servers written in C avoid it by reusing their buffers; a Python
API that hands out ``bytes`` cannot, so the allocator has to keep the memory
instead.

This is a setting of the whole process (``mallopt``), not of evws, so the
library never makes it by itself: a *program* opts in with one call at
start-up -- ``python -m evws serve`` and ``examples/echo_server.py`` do
(each has a flag to keep the defaults). The cost is memory: up to ``limit``
bytes of freed heap stay resident after a burst of large messages, and
allocations up to the mmap threshold come from the heap rather than from
their own mappings.

Only glibc has these knobs; elsewhere :func:`keep_freed_memory` changes
nothing and says so by returning False.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["keep_freed_memory"]

# mallopt parameters (glibc's <malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2: 32 MiB on 64-bit.
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024 if sys.maxsize > 2**32 else 512 * 1024
_INT_MAX = 2**31 - 1


def keep_freed_memory(limit: int = 64 * 1024 * 1024) -> bool:
    """Ask glibc to keep up to ``limit`` bytes of freed heap instead of returning it to the kernel.

    Sets ``M_TRIM_THRESHOLD`` to ``limit`` and ``M_MMAP_THRESHOLD`` to half
    of it (at most 32 MiB), so that message-sized blocks come from the heap
    and freed ones are reused without page faults. Call it once, early, from
    a program (not from a library: it affects the whole process).

    Args:
        limit: the most freed memory kept at the top of the heap, in bytes
            (at least 1 MiB, at most 2 GiB - 1).

    Returns:
        True if the allocator took both settings (glibc); False where there
        is no ``mallopt`` or it refused (other C libraries): nothing changed.

    Raises:
        TypeError: ``limit`` is not an int.
        ValueError: ``limit`` outside the range above.
    """
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, not {type(limit).__name__}")
    if not 1024 * 1024 <= limit <= _INT_MAX:
        raise ValueError(f"limit must be between 1 MiB and {_INT_MAX} bytes, not {limit}")
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # musl has a mallopt that does nothing and returns 0; glibc returns 1.
    if mallopt(_M_TRIM_THRESHOLD, limit) != 1:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, min(limit // 2, _MMAP_THRESHOLD_MAX)) == 1)
