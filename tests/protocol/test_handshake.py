"""Tests for evws.protocol.handshake: RFC 6455 section 4, both sides.

Requests and responses are literal text; expected bytes are written by hand.
"""

from __future__ import annotations

import base64

import pytest

from evws.errors import HandshakeError
from evws.protocol.handshake import (
    Request,
    Response,
    accept_key,
    build_request,
    check_request,
    check_response,
    default_response,
    generate_key,
    parse_request,
    split_header_list,
)
from evws.protocol.http import Headers, RequestHeadParser, ResponseHeadParser

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
# RFC 6455 sections 1.3 and 4.2.2 give this answer to KEY.
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

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

FIRST_FRAME = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"

MINIMAL = [
    "GET / HTTP/1.1",
    "Host: example.com",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
]


def head_of(lines) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def request_of(lines) -> Request:
    return parse_request(RequestHeadParser().feed(head_of(lines)))


def replace(lines, prefix, new=None):
    """MINIMAL-style lines with the line starting ``prefix`` replaced (or dropped)."""
    out = []
    for line in lines:
        if line.startswith(prefix):
            if new is not None:
                out.append(new)
        else:
            out.append(line)
    return out


def test_accept_key_rfc_example():
    assert accept_key(KEY) == ACCEPT


def test_generate_key():
    a, b = generate_key(), generate_key()
    assert len(a) == 24 and a != b
    assert len(base64.b64decode(a, validate=True)) == 16


# --------------------------------------------------------------- parse_request


@pytest.mark.parametrize("split", ["whole", "bytewise", "trailing"])
def test_rfc_request_end_to_end(split):
    parser = RequestHeadParser()
    if split == "whole":
        head = parser.feed(RFC_REQUEST)
    elif split == "trailing":
        head = parser.feed(RFC_REQUEST + FIRST_FRAME)
    else:
        head = None
        for i in range(len(RFC_REQUEST)):
            assert head is None
            head = parser.feed(RFC_REQUEST[i:i + 1])
    assert parser.leftover == (FIRST_FRAME if split == "trailing" else b"")
    request = parse_request(head)
    assert request.method == "GET"
    assert request.resource_name == "/chat"
    assert (request.path, request.query) == ("/chat", "")
    assert request.host == "server.example.com"
    assert request.origin == "http://example.com"
    assert request.key == KEY
    assert request.version == 13
    assert request.subprotocols == ["chat", "superchat"]
    assert request.extensions == []
    assert request.cookies == {}
    assert request.peer is None
    assert request.headers["sec-websocket-protocol"] == "chat, superchat"
    check_request(request)
    response = default_response(request)
    response.subprotocol = "chat"
    # RFC 6455 section 1.2, the server's handshake.
    assert response.to_bytes() == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Protocol: chat\r\n"
        b"\r\n"
    )


def test_parse_request_details():
    request = request_of([
        "GET /a/b%20c?x=1&y=2?z HTTP/1.1",
        *MINIMAL[1:],
        "Sec-WebSocket-Protocol: one,, two ",
        "sec-websocket-protocol: three",
        'Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-foo; a="1,2"',
        "Sec-WebSocket-Extensions: x-bar",
        'Cookie: sid=abc; theme="dark"; flag; sid=shadowed',
        "Cookie: lang=en",
    ])
    assert request.resource_name == "/a/b%20c?x=1&y=2?z"
    assert request.path == "/a/b%20c"  # not percent-decoded
    assert request.query == "x=1&y=2?z"
    assert request.subprotocols == ["one", "two", "three"]
    assert request.extensions == [
        "permessage-deflate; client_max_window_bits",
        'x-foo; a="1,2"',
        "x-bar",
    ]
    assert request.cookies == {"sid": "abc", "theme": "dark", "lang": "en"}
    assert request.origin is None


def test_old_origin_header():
    request = request_of(MINIMAL + ["Sec-WebSocket-Origin: http://old.example"])
    assert request.origin == "http://old.example"
    request = request_of(MINIMAL + ["Sec-WebSocket-Origin: http://old", "Origin: http://new"])
    assert request.origin == "http://new"


