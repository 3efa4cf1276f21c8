"""permessage-deflate (RFC 7692): parsing, negotiation both ways, and the codec.

The wire examples are the RFC's own (section 7.2.3), typed in as bytes; the
WebSocketProtocol integration (RSV1 rules, bombs, fragments) is tested in
test_websocket.py.
"""

from __future__ import annotations

import os
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evws.errors import HandshakeError, PayloadTooBig, ProtocolError
from evws.protocol.deflate import (
    DeflateConfig,
    DeflateParams,
    PerMessageDeflate,
    accept_client,
    client_offer,
    negotiate_server,
    params_from_response,
    parse_extensions,
)

PMD = "permessage-deflate"


def inflate(payload: bytes, wbits: int = 15) -> bytes:
    """Decompress a message payload the RFC 7692 7.2.2 way, with plain zlib."""
    d = zlib.decompressobj(-wbits)
    return d.decompress(payload + b"\x00\x00\xff\xff")


# ------------------------------------------------------------------- parsing


class TestParse:
    def test_names_params_and_values(self):
        assert parse_extensions("foo, bar; baz=2; qux") == [
            ("foo", []),
            ("bar", [("baz", "2"), ("qux", None)]),
        ]

    def test_several_header_values_and_spaces(self):
        assert parse_extensions(["a ;  b = 1 ", "c"]) == [("a", [("b", "1")]), ("c", [])]

    def test_quoted_values_are_unescaped(self):
        assert parse_extensions('x; a="10"; b="1\\0"') == [("x", [("a", "10"), ("b", "10")])]

    @pytest.mark.parametrize("text", [
        "; a", "x; =1", "x; a=", 'x; a="1 0"', 'x; a="unterminated', "x y", "x; a b=1",
        'x; a="1,0"', "x; a=\"\"",
    ])
    def test_malformed_entries_are_none(self, text):
        assert parse_extensions(text) == [None]

    def test_a_comma_in_quotes_does_not_split(self):
        entries = parse_extensions('x; a="1,0", y')
        assert entries == [None, ("y", [])]


# ------------------------------------------------------------ server side


