"""Places invocations on the workers that hold their context.

Invocations wait here, per context. Each Parsl worker runs a loop task
(faas.warm_pool.loop) that pulls from the endpoint; when a loop has room (one
batch running, one queued behind it) the dispatcher picks a context for that
loop, preferring one it already holds (:func:`choose_context`), so workers do
not thrash between contexts, and contexts nobody holds still get a worker.
Batch size follows the backlog and each worker's measured speed (guided
self-scheduling weighted by speed, capped by ``dispatch.max_batch``): about
half of what the worker can run before the context's remaining work would be
done by all its holders, so batches are large while there is much work, small
at the tail and for slow workers, fast and slow GPUs finish together, and a
preemption loses little, with no batch-size knob to tune. A worker's first
batch of a context is small (its speed is not known yet), and no batch holds
more than ``dispatch.max_batch_seconds`` of measured work, so results keep
flowing even when one invocation takes seconds.

Why pull rather than Parsl's own task routing: HighThroughputExecutor sends a
task to a random manager with free capacity and any idle worker there, knowing
nothing of warm contexts. Parsl still gets the nodes, starts, scales and
replaces the workers and reports their loss; the loops only choose the work.

Each batch's outcomes are recorded in the store, in one transaction, before
anyone is told of them. Everything here runs on the server's loop thread;
Parsl's done-callbacks only hand the loop's future over via ``notify``.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from faas import protocol
from faas.endpoint.config import EndpointConfig
from faas.endpoint.workers import WorkerLink, WorkerLoop
from faas.store import Outcome, State, Store
from faas.warm_pool.runner import ERROR, INIT_ERROR, OK

log = logging.getLogger(__name__)
PREFETCH = 2  # batches a loop holds: one running, one queued behind it
FIRST_BATCH = 4  # invocations in a worker's first batch of a context, before its speed is known


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


def choose_context(holds: set[str], backlog: dict[str, int], holders: dict[str, int]) -> str | None:
    """The context a free worker should serve next.

    ``holds``: contexts the worker holds; ``backlog``: waiting invocations per
    context; ``holders``: workers holding (or about to hold) each context. A
    worker keeps to a context it holds, the one with most backlog per holder,
    unless some context with backlog has no holder at all and the worker's
    context keeps another; a worker holding nothing useful takes the context
    with most backlog per holder, counting itself.
    """
    wanted = {k: n for k, n in backlog.items() if n > 0}
    if not wanted:
        return None
    held = [k for k in wanted if k in holds]
    orphans = [k for k in wanted if not holders.get(k)]
    if held:
        best = max(held, key=lambda k: wanted[k] / max(1, holders.get(k, 1)))
        if orphans and holders.get(best, 1) > 1:
            return max(orphans, key=wanted.__getitem__)
        return best
    return max(wanted, key=lambda k: wanted[k] / (holders.get(k, 0) + 1))


class Dispatcher:
    def __init__(self, store: Store, engine, link: WorkerLink, config: EndpointConfig,
                 notify: Callable[[str, Future], None]):
        self.store = store
        self.engine = engine
        self.link = link
        self.cfg = config
        self.notify = notify
        self.queues: dict[str, deque[Item]] = {}
        self.loops: dict[str, WorkerLoop] = {}
        self._batch_ids = itertools.count(1)
        self._bodies: dict[str, bytes] = {}
        self._retries: dict[str, int] = {}
        self._init_failures: dict[str, int] = {}  # context key -> batches whose loader raised
        budget = config.warm_pool.memory_budget
        self._settings = {"idle_timeout": config.warm_pool.idle_timeout,
                          "memory_budget": int(budget) if budget is not None else None}

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

    def in_flight(self) -> int:
        return sum(len(loop.batches) for loop in self.loops.values())

    # -- worker loops -------------------------------------------------------
    def start_loops(self, n: int) -> None:
        """Submit ``n`` loop tasks to Parsl; each connects back when a worker runs it."""
        for _ in range(n):
            loop = WorkerLoop(uuid.uuid4().hex)
            self.loops[loop.token] = loop
            loop.future = self.engine.start_loop(loop.token, self.link)
            loop.future.add_done_callback(lambda f, t=loop.token: self.notify(t, f))

    def on_ready(self, token: str, header: dict[str, Any]) -> None:
        loop = self.loops.get(token)
        if loop is None:  # retired or lost meanwhile
            self.link.send(token, protocol.encode("retire"))
            return
        loop.host, loop.pid, loop.contexts = header["host"], header["pid"], header["contexts"]
        loop.ready, loop.idle_since = True, time.monotonic()
        self.link.send(token, protocol.encode("hb"))

    def heartbeat(self) -> None:
        for loop in self.loops.values():
            if loop.ready:
                self.link.send(loop.token, protocol.encode("hb"))

    def on_loop_end(self, token: str, fut: Future) -> list[Final]:
        """A loop task ended: retired, lost with its worker, or its endpoint
        link fell silent. Whatever it still held runs again elsewhere."""
        loop = self.loops.pop(token, None)
        if loop is None or not loop.batches:
            return []
        try:
            cause = f"loop ended ({fut.result()})"
        except Exception as e:
            cause = f"{type(e).__name__}: {e}"
        finals = []
        for batch in loop.batches.values():
            finals += self._lost(batch, cause)
        return finals

    # -- dispatch -----------------------------------------------------------
    def pump(self) -> list[Final]:
        """Give free loops work; start loops for a backlog; retire idle ones.
        Returns invocations that became final here (the engine gave up, or a
        loop was unreachable too often)."""
        engine = self.engine
        broken = engine.failure()
        if broken is not None:
            return self._fail_queued(f"the endpoint's workers cannot start: {broken}")
        finals: list[Final] = []
        skip: set[str] = set()  # loops better left idle for now (the others finish sooner)
        while self.queues:
            free = [lp for lp in self.loops.values()
                    if lp.ready and len(lp.batches) < PREFETCH and lp.token not in skip]
            if not free:
                break
            loop = min(free, key=lambda lp: len(lp.batches))
            key = choose_context({k for k in self.queues if loop.holds(k)},
                                 {k: len(q) for k, q in self.queues.items()}, self._holders())
            size = self._batch_size(loop, key) if key is not None else 0
            if size == 0:
                skip.add(loop.token)
                continue
            finals += self._ship(loop, key, size)
        waiting = sum(1 for lp in self.loops.values() if not lp.ready)
        if self.queues and not waiting and len(self.loops) < engine.max_loops:
            self.start_loops(min(engine.loops_per_block, engine.max_loops - len(self.loops)))
        elif len(self.loops) < engine.min_loops:
            self.start_loops(engine.min_loops - len(self.loops))
        self._retire_idle()
        return finals

    def _batch_size(self, loop: WorkerLoop, key: str) -> int:
        """Guided self-scheduling, weighted by measured speed: about half of what
        ``loop`` can run before the context's remaining work would be done by
        all its holders. 0: leave the loop idle, the others finish sooner."""
        queue = self.queues[key]
        holders = [lp for lp in self.loops.values() if lp.ready and lp.holds(key)]
        if loop not in holders:
            holders.append(loop)
        rates = [lp.rates.get(key) for lp in holders]
        rate = loop.rates.get(key)
        if rate is None:  # a first, small batch measures this worker's speed
            return min(FIRST_BATCH, len(queue))
        cap = min(self.cfg.dispatch.max_batch, max(1, int(rate * self.cfg.dispatch.max_batch_seconds)))
        if None in rates:  # the others are not measured yet: split the backlog evenly
            return min(cap, max(1, math.ceil(len(queue) / (2 * len(holders)))))
        pending = len(queue) + sum(len(b.items) for lp in holders for b in lp.batches.values()
                                   if b.context_key == key)
        finish = pending / sum(rates)  # seconds until all of it is done
        queued = sum(len(b.items) for b in loop.batches.values()) / rate  # work this loop has already
        share = (finish - queued) * rate
        if share < 0.5 and (loop.batches or len(holders) > 1):
            return 0
        return min(cap, len(queue), max(1, math.ceil(share / 2)))

    def _fail_queued(self, error: str) -> list[Final]:
        items = [it for q in self.queues.values() for it in q]
        self.queues.clear()
        if not items:
            return []
        now = time.time()
        outcomes = [Outcome(it.id, False, None, error, "", now, now) for it in items]
        recorded = self.store.record_outcomes(outcomes)
        return [Final(it.id, it.group_id, False, None, error) for it in items if it.id in recorded]

    def _holders(self) -> dict[str, int]:
        holders: dict[str, int] = {}
        for lp in self.loops.values():
            keys = {k for k in lp.contexts if lp.holds(k)} | {b.context_key for b in lp.batches.values()}
            for k in keys:
                holders[k] = holders.get(k, 0) + 1
        return holders

    def _ship(self, loop: WorkerLoop, key: str, size: int) -> list[Final]:
        queue = self.queues[key]
        batch = Batch(next(self._batch_ids), key, [queue.popleft() for _ in range(min(size, len(queue)))],
                      time.time())
        if not queue:
            del self.queues[key]
        self.store.mark_dispatched([it.id for it in batch.items])
        for it in batch.items:
            it.attempts += 1
        fids = sorted({it.function_id for it in batch.items} - loop.sent_functions)
        missing = [f for f in fids if f not in self._bodies]
        if missing:
            self._bodies.update(self.store.function_bodies(missing))
        loop.sent_functions.update(fids)
        loop.batches[batch.id] = batch
        frames = [*(self._bodies[f] for f in fids), *(it.args for it in batch.items)]
        msg = protocol.encode("batch", frames, batch=batch.id, functions=fids,
                              items=[[it.id, it.function_id] for it in batch.items], settings=self._settings)
        if self.link.send(loop.token, msg):
            return []
        del loop.batches[batch.id]
        return self._lost(batch, f"worker loop {loop.name} unreachable")

    def _retire_idle(self) -> None:
        if self.queues:
            return
        now = time.monotonic()
        for loop in list(self.loops.values()):
            if len(self.loops) <= self.engine.min_loops:
                return
            if loop.ready and not loop.batches and now - loop.idle_since > self.cfg.engine.max_idletime:
                self.link.send(loop.token, protocol.encode("retire"))
                del self.loops[loop.token]

    # -- completion ---------------------------------------------------------
    def on_done(self, token: str, header: dict[str, Any], frames: list[bytes]) -> list[Final]:
        """A loop reports a batch: payloads come as frames, the rest as JSON."""
        loop = self.loops.get(token)
        batch = loop.batches.pop(header["batch"], None) if loop is not None else None
        if batch is None:
            log.warning("report of unknown batch %s from loop %s ignored", header["batch"], token)
            return []
        if not loop.batches:
            loop.idle_since = time.monotonic()
        report = header["report"]
        try:
            outcomes = [(o[0], o[1], payload, *o[3:]) for o, payload in zip(report["outcomes"], frames, strict=True)]
            if sorted(o[0] for o in outcomes) != sorted(it.id for it in batch.items):
                raise ValueError("its invocations are not the batch's")
            loop.contexts = dict(report["contexts"])
            loop.measured(batch.context_key, len(outcomes),
                          max(o[5] for o in outcomes) - min(o[4] for o in outcomes))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            return self._lost(batch, f"malformed report from {loop.name}: {e}")
        return self.complete(batch, dict(report, outcomes=outcomes))

    def complete(self, batch: Batch, report: dict[str, Any]) -> list[Final]:
        """Record a finished batch; requeue what may run again. Returns new finals."""
        worker = f"{report['host']}:{report['pid']}"
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
