import pytest

import evws


@pytest.mark.parametrize("body", ["héllo", b"h\xc3\xa9llo", bytearray(b"h\xc3\xa9llo"),
                                  memoryview(b"h\xc3\xa9llo")])
def test_body_is_always_bytes(body):
    message = evws.Message(body)
    assert type(message.body) is bytes
    assert message.body == "héllo".encode()
    assert message.decoded_body == "héllo"


@pytest.mark.parametrize("opcode, flag", [(1, "is_text"), (2, "is_binary"), (8, "is_close"),
                                          (9, "is_ping"), (10, "is_pong")])
def test_opcode_predicates(opcode, flag):
    message = evws.Message(b"", opcode)
    flags = ["is_text", "is_binary", "is_close", "is_ping", "is_pong"]
    assert [getattr(message, f) for f in flags] == [f == flag for f in flags]


def test_default_is_text_and_equality():
    assert evws.Message("x").is_text
    assert evws.Message("x") == evws.Message(b"x", 1)
    assert evws.Message("x") != evws.Message(b"x", 2)
    assert "x" in repr(evws.Message("x"))