class TestNegotiateServer:
    @pytest.mark.parametrize("offer, header, params", [
        (PMD, PMD, DeflateParams()),
        (f"{PMD}; client_max_window_bits", PMD, DeflateParams()),
        (f"{PMD}; client_max_window_bits=9", f"{PMD}; client_max_window_bits=9",
         DeflateParams(client_max_window_bits=9)),
        (f"{PMD}; server_max_window_bits=10", f"{PMD}; server_max_window_bits=10",
         DeflateParams(server_max_window_bits=10)),
        (f"{PMD}; server_max_window_bits=15", f"{PMD}; server_max_window_bits=15",
         DeflateParams()),
        (f"{PMD}; server_max_window_bits=8", f"{PMD}; server_max_window_bits=8",
         DeflateParams(server_max_window_bits=8)),
        (f"{PMD}; server_no_context_takeover", f"{PMD}; server_no_context_takeover",
         DeflateParams(server_no_context_takeover=True)),
        (f"{PMD}; client_no_context_takeover", f"{PMD}; client_no_context_takeover",
         DeflateParams(client_no_context_takeover=True)),
        (f'{PMD}; server_max_window_bits="12"', f"{PMD}; server_max_window_bits=12",
         DeflateParams(server_max_window_bits=12)),
        (f"{PMD}; client_no_context_takeover; server_no_context_takeover; "
         f"client_max_window_bits=11; server_max_window_bits=13",
         f"{PMD}; server_no_context_takeover; client_no_context_takeover; "
         f"server_max_window_bits=13; client_max_window_bits=11",
         DeflateParams(True, True, 13, 11)),
        ("PerMessage-Deflate; Server_No_Context_Takeover", f"{PMD}; server_no_context_takeover",
         DeflateParams(server_no_context_takeover=True)),
    ])
    def test_accepted_offers(self, offer, header, params):
        assert negotiate_server([offer]) == (header, params)

    @pytest.mark.parametrize("offer", [
        f"{PMD}; server_max_window_bits",            # a value is required
        f"{PMD}; server_max_window_bits=7",
        f"{PMD}; server_max_window_bits=16",
        f"{PMD}; server_max_window_bits=010",         # no leading zeros
        f"{PMD}; client_max_window_bits=abc",
        f"{PMD}; client_max_window_bits=1 5",
        f"{PMD}; server_no_context_takeover=1",       # takes no value
        f'{PMD}; client_no_context_takeover="x"',
        f"{PMD}; server_no_context_takeover; server_no_context_takeover",   # duplicates
        f"{PMD}; client_max_window_bits; client_max_window_bits=10",
        f"{PMD}; server_max_window_bits=10; server_max_window_bits=10",
        f"{PMD}; unknown_parameter",
        f"{PMD}; =",
        "x-webkit-deflate-frame",
        "deflate-frame; no_context_takeover",
    ])
    def test_invalid_offers_are_declined(self, offer):
        assert negotiate_server([offer]) == (None, None)

    def test_no_offer(self):
        assert negotiate_server([]) == (None, None)
        assert negotiate_server("") == (None, None)

    def test_first_acceptable_offer_wins(self):
        offers = [
            "x-foo",
            f"{PMD}; server_max_window_bits=99",
            f"{PMD}; client_no_context_takeover",
            f"{PMD}; server_no_context_takeover",
        ]
        assert negotiate_server(offers)[0] == f"{PMD}; client_no_context_takeover"
        # The same, as one header value (Request.extensions or raw).
        assert negotiate_server(", ".join(offers))[0] == f"{PMD}; client_no_context_takeover"

    def test_autobahn_13_7_offer(self):
        # Autobahn 13.7 offers several variants in one header, first wins.
        header = (f"{PMD}; server_no_context_takeover; server_max_window_bits=8, "
                  f"{PMD}; client_no_context_takeover; client_max_window_bits, {PMD}")
        value, params = negotiate_server(header)
        assert value == f"{PMD}; server_no_context_takeover; server_max_window_bits=8"
        assert params == DeflateParams(server_no_context_takeover=True, server_max_window_bits=8)

    @pytest.mark.parametrize("offer, config, header, params", [
        # The server limits its own window, asked or not (7.1.2.1).
        (PMD, DeflateConfig(server_max_window_bits=12),
         f"{PMD}; server_max_window_bits=12", DeflateParams(server_max_window_bits=12)),
        (f"{PMD}; server_max_window_bits=14", DeflateConfig(server_max_window_bits=12),
         f"{PMD}; server_max_window_bits=12", DeflateParams(server_max_window_bits=12)),
        (f"{PMD}; server_max_window_bits=10", DeflateConfig(server_max_window_bits=12),
         f"{PMD}; server_max_window_bits=10", DeflateParams(server_max_window_bits=10)),
        # The client's window only when the client offered the parameter (7.1.2.2).
        (PMD, DeflateConfig(client_max_window_bits=10), PMD, DeflateParams()),
        (f"{PMD}; client_max_window_bits", DeflateConfig(client_max_window_bits=10),
         f"{PMD}; client_max_window_bits=10", DeflateParams(client_max_window_bits=10)),
        (f"{PMD}; client_max_window_bits=9", DeflateConfig(client_max_window_bits=10),
         f"{PMD}; client_max_window_bits=9", DeflateParams(client_max_window_bits=9)),
        (f"{PMD}; client_max_window_bits=12", DeflateConfig(client_max_window_bits=10),
         f"{PMD}; client_max_window_bits=10", DeflateParams(client_max_window_bits=10)),
        # No context takeover may be imposed unasked (7.1.1).
        (PMD, DeflateConfig(server_no_context_takeover=True),
         f"{PMD}; server_no_context_takeover", DeflateParams(server_no_context_takeover=True)),
        (PMD, DeflateConfig(client_no_context_takeover=True),
         f"{PMD}; client_no_context_takeover", DeflateParams(client_no_context_takeover=True)),
        # Local settings travel with the params, never in the header.
        (PMD, DeflateConfig(level=1, mem_level=5), PMD, DeflateParams(level=1, mem_level=5)),
    ])
    def test_config(self, offer, config, header, params):
        assert negotiate_server([offer], config) == (header, params)

    def test_answer_parses_back_to_the_same_params(self):
        value, params = negotiate_server(
            [f"{PMD}; server_no_context_takeover; client_max_window_bits"],
            DeflateConfig(client_max_window_bits=9, server_max_window_bits=11))
        assert params_from_response(value) == params