@pytest.mark.parametrize("target, resource, path, query", [
    ("http://example.com/chat?x=1", "/chat?x=1", "/chat", "x=1"),
    ("ws://example.com", "/", "/", ""),
    ("https://example.com?q", "/?q", "/", "q"),
])
def test_absolute_form_target(target, resource, path, query):
    request = request_of(replace(MINIMAL, "GET", f"GET {target} HTTP/1.1"))
    assert (request.resource_name, request.path, request.query) == (resource, path, query)
    check_request(request)


@pytest.mark.parametrize("value, version", [("13", 13), ("8", 8), ("x", None), ("13, 8", None)])
def test_version_attribute(value, version):
    assert request_of(replace(MINIMAL, "Sec-WebSocket-Version", f"Sec-WebSocket-Version: {value}")).version == version


def test_split_header_list():
    assert split_header_list(["a, b", " ,c ", 'd; p="x,\\"y"', ""]) == ["a", "b", "c", 'd; p="x,\\"y"']


# --------------------------------------------------------------- check_request


@pytest.mark.parametrize("lines", [
    MINIMAL,
    replace(MINIMAL, "Upgrade", "upgrade: WebSocket"),
    replace(MINIMAL, "Connection", "Connection: keep-alive, Upgrade"),
    replace(MINIMAL, "Connection", "connection: UPGRADE"),
    MINIMAL + ["Content-Length: 0"],
    replace(MINIMAL, "GET", "GET / HTTP/1.2"),
])
def test_valid_requests(lines):
    check_request(request_of(lines))


BAD = [
    pytest.param(replace(MINIMAL, "GET", "POST / HTTP/1.1"), "GET", id="post"),
    pytest.param(replace(MINIMAL, "GET", "get / HTTP/1.1"), "GET", id="lowercase-get"),
    pytest.param(replace(MINIMAL, "GET", "GET / HTTP/1.0"), "HTTP/1.1", id="http10"),
    pytest.param(replace(MINIMAL, "GET", "GET * HTTP/1.1"), "resource", id="asterisk-target"),
    pytest.param(replace(MINIMAL, "Host"), "Host", id="no-host"),
    pytest.param(MINIMAL + ["Host: other"], "Host", id="two-hosts"),
    pytest.param(replace(MINIMAL, "Upgrade"), "Upgrade", id="no-upgrade"),
    pytest.param(replace(MINIMAL, "Upgrade", "Upgrade: h2c"), "Upgrade", id="other-upgrade"),
    pytest.param(replace(MINIMAL, "Connection"), "Connection", id="no-connection"),
    pytest.param(replace(MINIMAL, "Connection", "Connection: keep-alive"), "Connection", id="keep-alive"),
    pytest.param(replace(MINIMAL, "Connection", "Connection: upgraded"), "Connection", id="not-a-token"),
    pytest.param(replace(MINIMAL, "Sec-WebSocket-Key"), "Sec-WebSocket-Key", id="no-key"),
    pytest.param(MINIMAL + ["Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA=="], "Sec-WebSocket-Key", id="two-keys"),
    pytest.param(replace(MINIMAL, "Sec-WebSocket-Key", "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4P"),
                 "Sec-WebSocket-Key", id="key-15-bytes"),
    pytest.param(replace(MINIMAL, "Sec-WebSocket-Key", "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEBE="),
                 "Sec-WebSocket-Key", id="key-17-bytes"),
    pytest.param(replace(MINIMAL, "Sec-WebSocket-Key", "Sec-WebSocket-Key: not base64 at all!!!!!"),
                 "Sec-WebSocket-Key", id="key-not-base64"),
    pytest.param(replace(MINIMAL, "Sec-WebSocket-Key", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ"),
                 "Sec-WebSocket-Key", id="key-unpadded"),
    pytest.param(MINIMAL + ["Content-Length: 5"], "body", id="content-length"),
    pytest.param(MINIMAL + ["Transfer-Encoding: chunked"], "body", id="transfer-encoding"),
]


@pytest.mark.parametrize("lines, words", BAD)
def test_rejected_with_400(lines, words):
    with pytest.raises(HandshakeError) as info:
        check_request(request_of(lines))
    err = info.value
    assert err.status == 400
    assert words in str(err)
    assert err.response.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert err.response.endswith(b"\r\n\r\n" + str(err).encode())
    assert b"Sec-WebSocket-Version" not in err.response


@pytest.mark.parametrize("lines", [
    pytest.param(replace(MINIMAL, "Sec-WebSocket-Version"), id="missing"),
    pytest.param(replace(MINIMAL, "Sec-WebSocket-Version", "Sec-WebSocket-Version: 8"), id="v8"),
    pytest.param(replace(MINIMAL, "Sec-WebSocket-Version", "Sec-WebSocket-Version: 14"), id="v14"),
    pytest.param(replace(MINIMAL, "Sec-WebSocket-Version", "Sec-WebSocket-Version: 13, 8"), id="list"),
    pytest.param(MINIMAL + ["Sec-WebSocket-Version: 13"], id="twice"),
    # hixie-76 style: no version, no usable key. 426 tells it what to speak.
    pytest.param(replace(replace(MINIMAL, "Sec-WebSocket-Version"), "Sec-WebSocket-Key",
                         "Sec-WebSocket-Key1: 4 @1  46546xW%0l 1 5"), id="hixie76"),
])
def test_wrong_version_is_426(lines):
    with pytest.raises(HandshakeError) as info:
        check_request(request_of(lines))
    err = info.value
    assert err.status == 426
    head, body = err.response.split(b"\r\n\r\n", 1)
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 426 Upgrade Required",
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: %d" % len(body),
        b"Connection: close",
        b"Sec-WebSocket-Version: 13",
    ]
    assert body == str(err).encode()


