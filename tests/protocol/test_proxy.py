"""HTTP CONNECT without I/O: the request bytes, and the proxy's answer fed whole,
byte by byte, and with the tunnel's first bytes behind it."""

from __future__ import annotations

import base64

import pytest

from evws.errors import ProxyError
from evws.protocol.proxy import ConnectTunnel, basic_credentials, connect_request


def feed_bytewise(tunnel: ConnectTunnel, data: bytes) -> list[bool]:
    return [tunnel.receive_data(data[i:i + 1]) for i in range(len(data))]


def test_request_names_host_and_port_in_authority_form():
    assert connect_request("example.com", 443) == (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")


def test_request_brackets_ipv6():
    assert connect_request("::1", 8080).startswith(b"CONNECT [::1]:8080 HTTP/1.1\r\nHost: [::1]:8080\r\n")


def test_request_with_basic_credentials():
    request = connect_request("h", 80, proxy_authorization=basic_credentials("ann", "p@ss:wörd"))
    line = [x for x in request.split(b"\r\n") if x.startswith(b"Proxy-Authorization:")][0]
    token = line.split(b" ")[-1]
    assert line.startswith(b"Proxy-Authorization: Basic ")
    assert base64.b64decode(token) == "ann:p@ss:wörd".encode()


@pytest.mark.parametrize("host", ["exa mple.com", "a\r\nX-Evil: 1"])
def test_request_refuses_what_would_break_the_head(host):
    with pytest.raises(ValueError):
        connect_request(host, 80)


OK = b"HTTP/1.1 200 Connection established\r\nProxy-Agent: test\r\n\r\n"


def test_200_whole():
    tunnel = ConnectTunnel("example.com", 443)
    assert tunnel.receive_data(OK) is True
    assert tunnel.is_open and tunnel.response.status == 200
    assert tunnel.response.headers["Proxy-Agent"] == "test"
    assert tunnel.leftover == b""


def test_200_byte_by_byte():
    tunnel = ConnectTunnel("example.com", 443)
    results = feed_bytewise(tunnel, OK)
    assert results == [False] * (len(OK) - 1) + [True]
    assert tunnel.response.reason == "Connection established"


def test_200_with_trailing_tunnel_bytes_and_content_length_ignored():
    tunnel = ConnectTunnel("h", 80)
    head = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert tunnel.receive_data(head + b"\x16\x03\x01origin bytes") is True
    assert tunnel.leftover == b"\x16\x03\x01origin bytes"


def test_any_2xx_opens():
    assert ConnectTunnel("h", 80).receive_data(b"HTTP/1.1 204 No Content\r\n\r\n")


def test_interim_1xx_heads_are_skipped():
    tunnel = ConnectTunnel("h", 80)
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n" + OK + b"x"
    assert tunnel.receive_data(data) is True
    assert tunnel.response.status == 200 and tunnel.leftover == b"x"
    tunnel = ConnectTunnel("h", 80)
    assert feed_bytewise(tunnel, data[:-1])[-1] is True
    assert tunnel.response.status == 200 and tunnel.leftover == b""


@pytest.mark.parametrize("status, words", [
    (407, "no credentials sent"), (403, "403 Forbidden"), (502, "502 Bad Gateway")])
def test_refusals_are_typed(status, words):
    reasons = {407: "Proxy Authentication Required", 403: "Forbidden", 502: "Bad Gateway"}
    answer = (f"HTTP/1.1 {status} {reasons[status]}\r\nProxy-Authenticate: Basic realm=\"x\"\r\n"
              "Content-Length: 3\r\n\r\nno!").encode()
    tunnel = ConnectTunnel("example.com", 443)
    with pytest.raises(ProxyError) as info:
        tunnel.receive_data(answer)
    assert info.value.status == status
    assert info.value.headers["Proxy-Authenticate"] == 'Basic realm="x"'
    assert words in str(info.value) and "example.com:443" in str(info.value)
    assert not tunnel.is_open


def test_refusal_byte_by_byte_raises_once_the_head_is_complete():
    answer = b"HTTP/1.1 403 Forbidden\r\n\r\n"
    tunnel = ConnectTunnel("h", 80)
    for i in range(len(answer) - 1):
        assert tunnel.receive_data(answer[i:i + 1]) is False
    with pytest.raises(ProxyError) as info:
        tunnel.receive_data(answer[-1:])
    assert info.value.status == 403


def test_407_says_when_credentials_were_refused_or_the_scheme_is_not_basic():
    tunnel = ConnectTunnel("h", 80, proxy_authorization=basic_credentials("a", "b"))
    with pytest.raises(ProxyError, match="credentials of the proxy URL were refused"):
        tunnel.receive_data(b"HTTP/1.1 407 Nope\r\nProxy-Authenticate: Basic\r\n\r\n")
    tunnel = ConnectTunnel("h", 80)
    with pytest.raises(ProxyError, match="asks for Negotiate"):
        tunnel.receive_data(b"HTTP/1.1 407 Nope\r\nProxy-Authenticate: Negotiate\r\n\r\n")


@pytest.mark.parametrize("answer", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\nX: y\n\n"])
def test_not_http_is_a_proxy_error(answer):
    with pytest.raises(ProxyError, match="not valid HTTP") as info:
        ConnectTunnel("h", 80).receive_data(answer)
    assert info.value.status is None


def test_oversized_answer_is_a_proxy_error_before_it_is_buffered():
    tunnel = ConnectTunnel("h", 80, max_size=1024)
    with pytest.raises(ProxyError):
        tunnel.receive_data(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 2000)


def test_eof_before_the_answer():
    tunnel = ConnectTunnel("h", 80)
    tunnel.receive_data(b"HTTP/1.1 20")
    with pytest.raises(ProxyError, match="closed the connection") as info:
        tunnel.receive_eof()
    assert info.value.status is None


def test_after_the_tunnel_opened():
    tunnel = ConnectTunnel("h", 80)
    tunnel.receive_data(OK)
    tunnel.receive_eof()  # the origin's business now
    with pytest.raises(RuntimeError):
        tunnel.receive_data(b"more")
