"""frames.simple_frame, the receive path's short cut: both implementations
(pure Python and, when built, the C extension's) against the general parser.

The contract: the decoded frame when ``data[pos:]`` starts with a whole final,
masked TEXT/BINARY frame without RSV bits, a 7- or 16-bit length and a payload
within ``limit``; ``None`` for anything else (the general path then parses it
and reports what is wrong). A short cut that accepted too much would skip the
protocol's checks, so most cases here are frames it must refuse.
"""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evws.protocol import frames
from evws.protocol.events import MessageReceived
from evws.protocol.mask import apply_mask
from tests import wire

IMPLEMENTATIONS = [pytest.param(frames._py_simple_frame, id="python")]
try:
    from evws._speedups import simple_frame as _c_simple_frame
except ImportError:
    pass
else:
    IMPLEMENTATIONS.append(pytest.param(_c_simple_frame, id="c"))


@pytest.fixture(params=IMPLEMENTATIONS)
def simple_frame(request):
    return request.param


def test_the_module_uses_c_when_built_and_allowed():
    c_in_use = frames.simple_frame is not frames._py_simple_frame
    expected = len(IMPLEMENTATIONS) == 2 and not os.environ.get("EVWS_NO_SPEEDUPS")
    assert c_in_use is expected


@pytest.mark.parametrize("opcode", [wire.TEXT, wire.BINARY])
@pytest.mark.parametrize("size", [0, 1, 5, 125, 126, 127, 4096, 65535])
def test_decodes_whole_frames(simple_frame, opcode, size):
    payload = os.urandom(size)
    data = wire.frame(opcode, payload)
    assert simple_frame(data, 0, None) == (opcode, payload, len(data))


def test_starts_at_pos_and_stops_at_the_frame_end(simple_frame):
    first, second = wire.frame(wire.BINARY, b"one"), wire.frame(wire.TEXT, b"two")
    data = first + second + b"\x81"
    assert simple_frame(data, 0, None) == (wire.BINARY, b"one", len(first))
    assert simple_frame(data, len(first), None) == (wire.TEXT, b"two", len(first + second))
    assert simple_frame(data, len(first + second), None) is None  # one byte: incomplete
    assert simple_frame(data, len(data), None) is None
    assert simple_frame(data, len(data) + 5, None) is None
    assert simple_frame(data, -1, None) is None


def test_non_minimal_16_bit_length_is_accepted_as_the_general_path_does(simple_frame):
    data = wire.frame(wire.BINARY, b"abc", length_bytes=2)
    assert simple_frame(data, 0, None) == (wire.BINARY, b"abc", len(data))
    assert frames.parse_header(data)[3] == 3


def test_limit(simple_frame):
    data = wire.frame(wire.BINARY, b"x" * 100)
    assert simple_frame(data, 0, 100) == (wire.BINARY, b"x" * 100, len(data))
    assert simple_frame(data, 0, 99) is None
    assert simple_frame(wire.frame(wire.TEXT, b""), 0, 0) == (wire.TEXT, b"", 6)
    with pytest.raises(ValueError):
        simple_frame(data, 0, -1)


@pytest.mark.parametrize("data", [
    pytest.param(wire.frame(wire.BINARY, b"abc")[:-1], id="payload-incomplete"),
    pytest.param(wire.frame(wire.BINARY, b"abc")[:5], id="key-incomplete"),
    pytest.param(wire.frame(wire.BINARY, b"a" * 300)[:3], id="length-incomplete"),
    pytest.param(wire.frame(wire.BINARY, b"abc", mask=None), id="unmasked"),
    pytest.param(wire.frame(wire.BINARY, b"abc", fin=False), id="not-final"),
    pytest.param(wire.frame(wire.CONT, b"abc"), id="continuation"),
    pytest.param(wire.frame(wire.PING, b"abc"), id="ping"),
    pytest.param(wire.frame(wire.CLOSE, wire.close_payload(1000)), id="close"),
    pytest.param(wire.frame(3, b"abc"), id="reserved-opcode"),
    pytest.param(wire.frame(wire.BINARY, b"abc", rsv=4), id="rsv1"),
    pytest.param(wire.frame(wire.TEXT, b"abc", rsv=1), id="rsv3"),
    pytest.param(wire.frame(wire.BINARY, b"abc", length_bytes=8), id="64-bit-length"),
    pytest.param(wire.frame(wire.BINARY, b"z" * 70000), id="over-64KiB"),
])
def test_refuses_everything_else(simple_frame, data):
    assert simple_frame(data, 0, None) is None


def test_text_is_not_validated_here(simple_frame):
    # UTF-8 validation is the caller's (websocket.py checks every TEXT payload).
    data = wire.frame(wire.TEXT, b"\xff\xfe")
    assert simple_frame(data, 0, None) == (wire.TEXT, b"\xff\xfe", len(data))


