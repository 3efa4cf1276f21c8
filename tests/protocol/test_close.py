"""Close codes and Close frame payloads (RFC 6455 5.5.1, 7.4)."""

import struct

import pytest

from evws.errors import InvalidUTF8, ProtocolError
from evws.protocol.close import CloseCode, is_valid_close_code, parse_close, serialize_close

VALID = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
         3000, 3999, 4000, 4999]
INVALID = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


def test_close_code_names():
    assert CloseCode.NORMAL_CLOSURE == 1000
    assert CloseCode.GOING_AWAY == 1001
    assert CloseCode.PROTOCOL_ERROR == 1002
    assert CloseCode.NO_STATUS_RCVD == 1005
    assert CloseCode.ABNORMAL_CLOSURE == 1006
    assert CloseCode.INVALID_DATA == 1007
    assert CloseCode.MESSAGE_TOO_BIG == 1009
    assert CloseCode.INTERNAL_ERROR == 1011
    assert CloseCode.TLS_HANDSHAKE == 1015
    assert [int(c) for c in CloseCode] == list(range(1000, 1016))


@pytest.mark.parametrize("code", VALID)
def test_valid_codes(code):
    assert is_valid_close_code(code)


@pytest.mark.parametrize("code", INVALID)
def test_invalid_codes(code):
    assert not is_valid_close_code(code)


def test_parse_empty_payload_means_1005():
    assert parse_close(b"") == (1005, "")


def test_parse_code_and_reason():
    assert parse_close(b"\x03\xe8") == (1000, "")
    assert parse_close(struct.pack("!H", 4001) + "adiós".encode()) == (4001, "adiós")


def test_parse_one_byte_payload_is_a_protocol_error():
    with pytest.raises(ProtocolError) as info:
        parse_close(b"\x03")
    assert info.value.close_code == 1002


@pytest.mark.parametrize("code", INVALID)
def test_parse_invalid_code_is_a_protocol_error(code):
    with pytest.raises(ProtocolError) as info:
        parse_close(struct.pack("!H", code))
    assert info.value.close_code == 1002
    assert not isinstance(info.value, InvalidUTF8)


def test_parse_bad_utf8_reason():
    with pytest.raises(InvalidUTF8) as info:
        parse_close(b"\x03\xe8\xce")
    assert info.value.close_code == 1007


def test_serialize():
    assert serialize_close(1000) == b"\x03\xe8"
    assert serialize_close(1001, "bye") == b"\x03\xe9bye"
    assert serialize_close(4999, "é") == b"\x13\x87\xc3\xa9"


def test_serialize_no_code():
    assert serialize_close(None) == b""
    assert serialize_close(1005) == b""
    with pytest.raises(ValueError):
        serialize_close(None, "reason without code")


@pytest.mark.parametrize("code", [c for c in INVALID if c != 1005])
def test_serialize_refuses_codes_invalid_on_the_wire(code):
    with pytest.raises(ValueError):
        serialize_close(code)


def test_serialize_refuses_long_reason_instead_of_truncating():
    assert len(serialize_close(1000, "x" * 123)) == 125
    with pytest.raises(ValueError):
        serialize_close(1000, "x" * 124)
    with pytest.raises(ValueError):
        serialize_close(1000, "é" * 62)  # 124 bytes encoded
