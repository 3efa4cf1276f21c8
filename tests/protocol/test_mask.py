"""apply_mask: both forms (big-int XOR and strided translate) against a naive XOR."""

import os

import pytest

from evws.protocol import mask
from evws.protocol.mask import apply_mask


def naive(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


KEYS = [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x01\x02\x03\x04", b"\x37\xfa\x21\x3d"]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize(
    "size",
    [0, 1, 2, 3, 4, 5, 7, 125, 126, 4095, 4096, 4097,
     mask._TRANSLATE_THRESHOLD - 1, mask._TRANSLATE_THRESHOLD,
     mask._TRANSLATE_THRESHOLD + 3, 70001],
)
def test_matches_naive_xor(size, key):
    data = os.urandom(size)
    assert apply_mask(data, key) == naive(data, key)


def test_leading_zero_bytes_survive():
    # The big-int form must not lose leading zero bytes of the result.
    key = b"\xaa\xbb\xcc\xdd"
    data = key * 3
    assert apply_mask(data, key) == b"\x00" * 12


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
@pytest.mark.parametrize("size", [10, mask._TRANSLATE_THRESHOLD + 10])
def test_accepts_any_bytes_like(kind, size):
    data = os.urandom(size)
    key = b"\x10\x20\x30\x40"
    out = apply_mask(kind(data), key)
    assert type(out) is bytes
    assert out == naive(data, key)


@pytest.mark.parametrize("size", [9, mask._TRANSLATE_THRESHOLD + 9])
def test_is_an_involution(size):
    data = os.urandom(size)
    key = os.urandom(4)
    assert apply_mask(apply_mask(data, key), key) == data


def test_known_vector_from_rfc():
    # RFC 6455 5.7: "Hello" masked with 37 fa 21 3d.
    assert apply_mask(b"Hello", b"\x37\xfa\x21\x3d") == b"\x7f\x9f\x4d\x51\x58"


def test_rejects_bad_key_length():
    with pytest.raises(ValueError):
        apply_mask(b"abc", b"\x01\x02\x03")
