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

from ..speedups import c_function

__all__ = ["apply_mask", "unmask_into", "ACCELERATED"]

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


def _py_unmask_into(
    out: bytearray, out_pos: int, data: bytes, start: int, stop: int, key: bytes, key_pos: int
) -> None:
    """Write ``data[start:stop]`` XORed with ``key`` (from byte ``key_pos``) to ``out[out_pos:]``.

    Why: a large message is assembled in one preallocated buffer, chunk by
    chunk as reads arrive, instead of a list of per-read ``bytes`` joined at
    the end (fewer copies, and no per-part overhead when the peer trickles).
    ``key_pos`` is where in the key the chunk starts (the frame's byte offset
    modulo 4). ``out`` must already be long enough.
    """
    n = stop - start
    if out_pos < 0 or out_pos + n > len(out):
        raise ValueError("the output buffer is too small")
    if key_pos & 3:
        key_pos &= 3
        key = key[key_pos:] + key[:key_pos]
    out[out_pos:out_pos + n] = _py_apply_mask(data[start:stop], key)


#: The C implementations when available (same contracts), else None.
_c_apply_mask = c_function("apply_mask")
_c_unmask_into = c_function("unmask_into")
# new_payload is only of use to unmask_into, which fills it.
_c_new_payload = c_function("new_payload") if _c_unmask_into is not None else None

#: C only: ``new_payload(n)`` is an uninitialised ``bytes`` of ``n`` bytes that
#: ``unmask_into`` may fill (see _speedups.c); None on the pure-Python path,
#: which assembles messages in a ``bytearray`` instead.
new_payload = _c_new_payload

#: True when ``apply_mask`` is the C extension's, False for pure Python.
ACCELERATED: bool = _c_apply_mask is not None

apply_mask = _c_apply_mask if _c_apply_mask is not None else _py_apply_mask
unmask_into = _c_unmask_into if _c_unmask_into is not None else _py_unmask_into
