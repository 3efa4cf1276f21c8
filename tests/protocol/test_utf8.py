"""Utf8Validator (incremental, fails fast), validate_utf8 and check_utf8.

The validator tests run once per available implementation (pure Python on
CPython's incremental decoder, and the C extension's state machine when it was
built); a differential test feeds both the same random pieces.
"""

import codecs

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evws.errors import InvalidUTF8, ProtocolError
from evws.protocol import utf8
from evws.protocol.utf8 import validate_utf8

VALIDATORS = [pytest.param(utf8._PyUtf8Validator, id="python")]
CHECKS = [pytest.param(utf8._py_check_utf8, id="python")]
if utf8.ACCELERATED:
    VALIDATORS.append(pytest.param(utf8._CUtf8Validator, id="c"))
    CHECKS.append(pytest.param(utf8._c_check_utf8, id="c"))


@pytest.fixture(params=VALIDATORS)
def Utf8Validator(request):
    return request.param


@pytest.fixture(params=CHECKS)
def check_utf8(request):
    return request.param

KAPPA = "κόσμε".encode()  # multi-byte sequences of 2 and 3 bytes


def test_valid_stream_fed_byte_by_byte(Utf8Validator):
    v = Utf8Validator()
    data = KAPPA + "€😀".encode()
    for i in range(len(data)):
        v.feed(data[i : i + 1], final=False)
    v.feed(b"", final=True)


def test_truncated_sequence_at_non_final_piece_is_fine(Utf8Validator):
    v = Utf8Validator()
    v.feed(b"a\xe2\x82", final=False)  # first two bytes of the euro sign
    v.feed(b"\xac", final=True)


def test_truncated_sequence_at_the_end_fails(Utf8Validator):
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
def test_invalid_prefix_fails_before_the_message_ends(Utf8Validator, bad):
    v = Utf8Validator()
    v.feed(KAPPA, final=False)
    with pytest.raises(InvalidUTF8) as info:
        v.feed(bad, final=False)
    assert info.value.close_code == 1007
    assert isinstance(info.value, ProtocolError)


def test_ed_followed_by_low_continuation_is_valid(Utf8Validator):
    v = Utf8Validator()
    v.feed(b"\xed\x9f", final=False)  # U+D7FF starts so
    v.feed(b"\xbf", final=True)


def test_reset_starts_a_new_stream(Utf8Validator):
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


# Boundary cases of RFC 3629's table, each as (bytes, valid).
BOUNDARIES = [
    (b"\x7f", True), (b"\xc2\x80", True), (b"\xdf\xbf", True), (b"\xc1\xbf", False),
    (b"\xe0\xa0\x80", True), (b"\xe0\x9f\xbf", False), (b"\xed\x9f\xbf", True),
    (b"\xed\xa0\x80", False), (b"\xee\x80\x80", True), (b"\xef\xbf\xbf", True),
    (b"\xf0\x90\x80\x80", True), (b"\xf0\x8f\xbf\xbf", False), (b"\xf4\x8f\xbf\xbf", True),
    (b"\xf4\x90\x80\x80", False), (b"\xf5\x80\x80\x80", False), (b"\xff", False),
    (b"\xe2\x82", False), (b"\xe2\x28\xa1", False), (b"a" * 15 + b"\xc3\xa9" + b"b" * 20, True),
    (b"a" * 16 + b"\x80", False), (b"", True),
]


@pytest.mark.parametrize("data, valid", BOUNDARIES)
def test_check_utf8_boundaries(check_utf8, Utf8Validator, data, valid):
    if valid:
        check_utf8(data)
        Utf8Validator().feed(data, final=True)
    else:
        with pytest.raises(InvalidUTF8):
            check_utf8(data)
        with pytest.raises(InvalidUTF8):
            Utf8Validator().feed(data, final=True)


def test_check_utf8_accepts_any_bytes_like(check_utf8):
    check_utf8(bytearray(KAPPA))
    check_utf8(memoryview(KAPPA)[2:])
    with pytest.raises(InvalidUTF8):
        check_utf8(memoryview(KAPPA)[1:])  # starts on a continuation byte


def test_public_names_are_the_active_implementation():
    if utf8.ACCELERATED:
        assert utf8.Utf8Validator is utf8._CUtf8Validator
        assert utf8.check_utf8 is utf8._c_check_utf8
    else:
        assert utf8.Utf8Validator is utf8._PyUtf8Validator
        assert utf8.check_utf8 is utf8._py_check_utf8


def _first_failure(validator_cls, pieces):
    """Index of the piece whose feed raised (len(pieces) = none did)."""
    v = validator_cls()
    for i, piece in enumerate(pieces):
        try:
            v.feed(piece, final=i == len(pieces) - 1)
        except InvalidUTF8:
            return i
    return len(pieces)


# Mostly valid UTF-8 with some stray bytes, so that both outcomes are common.
_chunks = st.one_of(
    st.text(min_size=0, max_size=6).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(min_size=1, max_size=2),
)


@pytest.mark.skipif(not utf8.ACCELERATED, reason="the C extension is not built")
@settings(max_examples=400, deadline=None)
@given(st.lists(_chunks, max_size=12), st.lists(st.integers(0, 80), max_size=6))
def test_c_and_python_fail_at_the_same_piece(chunks, cuts):
    data = b"".join(chunks)
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
    py = _first_failure(utf8._PyUtf8Validator, pieces)
    c = _first_failure(utf8._CUtf8Validator, pieces)
    assert py == c
    try:
        codecs.decode(data, "utf-8")
        whole_valid = True
    except UnicodeDecodeError:
        whole_valid = False
    assert (c == len(pieces)) == whole_valid
