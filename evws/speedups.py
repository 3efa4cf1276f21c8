"""Which functions of the optional C extension ``evws._speedups`` are in use.

One place for the rule every accelerated module (``mask``, ``utf8``,
``frames``) follows: a C function is used when the extension was built, has
that function (an extension built from an older ``_speedups.c`` may lack newer
ones) and ``EVWS_NO_SPEEDUPS`` is not set in the environment; otherwise the
module falls back to its pure-Python twin. The tests run both.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__all__ = ["c_function"]


def c_function(name: str) -> Any:
    """``evws._speedups.<name>``, or None when unavailable or switched off."""
    if os.environ.get("EVWS_NO_SPEEDUPS"):
        return None
    try:
        speedups = importlib.import_module("evws._speedups")
    except ImportError:
        return None
    return getattr(speedups, name, None)