def test_426_response_exact():
    with pytest.raises(HandshakeError) as info:
        check_request(request_of(replace(MINIMAL, "Sec-WebSocket-Version", "Sec-WebSocket-Version: 8")))
    body = b"unsupported WebSocket version (8); this server speaks version 13"
    assert info.value.response == (
        b"HTTP/1.1 426 Upgrade Required\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 64\r\n"
        b"Connection: close\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"\r\n"
    ) + body
    assert len(body) == 64


# -------------------------------------------------------------------- Response


def test_response_everything():
    response = Response(key=KEY)
    response.subprotocol = "chat"
    response.extensions = "permessage-deflate"
    response.cookies["sid"] = "abc; Path=/; HttpOnly"
    response.cookies["theme"] = "dark"
    response.headers.add("X-Server", "evws")
    response.headers.add("X-Server", "again")
    assert response.accept == ACCEPT
    assert response.to_bytes() == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Protocol: chat\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
        b"Set-Cookie: sid=abc; Path=/; HttpOnly\r\n"
        b"Set-Cookie: theme=dark\r\n"
        b"X-Server: evws\r\n"
        b"X-Server: again\r\n"
        b"\r\n"
    )


def test_default_response():
    response = default_response(request_of(MINIMAL))
    assert (response.status, response.key, response.subprotocol, response.extensions) == (101, KEY, None, None)
    assert response.to_bytes() == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"\r\n"
    )


def test_response_headers_may_be_a_list():
    response = Response(key=KEY, headers=[("X-A", "1")])
    assert response.to_bytes().endswith(b"\r\nX-A: 1\r\n\r\n")


def test_non_101_response_has_no_upgrade_fields():
    response = Response(status=403, headers=Headers([("Content-Length", "0")]))
    assert response.to_bytes() == b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"


def test_101_without_key_is_refused():
    with pytest.raises(ValueError):
        Response().to_bytes()


