"""Group items into batches by count, bytes and time, for transports that
charge per request (e.g. Globus Compute's rate and payload limits)."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from faas.client.threads import guarded
from faas.errors import ClientError

T = TypeVar("T")


class Batcher(Generic[T]):
    """Calls ``send(batch)`` on its own thread with batches of at most
    ``max_items`` items and ``max_bytes`` bytes (an item larger than that goes
    alone). A batch goes as soon as it is full, or ``window`` seconds after its
    first item arrived, so a burst of submissions becomes few batches and a
    lone one waits no longer than the window. Whatever raises on the thread
    (``send`` included: it owns its items' fate) ends it, and ``on_fatal``
    hears of it (:func:`faas.client.threads.guarded`).
    """

    def __init__(self, send: Callable[[list[T]], None], *, window: float, max_items: int, max_bytes: int,
                 name: str = "faas-batcher", on_fatal: Callable[[ClientError], None] = lambda error: None):
        if window < 0 or max_items < 1 or max_bytes < 1:
            raise ValueError("window must be >= 0, max_items and max_bytes >= 1")
        self.window, self.max_items, self.max_bytes = window, max_items, max_bytes
        self._send = send
        self._cond = threading.Condition()
        self._ready: collections.deque[list[T]] = collections.deque()
        self._open: list[T] = []
        self._open_bytes = 0
        self._open_shared: set[Hashable] = set()
        self._opened_at = 0.0
        self._closed = False
        self._thread = threading.Thread(target=guarded(f"the {name} thread", self._run, on_fatal), name=name,
                                        daemon=True)
        self._thread.start()

    def add(self, item: T, nbytes: int, shared: tuple[Hashable, int] | None = None) -> None:
        """Queue ``item`` of ``nbytes`` bytes. ``shared`` = (key, bytes) is a
        part that items with the same key carry once per batch (a function's
        body shipped beside its invocations)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("cannot add to a closed batcher")
            if self._open and self._open_bytes + self._cost(nbytes, shared) > self.max_bytes:
                self._cut()
            if not self._open:
                self._opened_at = time.monotonic()
            self._open_bytes += self._cost(nbytes, shared)
            self._open.append(item)
            if shared is not None:
                self._open_shared.add(shared[0])
            if len(self._open) >= self.max_items:
                self._cut()
            self._cond.notify()

    def flush(self) -> None:
        """Send the open batch now instead of at the end of its window."""
        with self._cond:
            if self._open:
                self._cut()
                self._cond.notify()

    def close(self) -> None:
        """Send what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _cost(self, nbytes: int, shared: tuple[Hashable, int] | None) -> int:
        return nbytes + (shared[1] if shared is not None and shared[0] not in self._open_shared else 0)

    def _cut(self) -> None:
        self._ready.append(self._open)
        self._open, self._open_bytes, self._open_shared = [], 0, set()

    def _next(self) -> list[T] | None:
        with self._cond:
            while not self._ready:
                if self._open:
                    remaining = self._opened_at + self.window - time.monotonic()
                    if remaining <= 0 or self._closed:
                        self._cut()
                    else:
                        self._cond.wait(remaining)
                elif self._closed:
                    return None
                else:
                    self._cond.wait()
            return self._ready.popleft()

    def _run(self) -> None:
        while (batch := self._next()) is not None:
            self._send(batch)