class TestConfig:
    @pytest.mark.parametrize("kw", [
        {"server_max_window_bits": 7}, {"client_max_window_bits": 16},
        {"server_max_window_bits": "10"}, {"level": 10}, {"mem_level": 0},
    ])
    def test_invalid(self, kw):
        with pytest.raises(ValueError):
            DeflateConfig(**kw)


# ------------------------------------------------------------ client side


class TestClient:
    def test_default_offer(self):
        assert client_offer() == f"{PMD}; client_max_window_bits"

    def test_full_offer(self):
        config = DeflateConfig(True, True, 10, 11)
        assert client_offer(config) == (
            f"{PMD}; server_no_context_takeover; client_no_context_takeover; "
            f"server_max_window_bits=10; client_max_window_bits=11")

    @pytest.mark.parametrize("answer, config, params", [
        (None, DeflateConfig(), None),
        ([], DeflateConfig(), None),
        (PMD, DeflateConfig(), DeflateParams()),
        ([PMD], DeflateConfig(), DeflateParams()),
        (f"{PMD}; server_no_context_takeover", DeflateConfig(),
         DeflateParams(server_no_context_takeover=True)),
        (f"{PMD}; client_no_context_takeover", DeflateConfig(),
         DeflateParams(client_no_context_takeover=True)),
        (PMD, DeflateConfig(client_no_context_takeover=True),
         DeflateParams(client_no_context_takeover=True)),
        (f"{PMD}; server_max_window_bits=9", DeflateConfig(),
         DeflateParams(server_max_window_bits=9)),
        (f"{PMD}; client_max_window_bits=8", DeflateConfig(),
         DeflateParams(client_max_window_bits=8)),
        (PMD, DeflateConfig(client_max_window_bits=10), DeflateParams(client_max_window_bits=10)),
        (f"{PMD}; client_max_window_bits=9", DeflateConfig(client_max_window_bits=10),
         DeflateParams(client_max_window_bits=9)),
        (f"{PMD}; server_max_window_bits=10", DeflateConfig(server_max_window_bits=12),
         DeflateParams(server_max_window_bits=10)),
        (f"{PMD}; server_no_context_takeover", DeflateConfig(server_no_context_takeover=True),
         DeflateParams(server_no_context_takeover=True)),
    ])
    def test_accepted_answers(self, answer, config, params):
        assert accept_client(answer, config) == params

    @pytest.mark.parametrize("answer, config", [
        ("x-webkit-deflate-frame", DeflateConfig()),
        (f"{PMD}, {PMD}", DeflateConfig()),
        (f"{PMD}, x-foo", DeflateConfig()),
        (f"{PMD}; foo", DeflateConfig()),
        (f"{PMD}; server_max_window_bits=7", DeflateConfig()),
        (f"{PMD}; server_max_window_bits", DeflateConfig()),
        (f"{PMD}; client_max_window_bits", DeflateConfig()),       # an answer needs a value
        (f"{PMD}; server_no_context_takeover=1", DeflateConfig()),
        (f"{PMD}; client_no_context_takeover; client_no_context_takeover", DeflateConfig()),
        (f"{PMD}; =", DeflateConfig()),
        (PMD, DeflateConfig(server_no_context_takeover=True)),      # asked, not agreed
        (PMD, DeflateConfig(server_max_window_bits=10)),
        (f"{PMD}; server_max_window_bits=11", DeflateConfig(server_max_window_bits=10)),
        (f"{PMD}; client_max_window_bits=11", DeflateConfig(client_max_window_bits=10)),
    ])
    def test_bad_answers_fail_the_handshake(self, answer, config):
        with pytest.raises(HandshakeError) as info:
            accept_client(answer, config)
        assert info.value.status == 101

    @pytest.mark.parametrize("client_config", [
        DeflateConfig(), DeflateConfig(True, True, 9, 10), DeflateConfig(server_max_window_bits=8),
        DeflateConfig(client_max_window_bits=12),
    ])
    @pytest.mark.parametrize("server_config", [
        DeflateConfig(), DeflateConfig(server_max_window_bits=11, client_max_window_bits=9),
        DeflateConfig(server_no_context_takeover=True, client_no_context_takeover=True),
    ])
    def test_both_ends_agree(self, client_config, server_config):
        value, server_params = negotiate_server([client_offer(client_config)], server_config)
        client_params = accept_client(value, client_config)
        strip = dict(level=-1, mem_level=8)
        assert DeflateParams(**{**server_params.__dict__, **strip}) == \
            DeflateParams(**{**client_params.__dict__, **strip})


