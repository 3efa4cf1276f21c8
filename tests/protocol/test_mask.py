"""apply_mask against a naive XOR: the pure-Python forms (big-int XOR and
strided translate) and, when it was built, the C extension's loop.

Every test runs once per available implementation, so the pure-Python path
stays tested on machines where the C one is in use.
"""

import os

import pytest

from evws.protocol import mask

IMPLEMENTATIONS = [pytest.param(mask._py_apply_mask, id="python")]
if mask._c_apply_mask is not None:
    IMPLEMENTATIONS.append(pytest.param(mask._c_apply_mask, id="c"))


@pytest.fixture(params=IMPLEMENTATIONS)
def apply_mask(request):
    return request.param


def naive(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


KEYS = [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x01\x02\x03\x04", b"\x37\xfa\x21\x3d"]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize(
    "size",
    [0, 1, 2, 3, 4, 5, 7, 15, 16, 17, 63, 64, 65, 125, 126, 4095, 4096, 4097,
     mask._TRANSLATE_THRESHOLD - 1, mask._TRANSLATE_THRESHOLD,
     mask._TRANSLATE_THRESHOLD + 3, 70001],
)
def test_matches_naive_xor(apply_mask, size, key):
    data = os.urandom(size)
    assert apply_mask(data, key) == naive(data, key)


def test_leading_zero_bytes_survive(apply_mask):
    # The big-int form must not lose leading zero bytes of the result.
    key = b"\xaa\xbb\xcc\xdd"
    data = key * 3
    assert apply_mask(data, key) == b"\x00" * 12


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
@pytest.mark.parametrize("size", [10, mask._TRANSLATE_THRESHOLD + 10])
def test_accepts_any_bytes_like(apply_mask, kind, size):
    data = os.urandom(size)
    key = b"\x10\x20\x30\x40"
    out = apply_mask(kind(data), key)
    assert type(out) is bytes
    assert out == naive(data, key)


@pytest.mark.parametrize("size", [9, mask._TRANSLATE_THRESHOLD + 9])
def test_is_an_involution(apply_mask, size):
    data = os.urandom(size)
    key = os.urandom(4)
    assert apply_mask(apply_mask(data, key), key) == data


def test_known_vector_from_rfc(apply_mask):
    # RFC 6455 5.7: "Hello" masked with 37 fa 21 3d.
    assert apply_mask(b"Hello", b"\x37\xfa\x21\x3d") == b"\x7f\x9f\x4d\x51\x58"


def test_rejects_bad_key_length(apply_mask):
    with pytest.raises(ValueError):
        apply_mask(b"abc", b"\x01\x02\x03")
    with pytest.raises(ValueError):
        apply_mask(b"abc", b"\x01\x02\x03\x04\x05")


@pytest.mark.parametrize("offset", range(8))
def test_unaligned_input_views(apply_mask, offset):
    # The C loop reads 8 bytes at a time: any start address must work.
    data = os.urandom(100)
    key = b"\x9a\x01\xfe\x55"
    view = memoryview(data)[offset:offset + 61]
    assert apply_mask(view, key) == naive(bytes(view), key)


def test_non_contiguous_view_is_refused_or_correct(apply_mask):
    data = os.urandom(64)
    key = b"\x01\x02\x03\x04"
    view = memoryview(data)[::2]
    try:
        out = apply_mask(view, key)
    except (TypeError, ValueError, BufferError):
        return
    assert out == naive(bytes(view), key)


def test_public_name_is_the_active_implementation():
    expected = mask._c_apply_mask if mask.ACCELERATED else mask._py_apply_mask
    assert mask.apply_mask is expected
    assert isinstance(mask.ACCELERATED, bool)


INTO = [pytest.param(mask._py_unmask_into, id="python")]
if mask._c_unmask_into is not None:
    INTO.append(pytest.param(mask._c_unmask_into, id="c"))


@pytest.mark.parametrize("unmask_into", INTO)
@pytest.mark.parametrize("key_pos", [0, 1, 2, 3, 7])
@pytest.mark.parametrize("start,stop", [(0, 0), (0, 1), (3, 20), (1, 4096), (5, 70001)])
def test_unmask_into_matches_naive_xor_at_any_offset(unmask_into, key_pos, start, stop):
    # A chunk that starts key_pos bytes into the frame is XORed with the key
    # rotated by key_pos, and lands at out_pos without touching its neighbours.
    data = os.urandom(70001)
    key = b"\x37\xfa\x21\x3d"
    out = bytearray(b"\xaa" * (stop - start + 9))
    unmask_into(out, 5, data, start, stop, key, key_pos)
    rotated = key[key_pos % 4:] + key[:key_pos % 4]
    assert bytes(out[5:5 + stop - start]) == naive(data[start:stop], rotated)
    assert out[:5] == b"\xaa" * 5 and out[5 + stop - start:] == b"\xaa" * 4


@pytest.mark.parametrize("unmask_into", INTO)
def test_unmask_into_refuses_a_short_output_buffer(unmask_into):
    out = bytearray(3)
    with pytest.raises(ValueError):
        unmask_into(out, 0, b"abcd", 0, 4, b"\x01\x02\x03\x04", 0)
    assert out == bytearray(3)


@pytest.mark.skipif(mask.new_payload is None, reason="C extension not in use")
def test_new_payload_is_filled_by_unmask_into_piece_by_piece():
    data = os.urandom(10_000)
    key = b"\x37\xfa\x21\x3d"
    out = mask.new_payload(len(data))
    assert type(out) is bytes and len(out) == len(data)
    pos = 0
    for step in (1, 3, 4096, 5000, 900):  # pieces continue the key where they left it
        mask.unmask_into(out, pos, data, pos, pos + step, key, pos)
        pos += step
    assert pos == len(data) and out == naive(data, key)
    with pytest.raises(ValueError):
        mask.new_payload(-1)


@pytest.mark.parametrize("unmask_into", INTO)
@pytest.mark.parametrize("key_pos", [0, 1, 2, 3])
def test_unmask_into_every_length_across_the_block_sizes(unmask_into, key_pos):
    # The C loop works eight bytes at a time, then byte by byte; the Python
    # one switches forms with the size: every length up to 200 from every
    # start offset mod 16 crosses each of those boundaries, aligned and not.
    data = os.urandom(300)
    key = b"\x9c\x01\xe5\x42"
    rotated = key[key_pos:] + key[:key_pos]
    for start in range(16):
        for n in range(201):
            out = bytearray(n + 2)
            unmask_into(out, 1, data, start, start + n, key, key_pos)
            assert bytes(out[1:1 + n]) == naive(data[start:start + n], rotated), (start, n)
            assert out[0] == 0 and out[-1] == 0
