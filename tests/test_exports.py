"""The public surface: every name of shared/API.md (server side) is importable from evws."""

import pathlib
import re

import evws

NAMES = ["Loop", "get_loop", "CondVar", "tcp_server", "Server", "Request", "Response",
         "Connection", "Message", "WebSocketError", "HandshakeError", "ProtocolError",
         "PayloadTooBig", "ConnectionClosed", "RecursiveWaitError", "RedirectError",
         "ReconnectPolicy", "ReconnectingClient", "reconnecting", "retryable", "ProxyError",
         "unix_server", "unix_connect", "Cancelled", "ConnectCancelled"]


def test_public_names():
    for name in NAMES:
        assert hasattr(evws, name), name
        assert name in evws.__all__, name


def test_one_error_tree():
    for name in ["HandshakeError", "ProtocolError", "PayloadTooBig", "ConnectionClosed",
                 "RecursiveWaitError", "InvalidUTF8", "WaitTimeout", "CroakError",
                 "RedirectError", "ProxyError", "Cancelled", "ConnectCancelled"]:
        assert issubclass(getattr(evws, name), evws.WebSocketError)
    assert issubclass(evws.RecursiveWaitError, RuntimeError)
    assert issubclass(evws.RedirectError, evws.HandshakeError)
    assert issubclass(evws.ConnectCancelled, evws.Cancelled)


def test_no_asyncio_in_the_package():
    root = pathlib.Path(evws.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+asyncio", text, re.M), path


def test_typed():
    assert (pathlib.Path(evws.__file__).parent / "py.typed").exists()
