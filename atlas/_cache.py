"""The one per-process cache: what a process builds once and reuses across units or calls.

One rule invalidates every entry: a value is cached under a *kind* (``"grid.means"``,
``"manifest"``, ...) together with a *key* that names everything the value depends on (the
run directory, the fingerprint its input finished with, a file's size and mtime, ...). Each
kind holds one entry; asking with another key builds the value anew and replaces it, so a
redone input (new fingerprint) or another run is never served a stale value, and memory
stays bounded by the number of kinds.

Usage::

    means = cached("grid.means", (run_dir, fingerprint), lambda: load(path))
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

__all__ = ["cached", "clear_cache"]

T = TypeVar("T")

_ENTRIES: dict[str, tuple[Hashable, Any]] = {}
_LOCK = threading.Lock()


def cached(kind: str, key: Hashable, make: Callable[[], T]) -> T:
    """The value ``make()`` built for ``key`` under ``kind``; built (and the kind's old entry
    dropped) when the kind holds another key or none."""
    with _LOCK:
        entry = _ENTRIES.get(kind)
        if entry is not None and entry[0] == key:
            value: T = entry[1]
            return value
        _ENTRIES.pop(kind, None)  # free the old value before building the new one
    value = make()
    with _LOCK:
        _ENTRIES[kind] = (key, value)
    return value


def clear_cache(kind: str | None = None) -> None:
    """Drop one kind's entry, or every entry (``kind=None``)."""
    with _LOCK:
        if kind is None:
            _ENTRIES.clear()
        else:
            _ENTRIES.pop(kind, None)
