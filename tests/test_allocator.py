"""evws.keep_freed_memory: the allocator setting a server program opts into (glibc's mallopt).

The effect is measured where it matters: the page faults of a real echo
server process (examples/echo_server.py) while it echoes 1 MiB messages on
four connections, with the setting (its default) and with --malloc-defaults.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys

import pytest

import evws
from evws.reactor import allocator
from tests import wire
from tests.servers import example_process

MIB = 1 << 20


def test_limit_is_checked():
    with pytest.raises(ValueError, match="between 1 MiB"):
        evws.keep_freed_memory(1000)
    with pytest.raises(ValueError):
        evws.keep_freed_memory(2**31)
    with pytest.raises(TypeError):
        evws.keep_freed_memory(64.0 * MIB)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        evws.keep_freed_memory(True)  # type: ignore[arg-type]


class _Libc:
    def __init__(self, answer: int | None) -> None:
        self.calls: list[tuple[int, int]] = []
        if answer is not None:
            def mallopt(param: int, value: int) -> int:
                self.calls.append((param, value))
                return answer
            self.mallopt = mallopt


def test_settings_given_to_mallopt(monkeypatch):
    libc = _Libc(1)
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: libc)
    assert evws.keep_freed_memory(8 * MIB) is True
    assert libc.calls == [(-1, 8 * MIB), (-3, 4 * MIB)]   # trim threshold, mmap threshold
    libc.calls.clear()
    assert evws.keep_freed_memory(256 * MIB)
    assert libc.calls == [(-1, 256 * MIB), (-3, 32 * MIB)]  # glibc's mmap threshold maximum


def test_other_c_libraries_change_nothing_and_say_so(monkeypatch):
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: _Libc(None))   # no mallopt (macOS)
    assert evws.keep_freed_memory() is False
    musl = _Libc(0)                                                          # a mallopt that refuses
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: musl)
    assert evws.keep_freed_memory() is False
    assert len(musl.calls) == 1


def _glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    except OSError:
        return False


def _minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[7])   # minflt: the 10th field of stat, the 8th after the command name


def _open(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(wire.upgrade_request(host=f"127.0.0.1:{port}"))
    head = b""
    while b"\r\n\r\n" not in head:
        more = sock.recv(4096)
        assert more, "closed during the handshake"
        head += more
    assert head.startswith(b"HTTP/1.1 101")
    assert head.endswith(b"\r\n\r\n")
    return sock


def _echo_round(socks: list[socket.socket], frame: bytes, reply_len: int) -> None:
    for sock in socks:
        sock.sendall(frame)
    for sock in socks:
        got = 0
        while got < reply_len:
            more = sock.recv(reply_len - got)
            assert more, "the server closed the connection"
            got += len(more)


def _faults_per_round(*flags: str) -> float:
    payload = os.urandom(MIB)
    frame = wire.frame(2, payload)
    reply_len = len(wire.frame(2, payload, mask=None))
    with example_process("echo_server.py", "--max-payload-size", "0", *flags) as (server, port):
        socks = [_open(port) for _ in range(4)]
        try:
            for _ in range(5):   # warm-up: the heap reaches its working size
                _echo_round(socks, frame, reply_len)
            before = _minor_faults(server.pid)
            for _ in range(20):
                _echo_round(socks, frame, reply_len)
            return (_minor_faults(server.pid) - before) / 20
        finally:
            for sock in socks:
                sock.close()


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc(), reason="needs Linux with glibc")
def test_echo_server_reuses_freed_memory_for_large_messages():
    # With glibc's defaults freed 1 MiB payloads are trimmed off the heap and
    # faulted in again (hundreds of faults per round of four); kept, the
    # same pages serve every message.
    kept = _faults_per_round()
    defaults = _faults_per_round("--malloc-defaults")
    assert kept < 20, kept
    assert defaults > 10 * max(kept, 5), (kept, defaults)

