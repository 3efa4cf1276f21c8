"""``Listeners``: compact listener storage for pyee emitters with many instances.

Why a module of its own: pyee keeps one ``dict`` per event and emitter; with
thousands of idle connections that storage was the largest part of each one.
``Connection`` installs this mapping instead; pyee's ``on``/``once``/
``remove_listener``/``listeners`` keep working because it is a ``MutableMapping``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, MutableMapping

__all__ = ["Listener", "Listeners"]

Listener = Callable[..., Any]


class Listeners(MutableMapping[Listener, Listener]):
    """One event's listeners for pyee (listener -> function to call), in one flat list.

    pyee keeps a mapping per event; a ``dict`` holding one listener costs
    ~220 bytes, and the echo example's two listeners were the largest part of
    an idle connection (issue 4). This holds ``[key, value, key, value...]``
    in registration order (~100 bytes). A connection has a handful of
    listeners, so the linear lookups cost nothing.
    """

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: list[Listener] = []

    def _index(self, key: Listener) -> int:
        items = self._items
        for i in range(0, len(items), 2):
            if items[i] == key:
                return i
        raise KeyError(key)

    def __getitem__(self, key: Listener) -> Listener:
        return self._items[self._index(key) + 1]

    def __setitem__(self, key: Listener, value: Listener) -> None:
        try:
            self._items[self._index(key) + 1] = value
        except KeyError:
            self._items += (key, value)

    def __delitem__(self, key: Listener) -> None:
        i = self._index(key)
        del self._items[i:i + 2]

    def __iter__(self) -> Iterator[Listener]:
        return iter(self._items[::2])

    def __len__(self) -> int:
        return len(self._items) >> 1

    def values(self) -> list[Listener]:  # type: ignore[override]
        """The functions to call, in order: a new list (a snapshot), fast to make."""
        return self._items[1::2]
