"""Places invocations on the workers that hold their context, and keeps the
record of what each one is doing.

Invocations wait here, per context. Each Parsl worker runs a loop task
(faas.warm_pool.loop) that pulls from the endpoint; when a loop has room (one
batch running, one queued behind it) the dispatcher picks a context and a
batch size for it (:mod:`faas.endpoint.policy`), so workers keep to their warm
contexts and batches follow the backlog and each worker's measured speed.

Batches are the unit of dispatch only. Loops report each invocation as it
starts and as it ends (``progress``); each outcome is recorded, with the
others of the server's pass, in one transaction (:meth:`commit`) before any
client is told. A lost worker costs only its unfinished invocations.
Cancellations reach queued invocations here and running ones through the
loop (``revoke``); a loop whose current invocation runs far longer than usual
has its unstarted work taken back for others.

Everything here runs on the server's loop thread and does no socket I/O: the
messages for loops collect in :attr:`outbox`, which the server sends.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from faas import protocol
from faas.endpoint import policy
from faas.endpoint.config import EndpointConfig
from faas.endpoint.policy import Step
from faas.endpoint.storeguard import StoreDown, StoreGuard
from faas.endpoint.workers import LoopBatch, WorkerLoop
from faas.lru import ByteLRU
from faas.protocol import Kind
from faas.store import Outcome, State, Store

if TYPE_CHECKING:
    from faas.endpoint.engine import Engine

log = logging.getLogger(__name__)
PREFETCH = 2  # batches a loop holds: one running, one queued behind it
ROW_SLACK = 2**16  # bytes of a stored invocation's row besides its arguments and result
RECLAIM_PERIOD = 0.1  # seconds between looks for loops held up by a long invocation (a scan of all loops)
COMMIT_INTERVAL = 0.05  # seconds: the longest a result waits for others to share its store transaction
RESULT_WAIT = 0.1  # and at most this share of the run time of those waiting (a no-op's is written at once)
_STATE = {Step.SUCCEEDED: State.SUCCEEDED, Step.FAILED: State.FAILED, Step.CANCELLED: State.CANCELLED}


@dataclass
class Item:
    id: str
    group_id: str
    function_id: str
    context_key: str
    args: bytes
    attempts: int = 0
    history: list[str] = field(default_factory=list)  # why earlier attempts ended
    loop: str | None = None  # the loop it was sent to, while there
    batch: int | None = None
    cancel_requested: bool = False
    reclaiming: bool = False
    init_failures: int = 0  # attempts that ended with its context's loader raising


@dataclass
class FunctionMeta:
    retries: int = 0
    batch_size: int = 1


@dataclass
class Final:
    """A newly recorded final outcome, to be pushed to clients."""

    id: str
    group_id: str
    state: State
    payload: bytes | None
    error: str | None


@dataclass
class _Pending:
    """What the current pass decided, to be written in one transaction (with
    what earlier passes could not write: the store was failing)."""

    outcomes: list[tuple[Outcome, Item]] = field(default_factory=list)
    requeue: dict[str, tuple[Item, str]] = field(default_factory=dict)
    refund: set[str] = field(default_factory=set)
    workers: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    inits: list[dict] = field(default_factory=list)
    lost_workers: list[tuple[str, float]] = field(default_factory=list)
    dispatched: list[str] = field(default_factory=list)  # shipped: marked in the next commit
    since: float = field(default_factory=time.monotonic)
    first_outcome: float | None = None  # monotonic arrival of the oldest outcome not written
    run_seconds: float = 0.0  # the run times of the outcomes not written, summed
    failing_since: float | None = None  # monotonic time its write first failed
    refused: set[str] = field(default_factory=set)  # outcomes its clients were told cannot be recorded

    def then(self, newer: _Pending) -> _Pending:
        """This unwritten pass followed by a newer one, to be written together."""
        self.outcomes += newer.outcomes
        self.requeue.update(newer.requeue)
        self.refund |= newer.refund
        self.workers.update(newer.workers)
        self.inits += newer.inits
        self.lost_workers += newer.lost_workers
        self.dispatched += newer.dispatched
        if self.first_outcome is None:
            self.first_outcome = newer.first_outcome
        self.run_seconds += newer.run_seconds
        return self


class Dispatcher:
    def __init__(self, store: Store, engine: Engine, config: EndpointConfig, worker_link,
                 notify: Callable[[str, Future], None], guard: StoreGuard):
        self.store = store
        self.guard = guard  # every store write goes through it: a failing store is retried, never fatal
        self.engine = engine
        self.cfg = config
        self.link = worker_link  # only its addresses and keys, handed to new loop tasks
        self.notify = notify
        self.queues: dict[str, deque[Item]] = {}
        self.items: dict[str, Item] = {}  # every invocation not final yet
        self.loops: dict[str, WorkerLoop] = {}
        self.functions: dict[str, FunctionMeta] = {}
        self.outbox: list[tuple[str, list[bytes]]] = []  # (loop token, message) for the server to send
        self.started: list[Item] = []  # invocations that started since the last call of take_started
        self.load_seconds: dict[str, float] = {}  # context -> how long a worker takes to load it, smoothed
        self._pending = _Pending()
        self._last_reclaim = 0.0  # monotonic
        self._batch_ids = itertools.count(1)
        self._bodies = ByteLRU(int(config.warm_pool.function_cache_bytes))  # the store has them all
        budget = config.warm_pool.memory_budget
        self._settings = protocol.WorkerSettings(
            idle_timeout=config.warm_pool.idle_timeout,
            memory_budget=int(budget) if budget is not None else None,
            timeout=config.dispatch.invocation_timeout, timeout_grace=config.dispatch.timeout_grace,
            # a larger result fails its own invocation on the worker, not its batch's record here
            max_result_bytes=min(config.max_payload_bytes, store.max_value_bytes - ROW_SLACK),
            function_cache_bytes=int(config.warm_pool.function_cache_bytes))

    # -- intake -------------------------------------------------------------
    def register_function(self, fid: str, body: bytes, info: protocol.FunctionInfo) -> None:
        self._bodies.put(fid, body)
        self.functions[fid] = FunctionMeta(info.retries, info.batch_size)

    def submit(self, items: Iterable[Item]) -> None:
        """New work from a client (a context whose loader failed gets a fresh
        chance with it: its files may have been fixed)."""
        self._enqueue(items)

    def _enqueue(self, items: Iterable[Item]) -> None:
        for it in items:
            it.loop = it.batch = None
            it.reclaiming = False
            self.items[it.id] = it
            self.queues.setdefault(it.context_key, deque()).append(it)

    def backlog(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def in_flight(self) -> int:
        return sum(lp.outstanding() for lp in self.loops.values())

    def cancel(self, ids: Iterable[str]) -> None:
        """A client cancels: queued invocations never run; running ones are
        revoked at their loop (and recorded when it answers)."""
        queued: dict[str, set[str]] = {}
        revoke: dict[str, list[str]] = {}
        for inv_id in ids:
            it = self.items.get(inv_id)
            if it is None or it.cancel_requested:
                continue  # final already, or unknown
            it.cancel_requested = True
            if it.loop is None:
                queued.setdefault(it.context_key, set()).add(inv_id)
            else:
                revoke.setdefault(it.loop, []).append(inv_id)
        for key, gone in queued.items():
            queue = self.queues.get(key, deque())
            self.queues[key] = deque(it for it in queue if it.id not in gone)
            if not self.queues[key]:
                del self.queues[key]
            now = time.time()
            for inv_id in gone:
                self._final(self.items[inv_id], Step.CANCELLED, None, None, "", now, now)
        for token, revoked in revoke.items():
            self.outbox.append((token, protocol.encode(protocol.Revoke(ids=revoked, reason="cancel"))))

    # -- worker loops -------------------------------------------------------
    def start_loops(self, n: int) -> None:
        """Submit ``n`` loop tasks to the engine; each connects back when a worker runs it."""
        for _ in range(n):
            loop = WorkerLoop(uuid.uuid4().hex)
            self.loops[loop.token] = loop
            loop.future = self.engine.start_loop(loop.token, self.link)
            loop.future.add_done_callback(lambda f, t=loop.token: self.notify(t, f))

    def on_ready(self, token: str, msg: protocol.Ready) -> None:
        loop = self.loops.get(token)
        if loop is None:  # retired or lost meanwhile
            self.outbox.append((token, protocol.encode(protocol.Retire())))
            return
        loop.host, loop.pid, loop.contexts = msg.host, msg.pid, msg.contexts
        loop.ready, loop.idle_since, loop.last_heard = True, time.monotonic(), time.monotonic()
        loop.prewarm = msg.prewarm
        log.info("worker %s ready %.1fs after its loop started (imports %s, CUDA %s)", loop.name,
                 msg.prewarm.get("ready_after", 0.0), msg.prewarm.get("imports", {}), msg.prewarm.get("cuda"))
        self.outbox.append((token, protocol.encode(protocol.Heartbeat())))

    def heard(self, token: str) -> None:
        loop = self.loops.get(token)
        if loop is not None:
            loop.last_heard = time.monotonic()

    def heartbeat(self) -> None:
        """Beat to every ready loop; a loop silent past the threshold is lost."""
        now = time.monotonic()
        for loop in list(self.loops.values()):
            if not loop.ready:
                continue
            if now - loop.last_heard > self.cfg.engine.heartbeat_threshold:
                self.lose(loop.token, f"silent for {now - loop.last_heard:.0f}s")
            else:
                self.outbox.append((loop.token, protocol.encode(protocol.Heartbeat())))

    def on_loop_end(self, token: str, fut: Future) -> None:
        """A loop task ended: retired, lost with its worker, or its endpoint link
        fell silent. Whatever it still held runs again elsewhere."""
        try:
            cause = f"loop ended ({fut.result()})"
        except Exception as e:
            cause = f"{type(e).__name__}: {e}"
        self.lose(token, cause)

    def lose(self, token: str, cause: str) -> None:
        loop = self.loops.pop(token, None)
        if loop is None:
            return
        open_ids = [i for b in loop.batches.values() for i in b.open]
        if open_ids:
            log.warning("worker loop %s lost with %d invocations: %s", loop.name, len(open_ids), cause)
        if loop.ready:
            self._pending.lost_workers.append((loop.name, time.time()))
        where = f"at {time.strftime('%H:%M:%S')} on {loop.name or 'a worker'}: {cause}"
        now = time.time()
        for inv_id in open_ids:
            it = self.items[inv_id]
            if it.cancel_requested:
                self._final(it, Step.CANCELLED, None, None, "", now, now)
                continue
            note = f"attempt {it.attempts} {where}"
            step = policy.after_loss(it.attempts, self.cfg.dispatch.max_attempts)
            if step is Step.RETRY:
                self._requeue(it, note)
            else:
                self._final(it, Step.FAILED, None, _gave_up(it, note), "", now, now)

    # -- progress from a loop -------------------------------------------------
    def on_progress(self, token: str, msg: protocol.Progress, payloads: list[bytes]) -> None:
        loop = self.loops.get(token)
        if loop is None:
            log.warning("progress from unknown worker loop %s ignored", token)
            return
        now = time.monotonic()
        loop.last_heard = now
        if msg.contexts is not None:
            loop.contexts = msg.contexts
        worker = loop.name
        loop.sent_functions.difference_update(msg.dropped_functions)  # before outcomes: returned ones need them
        for inv_id in msg.started:
            it = self.items.get(inv_id)
            if it is not None and it.loop == token:
                loop.running[inv_id] = now
                self.started.append(it)
        if msg.inits:
            for e in msg.inits:
                if e.error is None:
                    old = self.load_seconds.get(e.context_key)
                    self.load_seconds[e.context_key] = e.seconds if old is None else 0.7 * old + 0.3 * e.seconds
                batch = next((b for b in loop.batches.values() if b.context_key == e.context_key), None)
                if batch is not None:
                    batch.loading += e.seconds
            self._pending.workers[worker] = (worker, loop.host, loop.pid)
            self._pending.inits += [dict(e.model_dump(), worker_id=worker) for e in msg.inits]
        for info, payload in zip(msg.outcomes, payloads):
            it = self.items.get(info.id)
            if it is None or it.loop != token:
                continue  # a late duplicate, or revoked meanwhile
            batch = loop.batches[it.batch]
            if info.kind is not Kind.RETURNED:
                batch.first_started = min(batch.first_started, info.started)
                batch.last_finished = max(batch.last_finished, info.finished)
            self._pending.workers[worker] = (worker, loop.host, loop.pid)
            self._on_outcome(it, info, payload, worker)

    def _on_outcome(self, it: Item, info: protocol.OutcomeInfo, payload: bytes, worker: str) -> None:
        fn = self.functions.get(it.function_id, FunctionMeta())
        key = it.context_key
        step = policy.after_attempt(info.kind, it.attempts, fn.retries, it.cancel_requested, it.init_failures > 0)
        if info.kind is Kind.INIT_ERROR:
            it.init_failures += 1
        where = f"on {worker} at {time.strftime('%H:%M:%S')}"
        if step is Step.RETURN:
            self._pending.refund.add(it.id)
            it.attempts -= 1
            self._requeue(it, f"returned unstarted {where}")
        elif step is Step.RETRY:
            if info.kind is Kind.INIT_ERROR:
                self._requeue(it, f"attempt {it.attempts} {where}: context init failed")
            else:
                self._requeue(it, f"attempt {it.attempts} {where}: {_last_line(info.error)}")
        else:
            self._final(it, step, payload if step is not Step.CANCELLED else None, info.error, worker,
                        info.started, info.finished)
            if info.kind is Kind.INIT_ERROR:  # failed twice: fail the waiting ones too, not try forever
                waiting = self.queues.pop(key, deque())
                log.warning("context %s failed to initialise again; failing %d waiting invocations", key,
                            len(waiting))
                for other in waiting:
                    self._final(other, Step.FAILED, payload, info.error, "", time.time(), time.time())

    def _batch_done(self, loop: WorkerLoop, batch: LoopBatch) -> None:
        del loop.batches[batch.id]
        if batch.last_finished - batch.first_started > batch.loading:
            loop.measured(batch.context_key, batch.size, batch.last_finished - batch.first_started - batch.loading)
        if not loop.batches:
            loop.idle_since = time.monotonic()

    def _detach(self, it: Item) -> None:
        """Take an invocation off its loop's books (it was requeued or became final)."""
        loop = self.loops.get(it.loop) if it.loop is not None else None
        if loop is not None and it.batch in loop.batches:
            batch = loop.batches[it.batch]
            batch.open.discard(it.id)
            loop.running.pop(it.id, None)
            if not batch.open:
                self._batch_done(loop, batch)

    def _requeue(self, it: Item, note: str) -> None:
        self._detach(it)
        it.loop = None
        it.history.append(note)
        self._pending.requeue[it.id] = (it, note)

    def _final(self, it: Item, step: Step, payload: bytes | None, error: str | None, worker: str,
               started: float, finished: float) -> None:
        self._detach(it)
        self.items.pop(it.id, None)
        it.loop = None
        if payload and len(payload) + len(it.args) + ROW_SLACK > self.store.max_value_bytes:
            # with its arguments, more than a row of the store takes: failing it keeps its batch recordable
            step, error = Step.FAILED, (f"its result ({len(payload)} bytes) and arguments ({len(it.args)} bytes) "
                                        f"are more than the store takes in one row ({self.store.max_value_bytes} "
                                        f"bytes): the result was not recorded")
            payload = None
        p = self._pending
        p.outcomes.append((Outcome(it.id, _STATE[step], payload, error, worker, started, finished), it))
        if p.first_outcome is None:
            p.first_outcome = time.monotonic()
        p.run_seconds += max(0.0, finished - started)

    def take_started(self) -> list[Item]:
        started, self.started = self.started, []
        return [it for it in started if not it.cancel_requested]

    # -- the passes' one transaction ------------------------------------------
    def commit_due(self) -> float | None:
        """Seconds until what the passes decided must be written (0: now), None
        when there is nothing to write. Outcomes wait for company a small share
        of their mean run time (RESULT_WAIT, at most COMMIT_INTERVAL): a fleet's
        results of long invocations share few transactions, while short ones
        reach their clients in milliseconds. Losses and returns go at once."""
        p = self._pending
        if p.requeue or p.inits or p.lost_workers:
            return 0.0
        if p.outcomes:
            hold = min(COMMIT_INTERVAL, RESULT_WAIT * p.run_seconds / len(p.outcomes))
            return max(0.0, p.first_outcome + hold - time.monotonic())
        if p.dispatched:  # no hurry: they ride with the next outcomes, or go alone after the interval
            return max(0.0, p.since + COMMIT_INTERVAL - time.monotonic())
        return None

    def commit(self, force: bool = False) -> list[Final]:
        """Write what the passes decided, when due (or ``force``); then requeued
        invocations become dispatchable. Returns the newly final ones, to push
        to clients.

        Raises StoreDown when the write failed: it is kept, whole, and written
        with a later pass's (outcomes wait; requeued invocations are not
        dispatched until their return to the queue is on record)."""
        due = self.commit_due()
        if due is None or (due > 0 and not force):
            return []
        p, self._pending = self._pending, _Pending()
        try:
            if p.dispatched:  # before the outcomes: one may have come back within the interval
                self.guard.call(self.store.mark_dispatched, p.dispatched)
                p.dispatched = []
            if not (p.outcomes or p.requeue or p.inits or p.lost_workers):
                return []
            recorded = self.guard.call(
                self.store.record_outcomes, [o for o, _ in p.outcomes], p.workers.values(), p.inits,
                requeue={i: note for i, (_, note) in p.requeue.items()}, refund=p.refund,
                lost_workers=p.lost_workers)
        except StoreDown:
            if p.failing_since is None:
                p.failing_since = time.monotonic()
            self._pending = p.then(self._pending)
            raise
        finals = {o.id for o, _ in p.outcomes}
        self._enqueue(it for i, (it, _) in p.requeue.items() if i not in finals)  # cancelled while waiting
        return [Final(o.id, it.group_id, o.state, o.payload, o.error) for o, it in p.outcomes if o.id in recorded]

    def unrecorded(self) -> bool:
        """Whether anything decided waits to be written (the store failed)."""
        return self._pending.failing_since is not None

    def overdue(self) -> list[Final]:
        """Outcomes that have waited for the store longer than its retry window
        and were not refused yet: their clients are told (they stay pending here,
        and are recorded and pushed once the store is back)."""
        p = self._pending
        if p.failing_since is None or not self.guard.overdue(p.failing_since):
            return []
        out = [Final(o.id, it.group_id, o.state, None, None) for o, it in p.outcomes if o.id not in p.refused]
        p.refused.update(f.id for f in out)
        return out

    # -- dispatch -----------------------------------------------------------
    def pump(self) -> None:
        """Give free loops work; start loops for a backlog; retire idle ones;
        take queued work back from loops held up by one long invocation."""
        broken = self.engine.failure()
        if broken is not None:
            self._fail_queued(f"the endpoint's workers cannot start: {broken}")
            return
        now = time.monotonic()
        if self.queues and self.guard.down_since is None:  # while the store fails, nothing new goes out
            self._dispatch(now)
        engine = self.engine
        waiting = sum(1 for lp in self.loops.values() if not lp.ready)
        if self.queues and not waiting and len(self.loops) < engine.max_loops:
            self.start_loops(min(engine.loops_per_block, engine.max_loops - len(self.loops)))
        elif len(self.loops) < engine.min_loops:
            self.start_loops(engine.min_loops - len(self.loops))
        self._retire_idle()
        self._reclaim(now)

    def _dispatch(self, now: float) -> None:
        """Fill the loops that have room, least loaded first. One scan of the
        loops per pump, then per batch only the context's holders: with
        hundreds of loops, a scan per batch made dispatch quadratic."""
        by_load = sorted((lp for lp in self.loops.values()
                          if lp.ready and len(lp.batches) < PREFETCH and not self._held_up(lp, now)),
                         key=lambda lp: len(lp.batches))
        if not by_load:
            return  # most passes under load: every loop is full
        free = [deque(lp for lp in by_load if len(lp.batches) == n) for n in range(PREFETCH)]
        cost = self._costs()
        holding: dict[str, list[WorkerLoop]] = {}  # context -> ready loops holding it (or about to)
        in_flight: dict[str, int] = {}  # context -> invocations sent and not finished
        for lp in self.loops.values():
            for b in lp.batches.values():
                in_flight[b.context_key] = in_flight.get(b.context_key, 0) + len(b.open)
            for k in {k for k in lp.contexts if lp.holds(k)} | {b.context_key for b in lp.batches.values()}:
                holding.setdefault(k, []).append(lp)
        while self.queues and any(free):
            loop = next(q for q in free if q).popleft()
            key = policy.choose_context({k for k in self.queues if loop.holds(k)},
                                        {k: len(q) * cost(k) for k, q in self.queues.items()},
                                        {k: len(v) for k, v in holding.items()})
            size = self._batch_size(loop, key, holding.get(key, []), in_flight.get(key, 0)) if key else 0
            if size == 0:
                continue  # left idle: the others finish sooner
            if not loop.holds(key):
                holding.setdefault(key, []).append(loop)
            in_flight[key] = in_flight.get(key, 0) + min(size, len(self.queues[key]))
            self._ship(loop, key, size)
            if len(loop.batches) < PREFETCH:
                free[len(loop.batches)].append(loop)

    def _costs(self) -> Callable[[str], float]:
        """Seconds per invocation of each context on one worker, as measured so
        far (one not measured yet: the others' average), so that workers follow
        the waiting work rather than its count when one model is slower."""
        costs: dict[str, list[float]] = {}
        for lp in self.loops.values():
            for k, rate in lp.rates.items():
                costs.setdefault(k, []).append(1.0 / rate)
        mean = {k: sum(v) / len(v) for k, v in costs.items()}
        default = sum(mean.values()) / len(mean) if mean else 1.0
        return lambda k: mean.get(k, default)

    def _batch_size(self, loop: WorkerLoop, key: str, holding: list[WorkerLoop], in_flight: int) -> int:
        queue = self.queues[key]
        holders = [lp for lp in holding if lp.ready and lp is not loop]
        fn = self.functions.get(queue[0].function_id, FunctionMeta())
        return policy.batch_size(self._load(loop, key), [self._load(lp, key) for lp in holders], len(queue),
                                 in_flight, self.cfg.dispatch.max_batch, self.cfg.dispatch.max_batch_seconds,
                                 min_batch=fn.batch_size,
                                 load=0.0 if loop.holds(key) else self.load_seconds.get(key, 0.0))

    @staticmethod
    def _load(loop: WorkerLoop, key: str) -> policy.LoopLoad:
        return policy.LoopLoad(loop.rates.get(key), loop.outstanding())

    def _fail_queued(self, error: str) -> None:
        now = time.time()
        for queue in self.queues.values():
            for it in queue:
                self._final(it, Step.FAILED, None, error, "", now, now)
        self.queues.clear()

    def _ship(self, loop: WorkerLoop, key: str, size: int) -> None:
        queue = self.queues[key]
        items = list(itertools.islice(queue, size))
        fids = sorted({it.function_id for it in items} - loop.sent_functions)
        bodies = {f: self._bodies.get(f) for f in fids}
        missing = [f for f, body in bodies.items() if body is None]
        # the store first: when it fails (StoreDown), nothing here has changed yet
        if missing:
            for f, body in self.guard.call(self.store.function_bodies, missing).items():
                bodies[f] = body
                self._bodies.put(f, body)
        for _ in items:
            queue.popleft()
        if not queue:
            del self.queues[key]
        batch = LoopBatch(next(self._batch_ids), key, len(items), {it.id for it in items})
        self._pending.dispatched += [it.id for it in items]  # marked in the next commit, with others
        for it in items:
            it.attempts += 1
            it.loop, it.batch = loop.token, batch.id
        loop.sent_functions.update(fids)
        loop.batches[batch.id] = batch
        msg = protocol.Batch(batch=batch.id, functions=fids, items=[(it.id, it.function_id) for it in items],
                             settings=self._settings)
        self.outbox.append((loop.token, protocol.encode(msg, [*(bodies[f] for f in fids),
                                                              *(it.args for it in items)])))

    def _retire_idle(self) -> None:
        if self.queues:
            return
        now = time.monotonic()
        for loop in list(self.loops.values()):
            if len(self.loops) <= self.engine.min_loops:
                return
            if loop.ready and not loop.batches and now - loop.idle_since > self.cfg.engine.max_idletime:
                self.outbox.append((loop.token, protocol.encode(protocol.Retire())))
                del self.loops[loop.token]

    def _held_up(self, loop: WorkerLoop, now: float) -> bool:
        """Its current invocation has run far longer than usual. Not while the
        loop may be loading the context (it has not reported it loaded): a
        model's load takes minutes, and taking its queue back would only move
        the load, and the wait, to another worker."""
        if not loop.running:
            return False
        since = min(loop.running.values())
        key = self.items[next(iter(loop.running))].context_key
        if not loop.contexts.get(key, {}).get("loaded"):
            return False
        return policy.should_reclaim(now - since, loop.rates.get(key), 1)

    def _reclaim(self, now: float) -> None:
        if now - self._last_reclaim < RECLAIM_PERIOD:
            return
        self._last_reclaim = now
        for loop in self.loops.values():
            if not self._held_up(loop, now):
                continue
            behind = [i for b in loop.batches.values() for i in b.open
                      if i not in loop.running and not self.items[i].reclaiming]
            if behind:
                for inv_id in behind:
                    self.items[inv_id].reclaiming = True
                self.outbox.append((loop.token, protocol.encode(protocol.Revoke(ids=behind, reason="reclaim"))))

    def recover(self) -> int:
        """After a restart: every invocation not final goes back to the queue."""
        rows = self.guard.wait(self.store.unfinished)
        self.guard.wait(self.store.requeue, {r["id"]: f"attempt {r['attempts']}: interrupted by an endpoint restart"
                                             for r in rows if r["state"] is State.DISPATCHED})
        for fid, meta in self.guard.wait(self.store.functions).items():
            self.functions[fid] = FunctionMeta(meta["retries"], meta["batch_size"])
        self._enqueue(Item(r["id"], r["group_id"], r["function_id"], r["context_key"], r["args"], r["attempts"],
                           (r["history"] or "").splitlines()) for r in rows)
        return len(rows)


def _gave_up(it: Item, last: str) -> str:
    lines = "\n".join(f"  {h}" for h in [*it.history, last])
    return f"invocation {it.id} gave up after {it.attempts} attempts:\n{lines}\n"


def _last_line(tb: str | None) -> str:
    return (tb or "").strip().splitlines()[-1] if tb and tb.strip() else "raised"