def test_params_from_response_is_lenient():
    assert params_from_response(None) is None
    assert params_from_response("x-foo") is None
    assert params_from_response(f"{PMD}; foo") is None
    assert params_from_response(f"x-foo, {PMD}; server_max_window_bits=9") == \
        DeflateParams(server_max_window_bits=9)


# ------------------------------------------------------------------ codec


def server_codec(**kw):
    return PerMessageDeflate(DeflateParams(**kw), is_server=True)


def client_codec(**kw):
    return PerMessageDeflate(DeflateParams(**kw), is_server=False)


def receive(codec, *pieces, limit=None):
    codec.start_message(limit)
    out = b"".join(codec.inflate(p) for p in pieces)
    return out + codec.finish_message()


class TestRfcExamples:
    """RFC 7692 section 7.2.3, payload bytes as printed there."""

    HELLO = bytes.fromhex("f248cdc9c90700")

    def test_7_2_3_1_a_message_compressed(self):
        assert server_codec().compress(b"Hello") == self.HELLO
        assert receive(client_codec(), self.HELLO) == b"Hello"

    def test_7_2_3_1_split_over_two_frames(self):
        assert receive(client_codec(), bytes.fromhex("f248cd"), bytes.fromhex("c9c90700")) == b"Hello"

    def test_7_2_3_2_sharing_the_window(self):
        codec = server_codec()
        assert codec.compress(b"Hello") == self.HELLO
        assert codec.compress(b"Hello") == bytes.fromhex("f200110000")
        peer = client_codec()
        assert receive(peer, self.HELLO) == b"Hello"
        assert receive(peer, bytes.fromhex("f200110000")) == b"Hello"

    def test_7_2_3_2_no_context_takeover(self):
        codec = server_codec(server_no_context_takeover=True)
        assert codec.compress(b"Hello") == self.HELLO
        assert codec.compress(b"Hello") == self.HELLO
        # ... and the peer, told so, inflates each with a fresh window.
        peer = client_codec(server_no_context_takeover=True)
        assert receive(peer, self.HELLO) == b"Hello"
        assert receive(peer, self.HELLO) == b"Hello"

    def test_7_2_3_3_no_compression_block(self):
        assert receive(client_codec(), bytes.fromhex("000500faff48656c6c6f00")) == b"Hello"

    def test_7_2_3_4_bfinal_set(self):
        codec = client_codec()
        assert receive(codec, bytes.fromhex("f348cdc9c9070000")) == b"Hello"
        # The stream ended: the next message starts a new one.
        assert receive(codec, self.HELLO) == b"Hello"

    def test_7_2_3_5_two_deflate_blocks(self):
        payload = bytes.fromhex("f24805000000ffffcac9c90700")
        assert receive(client_codec(), payload) == b"Hello"

    def test_7_2_3_6_empty_message(self):
        codec = server_codec()
        assert codec.compress(b"") == b"\x00"
        assert receive(client_codec(), b"\x00") == b""
        # Also after another message, when the compressor has nothing pending.
        codec.compress(b"Hello")
        assert codec.compress(b"") == b"\x00"


