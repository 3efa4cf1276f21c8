"""Incremental UTF-8 validation for text messages and close reasons.

RFC 6455 section 8.1: "When an endpoint is to interpret a byte stream as UTF-8
but finds that the byte stream is not, in fact, a valid UTF-8 stream, that
endpoint MUST _Fail the WebSocket Connection_." Validating fragment by fragment
lets the core fail with 1007 as soon as the first bad byte arrives instead of
after the whole message was buffered (Autobahn case group 6 checks this).

CPython's incremental UTF-8 decoder already rejects most invalid prefixes
early (``F4 90``, ``E0 80``, ``F0 8F``...), but it keeps ``ED A0``..``ED BF``
pending at a fragment end although no continuation can make it valid (those
would encode UTF-16 surrogates). ``Utf8Validator.feed`` checks that one case
itself so that the failure is just as fast.

When the optional C extension ``evws._speedups`` is available, ``Utf8Validator``
and ``check_utf8`` use its validator instead: a byte-at-a-time state machine
(ASCII skipped a word at a time) that keeps its state in one int between
pieces, so it neither decodes into a ``str`` nor copies anything. It fails at
the same first bad byte as the pure-Python form. ``ACCELERATED`` tells which
one is in use; ``EVWS_NO_SPEEDUPS=1`` forces pure Python.
"""

from __future__ import annotations

import codecs
from typing import Protocol

from ..errors import InvalidUTF8
from ..speedups import c_function

__all__ = ["Utf8Validator", "validate_utf8", "check_utf8", "ACCELERATED"]

_Decoder = codecs.getincrementaldecoder("utf-8")


class _PyUtf8Validator:
    """Validate one UTF-8 stream fed in pieces; raise at the first bad sequence."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = _Decoder("strict")

    def feed(self, data: bytes | bytearray | memoryview, final: bool) -> None:
        """Validate the next piece of the stream.

        Args:
            data: the next bytes of the stream.
            final: True for the last piece. A sequence truncated at the end of a
                non-final piece is fine; at the end of the final piece it is an
                error.

        Raises:
            InvalidUTF8: the stream is not valid UTF-8 (close code 1007).
        """
        try:
            self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            raise InvalidUTF8(f"invalid UTF-8: {exc.reason}") from exc
        if not final:
            pending = self._decoder.getstate()[0]
            # ED followed by A0..BF would encode a surrogate (U+D800..U+DFFF).
            if len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0:
                raise InvalidUTF8("invalid UTF-8: surrogate")

    def reset(self) -> None:
        """Start validating a new stream."""
        self._decoder.reset()


class _CUtf8Validator:
    """``Utf8Validator`` on the C extension's state machine (same contract)."""

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state = 0

    def feed(self, data: bytes | bytearray | memoryview, final: bool) -> None:
        """Validate the next piece of the stream (see ``_PyUtf8Validator.feed``)."""
        state: int = _c_utf8_feed(data, self._state)
        if state < 0:
            raise InvalidUTF8("invalid UTF-8: invalid byte sequence")
        if final and state:
            raise InvalidUTF8("invalid UTF-8: unexpected end of data")
        self._state = state

    def reset(self) -> None:
        """Start validating a new stream."""
        self._state = 0


def validate_utf8(data: bytes | bytearray | memoryview) -> str:
    """Decode complete UTF-8 ``data``, raising ``InvalidUTF8`` if it is not valid."""
    try:
        return codecs.utf_8_decode(data, "strict", True)[0]
    except UnicodeDecodeError as exc:
        raise InvalidUTF8(f"invalid UTF-8: {exc.reason}") from exc


def _py_check_utf8(data: bytes | bytearray | memoryview) -> None:
    """Raise ``InvalidUTF8`` unless ``data`` is complete, valid UTF-8."""
    validate_utf8(data)


def _c_check_utf8(data: bytes | bytearray | memoryview) -> None:
    """Raise ``InvalidUTF8`` unless ``data`` is complete, valid UTF-8 (no decoding)."""
    state: int = _c_utf8_feed(data, 0)
    if state:
        reason = "invalid byte sequence" if state < 0 else "unexpected end of data"
        raise InvalidUTF8(f"invalid UTF-8: {reason}")


_c_utf8_feed = c_function("utf8_feed")  # None: pure Python (see speedups.py)

#: True when ``Utf8Validator`` and ``check_utf8`` run in C, False for pure Python.
ACCELERATED: bool = _c_utf8_feed is not None

# Utf8Validator: the incremental validator; ``feed(data, final)`` raises
# ``InvalidUTF8`` at the first byte that no continuation can make valid,
# ``reset()`` starts over. check_utf8(data): validate a complete text without
# building a ``str`` (use ``validate_utf8`` when the text itself is wanted).
class IncrementalUtf8(Protocol):
    """What both validators offer: ``feed(data, final)`` and ``reset()``."""

    def feed(self, data: bytes | bytearray | memoryview, final: bool) -> None: ...

    def reset(self) -> None: ...


Utf8Validator: type[IncrementalUtf8]
if ACCELERATED:
    Utf8Validator = _CUtf8Validator
    check_utf8 = _c_check_utf8
else:
    Utf8Validator = _PyUtf8Validator
    check_utf8 = _py_check_utf8
