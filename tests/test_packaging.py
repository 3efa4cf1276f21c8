"""Packaging: ``python -m build`` makes an sdist and a wheel that install and work.

Slow (a build, two fresh venvs, pip installs): deselected by default. Run it with

    python3 -m pip install build wheel && python3 -m pytest -q -m slow tests/test_packaging.py

The venvs are made with ``--system-site-packages`` so that ``pyee`` (the only
runtime dependency) resolves without the network when it is installed here;
``--force-reinstall --no-deps`` of evws then guarantees the evws under test is
the one from the artifact, never the source tree (the smoke test runs from a
temporary directory and checks ``evws.__file__``).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("build") is None,
                       reason="needs the 'build' package (pip install build)"),
]

SMOKE = r"""
import pathlib, sys, time
import evws, evws.cli, evws.wsgi  # noqa: F401 (wsgi needs the h11 extra only when serving)
here = pathlib.Path(evws.__file__).resolve()
assert "site-packages" in str(here), here
assert (here.parent / "py.typed").exists(), "py.typed not shipped"
loop = evws.Loop()
server_side, client_side = evws.connection_pair(loop)
server_side.on("each_message", lambda conn, message: conn.send(message))
got = []
client_side.on("each_message", lambda conn, message: got.append(message))
client_side.send("round trip")
client_side.send(b"\x00\x01")
deadline = time.monotonic() + 10
while len(got) < 2 and time.monotonic() < deadline:
    loop.run_once(0.05)
assert got == [evws.Message("round trip"), evws.Message(b"\x00\x01", opcode=2)], got
print("smoke ok", evws.__version__)
"""

PLUGIN_USER = r"""
import evws
from evws.testing import run_until

def test_echo(ws_pair):
    server_side, client_side = ws_pair()
    assert "site-packages" in evws.__file__
    server_side.on("each_message", lambda conn, message: conn.send(message))
    got = evws.CondVar()
    client_side.on("next_message", lambda conn, message: got.send(message.decoded_body))
    client_side.send("installed")
    assert run_until(got) == "installed"

def test_leaky(evws_loop):
    evws_loop.timer(60, lambda: None)
"""


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("dist")
    # Build from a copy: the build must not depend on (or write into) the work tree.
    src = tmp_path_factory.mktemp("src") / "evws"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", "*.so", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                   check=True, capture_output=True, timeout=300)
    return out


def test_sdist_holds_the_sources_docs_and_tests(dist):
    (sdist,) = dist.glob("evws-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for needed in ("setup.py", "README.md", "evws/__init__.py", "evws/py.typed", "evws/_speedups.c",
                   "evws/cli.py", "evws/__main__.py"):
        assert needed in names, needed


def test_wheel_holds_the_package_and_py_typed(dist):
    (wheel,) = dist.glob("evws-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    for needed in ("evws/__init__.py", "evws/py.typed", "evws/protocol/websocket.py",
                   "evws/reactor/loop.py", "evws/__main__.py"):
        assert needed in names, needed
    assert not any(n.startswith("tests/") for n in names), "tests leaked into the wheel"
    assert "Requires-Python: >=3.10" in metadata
    assert "Requires-Dist: pyee" in metadata
    with zipfile.ZipFile(wheel) as zf:
        entry_points = next(zf.read(n).decode() for n in zf.namelist()
                            if n.endswith(".dist-info/entry_points.txt"))
    assert "[pytest11]\nevws.testing = evws.testing" in entry_points


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_artifact_installs_into_a_fresh_venv_and_works(dist, tmp_path, kind):
    (artifact,) = dist.glob("evws-*.whl" if kind == "wheel" else "evws-*.tar.gz")
    # Without PYTHONPATH: a checkout on it (as when testing a work tree) would shadow the install.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, capture_output=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--no-build-isolation", "--no-deps",
                    "--force-reinstall", str(artifact)],
                   check=True, capture_output=True, timeout=300, env=env)
    result = subprocess.run([str(python), "-c", SMOKE], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert "smoke ok" in result.stdout
    help_text = subprocess.run([str(python), "-m", "evws", "connect", "--help"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=60, env=env)
    assert help_text.returncode == 0 and "--binary" in help_text.stdout
    # The pytest plugin loads itself from the installed entry point: no -p, no conftest.
    (tmp_path / "test_user.py").write_text(PLUGIN_USER)
    result = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert "2 passed, 1 error" in result.stdout, result.stdout + result.stderr  # test_leaky: error at teardown
    assert "left work behind" in result.stdout and "leaky.<locals>.<lambda>" in result.stdout
