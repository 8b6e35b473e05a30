"""Places invocations on the workers that hold their context, and keeps the
record of what each one is doing.

Invocations wait here, per context. Each Parsl worker runs a loop task
(faas.warm_pool.loop) that pulls from the endpoint; when a loop has room (one
batch running, one queued behind it) placement picks a context and a batch
size for it (:mod:`faas.endpoint.placement`, by :mod:`faas.endpoint.policy`'s
rules), so workers keep to their warm contexts, holders follow each context's
demand, and batches follow the backlog and each worker's measured speed; a
joining loop may first preload the context most short of holders. Who has room
and who holds which context is kept by :mod:`faas.endpoint.roster`; retirement
and the other periodic looks are :mod:`faas.endpoint.upkeep`'s.

Batches are the unit of dispatch only. Loops report each invocation as it
starts and as it ends (``progress``); each outcome is recorded, with the
others of the server's passes, in one transaction (:mod:`faas.endpoint.ledger`)
before any client is told. A lost worker costs only its unfinished invocations,
and an attempt only those of the context it was running (policy.blamed_contexts).
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
from typing import TYPE_CHECKING

from faas import protocol
from faas.endpoint import policy
from faas.endpoint.config import EndpointConfig
from faas.endpoint.items import FunctionMeta, Item, gave_up, loss_note
from faas.endpoint.ledger import Final, Ledger
from faas.endpoint.peers import PeerIndex
from faas.endpoint.placement import Placement
from faas.endpoint.policy import Step
from faas.endpoint.roster import Roster
from faas.endpoint.storeguard import StoreGuard
from faas.endpoint.upkeep import Upkeep
from faas.endpoint.workers import LoopBatch, WorkerLoop
from faas.errors import last_line
from faas.function import NO_CONTEXT
from faas.lru import ByteLRU
from faas.protocol import Kind
from faas.store import Outcome, State, Store

if TYPE_CHECKING:
    from faas.endpoint.engine import Engine

log = logging.getLogger(__name__)
ROW_SLACK = 2**16  # bytes of a stored invocation's row besides its arguments and result
IDLE_LOSSES = 3  # workers lost in a row with nothing to run: reported (once) as a failure of the workers
_STATE = {Step.SUCCEEDED: State.SUCCEEDED, Step.FAILED: State.FAILED, Step.CANCELLED: State.CANCELLED}


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
        self.loops = Roster()  # the loops, and who has room and holds what
        self.functions: dict[str, FunctionMeta] = {}
        self.outbox: list[tuple[str, list[bytes]]] = []  # (loop token, message) for the server to send
        self.started: list[Item] = []  # invocations that started since the last call of take_started
        self.ledger = Ledger(store, guard)  # what the passes decided, written in one transaction
        self.peers = PeerIndex(self.loops, self.ledger, config.warm_pool.peer_copy)  # who holds which files
        self.placement = Placement(self.queues, self.loops, self.functions, config)
        self.upkeep = Upkeep(self.loops, self.items, engine, self.placement, config.engine.max_idletime,
                             self.outbox)
        self._idle_losses = 0  # ready loops lost in a row holding nothing
        self._batch_ids = itertools.count(1)
        self._bodies = ByteLRU(int(config.warm_pool.function_cache_bytes))  # the store has them all
        pool = config.warm_pool
        self._settings = protocol.WorkerSettings(
            idle_timeout=pool.idle_timeout, output_log_level=pool.output_log_level,
            memory_budget=int(pool.memory_budget) if pool.memory_budget is not None else None,
            host_budget=int(pool.host_budget) if pool.host_budget is not None else None,
            timeout=config.dispatch.invocation_timeout, timeout_grace=config.dispatch.timeout_grace,
            # a larger result fails its own invocation on the worker, not its batch's record here
            max_result_bytes=min(config.max_payload_bytes, store.max_value_bytes - ROW_SLACK),
            function_cache_bytes=int(pool.function_cache_bytes))

    # -- intake -------------------------------------------------------------
    def register_function(self, fid: str, body: bytes, info: protocol.FunctionInfo) -> None:
        self._bodies.put(fid, body)
        self.functions[fid] = FunctionMeta(info.retries, info.batch_size, info.context_key, info.context)

    def submit(self, items: Iterable[Item]) -> None:
        """New work from a client (a context whose loader failed gets a fresh chance: its files may be fixed)."""
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
        return self.loops.in_flight()

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
            self.loops.add(loop)
            loop.future = self.engine.start_loop(loop.token, self.link)
            loop.future.add_done_callback(lambda f, t=loop.token: self.notify(t, f))

    def on_ready(self, token: str, msg: protocol.Ready) -> None:
        loop = self.loops.get(token)
        if loop is None:  # retired or lost meanwhile
            self.outbox.append((token, protocol.encode(protocol.Retire())))
            return
        loop.host, loop.pid, loop.contexts = msg.host, msg.pid, msg.contexts
        loop.idle_since, loop.last_heard = time.monotonic(), time.monotonic()
        loop.prewarm, loop.resources = msg.prewarm, msg.resources
        self.peers.update(loop, msg.files)
        self.loops.mark_ready(loop)
        log.info("worker %s ready %.1fs after its loop started (imports %s, CUDA %s)", loop.name,
                 msg.prewarm.get("ready_after", 0.0), msg.prewarm.get("imports", {}), msg.prewarm.get("cuda"))
        self.outbox.append((token, protocol.encode(protocol.Heartbeat())))
        if (key := self.placement.preload_for(loop, time.monotonic())) is not None:
            self._preload(loop, key)

    def _preload(self, loop: WorkerLoop, key: str) -> None:
        """Have a joining loop load ``key`` before work reaches it (it gets none
        until it says the load ended), with the body of one of its functions."""
        fid = next((f for f, m in self.functions.items() if m.context_key == key and f in self._bodies), None)
        if fid is None:
            return
        bodies = [] if fid in loop.sent_functions else [self._bodies.get(fid)]
        loop.sent_functions.add(fid)
        loop.preloading = key
        self.loops.update(loop)
        msg = protocol.Preload(context_key=key, function=fid, functions=[fid] if bodies else [],
                               peers=self.peers.for_batch(loop, key))
        self.outbox.append((loop.token, protocol.encode(msg, bodies)))

    def heard(self, token: str, resources: dict | None = None) -> None:
        if (loop := self.loops.get(token)) is not None:
            loop.last_heard, loop.resources = time.monotonic(), resources or loop.resources

    def heartbeat(self, read_until: float) -> None:
        """Beat to every ready loop; a loop silent past the threshold is lost.
        Silent as of ``read_until``, when the worker socket was last read to the
        end: a daemon behind on its socket (thousands of loops) must not take
        the messages still waiting there for silence."""
        beat = protocol.encode(protocol.Heartbeat())
        for loop in self.loops:
            if not loop.ready:
                continue
            if read_until - loop.last_heard > self.cfg.engine.heartbeat_threshold:
                self.lose(loop.token, f"silent for {read_until - loop.last_heard:.0f}s")
            else:
                self.outbox.append((loop.token, beat))

    def on_loop_end(self, token: str, fut: Future) -> None:
        """A loop task ended: retired, lost with its worker, or its endpoint link
        fell silent. Whatever it still held runs again elsewhere."""
        try:
            cause = f"loop ended ({fut.result()})"
        except Exception as e:
            cause = f"{type(e).__name__}: {e}"
        self.lose(token, cause)

    def lose(self, token: str, cause: str) -> None:
        """A loop lost with its worker: only invocations of the context it was
        running (or loading) lose an attempt; the others go back as they were."""
        loop = self.loops.remove(token)
        if loop is None:
            return
        open_ids = [i for b in loop.batches.values() for i in b.open]
        if loop.preloading is not None:  # its loader may take every worker that preloads it down
            self.placement.load_failed(loop.preloading)
        if loop.ready:
            self.ledger.lost_worker(loop.name, time.time(), cause)
            self._idle_losses = 0 if open_ids else self._idle_losses + 1
            if self._idle_losses == IDLE_LOSSES:  # once, until work is done again
                log.error("%d workers in a row were lost with nothing to run (the workers themselves fail; see their "
                          "logs under the endpoint's runinfo/), the latest %s: %s", IDLE_LOSSES, loop.name, cause)
        if not open_ids:
            return
        log.warning("worker loop %s lost with %d invocations: %s", loop.name, len(open_ids), cause)
        blamed = policy.blamed_contexts({self.items[i].context_key for i in loop.running},
                                        [b.context_key for b in loop.batches.values()])
        now = time.time()
        for inv_id in open_ids:
            it = self.items[inv_id]
            if it.cancel_requested:
                self._final(it, Step.CANCELLED, None, None, "", now, now)
                continue
            step = policy.after_loss(it.attempts, self.cfg.dispatch.max_attempts, it.context_key in blamed,
                                     it.returned)
            loading = it.context_key != NO_CONTEXT and not loop.contexts.get(it.context_key, {}).get("loaded")
            note = loss_note(it, loop.name, cause, step is not Step.RETURN,
                             self.functions.get(it.function_id, FunctionMeta()).context or it.context_key, loading)
            if step is Step.RETURN:
                it.attempts -= 1
                it.returned += 1
                self._requeue(it, note, refund=True)
            elif step is Step.RETRY:
                self._requeue(it, note)
            else:
                self._final(it, Step.FAILED, None, gave_up(it, note), "", now, now)

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
        if loop.preloading in msg.preloaded:
            loop.preloading, loop.idle_since = None, now
        if msg.contexts is not None or msg.preloaded:
            self.loops.update(loop)
        self.peers.update(loop, msg.files)
        worker = loop.name
        loop.sent_functions.difference_update(msg.dropped_functions)  # before outcomes: returned ones need them
        if msg.loading is not None:  # it waits for this before it runs the loader (see policy.blamed_contexts)
            self.outbox.append((token, protocol.encode(protocol.LoadAck(context_key=msg.loading))))
        for inv_id in msg.started:
            it = self.items.get(inv_id)
            if it is not None and it.loop == token:
                loop.running[inv_id] = now
                self.started.append(it)
        if msg.inits:
            for e in msg.inits:
                if e.error is None:
                    self.placement.loaded(e.context_key, e.seconds)
                else:
                    self.placement.load_failed(e.context_key)
                batch = next((b for b in loop.batches.values() if b.context_key == e.context_key), None)
                if batch is not None:
                    batch.loading += e.seconds
            self.ledger.worker(worker, loop.host, loop.pid)
            self.ledger.inits([dict(e.model_dump(), worker_id=worker) for e in msg.inits])
        if msg.outcomes:
            self._idle_losses = 0
            self.ledger.worker(worker, loop.host, loop.pid)
        for info, payload in zip(msg.outcomes, payloads):
            it = self.items.get(info.id)
            if it is None or it.loop != token:
                continue  # a late duplicate, or revoked meanwhile
            batch = loop.batches[it.batch]
            if info.kind is Kind.OK and not batch.last_finished and batch.context_key not in loop.rates:
                # a first speed from its first call (less its load), long before the batch ends: placement
                # shares the fleet by the contexts' costs
                loop.measured(batch.context_key, 1, info.finished - info.started - batch.loading)
                self.loops.update(loop)
            if info.kind is not Kind.RETURNED:
                batch.first_started = min(batch.first_started, info.started)
                batch.last_finished = max(batch.last_finished, info.finished)
            try:
                self._on_outcome(it, info, payload, worker)
            except Exception as e:  # a fault here must not strand the message's other outcomes, nor this one
                log.exception("handling the outcome of invocation %s failed; it fails", it.id)
                if it.id in self.items:
                    self._final(it, Step.FAILED, None, f"the endpoint failed to handle its outcome: "
                                f"{type(e).__name__}: {e}", worker, info.started, info.finished)

    def _on_outcome(self, it: Item, info: protocol.OutcomeInfo, payload: bytes, worker: str) -> None:
        fn = self.functions.get(it.function_id, FunctionMeta())
        key = it.context_key
        step = policy.after_attempt(info.kind, it.attempts, fn.retries, it.cancel_requested, it.init_failures > 0)
        if info.kind is Kind.INIT_ERROR:
            it.init_failures += 1
        if step in (Step.RETURN, Step.RETRY):  # their note; a result needs none
            where = f"on {worker} at {time.strftime('%H:%M:%S')}"
        if step is Step.RETURN:
            it.attempts -= 1
            self._requeue(it, f"returned unstarted {where}", refund=True)
        elif step is Step.RETRY:
            if info.kind is Kind.INIT_ERROR:
                self._requeue(it, f"attempt {it.attempts} {where}: context init failed")
            else:
                self._requeue(it, f"attempt {it.attempts} {where}: {last_line(info.error)}")
        else:
            self._final(it, step, payload if step is not Step.CANCELLED else None, info.error, worker,
                        info.started, info.finished, info.output)
            if info.kind is Kind.INIT_ERROR:  # failed twice: fail the waiting ones too, not try forever
                waiting = self.queues.pop(key, deque())
                log.warning("context %s failed to initialise again; failing %d waiting invocations", key,
                            len(waiting))
                for other in waiting:
                    self._final(other, Step.FAILED, payload, info.error, "", time.time(), time.time())

    def _batch_done(self, loop: WorkerLoop, batch: LoopBatch) -> None:
        del loop.batches[batch.id]
        self.placement.last_used[batch.context_key] = time.monotonic()
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
            if batch.open:
                self.loops.ended(loop, batch.context_key)
            else:
                self._batch_done(loop, batch)
                self.loops.update(loop)

    def _requeue(self, it: Item, note: str, refund: bool = False) -> None:
        self._detach(it)
        it.loop = None
        it.history.append(note)
        self.ledger.requeue(it, note, refund)

    def _final(self, it: Item, step: Step, payload: bytes | None, error: str | None, worker: str,
               started: float, finished: float, output: list | None = None) -> None:
        self._detach(it)
        self.items.pop(it.id, None)
        it.loop = None
        if payload and len(payload) + len(it.args) + ROW_SLACK > self.store.max_value_bytes:
            # with its arguments, more than a row of the store takes: failing it keeps its batch recordable
            step, error = Step.FAILED, (f"its result ({len(payload)} bytes) and arguments ({len(it.args)} bytes) "
                                        f"are more than the store takes in one row ({self.store.max_value_bytes} "
                                        f"bytes): the result was not recorded")
            payload = None
        self.ledger.outcome(Outcome(it.id, _STATE[step], payload, error, worker, started, finished, output), it)

    def take_started(self) -> list[Item]:
        started, self.started = self.started, []
        return [it for it in started if not it.cancel_requested]

    # -- the passes' one transaction ------------------------------------------
    def commit(self, force: bool = False) -> list[Final]:
        """Write what the passes decided when due (see :class:`Ledger`); requeued
        invocations then become dispatchable. Returns the newly final ones, to
        push to clients. Raises StoreDown when the write failed (it is kept)."""
        finals, requeued = self.ledger.commit(force)
        self._enqueue(requeued)
        return finals

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
            self.placement.fill(now, self._ship, self.upkeep.held_up)
        engine, loops = self.engine, self.loops
        if self.queues and not loops.unready and len(loops) < engine.max_loops:
            self.start_loops(min(engine.loops_per_block, engine.max_loops - len(loops)))
        elif len(loops) < engine.min_loops:
            self.start_loops(engine.min_loops - len(loops))
        if self.upkeep.due(now):
            self.upkeep.run(now, queued=bool(self.queues))

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
        self.ledger.dispatched([it.id for it in items])  # marked with the next commit
        for it in items:
            it.attempts += 1
            it.loop, it.batch = loop.token, batch.id
        loop.sent_functions.update(fids)
        loop.batches[batch.id] = batch
        self.loops.update(loop)
        msg = protocol.Batch(batch=batch.id, functions=fids, items=[(it.id, it.function_id) for it in items],
                             settings=self._settings, peers=self.peers.for_batch(loop, key))
        self.outbox.append((loop.token, protocol.encode(msg, [*(bodies[f] for f in fids),
                                                              *(it.args for it in items)])))

    def recover(self) -> int:
        """After a restart: every invocation not final goes back to the queue."""
        rows = self.guard.wait(self.store.unfinished)
        self.guard.wait(self.store.requeue, {r["id"]: f"attempt {r['attempts']}: interrupted by an endpoint restart"
                                             for r in rows if r["state"] is State.DISPATCHED})
        for fid, meta in self.guard.wait(self.store.functions).items():
            self.functions[fid] = FunctionMeta(meta["retries"], meta["batch_size"], meta["context_key"],
                                               meta["context"])
        self._enqueue(Item(r["id"], r["group_id"], r["function_id"], r["context_key"], r["args"], r["attempts"],
                           (r["history"] or "").splitlines()) for r in rows)
        return len(rows)

