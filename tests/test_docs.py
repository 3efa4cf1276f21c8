"""The docs are true to the code: every public name is in docs/api.md.

"Public" is read from the live objects, not from a list kept here: the names
in ``evws.__all__``, and for the main classes every public method, property,
dataclass field and instance attribute of a real instance (pyee's inherited
``EventEmitter`` methods excepted: api.md names them once, as a group).
"""

from __future__ import annotations

import pathlib
import re

import pyee
import pytest

import evws

ROOT = pathlib.Path(__file__).resolve().parent.parent
API = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")


def section(name: str) -> str:
    """The text of api.md's ``## `name``` section."""
    match = re.search(rf"^## `{re.escape(name)}`\n(.*?)(?=^## |\Z)", API, re.M | re.S)
    assert match, f"docs/api.md has no section for {name}"
    return match.group(1)


def public_names(obj: object, cls: type) -> set[str]:
    names = set()
    for klass in cls.__mro__:
        if klass in (object, pyee.EventEmitter) or klass.__module__.startswith("pyee"):
            continue
        names |= {n for n in vars(klass) if not n.startswith("_")}
    names |= {n for n in vars(obj) if not n.startswith("_")} if hasattr(obj, "__dict__") else set()
    # pyee's own API (evws.emitter implements it) is documented once, in the intro.
    return names - set(vars(pyee.EventEmitter))


@pytest.mark.parametrize("name", [n for n in evws.__all__])
def test_every_exported_name_has_a_section(name):
    text = section(name)
    assert text.strip(), name
    obj = getattr(evws, name)
    if callable(obj) and getattr(obj, "__doc__", None):
        # the docstring's first line is in the section: generated from the code
        first = obj.__doc__.strip().splitlines()[0].strip()
        assert first in text, f"{name}: api.md is stale (run python3 docs/gen_api.py)"


@pytest.fixture
def instances(loop):
    server_side, client_side = evws.connection_pair(loop)
    cv = evws.CondVar(loop)
    listener = evws.tcp_server("127.0.0.1", 0, lambda *a: None, loop=loop)
    objects = {
        "Server": evws.Server(loop=loop),
        "Connection": server_side,
        "CondVar": cv,
        "Loop": loop,
        "Message": evws.Message("x"),
        "Request": evws.Request(),
        "Response": evws.Response(),
        "Client": evws.Client(),
        "TcpServer": listener,
    }
    yield objects
    listener.close()
    client_side.close()
    server_side.close()


def test_every_public_member_of_the_main_classes_is_documented(instances):
    missing = []
    for name, obj in instances.items():
        text = section(name)
        for member in sorted(public_names(obj, type(obj))):
            if f"`{name}.{member}" not in text:
                missing.append(f"{name}.{member}")
    assert missing == [], "run python3 docs/gen_api.py, or document these: " + ", ".join(missing)


def test_connection_events_and_pyee_methods_are_named():
    for word in ("each_message", "next_message", "parse_error", "finish", "remove_listener", "once"):
        assert f"`{word}" in API, word


def test_guides_exist_and_cover_their_topics():
    guide = (ROOT / "docs" / "guide.md").read_text(encoding="utf-8")
    for topic in ("get_loop", "CondVar", "Server(", "evws.connect(", "ssl_cert_file",
                  "permessage-deflate", "connection_pair", "evws.wsgi", "max_payload_size",
                  "high_water", "drain", "python -m evws", "evws.reconnecting(",
                  "max_redirects", "require_subprotocol"):
        assert topic in guide, topic
    porting = (ROOT / "docs" / "porting.md").read_text(encoding="utf-8")
    assert porting.count("```perl") >= 3 and porting.count("```python") >= 3
    assert "establish_psgi" in porting and "establish_wsgi" in porting


def test_python_examples_in_the_guides_compile():
    """Every ```python block of the guides is valid Python (they are run by hand)."""
    for doc in ("guide.md", "porting.md"):
        text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
        blocks = re.findall(r"```python\n(.*?)```", text, re.S)
        assert blocks, doc
        for i, block in enumerate(blocks):
            compile(block, f"{doc} block {i + 1}", "exec")
