"""The per-process registry of live contexts.

One :class:`WarmPool` lives in each worker process (and one in a client process
for direct local calls). It loads a context the first time an invocation needs
it, keeps it between invocations and client sessions, and releases it after an
idle timeout. Initialisation is serialised per context so that threads of one
process never load the same model twice.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from faas.warm_pool.spec import ContextSpec

log = logging.getLogger(__name__)


@dataclass
class ContextStats:
    key: str
    description: str
    inits: int = 0
    init_seconds: float = 0.0
    invocations: int = 0
    last_used: float = 0.0
    releases: int = 0


@dataclass
class InitEvent:
    """One initialisation attempt, reported back to the endpoint's store."""

    context_key: str
    description: str
    started_at: float
    seconds: float
    error: str | None = None


@dataclass
class _Entry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    value: Any = None
    loaded: bool = False
    busy: int = 0


class WarmPool:
    def __init__(self, idle_timeout: float | None = None):
        self.idle_timeout = idle_timeout
        self.stats: dict[str, ContextStats] = {}
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._events: list[InitEvent] = []
        self._reaper: threading.Thread | None = None

    def call(self, spec: ContextSpec, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Run ``fn(context, *args, **kwargs)`` with the warm context of ``spec``."""
        ctx = self.acquire(spec)
        try:
            return fn(ctx, *args, **kwargs)
        finally:
            self.release(spec)

    def acquire(self, spec: ContextSpec) -> Any:
        """Return the live context for ``spec``, loading it if needed.

        Callers must pair it with :meth:`release` so that idle release never
        tears down a context in use.
        """
        key = spec.key
        with self._lock:
            entry = self._entries.setdefault(key, _Entry())
            stats = self.stats.setdefault(key, ContextStats(key, spec.description))
            entry.busy += 1
        try:
            with entry.lock:
                if not entry.loaded:
                    self._load(spec, entry, stats)
        except BaseException:
            self.release(spec)
            raise
        stats.invocations += 1
        stats.last_used = time.time()
        return entry.value

    def release(self, spec: ContextSpec) -> None:
        with self._lock:
            self._entries[spec.key].busy -= 1
        self._start_reaper()

    def _load(self, spec: ContextSpec, entry: _Entry, stats: ContextStats) -> None:
        started = time.time()
        t0 = time.perf_counter()
        try:
            entry.value = spec.load()
        except BaseException:
            import traceback

            self._events.append(InitEvent(spec.key, spec.description, started, time.perf_counter() - t0,
                                          traceback.format_exc()))
            raise
        seconds = time.perf_counter() - t0
        entry.loaded = True
        stats.inits += 1
        stats.init_seconds += seconds
        self._events.append(InitEvent(spec.key, spec.description, started, seconds))
        log.info("initialised context %s in %.2fs", spec.description, seconds)

    def drain_events(self) -> list[InitEvent]:
        """Init events since the last call (the worker ships them with its results)."""
        with self._lock:
            events, self._events = self._events, []
        return events

    def release_idle(self, now: float | None = None) -> list[str]:
        """Tear down contexts unused for longer than the idle timeout."""
        if self.idle_timeout is None:
            return []
        now = time.time() if now is None else now
        with self._lock:
            idle = [k for k, e in self._entries.items()
                    if e.loaded and e.busy == 0 and now - self.stats[k].last_used > self.idle_timeout]
            for k in idle:
                self._teardown(k)
        return idle

    def teardown(self) -> None:
        with self._lock:
            for k in [k for k, e in self._entries.items() if e.loaded]:
                self._teardown(k)

    def _teardown(self, key: str) -> None:
        entry = self._entries.pop(key)
        close = getattr(entry.value, "close", None)
        if callable(close):
            try:
                close()
            except Exception:
                log.exception("closing context %s failed", key)
        entry.value = None
        self.stats[key].releases += 1
        gc.collect()
        torch = sys.modules.get("torch")  # free GPU memory only if torch is already in use
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.info("released context %s", self.stats[key].description)

    def _start_reaper(self) -> None:
        if self.idle_timeout is None or self._reaper is not None:
            return
        self._reaper = threading.Thread(target=self._reap_forever, name="faas-warm-pool-reaper", daemon=True)
        self._reaper.start()

    def _reap_forever(self) -> None:
        while True:
            time.sleep(max(0.5, min(self.idle_timeout or 60, 60) / 4))
            self.release_idle()


_pool: WarmPool | None = None


def process_pool() -> WarmPool:
    """The warm pool of this process."""
    global _pool
    if _pool is None:
        _pool = WarmPool()
    return _pool
