"""A byte-bounded least-recently-used map, for function bodies (kept by the
daemon and by each worker loop, which must not grow with every function ever
submitted)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class ByteLRU:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> bytes | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: bytes, keep: Iterable[str] = ()) -> list[str]:
        """Add (or refresh) ``key``; returns the keys evicted to fit, least
        recently used first, never ``key`` itself nor those in ``keep``."""
        old = self._items.pop(key, None)
        if old is not None:
            self.nbytes -= len(old)
        self._items[key] = value
        self.nbytes += len(value)
        if self.nbytes <= self.max_bytes:
            return []
        spared = {key, *keep}
        evicted = []
        for victim in list(self._items):
            if self.nbytes <= self.max_bytes:
                break
            if victim not in spared:
                self.nbytes -= len(self._items.pop(victim))
                evicted.append(victim)
        return evicted