@pytest.mark.parametrize("attribute, value", [
    ("subprotocol", "chat\r\nX-Evil: 1"),
    ("subprotocol", "chat\n"),
    ("extensions", "x\r\n\r\n<html>"),
    ("key", "dGhl\r\nX-Evil: 1"),
    ("cookies", {"sid": "abc\r\nX-Evil: 1"}),
    ("cookies", {"sid": "a\x00b"}),
    ("cookies", {"s\r\nid": "abc"}),
    ("cookies", {"s=id": "abc"}),
    ("cookies", {"": "abc"}),
    ("headers", Headers([("X-A", "1\r\nX-Evil: 1")])),
    ("headers", Headers([("X-A\r\nX-Evil", "1")])),
    ("headers", Headers([("X-A:", "1")])),
])
def test_response_refuses_injection(attribute, value):
    response = Response(key=KEY)
    setattr(response, attribute, value)
    with pytest.raises(ValueError):
        response.to_bytes()


# ---------------------------------------------------------------- client side


def test_build_request_exact():
    assert build_request("server.example.com", "/chat", KEY, subprotocols=["chat", "superchat"],
                         origin="http://example.com") == (
        b"GET /chat HTTP/1.1\r\n"
        b"Host: server.example.com\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: chat, superchat\r\n"
        b"Origin: http://example.com\r\n"
        b"\r\n"
    )


def test_build_request_minimal_and_extras():
    assert build_request("h:8080", "/?q=1", KEY, extensions="permessage-deflate",
                         headers=[("Cookie", "a=1")]) == (
        b"GET /?q=1 HTTP/1.1\r\n"
        b"Host: h:8080\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
        b"Cookie: a=1\r\n"
        b"\r\n"
    )


def test_build_request_passes_our_own_server_checks():
    request = parse_request(RequestHeadParser().feed(build_request("h", "/x", generate_key())))
    check_request(request)


@pytest.mark.parametrize("kwargs", [
    {"host": "h\r\nX-Evil: 1"},
    {"resource": "chat"},
    {"resource": "/chat HTTP/1.1\r\nX: 1"},
    {"origin": "http://o\r\n"},
    {"headers": [("X-A", "\n")]},
    {"subprotocols": ["a\r\nb"]},
])
def test_build_request_refuses(kwargs):
    args = {"host": "h", "resource": "/", "key": KEY, **kwargs}
    with pytest.raises(ValueError):
        build_request(args.pop("host"), args.pop("resource"), args.pop("key"), **args)


def response_head(lines):
    return ResponseHeadParser().feed(head_of(lines))


GOOD_101 = [
    "HTTP/1.1 101 Switching Protocols",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
]


def test_check_response_ok():
    assert check_response(response_head(GOOD_101), KEY) == (None, None)
    lines = replace(replace(GOOD_101, "Upgrade", "upgrade: WebSocket"), "Connection", "Connection: upgrade")
    assert check_response(response_head(lines), KEY) == (None, None)


def test_check_response_subprotocol_and_extensions():
    head = response_head(GOOD_101 + [
        "Sec-WebSocket-Protocol: superchat",
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover",
        "Sec-WebSocket-Extensions: x-foo",
    ])
    assert check_response(head, KEY, subprotocols_offered=("chat", "superchat"), extensions_offered=True) == (
        "superchat",
        "permessage-deflate; server_no_context_takeover, x-foo",
    )


def test_check_response_non_101_keeps_status():
    head = response_head(["HTTP/1.1 403 Forbidden", "Content-Length: 0"])
    with pytest.raises(HandshakeError) as info:
        check_response(head, KEY)
    assert info.value.status == 403
    assert "403 Forbidden" in str(info.value)
    assert info.value.response == b""