class TestCodec:
    def test_fragmented_send_is_one_stream(self):
        codec = client_codec()
        parts = [codec.compress(b"frag", final=False), codec.compress(b"ment", final=False),
                 codec.compress(b"ed", final=True)]
        assert inflate(b"".join(parts)) == b"fragmented"
        # Each part is flushed: the peer can inflate what it has so far.
        assert zlib.decompressobj(-15).decompress(parts[0]) == b"frag"

    def test_fragmented_send_with_an_empty_last_part(self):
        codec = server_codec()
        parts = [codec.compress(b"abc", final=False), codec.compress(b"", final=True)]
        assert parts[1] == b"\x00"
        assert inflate(b"".join(parts)) == b"abc"

    def test_window_of_8_compresses_with_9_and_inflates_with_8(self):
        # Repeats 300 bytes apart: beyond a 256-byte window.
        data = (os.urandom(300) * 20)
        codec = server_codec(server_max_window_bits=8)
        payload = codec.compress(data)
        assert inflate(payload, wbits=8) == data
        assert receive(client_codec(server_max_window_bits=8), payload) == data

    @pytest.mark.parametrize("bits", range(9, 16))
    def test_window_bits_are_honoured(self, bits):
        data = os.urandom(3000) * 4
        codec = client_codec(client_max_window_bits=bits)
        peer = zlib.decompressobj(-bits)
        for _ in range(3):
            assert peer.decompress(codec.compress(data) + b"\x00\x00\xff\xff") == data

    def test_limit_exact_and_one_over(self):
        payload = server_codec().compress(b"x" * 1000)
        assert receive(client_codec(), payload, limit=1000) == b"x" * 1000
        with pytest.raises(PayloadTooBig):
            receive(client_codec(), payload, limit=999)

    def test_limit_counts_the_whole_message(self):
        codec = server_codec()
        parts = [codec.compress(b"y" * 600, final=False), codec.compress(b"y" * 600)]
        peer = client_codec()
        peer.start_message(1000)
        peer.inflate(parts[0])
        with pytest.raises(PayloadTooBig):
            peer.inflate(parts[1])

    def test_invalid_data(self):
        peer = client_codec()
        peer.start_message(None)
        with pytest.raises(ProtocolError) as info:
            peer.inflate(b"\xff\xff\xff\xff")
        assert info.value.close_code == 1002

    def test_data_after_a_final_block_is_ignored(self):
        peer = client_codec()
        assert receive(peer, bytes.fromhex("f348cdc9c90700"), b"\x01\x02" * 1000) == b"Hello"
        assert receive(peer, bytes.fromhex("f248cdc9c90700")) == b"Hello"

    @settings(max_examples=60, deadline=None)
    @given(messages=st.lists(st.binary(max_size=3000), min_size=1, max_size=6),
           server_nct=st.booleans(), client_nct=st.booleans(),
           bits=st.integers(8, 15), split=st.integers(1, 50))
    def test_round_trip(self, messages, server_nct, client_nct, bits, split):
        params = dict(server_no_context_takeover=server_nct,
                      client_no_context_takeover=client_nct,
                      server_max_window_bits=bits, client_max_window_bits=bits)
        for sender, peer in ((server_codec(**params), client_codec(**params)),
                             (client_codec(**params), server_codec(**params))):
            for message in messages:
                payload = sender.compress(message)
                pieces = [payload[i:i + split] for i in range(0, len(payload), split)]
                assert receive(peer, *pieces, limit=len(message)) == message
