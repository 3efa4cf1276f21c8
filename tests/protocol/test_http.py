"""Tests for evws.protocol.http: Headers, head parsers, response writers.

Every head is literal text; every expected response is literal bytes.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evws.errors import HandshakeError
from evws.protocol.http import (
    Headers,
    RequestHead,
    RequestHeadParser,
    ResponseHead,
    ResponseHeadParser,
    http_error,
    reason_phrase,
    serialize_request,
    serialize_response,
)

# RFC 6455 section 1.2, the client's handshake.
RFC_REQUEST = (
    b"GET /chat HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\n"
    b"Sec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)

RFC_RESPONSE = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"Sec-WebSocket-Protocol: chat\r\n"
    b"\r\n"
)

# A masked text frame "Hello" (RFC 6455 section 5.7): what may follow a request.
FIRST_FRAME = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"


def feed_whole(parser, data):
    return parser.feed(data)


def feed_bytewise(parser, data):
    result = None
    for i in range(len(data)):
        assert result is None, "head returned before its last byte"
        result = parser.feed(data[i:i + 1])
    return result


def feed_with_trailing(parser, data):
    return parser.feed(data + FIRST_FRAME)


FEEDERS = [feed_whole, feed_bytewise, feed_with_trailing]


def feed_head(parser, data, feeder):
    """Feed ``data`` one of three ways; check the head came out and what was left."""
    head = feeder(parser, data)
    assert head is not None
    assert parser.done
    assert parser.leftover == (FIRST_FRAME if feeder is feed_with_trailing else b"")
    return head


# --------------------------------------------------------------------- Headers


class TestHeaders:
    def test_case_insensitive_multi_valued_ordered(self):
        h = Headers([("Sec-WebSocket-Protocol", "chat"), ("Host", "x"), ("sec-websocket-protocol", "v2")])
        assert h.get("SEC-WEBSOCKET-PROTOCOL") == "chat"
        assert h.get_all("Sec-Websocket-Protocol") == ["chat", "v2"]
        assert h["host"] == "x"
        assert "HOST" in h
        assert "Origin" not in h
        assert 42 not in h
        assert h.items() == [("Sec-WebSocket-Protocol", "chat"), ("Host", "x"), ("sec-websocket-protocol", "v2")]

    def test_missing(self):
        h = Headers()
        assert h.get("Host") is None
        assert h.get("Host", "dflt") == "dflt"
        assert h.get_all("Host") == []
        with pytest.raises(KeyError):
            h["Host"]
        with pytest.raises(KeyError):
            del h["Host"]

    def test_add_set_remove(self):
        h = Headers([("A", "1"), ("B", "2"), ("a", "3"), ("C", "4")])
        h.set("A", "new")
        # replaced in place of the first, the later one dropped
        assert h.items() == [("A", "new"), ("B", "2"), ("C", "4")]
        h.set("D", "5")
        assert h.items()[-1] == ("D", "5")
        h.add("b", "6")
        assert h.get_all("B") == ["2", "6"]
        h.remove("B")
        assert h.items() == [("A", "new"), ("C", "4"), ("D", "5")]
        h.remove("nope")  # absent: no error
        h["c"] = "7"
        assert h["C"] == "7"
        del h["a"]
        assert h.items() == [("c", "7"), ("D", "5")]

    def test_len_and_iter_see_distinct_names(self):
        h = Headers([("Cookie", "a=1"), ("Host", "x"), ("cookie", "b=2")])
        assert len(h) == 2
        assert list(h) == ["Cookie", "Host"]
        assert len(h.items()) == 3

    def test_copy_is_independent(self):
        h = Headers({"Host": "x"})
        c = h.copy()
        c.add("Origin", "o")
        assert "Origin" not in h
        assert c == Headers([("host", "x"), ("Origin", "o")])
        assert h != c

    def test_items_returns_a_copy(self):
        h = Headers([("A", "1")])
        h.items().append(("B", "2"))
        assert "B" not in h

    def test_repr(self):
        assert repr(Headers([("Host", "x")])) == "Headers([('Host', 'x')])"

    def test_add_refuses_non_str(self):
        with pytest.raises(TypeError):
            Headers().add("Host", b"x")


# -------------------------------------------------------------- request heads


@pytest.mark.parametrize("feeder", FEEDERS)
def test_rfc_request_three_ways(feeder):
    head = feed_head(RequestHeadParser(), RFC_REQUEST, feeder)
    assert head == RequestHead(
        "GET",
        "/chat",
        "HTTP/1.1",
        Headers([
            ("Host", "server.example.com"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Origin", "http://example.com"),
            ("Sec-WebSocket-Protocol", "chat, superchat"),
            ("Sec-WebSocket-Version", "13"),
        ]),
    )


@pytest.mark.parametrize("feeder", FEEDERS)
def test_request_values_are_trimmed_and_may_be_empty(feeder):
    data = b"GET /a?b=c HTTP/1.1\r\nHost:example.com\r\nX-Empty:\r\nX-Pad: \t v a l \t \r\n\r\n"
    head = feed_head(RequestHeadParser(), data, feeder)
    assert head.target == "/a?b=c"
    assert head.headers.items() == [("Host", "example.com"), ("X-Empty", ""), ("X-Pad", "v a l")]


@pytest.mark.parametrize("feeder", FEEDERS)
def test_request_without_headers(feeder):
    head = feed_head(RequestHeadParser(), b"GET / HTTP/1.0\r\n\r\n", feeder)
    assert (head.method, head.target, head.version, len(head.headers)) == ("GET", "/", "HTTP/1.0", 0)


def test_leftover_holds_everything_after_the_head():
    parser = RequestHeadParser()
    assert parser.feed(RFC_REQUEST[:-2]) is None
    assert parser.feed(b"\r\n" + FIRST_FRAME + FIRST_FRAME) is not None
    assert parser.leftover == FIRST_FRAME + FIRST_FRAME


def test_end_of_head_split_across_feeds():
    # The CRLFCRLF straddles reads in every possible way.
    for cut in range(len(RFC_REQUEST) - 4, len(RFC_REQUEST)):
        parser = RequestHeadParser()
        assert parser.feed(RFC_REQUEST[:cut]) is None
        assert parser.feed(RFC_REQUEST[cut:] + b"x") is not None
        assert parser.leftover == b"x"


def test_feed_accepts_bytearray_and_memoryview():
    parser = RequestHeadParser()
    assert parser.feed(bytearray(RFC_REQUEST[:10])) is None
    assert parser.feed(memoryview(RFC_REQUEST[10:])).target == "/chat"


def test_feed_after_head_is_an_error():
    parser = RequestHeadParser()
    parser.feed(RFC_REQUEST)
    with pytest.raises(RuntimeError):
        parser.feed(b"more")


def test_exactly_max_headers_is_fine():
    data = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(128)) + b"\r\n"
    assert len(RequestHeadParser().feed(data).headers.items()) == 128


def test_large_head_fed_bytewise():
    # A head close to the 16 KiB limit, one byte at a time: the parser must
    # finish (each feed only looks at the new byte and the three before).
    data = b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 16000 + b"\r\n\r\n"
    assert len(data) <= 16384
    head = feed_bytewise(RequestHeadParser(), data)
    assert head.headers["X-Big"] == "a" * 16000


BAD_REQUESTS = [
    pytest.param(b"GET /\r\nHost: x\r\n\r\n", id="no-version"),
    pytest.param(b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", id="double-space"),
    pytest.param(b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n", id="trailing-space"),
    pytest.param(b"GET / HTTP/11\r\nHost: x\r\n\r\n", id="bad-version"),
    pytest.param(b"GET / http/1.1\r\nHost: x\r\n\r\n", id="lowercase-version"),
    pytest.param(b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", id="method-not-token"),
    pytest.param(b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n", id="del-in-target"),
    pytest.param(b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", id="leading-empty-line"),
    pytest.param(b"GET / HTTP/1.1\r\nHost x\r\n\r\n", id="no-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", id="obs-fold-space"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\tfolded\r\n\r\n", id="obs-fold-tab"),
    pytest.param(b"GET / HTTP/1.1\r\n Host: x\r\n\r\n", id="space-before-first-header"),
    pytest.param(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", id="space-before-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nHost\t: x\r\n\r\n", id="tab-before-colon"),
    pytest.param(b"GET / HTTP/1.1\r\n: x\r\n\r\n", id="empty-name"),
    pytest.param(b"GET / HTTP/1.1\r\nH\xc3\xb6st: x\r\n\r\n", id="non-ascii-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHo(st: x\r\n\r\n", id="separator-in-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: \xc3\xa9x\r\n\r\n", id="non-ascii-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n", id="nul-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n", id="control-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\x7fb\r\n\r\n", id="del-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", id="bare-cr-in-value"),
    pytest.param(b"GET / HTTP/1.1\nHost: x\r\n\r\n", id="bare-lf-after-request-line"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\n\r\n", id="bare-lf-after-header"),
    pytest.param(b"GET / HTTP/1.1\n\n", id="bare-lf-only"),
    pytest.param(b"\r\n\r\n", id="empty-head"),
    pytest.param(
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(129)) + b"\r\n",
        id="too-many-headers",
    ),
]


@pytest.mark.parametrize("feeder", [feed_whole, feed_bytewise])
@pytest.mark.parametrize("data", BAD_REQUESTS)
def test_malformed_request_is_400(data, feeder):
    parser = RequestHeadParser()
    with pytest.raises(HandshakeError) as info:
        feeder(parser, data)
    err = info.value
    assert err.status == 400
    assert err.response.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nConnection: close\r\n" in err.response
    body = err.response.split(b"\r\n\r\n", 1)[1]
    assert body == str(err).encode("utf-8")
    assert b"\r\nContent-Length: %d\r\n" % len(body) in err.response


def test_bare_lf_is_refused_before_the_head_ends():
    # A client using LF endings would otherwise wait for a CRLFCRLF forever.
    parser = RequestHeadParser()
    with pytest.raises(HandshakeError) as info:
        parser.feed(b"GET / HTTP/1.1\nHost: x\n")
    assert info.value.status == 400


def test_malformed_response_bytes_exactly():
    with pytest.raises(HandshakeError) as info:
        RequestHeadParser().feed(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n")
    message = b"malformed HTTP header (space before colon): Host "
    assert info.value.response == (
        b"HTTP/1.1 400 Bad Request\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n"
        b"Connection: close\r\n"
        b"\r\n" % len(message)
    ) + message


def test_error_is_sticky():
    parser = RequestHeadParser()
    with pytest.raises(HandshakeError) as first:
        parser.feed(b"BAD\r\n\r\n")
    with pytest.raises(HandshakeError) as second:
        parser.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert second.value is first.value


# ------------------------------------------------------------------------ 431


def _assert_431(err: HandshakeError) -> None:
    assert err.status == 431
    assert err.response.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"\r\nConnection: close\r\n" in err.response


def test_endless_header_431_as_soon_as_limit_is_passed():
    parser = RequestHeadParser(max_size=1000)
    assert parser.feed(b"GET / HTTP/1.1\r\nX-Endless: ") is None
    fed = 27
    while fed + 100 <= 1000:
        assert parser.feed(b"a" * 100) is None
        fed += 100
    # Still within the limit: exactly max_size bytes are accepted.
    assert parser.feed(b"a" * (1000 - fed)) is None
    with pytest.raises(HandshakeError) as info:
        parser.feed(b"a")
    _assert_431(info.value)


def test_endless_header_in_one_huge_chunk_is_not_buffered():
    parser = RequestHeadParser(max_size=1000)
    with pytest.raises(HandshakeError) as info:
        parser.feed(b"GET / HTTP/1.1\r\nX-Endless: " + b"a" * 10_000_000)
    _assert_431(info.value)


def test_head_end_beyond_limit_is_431():
    data = b"GET / HTTP/1.1\r\nX: " + b"a" * 1000 + b"\r\n\r\n"
    with pytest.raises(HandshakeError) as info:
        RequestHeadParser(max_size=1000).feed(data)
    _assert_431(info.value)


def test_head_of_exactly_max_size_is_fine():
    data = b"GET / HTTP/1.1\r\nX: " + b"a" * 100 + b"\r\n\r\n"
    parser = RequestHeadParser(max_size=len(data))
    assert parser.feed(data + FIRST_FRAME) is not None
    assert parser.leftover == FIRST_FRAME
    with pytest.raises(HandshakeError) as info:
        RequestHeadParser(max_size=len(data) - 1).feed(data)
    assert info.value.status == 431


# ------------------------------------------------------------- response heads


@pytest.mark.parametrize("feeder", FEEDERS)
def test_rfc_response_three_ways(feeder):
    head = feed_head(ResponseHeadParser(), RFC_RESPONSE, feeder)
    assert head == ResponseHead(
        "HTTP/1.1",
        101,
        "Switching Protocols",
        Headers([
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ("Sec-WebSocket-Protocol", "chat"),
        ]),
    )


@pytest.mark.parametrize("line, reason", [
    (b"HTTP/1.1 404 Not Found", "Not Found"),
    (b"HTTP/1.1 404 ", ""),
    (b"HTTP/1.1 404", ""),
])
def test_response_reason_forms(line, reason):
    head = ResponseHeadParser().feed(line + b"\r\nContent-Length: 0\r\n\r\n")
    assert (head.status, head.reason) == (404, reason)


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 1010 Switching\r\n\r\n",
    b"HTTP/1.1 abc Nope\r\n\r\n",
    b"ICY 200 OK\r\n\r\n",
    b"HTTP/1.1 101 OK\r\nUpgrade websocket\r\n\r\n",
])
def test_malformed_response_head(data):
    with pytest.raises(HandshakeError) as info:
        ResponseHeadParser().feed(data)
    assert info.value.status == 400
    assert info.value.response == b""  # a client has nobody to answer


def test_response_head_too_large():
    with pytest.raises(HandshakeError) as info:
        ResponseHeadParser(max_size=100).feed(b"HTTP/1.1 101 OK\r\nX: " + b"a" * 200)
    assert info.value.status == 431
    assert info.value.response == b""


# ------------------------------------------------------------------ hypothesis


@settings(max_examples=200, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=len(RFC_REQUEST) + len(FIRST_FRAME)), max_size=12),
)
def test_random_split_points(cuts):
    data = RFC_REQUEST + FIRST_FRAME
    points = sorted(set(cuts) | {0, len(data)})
    parser = RequestHeadParser()
    head = None
    for start, end in zip(points, points[1:]):
        if head is None:
            head = parser.feed(data[start:end])
            consumed = end
    assert head is not None
    assert head.headers["Sec-WebSocket-Key"] == "dGhlIHNhbXBsZSBub25jZQ=="
    assert parser.leftover + data[consumed:] == FIRST_FRAME


# ------------------------------------------------------------------- writing


def test_serialize_response_exact():
    out = serialize_response(200, [("Content-Length", "2"), ("X-A", "1")], b"ok")
    assert out == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok"


def test_serialize_response_from_headers_and_custom_reason():
    h = Headers([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    assert serialize_response(403, h, reason="Go Away") == (
        b"HTTP/1.1 403 Go Away\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n"
    )


@pytest.mark.parametrize("status, phrase", [
    (101, "Switching Protocols"), (400, "Bad Request"), (403, "Forbidden"),
    (404, "Not Found"), (426, "Upgrade Required"), (431, "Request Header Fields Too Large"),
    (500, "Internal Server Error"), (599, ""),
])
def test_reason_phrases(status, phrase):
    assert reason_phrase(status) == phrase
    assert serialize_response(status, []).startswith(b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode()))


@pytest.mark.parametrize("headers, reason", [
    ([("X-A", "1\r\nSet-Cookie: evil=1")], None),
    ([("X-A", "1\nX-B: 2")], None),
    ([("X-A", "1\rX-B: 2")], None),
    ([("X-A", "a\x00b")], None),
    ([("X-A", "caf\u00e9")], None),
    ([("X-A\r\nX-B", "1")], None),
    ([("X-A\n", "1")], None),
    ([("X A", "1")], None),
    ([("", "1")], None),
    ([], "OK\r\nX-Evil: 1"),
    ([], "OK\n"),
])
def test_serialize_response_refuses_injection(headers, reason):
    with pytest.raises(ValueError):
        serialize_response(200, headers, reason=reason)


@pytest.mark.parametrize("status", [99, 1000, "200", None])
def test_serialize_response_refuses_bad_status(status):
    with pytest.raises(ValueError):
        serialize_response(status, [])


def test_http_error_exact():
    err = http_error(403, "no entry: caf\u00e9")
    assert isinstance(err, HandshakeError)
    assert err.status == 403
    assert str(err) == "no entry: caf\u00e9"
    assert err.response == (
        b"HTTP/1.1 403 Forbidden\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 15\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b"no entry: caf\xc3\xa9"
    )


def test_http_error_extra_headers():
    err = http_error(426, "v13 only", [("Sec-WebSocket-Version", "13")])
    assert err.response == (
        b"HTTP/1.1 426 Upgrade Required\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 8\r\n"
        b"Connection: close\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"\r\n"
        b"v13 only"
    )


def test_serialize_request_exact():
    assert serialize_request("GET", "/x?y=1", [("Host", "h")]) == b"GET /x?y=1 HTTP/1.1\r\nHost: h\r\n\r\n"


@pytest.mark.parametrize("method, target, headers", [
    ("GE T", "/", []),
    ("GET", "/a b", []),
    ("GET", "/a\r\nX: 1", []),
    ("GET", "", []),
    ("GET", "/", [("Host", "h\r\nX: 1")]),
])
def test_serialize_request_refuses(method, target, headers):
    with pytest.raises(ValueError):
        serialize_request(method, target, headers)


def test_headers_flat_storage_keeps_order_and_repeats():
    headers = Headers([("A", "1"), ("b", "2"), ("a", "3"), ("C", "4")])
    headers.set("B", "5")
    assert headers.items() == [("A", "1"), ("B", "5"), ("a", "3"), ("C", "4")]
    headers.set("a", "6")  # the first A's place; the second goes
    assert headers.items() == [("a", "6"), ("B", "5"), ("C", "4")]
    headers.remove("b")
    headers.add("c", "7")
    assert headers.get_all("C") == ["4", "7"] and list(headers) == ["a", "C"] and len(headers) == 2
    assert "A" in headers and "b" not in headers and 1 not in headers
    assert repr(headers) == "Headers([('a', '6'), ('C', '4'), ('c', '7')])"
    copy = headers.copy()
    copy.add("D", "8")
    assert "D" not in headers and copy != headers


def test_parsed_headers_share_names_and_short_values():
    heads = [RequestHeadParser().feed(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n") for _ in range(2)]
    a, b = (head.headers._fields for head in heads)
    assert a == ["Upgrade", "websocket"] and all(x is y for x, y in zip(a, b))
    assert heads[0].method is heads[1].method and heads[0].version is heads[1].version
