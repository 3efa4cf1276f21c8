"""Utf8Validator (incremental, fails fast) and validate_utf8."""

import pytest

from evws.errors import InvalidUTF8, ProtocolError
from evws.protocol.utf8 import Utf8Validator, validate_utf8

KAPPA = "κόσμε".encode()  # multi-byte sequences of 2 and 3 bytes


def test_valid_stream_fed_byte_by_byte():
    v = Utf8Validator()
    data = KAPPA + "€😀".encode()
    for i in range(len(data)):
        v.feed(data[i : i + 1], final=False)
    v.feed(b"", final=True)


def test_truncated_sequence_at_non_final_piece_is_fine():
    v = Utf8Validator()
    v.feed(b"a\xe2\x82", final=False)  # first two bytes of the euro sign
    v.feed(b"\xac", final=True)


def test_truncated_sequence_at_the_end_fails():
    v = Utf8Validator()
    with pytest.raises(InvalidUTF8):
        v.feed(b"a\xe2\x82", final=True)


@pytest.mark.parametrize(
    "bad",
    [
        b"\xf4\x90",  # above U+10FFFF
        b"\xf5",  # never valid
        b"\xc0",  # overlong lead
        b"\xe0\x80",  # overlong 3-byte
        b"\xf0\x8f",  # overlong 4-byte
        b"\xed\xa0",  # surrogate: CPython keeps it pending, we must not
        b"\xed\xbf",
        b"\x80",  # lone continuation
    ],
)
def test_invalid_prefix_fails_before_the_message_ends(bad):
    v = Utf8Validator()
    v.feed(KAPPA, final=False)
    with pytest.raises(InvalidUTF8) as info:
        v.feed(bad, final=False)
    assert info.value.close_code == 1007
    assert isinstance(info.value, ProtocolError)


def test_ed_followed_by_low_continuation_is_valid():
    v = Utf8Validator()
    v.feed(b"\xed\x9f", final=False)  # U+D7FF starts so
    v.feed(b"\xbf", final=True)


def test_reset_starts_a_new_stream():
    v = Utf8Validator()
    v.feed(b"\xe2\x82", final=False)
    v.reset()
    v.feed(b"ok", final=True)


def test_validate_utf8_returns_text():
    assert validate_utf8(KAPPA) == "κόσμε"
    assert validate_utf8(bytearray(b"abc")) == "abc"


def test_validate_utf8_raises_invalid_utf8():
    with pytest.raises(InvalidUTF8):
        validate_utf8(b"abc\xff")
    with pytest.raises(InvalidUTF8):
        validate_utf8(b"\xe2\x82")  # truncated at the end