@pytest.mark.parametrize("lines, kwargs, words", [
    pytest.param(replace(GOOD_101, "Upgrade"), {}, "Upgrade", id="no-upgrade"),
    pytest.param(replace(GOOD_101, "Upgrade", "Upgrade: h2c"), {}, "Upgrade", id="other-upgrade"),
    pytest.param(replace(GOOD_101, "Connection"), {}, "Connection", id="no-connection"),
    pytest.param(replace(GOOD_101, "Sec-WebSocket-Accept"), {}, "Sec-WebSocket-Accept", id="no-accept"),
    pytest.param(replace(GOOD_101, "Sec-WebSocket-Accept", "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzo+p0kMaTKxk="),
                 {}, "Sec-WebSocket-Accept", id="wrong-accept"),
    pytest.param(GOOD_101 + ["Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="], {},
                 "Sec-WebSocket-Accept", id="two-accepts"),
    pytest.param(GOOD_101 + ["Sec-WebSocket-Protocol: chat"], {}, "not offered", id="protocol-none-offered"),
    pytest.param(GOOD_101 + ["Sec-WebSocket-Protocol: other"], {"subprotocols_offered": ["chat"]},
                 "not offered", id="protocol-not-offered"),
    pytest.param(GOOD_101 + ["Sec-WebSocket-Protocol: chat, superchat"],
                 {"subprotocols_offered": ["chat", "superchat"]}, "several", id="two-protocols"),
    pytest.param(GOOD_101 + ["Sec-WebSocket-Extensions: permessage-deflate"], {}, "extensions",
                 id="extensions-not-offered"),
])
def test_check_response_failures(lines, kwargs, words):
    with pytest.raises(HandshakeError) as info:
        check_response(response_head(lines), KEY, **kwargs)
    assert info.value.status == 101
    assert words in str(info.value)


# -- Request keeps only what was sent (issue 4: memory per idle connection) --


def test_request_stores_the_head_and_derives_the_rest():
    request = request_of(MINIMAL + ["Cookie: a=1; b=\"2\"", "Sec-WebSocket-Extensions: x, y"])
    assert not hasattr(request, "__dict__")  # slotted
    assert request._stored is None  # nothing derived is kept...
    assert (request.host, request.key, request.version) == ("example.com", KEY, 13)
    assert request.extensions == ["x", "y"]
    assert Request.extensions.peek(request) == ["x", "y"]
    peeked = Request(headers=Headers([("Sec-WebSocket-Extensions", "z")]))
    assert Request.extensions.peek(peeked) == ["z"] and peeked._stored is None
    request.headers.set("Host", "other.example")  # ... so it follows the headers
    assert request.host == "other.example"
    assert request.cookies == {"a": "1", "b": "2"}


def test_request_mutable_attributes_keep_in_place_changes():
    request = request_of(replace(MINIMAL, "Sec-WebSocket-Version") + ["Sec-WebSocket-Version: 13",
                                                                      "Sec-WebSocket-Protocol: a"])
    request.subprotocols.append("b")
    request.cookies["c"] = "3"
    assert request.subprotocols == ["a", "b"] and request.cookies == {"c": "3"}


def test_request_given_or_assigned_values_win_over_the_headers():
    request = Request(resource_name="/x?y=1", host="given", version=8, subprotocols=["p"],
                      headers=Headers([("Host", "header"), ("Sec-WebSocket-Version", "13")]))
    assert (request.path, request.query) == ("/x", "y=1")
    assert (request.host, request.version, request.subprotocols) == ("given", 8, ["p"])
    request.origin = "http://o"
    request.path = "/elsewhere"
    assert (request.origin, request.path, request.resource_name) == ("http://o", "/elsewhere", "/x?y=1")
    # A bare Request has the defaults the dataclass had.
    bare = Request()
    assert (bare.method, bare.resource_name, bare.path, bare.query, bare.host, bare.origin,
            bare.key, bare.version, bare.subprotocols, bare.extensions, bare.cookies,
            bare.peer, bare.http_version) == ("GET", "/", "/", "", None, None, None, None,
                                              [], [], {}, None, "HTTP/1.1")
    assert bare == Request() and bare != request
    assert repr(bare).startswith("Request(method='GET', resource_name='/', path='/'")
