"""The optional C extension evws._speedups: which path is active, how to force
the pure-Python one, and that setup.py survives a machine without a compiler.

The per-function behaviour of both paths is tested in tests/protocol/test_mask.py
and test_utf8.py; here we check the wiring around them.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

from evws.protocol import mask, utf8, websocket
from evws.protocol.events import ConnectionFailed, MessageReceived
from tests import wire

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = ROOT / "evws" / "_speedups.c"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _extension_importable() -> bool:
    try:
        import evws._speedups  # noqa: F401
    except ImportError:
        return False
    return True


def _python(code: str, **env: str) -> str:
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    out = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_accelerated_flags_tell_the_truth():
    assert isinstance(mask.ACCELERATED, bool) and isinstance(utf8.ACCELERATED, bool)
    expected = _extension_importable() and not os.environ.get("EVWS_NO_SPEEDUPS")
    assert mask.ACCELERATED is expected
    assert utf8.ACCELERATED is expected


@pytest.mark.skipif(_compiler() is None or bool(os.environ.get("EVWS_NO_SPEEDUPS")),
                    reason="no C compiler, or speedups switched off")
def test_extension_is_built_where_a_compiler_exists():
    # Guards against a silently broken build: setup.py only warns on failure.
    assert _extension_importable(), "evws._speedups missing: run `python3 -m pip install -e .`"


def test_environment_variable_forces_pure_python():
    out = _python("from evws.protocol import mask, utf8\n"
                  "print(mask.ACCELERATED, utf8.ACCELERATED, mask.apply_mask.__name__,"
                  " mask.unmask_into.__name__, utf8.Utf8Validator.__name__)",
                  EVWS_NO_SPEEDUPS="1")
    assert out == "False False _py_apply_mask _py_unmask_into _PyUtf8Validator"


PATHS = [pytest.param((mask._py_apply_mask, mask._py_unmask_into, utf8._PyUtf8Validator,
                       utf8._py_check_utf8), id="python")]
if mask.ACCELERATED:
    PATHS.append(pytest.param((mask._c_apply_mask, mask._c_unmask_into, utf8._CUtf8Validator,
                               utf8._c_check_utf8), id="c"))


@pytest.fixture(params=PATHS)
def protocol_path(request, monkeypatch):
    """Make the protocol state machine use one implementation of both loops."""
    apply_mask, unmask_into, validator, check = request.param
    monkeypatch.setattr(websocket, "apply_mask", apply_mask)
    monkeypatch.setattr(websocket, "unmask_into", unmask_into)
    monkeypatch.setattr(websocket, "Utf8Validator", validator)
    monkeypatch.setattr(websocket, "check_utf8", check)
    if unmask_into is not mask._c_unmask_into:
        monkeypatch.setattr(mask, "new_payload", None)  # C-only, pairs with C unmask_into
    return request.param


def _messages(proto: websocket.WebSocketProtocol) -> list:
    got = []
    while events := proto.events_received():
        got += [(e.opcode, e.payload) for e in events if isinstance(e, MessageReceived)]
    return got


@pytest.mark.parametrize("size", [0, 5, 125, 126, 4099, 70000])
def test_protocol_unmasks_any_split(protocol_path, size):
    payload = os.urandom(size)
    data = wire.frame(wire.BINARY, payload, mask=b"\x01\x82\xf3\x44")
    for step in (1, 3, 4096, len(data) or 1):
        proto = websocket.WebSocketProtocol(max_payload_size=None)
        for i in range(0, len(data), step):
            proto.receive_data(data[i:i + step])
        assert _messages(proto) == [(wire.BINARY, payload)]


def test_protocol_validates_fragmented_text(protocol_path):
    text = ("κόσμε €😀 " * 40).encode()
    frames = b"".join(wire.frame(wire.TEXT if i == 0 else wire.CONT, text[i:i + 7],
                                 fin=i + 7 >= len(text)) for i in range(0, len(text), 7))
    proto = websocket.WebSocketProtocol()
    for i in range(0, len(frames), 5):
        proto.receive_data(frames[i:i + 5])
    assert _messages(proto) == [(wire.TEXT, text)]


@pytest.mark.parametrize("whole", [True, False])
def test_protocol_fails_bad_text_with_1007(protocol_path, whole):
    bad = b"abc\xed\xa0\x80def"
    if whole:
        data = wire.frame(wire.TEXT, bad)
    else:  # fragmented: must fail at the fragment holding the surrogate
        data = wire.frame(wire.TEXT, bad[:5], fin=False)
    proto = websocket.WebSocketProtocol()
    proto.receive_data(data)
    events = []
    while batch := proto.events_received():
        events += batch
    failed = [e for e in events if isinstance(e, ConnectionFailed)]
    assert failed and failed[0].code == 1007


@pytest.mark.slow
def test_protocol_suite_passes_on_the_pure_python_path():
    # The whole sans-I/O suite with EVWS_NO_SPEEDUPS=1 (~5-12 s: slow).
    env = dict(os.environ, EVWS_NO_SPEEDUPS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          str(ROOT / "tests" / "protocol" / "test_websocket.py")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert " passed" in out.stdout


@pytest.mark.skipif(_compiler() is None, reason="no C compiler")
def test_extension_source_compiles_without_warnings(tmp_path):
    include = sysconfig.get_paths()["include"]
    out = subprocess.run([_compiler(), "-std=c99", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                          f"-I{include}", str(SOURCE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_setup_py_survives_a_failing_compiler(tmp_path):
    # A copy of the project where the "compiler" is /bin/false: the build must
    # warn, succeed, and leave no extension behind.
    shutil.copy(ROOT / "setup.py", tmp_path / "setup.py")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    (tmp_path / "evws").mkdir()
    shutil.copy(SOURCE, tmp_path / "evws" / "_speedups.c")
    (tmp_path / "evws" / "__init__.py").write_text("")
    false = shutil.which("false") or "false"
    env = dict(os.environ, CC=false, LDSHARED=false)
    env.pop("EVWS_NO_SPEEDUPS", None)  # that switch skips the build altogether
    out = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "evws C speedups not built" in out.stderr
    assert not list((tmp_path / "evws").glob("_speedups*.so"))
