"""``Emitter``: pyee's ``EventEmitter`` interface on storage small enough for many connections.

Why not pyee's own storage: pyee keeps an ``OrderedDict`` per event (~400
bytes) and a ``threading.Lock`` per emitter, and the echo example's two
listeners were the largest part of an idle connection. Why not pyee's
``emit`` on the per-message path: it takes that lock and copies the handlers
on every call.

So ``Emitter`` subclasses ``pyee.EventEmitter`` (a ``Connection`` *is* one,
as the API promises) but implements every public method itself --
``on``, ``listens_to``, ``add_listener``, ``once``, ``emit``,
``remove_listener``, ``remove_all_listeners``, ``listeners``,
``event_names`` -- with pyee's documented semantics (``new_listener``
fires before a listener is added; an unhandled ``error`` event raises;
``once`` listeners remove themselves before they run; registering a listener
again keeps its place), and honours pyee's documented extension point,
``_emit_run``. It never touches pyee's private attributes, so a pyee release
that changes them cannot break it; ``tests/test_emitter.py`` fails if pyee
grows a public method this class does not implement. A loop and its
emitters live in one thread, so there is no lock.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, MutableMapping, Optional, TypeVar, overload

from pyee import EventEmitter

try:  # pyee >= 12; 11 has only the older name
    from pyee.base import PyeeError as _Uncaught
except ImportError:  # pragma: no cover - pyee 11
    from pyee.base import PyeeException as _Uncaught  # type: ignore[assignment]

__all__ = ["Emitter", "Listener", "Listeners"]

Listener = Callable[..., Any]
_Handler = TypeVar("_Handler", bound=Callable[..., Any])


class Listeners(MutableMapping[Listener, Listener]):
    """One event's listeners (listener -> function to call), in registration order.

    A ``dict`` holding one listener costs ~220 bytes; this holds two tuples,
    the listeners and the functions to call (~100 bytes). An emitter has a
    handful of listeners, so the linear lookups cost nothing, and a change
    (rare) builds new tuples.
    """

    __slots__ = ("_keys", "functions")

    def __init__(self) -> None:
        self._keys: tuple[Listener, ...] = ()
        #: the functions to call, in order. A new tuple on every change, so
        #: iterating it is a snapshot without a copy: the per-message path
        #: (``Connection``) reads it instead of calling :meth:`values`.
        self.functions: tuple[Listener, ...] = ()

    def _index(self, key: Listener) -> int:
        try:
            return self._keys.index(key)
        except ValueError:
            raise KeyError(key) from None

    def __getitem__(self, key: Listener) -> Listener:
        return self.functions[self._index(key)]

    def __setitem__(self, key: Listener, value: Listener) -> None:
        try:
            i = self._index(key)
        except KeyError:
            self._keys += (key,)
            self.functions += (value,)
        else:
            functions = self.functions
            self.functions = functions[:i] + (value,) + functions[i + 1:]

    def __delitem__(self, key: Listener) -> None:
        i = self._index(key)
        keys, functions = self._keys, self.functions
        self._keys = keys[:i] + keys[i + 1:]
        self.functions = functions[:i] + functions[i + 1:]

    def __iter__(self) -> Iterator[Listener]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def values(self) -> list[Listener]:  # type: ignore[override]
        """The functions to call, in order: a new list (a snapshot)."""
        return list(self.functions)


class Emitter(EventEmitter):
    """pyee's public emitter API; see the module docstring for why it is reimplemented."""

    def __init__(self) -> None:
        # pyee's __init__ is not called on purpose: its storage is not used.
        self._handlers: dict[str, Listeners] = {}

    # -- registering -------------------------------------------------------------

    @overload
    def on(self, event: str) -> Callable[[_Handler], _Handler]: ...
    @overload
    def on(self, event: str, f: _Handler) -> _Handler: ...

    def on(self, event: str, f: Optional[_Handler] = None) -> Any:
        """Register ``f`` for ``event``; without ``f``, a decorator that does."""
        if f is None:
            return self.listens_to(event)
        return self.add_listener(event, f)

    def listens_to(self, event: str) -> Callable[[_Handler], _Handler]:
        """A decorator registering the decorated function for ``event``."""
        def register(f: _Handler) -> _Handler:
            self._add(event, f, f)
            return f
        return register

    def add_listener(self, event: str, f: _Handler) -> _Handler:
        """Register ``f`` for ``event``; returns ``f``."""
        self._add(event, f, f)
        return f

    def once(self, event: str, f: Optional[Callable[..., Any]] = None) -> Callable[..., Any]:
        """As :meth:`on`, but ``f`` is removed before its first call."""
        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            def call_once(*args: Any, **kwargs: Any) -> Any:
                handlers = self._handlers.get(event)
                if handlers is None or f not in handlers:
                    return None  # removed meanwhile
                self._remove(event, f)
                return f(*args, **kwargs)
            self._add(event, f, call_once)
            return f
        return register if f is None else register(f)

    def _add(self, event: str, key: Listener, value: Listener) -> None:
        # pyee: 'new_listener' fires *before* the listener is added.
        if "new_listener" in self._handlers:
            self.emit("new_listener", event, key)
        handlers = self._handlers.get(event)
        if handlers is None:
            handlers = self._handlers[event] = Listeners()
        handlers[key] = value

    # -- removing ----------------------------------------------------------------

    def remove_listener(self, event: str, f: Callable[..., Any]) -> None:
        """Remove ``f`` from ``event``; as in pyee, ``KeyError`` if the event has
        listeners but not ``f``, nothing if it has none."""
        self._remove(event, f)

    def _remove(self, event: str, f: Listener) -> None:
        handlers = self._handlers.get(event)
        if handlers is None:
            return
        del handlers[f]
        if not handlers:
            del self._handlers[event]

    def remove_all_listeners(self, event: Optional[str] = None) -> None:
        """Remove the listeners of ``event``, or of every event."""
        if event is None:
            self._handlers = {}
        else:
            self._handlers.pop(event, None)

    # -- reading -----------------------------------------------------------------

    def listeners(self, event: str) -> list[Callable[..., Any]]:
        """The listeners registered for ``event``, in order."""
        handlers = self._handlers.get(event)
        return list(handlers) if handlers else []

    def event_names(self) -> set[str]:
        """The events with listeners."""
        return set(self._handlers)

    def handlers(self, event: str) -> list[Listener]:
        """The functions :meth:`emit` would call for ``event``, in order (a snapshot).

        For a subclass's hot path that calls them itself; ``once`` listeners
        are their self-removing wrappers, so the semantics are kept.
        """
        handlers = self._handlers.get(event)
        if handlers is None:
            return []
        return handlers.values()

    def take_handlers(self, event: str) -> list[Listener]:
        """Remove every listener of ``event`` and return the functions to call, in order.

        For one-shot events (``next_message``): a listener registered by one
        of them belongs to the next emission, not this one.
        """
        handlers = self._handlers.pop(event, None)
        return handlers.values() if handlers is not None else []

    # -- emitting ----------------------------------------------------------------

    def emit(self, event: str, *args: Any, **kwargs: Any) -> bool:
        """Call the listeners of ``event``; True if there was any.

        As in pyee, an ``error`` event without listeners raises its argument
        (or pyee's ``PyeeError``).
        """
        handlers = self._handlers.get(event)
        if not handlers:
            if event == "error":
                error = args[0] if args else None
                if isinstance(error, Exception):
                    raise error
                raise _Uncaught(f"Uncaught, unspecified 'error' event: {error}")
            return False
        for f in handlers.values():
            self._emit_run(f, args, kwargs)
        return True

    def _emit_run(self, f: Callable[..., Any], args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> None:
        """pyee's extension point: how one listener is called (override to change it)."""
        f(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self.__dict__.update(state)
