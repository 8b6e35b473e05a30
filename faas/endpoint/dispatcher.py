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

    # -- intake -------------------------------------------------------------
    def register_function(self, fid: str, body: bytes, retries: int) -> None:
        self._bodies[fid] = body
        self._retries[fid] = retries

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
        fut = self.engine.submit(functions, payload, self.cfg.warm_pool.idle_timeout)
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
        by_id = {it.id: it for it in batch.items}
        outcomes, retry = [], []
        for inv_id, kind, payload, tb, started, finished in report["outcomes"]:
            it = by_id[inv_id]
            if kind == ERROR and it.attempts <= self._retries.get(it.function_id, 0):
                it.history.append(f"attempt {it.attempts} on {worker}: user error")
                retry.append(it)
                continue
            outcomes.append(Outcome(inv_id, kind == OK, payload, tb, worker, started, finished))
        inits = [dict(e, worker_id=worker) for e in report["inits"]]
        recorded = self.store.record_outcomes(outcomes, [(worker, report["host"], report["pid"])], inits)
        if any(o[1] == INIT_ERROR for o in report["outcomes"]):
            log.warning("context %s failed to initialise on %s", batch.context_key, worker)
        self._requeue(retry)
        return [Final(o.id, by_id[o.id].group_id, o.ok, o.payload, o.error)
                for o in outcomes if o.id in recorded]

    def _lost(self, batch: Batch, cause: str) -> list[Final]:
        now = time.strftime("%H:%M:%S")
        retry, give_up = [], []
        for it in batch.items:
            it.history.append(f"attempt {it.attempts} at {now}: {cause}")
            (retry if it.attempts < self.cfg.dispatch.max_attempts else give_up).append(it)
        log.warning("batch %d (%d invocations) lost: %s", batch.id, len(batch.items), cause)
        self._requeue(retry)
        if not give_up:
            return []
        outcomes = [Outcome(it.id, False, None, _gave_up(it), "", time.time(), time.time()) for it in give_up]
        recorded = self.store.record_outcomes(outcomes)
        return [Final(o.id, it.group_id, False, None, o.error)
                for o, it in zip(outcomes, give_up) if o.id in recorded]

    def _requeue(self, items: list[Item]) -> None:
        if items:
            self.store.requeue([it.id for it in items])
            self.add(items)

    def recover(self) -> int:
        """After a restart: every invocation not final goes back to the queue."""
        rows = self.store.unfinished()
        self.store.requeue([r["id"] for r in rows if r["state"] is State.DISPATCHED])
        for fid, meta in self.store.functions().items():
            self._retries[fid] = meta["retries"]
        self.add(Item(r["id"], r["group_id"], r["function_id"], r["context_key"], r["args"], r["attempts"])
                 for r in rows)
        return len(rows)


def _gave_up(it: Item) -> str:
    lines = "\n".join(f"  {h}" for h in it.history)
    return f"invocation {it.id} gave up after {it.attempts} attempts:\n{lines}\n"
