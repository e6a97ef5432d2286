"""One process-wide cache of loaded models, shared by every component that loads one.

Encoders, SPLADE, late-interaction token encoders and causal-LM engines all load heavy weights on first
use and keep them for the process. They share this one loader rather than a dict and a lock each: a model
is loaded once per key even when threads ask for it at the same time (a per-key lock, so loading one
model does not hold up another), and a failed load leaves nothing cached, so the next call tries again.

    >>> from rag.shared import shared_model
    >>> shared_model(("demo", 1), lambda: object()) is shared_model(("demo", 1), lambda: object())
    True
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Hashable, TypeVar

T = TypeVar("T")

_LOADED: dict[Hashable, Any] = {}
_KEY_LOCKS: dict[Hashable, threading.Lock] = {}
_GUARD = threading.Lock()  # guards the two dicts above, never held while loading


def shared_model(key: Hashable, load: Callable[[], T]) -> T:
    """The object cached under ``key``, built by ``load()`` on first request (once, even across threads)."""
    with _GUARD:
        if key in _LOADED:
            return _LOADED[key]
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:
        with _GUARD:
            if key in _LOADED:
                return _LOADED[key]
        value = load()
        with _GUARD:
            _LOADED[key] = value
        return value


def forget(key: Hashable) -> bool:
    """Drop a cached object (its memory is freed once nothing else holds it); True if one was cached."""
    with _GUARD:
        _KEY_LOCKS.pop(key, None)
        return _LOADED.pop(key, None) is not None


def cached_keys() -> list[Hashable]:
    """Keys of everything cached now (for tests and diagnostics)."""
    with _GUARD:
        return list(_LOADED)
