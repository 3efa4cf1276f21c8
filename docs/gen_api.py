#!/usr/bin/env python3
"""Regenerate docs/api.md from evws's docstrings: ``python3 docs/gen_api.py``.

Why generated: a hand-kept reference drifts from the code; the docstrings are
where evws explains each name already. Every name in ``evws.__all__`` gets a
section with its signature and docstring; classes list their public methods
and properties, and the public attributes their ``__init__`` (or dataclass
fields) set, with the ``#:`` comment written above them, if any.
tests/test_docs.py checks that the result names everything public.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import pathlib
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import evws  # noqa: E402

INTRO = """\
# evws API reference

Generated from the docstrings by `python3 docs/gen_api.py`; do not edit by hand.
Every name below is importable from `evws` directly. For a tour, read
[the guide](guide.md); coming from Perl, read [the porting guide](porting.md).

`Connection` is a [pyee](https://pyee.readthedocs.io/) `EventEmitter`: besides what is
listed here it has pyee's `on`, `once`, `add_listener`, `remove_listener`,
`remove_all_listeners`, `listeners`, `event_names` and `emit`. Its events (the names of
AnyEvent::WebSocket::Connection): `each_message(conn, message)` for every message,
`next_message(conn, message)` for the next one only, `parse_error(conn, text)` once when the
peer broke the protocol, and `finish(conn)` exactly once when the connection is done (the
reason, if any, is `conn.close_error`). A client-side connection also has `response`, the
server's 101 answer (`status`, `headers`).
"""


def _doc(obj: object) -> str:
    doc = inspect.getdoc(obj)
    return doc.strip() if doc else "(no docstring)"


def _signature(name: str, obj: object) -> str:
    for eval_str in (True, False):  # evaluated annotations read better than strings
        try:
            sig = inspect.signature(obj, eval_str=eval_str)  # type: ignore[arg-type]
        except (TypeError, ValueError, NameError):
            continue
        text = f"{name}{sig}".replace("typing.", "")
        # Defaults whose repr holds a memory address (a sentinel object, a
        # function) would change on every run: show them without it.
        return _ADDRESS.sub(">", text)
    return name


_ADDRESS = re.compile(r" at 0x[0-9a-f]+>")


def _init_attributes(cls: type) -> list[tuple[str, str]]:
    """(name, comment) for public ``self.X = ...`` in __init__ and dataclass fields."""
    found: dict[str, str] = {}
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if not f.name.startswith("_"):
                found[f.name] = ""
    init = cls.__dict__.get("__init__")
    if init is not None and not dataclasses.is_dataclass(cls):
        try:
            source = textwrap.dedent(inspect.getsource(init))
        except (OSError, TypeError):
            source = ""
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)) if source else ():
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                        and target.value.id == "self" and not target.attr.startswith("_")):
                    above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
                    comment = above[2:].strip() if above.startswith("#:") else ""
                    if comment or target.attr not in found:
                        found[target.attr] = comment
    return sorted(found.items())


def _class_section(name: str, cls: type) -> list[str]:
    out = [f"## `{name}`", "", "```python", f"class {_signature(name, cls)}", "```", "",
           _doc(cls), ""]
    members = []
    own: dict[str, object] = {}
    for klass in reversed(cls.__mro__):  # evws base classes too (Emitter's extras)
        if klass.__module__.startswith("evws"):
            own.update(vars(klass))
    import pyee
    for attr, value in own.items():
        if attr.startswith("_") or attr in vars(pyee.EventEmitter):
            continue
        if isinstance(value, property):
            members.append((attr, f"`{name}.{attr}` (property)", _doc(value.fget)))
        elif inspect.isfunction(value):
            members.append((attr, f"`{name}.{_signature(attr, value)}`", _doc(value)))
    documented = {attr for attr, _title, _doc in members}
    attributes = dict(_init_attributes(cls))
    for attr in cls.__dict__:  # slots and other plain class-level attributes
        if not attr.startswith("_") and attr not in documented:
            attributes.setdefault(attr, "")
    attributes_list = sorted((a, c) for a, c in attributes.items() if a not in documented)
    if attributes_list:
        out += ["**Attributes**", ""]
        for attr, comment in attributes_list:
            out.append(f"- `{name}.{attr}`" + (f": {comment}" if comment else ""))
        out.append("")
    for _attr, title, doc in members:
        out += [f"### {title}", "", doc, ""]
    return out


def generate() -> str:
    out = [INTRO]
    for name in evws.__all__:
        obj = getattr(evws, name)
        if name == "__version__":
            out += ["## `__version__`", "", f"The version string (`{obj}`).", ""]
        elif inspect.isclass(obj):
            out += _class_section(name, obj)
        else:
            out += [f"## `{name}`", "", "```python", _signature(name, obj), "```", "", _doc(obj), ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    (ROOT / "docs" / "api.md").write_text(generate(), encoding="utf-8")
