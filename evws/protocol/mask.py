"""Masking and unmasking of WebSocket payloads (RFC 6455 section 5.3).

The same XOR both masks and unmasks. Two pure-Python forms are used because
their costs scale differently (measured on CPython 3.11, see ``bench/``):

* small payloads: turn the payload and the key, repeated to the same length,
  into two big integers and XOR them once. Few Python-level steps, so the fixed
  cost is tiny, but int conversion is roughly 4x slower per byte than
  ``bytes.translate``.
* large payloads: four strided passes (bytes 0, 4, 8, ... then 1, 5, 9, ...),
  each a single ``bytes.translate`` with a 256-byte "XOR with k" table. The
  tables are built once per key byte value and cached.

On this project's machine the two forms cost the same between 8 and 32 KiB
(bigint 1.2 us at 16 B, 18 us at 4 KiB, 7.5 ms at 1 MiB; translate 3.6 us,
24 us and 4.4 ms), so ``_TRANSLATE_THRESHOLD`` sits at 16 KiB.

When the optional C extension ``evws._speedups`` was built (``setup.py`` tries,
and goes on without it when there is no compiler), ``apply_mask`` is its
8-bytes-at-a-time loop instead: about 0.1 ms per MiB, 40x the translate form.
``ACCELERATED`` tells which one is in use; ``EVWS_NO_SPEEDUPS=1`` in the
environment forces the pure-Python path (the tests run both).
"""

from __future__ import annotations

import os

__all__ = ["apply_mask", "ACCELERATED"]

# Payloads at least this long use the strided ``translate`` form.
_TRANSLATE_THRESHOLD = 16384

# _TABLES[k] maps every byte b to b ^ k; filled lazily (256 x 256 bytes at most).
_TABLES: list[bytes | None] = [None] * 256


def _xor_table(k: int) -> bytes:
    table = _TABLES[k]
    if table is None:
        table = _TABLES[k] = bytes(b ^ k for b in range(256))
    return table


def _py_apply_mask(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """Return ``data`` XORed with the 4-byte ``key`` repeated (RFC 6455 5.3).

    Args:
        data: the payload, any bytes-like object.
        key: the 4-byte masking key; byte ``i`` of ``data`` is XORed with
            ``key[i % 4]``.

    Returns:
        The (un)masked payload as a new ``bytes`` object.
    """
    if len(key) != 4:
        raise ValueError("the masking key must be 4 bytes long")
    n = len(data)
    if n < _TRANSLATE_THRESHOLD:
        if n == 0:
            return b""
        repeated = (key * ((n >> 2) + 1))[:n]
        return (
            int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")
        ).to_bytes(n, "big")
    if not isinstance(data, bytes):
        data = bytes(data)
    out = bytearray(n)
    for i in range(4):
        out[i::4] = data[i::4].translate(_xor_table(key[i]))
    return bytes(out)


def _load_speedups():  # type: ignore[no-untyped-def]
    """The C ``apply_mask``, or None when it is unavailable or switched off."""
    if os.environ.get("EVWS_NO_SPEEDUPS"):
        return None
    try:
        from .._speedups import apply_mask as c_apply_mask
    except ImportError:
        return None
    return c_apply_mask


#: The C implementation when available (same contract), else None.
_c_apply_mask = _load_speedups()

#: True when ``apply_mask`` is the C extension's, False for pure Python.
ACCELERATED: bool = _c_apply_mask is not None

apply_mask = _c_apply_mask if _c_apply_mask is not None else _py_apply_mask