def test_c_rejects_wrong_argument_types():
    if len(IMPLEMENTATIONS) < 2:
        pytest.skip("evws._speedups not built")
    with pytest.raises(TypeError):
        _c_simple_frame(bytearray(wire.frame(wire.BINARY, b"a")), 0, None)
    with pytest.raises(TypeError):
        _c_simple_frame(b"\x82\x80", "0", None)
    with pytest.raises(TypeError):
        _c_simple_frame(b"\x82\x80")


@settings(max_examples=300, deadline=None)
@given(first=st.one_of(st.sampled_from([0x81, 0x82]), st.integers(0, 255)),
       second=st.one_of(st.integers(0x80, 0x8A), st.just(0xFE), st.integers(0, 255)),
       rest=st.binary(max_size=300), pos=st.integers(0, 3),
       limit=st.one_of(st.none(), st.integers(0, 300)))
def test_agrees_with_the_general_parser_on_any_bytes(first, second, rest, pos, limit):
    """Whatever the bytes: a result equals what parse_header + unmasking give."""
    data = bytes(pos) + bytes((first, second)) + rest
    results = {impl.id: impl.values[0](data, pos, limit) for impl in IMPLEMENTATIONS}
    assert len(set(map(repr, results.values()))) == 1, results
    got = next(iter(results.values()))
    try:
        header = frames.parse_header(data, pos)
    except Exception:
        header = None
    if got is None:
        return
    assert header is not None
    fin, opcode, rsv, length, key, start = header
    assert fin and rsv == 0 and opcode in (wire.TEXT, wire.BINARY) and key is not None
    assert limit is None or length <= limit
    assert got == (opcode, apply_mask(data[start:start + length], key), start + length)


# --- simple_message: the same frame, as the protocol's event --------------------------


MESSAGE_IMPLEMENTATIONS = [pytest.param(frames._py_simple_message, id="python")]
try:
    from evws._speedups import simple_message as _c_simple_message
except ImportError:
    pass
else:
    MESSAGE_IMPLEMENTATIONS.append(pytest.param(_c_simple_message, id="c"))


@pytest.fixture(params=MESSAGE_IMPLEMENTATIONS)
def simple_message(request):
    return request.param


def test_the_module_uses_c_simple_message_when_built_and_allowed():
    c_in_use = frames.simple_message is not frames._py_simple_message
    expected = len(MESSAGE_IMPLEMENTATIONS) == 2 and not os.environ.get("EVWS_NO_SPEEDUPS")
    assert c_in_use is expected


@pytest.mark.parametrize("opcode", [wire.TEXT, wire.BINARY])
@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535])
def test_message_is_the_event_of_the_frame(simple_message, opcode, size):
    payload = b"a" * size if opcode == wire.TEXT else os.urandom(size)
    data = b"xx" + wire.frame(opcode, payload) + b"rest"
    event, stop = simple_message(data, 2, None, MessageReceived)
    assert type(event) is MessageReceived and event == MessageReceived(opcode, payload)
    assert event.opcode == opcode and event.payload == payload
    assert stop == len(data) - 4


def test_message_refuses_bad_utf8_and_what_simple_frame_refuses(simple_message):
    assert simple_message(wire.frame(wire.TEXT, "é".encode()[:1]), 0, None, MessageReceived) is None
    assert simple_message(wire.frame(wire.TEXT, b"\xed\xa0\x80"), 0, None, MessageReceived) is None
    assert simple_message(wire.frame(wire.BINARY, b"\xff"), 0, None, MessageReceived) is not None
    assert simple_message(wire.frame(wire.PING, b"p"), 0, None, MessageReceived) is None
    assert simple_message(wire.frame(wire.BINARY, b"x" * 5), 0, 4, MessageReceived) is None
    with pytest.raises(TypeError):
        simple_message(wire.frame(wire.BINARY, b"x"), 0, None, list)
    with pytest.raises(ValueError):
        simple_message(wire.frame(wire.BINARY, b"x"), 0, -1, MessageReceived)


@settings(max_examples=300, deadline=None)
@given(first=st.one_of(st.sampled_from([0x81, 0x82]), st.integers(0, 255)),
       second=st.one_of(st.integers(0x80, 0x8A), st.just(0xFE), st.integers(0, 255)),
       rest=st.binary(max_size=300), pos=st.integers(0, 3),
       limit=st.one_of(st.none(), st.integers(0, 300)))
def test_message_agrees_with_simple_frame_and_the_utf8_check(first, second, rest, pos, limit):
    data = bytes(pos) + bytes((first, second)) + rest
    results = [impl.values[0](data, pos, limit, MessageReceived) for impl in MESSAGE_IMPLEMENTATIONS]
    assert len(set(map(repr, results))) == 1, results
    frame = frames._py_simple_frame(data, pos, limit)
    valid = True
    if frame is not None and frame[0] == wire.TEXT:
        try:
            frame[1].decode("utf-8")
        except UnicodeDecodeError:
            valid = False
    expected = None if frame is None or not valid else (MessageReceived(frame[0], frame[1]), frame[2])
    assert results[0] == expected
