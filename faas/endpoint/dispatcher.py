"""Batches invocations by context and feeds them to Parsl.

Invocations wait here, per context, until a worker slot is free. Batch size
follows the backlog (guided self-scheduling: ``backlog / (2 x slots)``, capped),
so batches are large while there is much work and shrink at the tail, and no
knob needs tuning. Each batch's outcomes are recorded in the store, in one
transaction, before anyone is told of them.

Everything here runs on the server's loop thread; only Parsl's done-callbacks
come from other threads, and they just hand the future over via ``notify``.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from faas.endpoint.config import EndpointConfig
from faas.store import Outcome, State, Store
from faas.warm_pool.runner import ERROR, INIT_ERROR, OK

log = logging.getLogger(__name__)


@dataclass
class Item:
    id: str
    group_id: str
    function_id: str
    context_key: str
    args: bytes
    attempts: int = 0
    history: list[str] = field(default_factory=list)  # why earlier attempts ended


@dataclass
class Batch:
    id: int
    context_key: str
    items: list[Item]
    dispatched_at: float


@dataclass
class Final:
    """A newly recorded final outcome, to be pushed to clients."""

    id: str
    group_id: str
    ok: bool
    payload: bytes | None
    error: str | None


class Dispatcher:
    def __init__(self, store: Store, engine, config: EndpointConfig,
                 notify: Callable[[Batch, Future], None]):
        self.store = store
        self.engine = engine
        self.cfg = config
        self.notify = notify
        self.queues: dict[str, deque[Item]] = {}
        self.in_flight: dict[int, Batch] = {}
        self.slots = 0  # worker slots connected, kept current by the server's monitor
        self._batch_ids = itertools.count(1)
        self._bodies: dict[str, bytes] = {}
        self._retries: dict[str, int] = {}
        self._init_failures: dict[str, int] = {}  # context key -> batches whose loader raised
        self.worker_contexts: dict[str, dict] = {}  # worker -> its warm pool's statistics, last reported

    # -- intake -------------------------------------------------------------
    def register_function(self, fid: str, body: bytes, retries: int) -> None:
        self._bodies[fid] = body
        self._retries[fid] = retries

    def submit(self, items: Iterable[Item]) -> None:
        """New work from a client. A context whose loader failed everywhere gets
        a fresh chance with new work (its files may have been fixed)."""
        items = list(items)
        for key in {it.context_key for it in items}:
            self._init_failures.pop(key, None)
        self.add(items)

    def add(self, items: Iterable[Item]) -> None:
        for it in items:
            self.queues.setdefault(it.context_key, deque()).append(it)

    def backlog(self) -> int:
        return sum(len(q) for q in self.queues.values())

    # -- dispatch -----------------------------------------------------------
    def pump(self) -> None:
        """Ship batches while worker slots are free."""
        slots = max(self.slots, self.cfg.engine.max_workers_per_node)
        while len(self.in_flight) < 2 * slots:
            key = self._next_context()
            if key is None:
                return
            queue = self.queues[key]
            size = min(self.cfg.dispatch.max_batch, max(1, math.ceil(self.backlog() / (2 * slots))))
            items = [queue.popleft() for _ in range(min(size, len(queue)))]
            if not queue:
                del self.queues[key]
            self._ship(Batch(next(self._batch_ids), key, items, time.time()))

    def _next_context(self) -> str | None:
        """The context with the largest backlog goes next."""
        return max(self.queues, key=lambda k: len(self.queues[k]), default=None)

    def _ship(self, batch: Batch) -> None:
        ids = [it.id for it in batch.items]
        self.store.mark_dispatched(ids)
        for it in batch.items:
            it.attempts += 1
        fids = {it.function_id for it in batch.items}
        missing = [f for f in fids if f not in self._bodies]
        if missing:
            self._bodies.update(self.store.function_bodies(missing))
        functions = {f: self._bodies[f] for f in fids}
        payload = [(it.id, it.function_id, it.args) for it in batch.items]
        self.in_flight[batch.id] = batch
        pool = self.cfg.warm_pool
        fut = self.engine.submit(functions, payload, pool.idle_timeout,
                                 int(pool.memory_budget) if pool.memory_budget is not None else None)
        fut.add_done_callback(lambda f, b=batch: self.notify(b, f))

    # -- completion ---------------------------------------------------------
    def complete(self, batch: Batch, fut: Future) -> list[Final]:
        """Record a finished batch; requeue what may run again. Returns new finals."""
        self.in_flight.pop(batch.id, None)
        try:
            report: dict[str, Any] = fut.result()
        except Exception as e:  # the batch never reported: its worker or node was lost
            return self._lost(batch, f"{type(e).__name__}: {e}")
        worker = f"{report['host']}:{report['pid']}"
        self.worker_contexts[worker] = report["contexts"]
        if any(e["context_key"] == batch.context_key and e["error"] is None for e in report["inits"]):
            self._init_failures.pop(batch.context_key, None)  # the loader works (at least here)
        where = f"on {worker} at {time.strftime('%H:%M:%S')}"
        items = {it.id: it for it in batch.items}
        outcomes, retry, init_failed = [], {}, None
        for inv_id, kind, payload, tb, started, finished in report["outcomes"]:
            it = items[inv_id]
            if kind == ERROR and it.attempts <= self._retries.get(it.function_id, 0):
                retry[inv_id] = f"attempt {it.attempts} {where}: {_last_line(tb)}"
                continue
            if kind == INIT_ERROR:
                init_failed = init_failed or (payload, tb)
                if not self._init_failures.get(batch.context_key):
                    retry[inv_id] = f"attempt {it.attempts} {where}: context init failed"
                    continue
            outcomes.append(Outcome(inv_id, kind == OK, payload, tb, worker, started, finished))
        if init_failed and not self._init_failures.get(batch.context_key):
            self._init_failures[batch.context_key] = 1  # try the loader once more
        elif init_failed:  # failed twice: fail the waiting ones too rather than try forever
            waiting = self.queues.pop(batch.context_key, deque())
            log.warning("context %s failed to initialise again; failing %d waiting invocations",
                        batch.context_key, len(waiting))
            items.update({it.id: it for it in waiting})
            outcomes += [Outcome(it.id, False, *init_failed, "", time.time(), time.time()) for it in waiting]
        inits = [dict(e, worker_id=worker) for e in report["inits"]]
        recorded = self.store.record_outcomes(outcomes, [(worker, report["host"], report["pid"])], inits)
        self._requeue([items[i] for i in retry], retry)
        return [Final(o.id, items[o.id].group_id, o.ok, o.payload, o.error) for o in outcomes if o.id in recorded]

    def _lost(self, batch: Batch, cause: str) -> list[Final]:
        log.warning("batch %d (%d invocations) lost: %s", batch.id, len(batch.items), cause)
        notes = {it.id: f"attempt {it.attempts} at {time.strftime('%H:%M:%S')}: {cause}" for it in batch.items}
        give_up = [it for it in batch.items if it.attempts >= self.cfg.dispatch.max_attempts]
        self._requeue([it for it in batch.items if it not in give_up], notes)
        if not give_up:
            return []
        now = time.time()
        outcomes = [Outcome(it.id, False, None, _gave_up(it, notes[it.id]), "", now, now) for it in give_up]
        recorded = self.store.record_outcomes(outcomes)
        return [Final(o.id, it.group_id, False, None, o.error)
                for o, it in zip(outcomes, give_up) if o.id in recorded]

    def _requeue(self, items: list[Item], notes: dict[str, str]) -> None:
        if not items:
            return
        self.store.requeue({it.id: notes[it.id] for it in items})
        for it in items:
            it.history.append(notes[it.id])
        self.add(items)

    def recover(self) -> int:
        """After a restart: every invocation not final goes back to the queue."""
        rows = self.store.unfinished()
        self.store.requeue({r["id"]: f"attempt {r['attempts']}: interrupted by an endpoint restart"
                            for r in rows if r["state"] is State.DISPATCHED})
        for fid, meta in self.store.functions().items():
            self._retries[fid] = meta["retries"]
        self.add(Item(r["id"], r["group_id"], r["function_id"], r["context_key"], r["args"], r["attempts"],
                      (r["history"] or "").splitlines()) for r in rows)
        return len(rows)


def _gave_up(it: Item, last: str) -> str:
    lines = "\n".join(f"  {h}" for h in [*it.history, last])
    return f"invocation {it.id} gave up after {it.attempts} attempts:\n{lines}\n"


def _last_line(tb: str | None) -> str:
    return (tb or "").strip().splitlines()[-1] if tb and tb.strip() else "raised"
