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
"""

from __future__ import annotations

import codecs

from ..errors import InvalidUTF8

__all__ = ["Utf8Validator", "validate_utf8"]

_Decoder = codecs.getincrementaldecoder("utf-8")


class Utf8Validator:
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


def validate_utf8(data: bytes | bytearray | memoryview) -> str:
    """Decode complete UTF-8 ``data``, raising ``InvalidUTF8`` if it is not valid."""
    try:
        return codecs.utf_8_decode(data, "strict", True)[0]
    except UnicodeDecodeError as exc:
        raise InvalidUTF8(f"invalid UTF-8: {exc.reason}") from exc
