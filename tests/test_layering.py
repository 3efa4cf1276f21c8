"""The layers talk through public seams only.

An underscore name belongs to the module that defines it: another module may
not read or write it (``protocol._out`` from connection.py, ``cv._error``
from server.py...). The one exception is a subclass using, through ``self``,
what its evws base classes define (protected members, e.g. ServerProtocol
and WebSocketProtocol). And ``Connection`` uses pyee only through its public
API: it implements every public ``EventEmitter`` method itself, on its own
storage, and pyee's private attributes never exist on it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib

import pyee

import evws
from evws.emitter import Emitter

ROOT = pathlib.Path(evws.__file__).parent

# Names of other projects that start with an underscore but are theirs to
# use: typeshed's types of zlib's compress/decompress objects (annotations
# only), and os._exit, the documented way for a forked child to end.
ALLOWED = {"_Compress", "_Decompress", "_exit"}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _defined_names(tree: ast.AST) -> set[str]:
    """Underscore names a module defines: functions, classes, assigned
    attributes and names, slots, parameters."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name)
    return {n for n in names if n.startswith("_")}


_TREES = {path: ast.parse(path.read_text(encoding="utf-8")) for path in ROOT.rglob("*.py")}
_DEFINED = {_module_name(path): _defined_names(tree) for path, tree in _TREES.items()}


def _inherited(module: str, class_name: str) -> set[str]:
    """What a class may use through ``self`` from its evws base classes."""
    cls = getattr(importlib.import_module(module), class_name, None)
    names: set[str] = set()
    for base in getattr(cls, "__mro__", ())[1:]:
        if base.__module__.startswith("evws"):
            names |= _DEFINED.get(base.__module__, set())
    return names


def _attributes_by_class(tree: ast.AST):
    """Yield (innermost enclosing class name or None, Attribute node)."""
    def walk(node: ast.AST, cls: str | None):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                yield from walk(child, child.name)
            else:
                if isinstance(child, ast.Attribute):
                    yield cls, child
                yield from walk(child, cls)
    yield from walk(tree, None)


def _violations() -> list[str]:
    found = []
    for path, tree in _TREES.items():
        module = _module_name(path)
        own = _DEFINED[module]
        where = path.relative_to(ROOT.parent)
        for cls, node in _attributes_by_class(tree):
            name = node.attr
            if not name.startswith("_") or name.startswith("__") or name in ALLOWED or name in own:
                continue
            on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if on_self and cls is not None and name in _inherited(module, cls):
                continue
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if (alias.name.startswith("_") and not alias.name.startswith("__")
                            and alias.name != "_speedups"):
                        found.append(f"{where}:{node.lineno}: imports {alias.name}")
    return sorted(set(found))


def test_no_module_uses_another_modules_underscore_names():
    assert _violations() == []


def test_the_checker_catches_a_private_read(tmp_path, monkeypatch):
    """The rule is not vacuous: a read of ``cv._error`` from another module is found."""
    tree = ast.parse("def f(cv):\n    return cv._error\n")
    monkeypatch.setitem(_TREES, ROOT / "fake_module.py", tree)
    monkeypatch.setitem(_DEFINED, "evws.fake_module", _defined_names(tree))
    assert any("cv._error" in v for v in _violations())


def test_emitter_implements_every_public_pyee_method():
    public = {name for name, value in vars(pyee.EventEmitter).items()
              if not name.startswith("_") and callable(value)}
    assert public, "pyee.EventEmitter has no public methods?"
    missing = sorted(name for name in public if name not in vars(Emitter))
    assert missing == [], f"pyee grew methods evws.emitter.Emitter does not implement: {missing}"


def test_connection_holds_no_pyee_private_storage(loop):
    server_side, client_side = evws.connection_pair(loop)
    try:
        assert isinstance(server_side, pyee.EventEmitter)
        assert "_events" not in vars(server_side) and "_lock" not in vars(server_side)
        seen = []
        server_side.on("new_listener", lambda event, f: seen.append(event))
        server_side.on("each_message", print)
        assert seen == ["each_message"]
    finally:
        client_side.close()
        server_side.close()


def test_keepalive_ticker_is_a_reactor_tool():
    """The ticker takes plain callables: the reactor knows nothing of connections."""
    source = inspect.getsource(importlib.import_module("evws.reactor.ticker"))
    assert "connection" not in source.split('"""', 2)[2].lower()
