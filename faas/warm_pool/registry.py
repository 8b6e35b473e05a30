"""The per-process registry of live contexts.

One :class:`WarmPool` lives in each worker process (and one in a client process
for direct local calls). It loads a context the first time an invocation needs
it, keeps it between invocations and client sessions, and releases it after an
idle timeout (except those the endpoint asks it to keep: the last holders of
contexts with work). Initialisation is serialised per context so that threads
of one process never load the same model twice.

Contexts share a memory budget: the GPU's memory when torch sees one, else a
configured RAM budget, which the worker's function bodies count in too. Each
context's footprint is measured when it loads (GPU memory allocated, or
resident memory gained); before a context with a known
footprint loads, and after any load, the least recently used idle contexts are
pushed out until the others fit. One pushed out is parked in host memory when
it can be (:mod:`faas.warm_pool.parking`; up to ``host_budget`` bytes, the
least recently used parked ones released first) and woken by a copy back when
next needed, instead of running its loader again; otherwise it is released.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from faas.warm_pool.parking import Parking, parking_for
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
    hits: int = 0  # acquisitions that found the context already loaded
    releases: int = 0  # teardowns for idleness or eviction
    evictions: int = 0  # teardowns to make room for another context
    footprint: int = 0  # bytes measured at the last load
    parks: int = 0  # moves to host memory to make room for another context
    wakes: int = 0  # moves back from host memory instead of a load
    wake_seconds: float = 0.0  # all wakes together
    host_bytes: int = 0  # host memory it holds while parked


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
    loaded: bool = False  # ready to use (on its device)
    parked: Parking | None = None  # in host memory: wakes by this
    busy: int = 0


GPU_BUDGET_FRACTION = 0.9  # of the GPU's memory, when no budget is configured
HOST_BUDGET_FRACTION = 0.5  # of the node's memory, shared by its workers, when no host budget is configured


class WarmPool:
    def __init__(self, idle_timeout: float | None = None, memory_budget: int | None = None,
                 host_budget: int | None = None):
        self.idle_timeout = idle_timeout
        self.memory_budget = memory_budget
        self.host_budget = host_budget  # bytes of parked contexts; None: a share of the node's memory; 0: none
        self.held_elsewhere = 0  # bytes of this process's own state under the same budget (function bodies)
        self.keep: set[str] = set()  # contexts never released for idleness (the endpoint says which)
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

    def preload(self, spec: ContextSpec) -> None:
        """Load (or wake) the context of ``spec`` now, before work needs it."""
        self.acquire(spec, invocation=False)
        self.release(spec)

    def acquire(self, spec: ContextSpec, invocation: bool = True) -> Any:
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
                if entry.loaded:
                    stats.hits += 1
                elif entry.parked is not None:
                    self._wake(spec, entry, stats)
                else:
                    self._load(spec, entry, stats)
        except BaseException:
            self.release(spec)
            raise
        stats.invocations += invocation
        stats.last_used = time.time()
        return entry.value

    def release(self, spec: ContextSpec) -> None:
        with self._lock:
            self._entries[spec.key].busy -= 1
        self._start_reaper()

    def _load(self, spec: ContextSpec, entry: _Entry, stats: ContextStats) -> None:
        self._make_room(spec.key, stats.footprint)
        on_gpu = _on_gpu()
        full = self.memory_budget is not None  # a RAM budget: the footprint decides evictions
        if not on_gpu:
            _free_heap(full)
        started = time.time()
        t0 = time.perf_counter()
        before = _memory_in_use(on_gpu)
        try:
            entry.value = spec.load()
        except BaseException:
            import traceback

            self._events.append(InitEvent(spec.key, spec.description, started, time.perf_counter() - t0,
                                          traceback.format_exc()))
            raise
        seconds = time.perf_counter() - t0
        if not on_gpu and _on_gpu():  # the loader brought torch in: nothing of it was on the GPU before
            on_gpu, before = True, 0
        if not on_gpu:
            _free_heap(full)  # the loader's temporaries are not the context's
        stats.footprint = max(0, _memory_in_use(on_gpu) - before)
        with self._lock:
            entry.loaded = True
        self._make_room(spec.key, 0)
        stats.inits += 1
        stats.init_seconds += seconds
        self._events.append(InitEvent(spec.key, spec.description, started, seconds))
        log.info("initialised context %s in %.2fs", spec.description, seconds)

    def _wake(self, spec: ContextSpec, entry: _Entry, stats: ContextStats) -> None:
        """Copy a parked context back; if that fails, load it afresh."""
        self._make_room(spec.key, stats.footprint)
        t0 = time.perf_counter()
        try:
            entry.parked.wake()
        except Exception:
            log.exception("waking context %s failed; loading it again", spec.description)
            with self._lock:
                entry.parked, stats.host_bytes = None, 0
            _close(spec.key, entry.value)
            entry.value = None
            self._load(spec, entry, stats)
            return
        seconds = time.perf_counter() - t0
        with self._lock:
            entry.parked, entry.loaded, stats.host_bytes = None, True, 0
        stats.wakes += 1
        stats.wake_seconds += seconds
        log.info("woke context %s from host memory in %.3fs", spec.description, seconds)

    def budget(self) -> int | None:
        if self.memory_budget is not None:
            return self.memory_budget
        if _on_gpu():
            return int(sys.modules["torch"].cuda.mem_get_info()[1] * GPU_BUDGET_FRACTION)
        return None

    def host_room(self) -> int:
        """Bytes of host memory parked contexts may hold."""
        if self.host_budget is not None:
            return self.host_budget
        import psutil

        workers = int(os.environ.get("PARSL_WORKER_COUNT") or 1)  # the workers sharing this node
        return int(psutil.virtual_memory().total * HOST_BUDGET_FRACTION / max(1, workers))

    def _make_room(self, keep: str, need: int) -> None:
        """Push least recently used idle contexts (never ``keep``) off the
        device until the loaded ones plus ``need`` bytes fit the budget: each is
        parked where it can be, else released."""
        budget = self.budget()
        if budget is None:
            return
        with self._lock:
            while True:
                loaded = {k: e for k, e in self._entries.items() if e.loaded and k != keep}
                used = need + self.held_elsewhere + sum(self.stats[k].footprint for k in loaded)
                if keep in self._entries and self._entries[keep].loaded:
                    used += self.stats[keep].footprint
                idle = [k for k, e in loaded.items() if e.busy == 0]
                if used <= budget or not idle:
                    return
                victim = min(idle, key=lambda k: self.stats[k].last_used)
                self.stats[victim].evictions += 1
                if not self._park(victim):
                    log.info("evicting context %s to make room", self.stats[victim].description)
                    self._teardown(victim)

    def _park(self, key: str) -> bool:
        """Move an idle loaded context to host memory, making room there by
        releasing the least recently used parked ones; False: it cannot be parked."""
        entry, stats = self._entries[key], self.stats[key]
        parking = parking_for(entry.value)
        if parking is None or not self._fit_host(stats.host_bytes or stats.footprint, besides=key):
            return False
        t0 = time.perf_counter()
        try:
            held = parking.park()
        except Exception:
            log.exception("parking context %s failed; releasing it", stats.description)
            return False
        entry.loaded, entry.parked = False, parking
        stats.host_bytes = stats.footprint if held is None else held
        stats.parks += 1
        log.info("parked context %s in host memory (%d MB) in %.3fs", stats.description, stats.host_bytes >> 20,
                 time.perf_counter() - t0)
        if not self._fit_host(0, besides=key):  # it turned out larger than it was thought
            self._teardown(key)
        return True

    def _fit_host(self, need: int, besides: str) -> bool:
        """Release idle parked contexts, least recently used first (never
        ``besides``), until ``need`` more bytes fit the host budget."""
        room = self.host_room()
        if need > room:
            return False
        while True:
            parked = {k: e for k, e in self._entries.items() if e.parked is not None and k != besides}
            if need + sum(self.stats[k].host_bytes for k in parked) <= room:
                return True
            idle = [k for k, e in parked.items() if e.busy == 0]
            if not idle:
                return False
            victim = min(idle, key=lambda k: self.stats[k].last_used)
            log.info("releasing parked context %s to make room in host memory", self.stats[victim].description)
            self._teardown(victim)

    def loaded(self, key: str) -> bool:
        with self._lock:
            return key in self._entries and self._entries[key].loaded

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per-context statistics, and whether each context is loaded now or parked."""
        with self._lock:
            return {k: dict(vars(st), loaded=k in self._entries and self._entries[k].loaded,
                            parked=k in self._entries and self._entries[k].parked is not None)
                    for k, st in self.stats.items()}

    def has_events(self) -> bool:
        """Whether a context was initialised (or failed to) since the last drain."""
        with self._lock:
            return bool(self._events)

    def drain_events(self) -> list[InitEvent]:
        """Init events since the last call (the worker ships them with its results)."""
        with self._lock:
            events, self._events = self._events, []
        return events

    def release_idle(self, now: float | None = None) -> list[str]:
        """Tear down contexts (loaded or parked) unused for longer than the idle
        timeout, except those in :attr:`keep`."""
        if self.idle_timeout is None:
            return []
        now = time.time() if now is None else now
        with self._lock:
            idle = [k for k, e in self._entries.items()
                    if (e.loaded or e.parked is not None) and e.busy == 0 and k not in self.keep
                    and now - self.stats[k].last_used > self.idle_timeout]
            for k in idle:
                self._teardown(k)
        return idle

    def teardown(self) -> None:
        with self._lock:
            for k in [k for k, e in self._entries.items() if e.loaded or e.parked is not None]:
                self._teardown(k)

    def _teardown(self, key: str) -> None:
        entry = self._entries.pop(key)
        _close(key, entry.value)
        entry.value = entry.parked = None
        self.stats[key].releases += 1
        self.stats[key].host_bytes = 0
        gc.collect()
        if _on_gpu():  # free GPU memory only if torch is already in use
            sys.modules["torch"].cuda.empty_cache()
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


def _close(key: str, value: Any) -> None:
    close = getattr(value, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            log.exception("closing context %s failed", key)


def _on_gpu() -> bool:
    """Whether footprints are GPU memory (torch imported and sees a GPU)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_available()


def _memory_in_use(on_gpu: bool) -> int:
    """GPU memory allocated by torch when on GPU, else this process's resident memory."""
    if on_gpu:
        return int(sys.modules["torch"].cuda.memory_allocated())
    import psutil

    return psutil.Process().memory_info().rss


def _free_heap(full: bool) -> None:
    """Around a load whose footprint is measured by resident memory: glibc keeps
    freed heap resident, so a loader that reuses it would look free, and one
    whose temporaries were freed would look larger than what it holds. A full
    collection (``full``) also keeps older garbage collected during the load
    from being subtracted; it costs 0.1-0.2 s once torch and transformers are
    imported, paid twice per cold start, so it runs only where a RAM budget
    makes the footprint decide evictions (without one it is only reported)."""
    gc.collect(2 if full else 1)
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (another C library)."""
    import ctypes

    return getattr(ctypes.CDLL(None), "malloc_trim", None)


@functools.cache
def process_pool() -> WarmPool:
    """The warm pool of this process."""
    return WarmPool()
