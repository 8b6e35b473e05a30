"""What the dispatcher's passes decided, written to the store in one guarded
transaction before any client or queue sees it.

Outcomes, invocations going back to the queue, dispatch marks, workers seen,
context inits and lost workers collect in a :class:`_Pending`; :meth:`Ledger.commit`
writes them together when due. Outcomes wait for company a small share of
their mean run time (``RESULT_WAIT``, at most ``COMMIT_INTERVAL``): a fleet's
results of long invocations share few transactions, while a no-op's reaches
its client in milliseconds. A write the store refuses is kept whole and
written with a later pass's (:mod:`faas.endpoint.storeguard` retries it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from faas.endpoint.storeguard import StoreDown, StoreGuard
from faas.store import Outcome, State, Store

COMMIT_INTERVAL = 0.05  # seconds: the longest a result waits for others to share its store transaction
RESULT_WAIT = 0.1  # and at most this share of the run time of those waiting (a no-op's is written at once)


class Tracked(Protocol):
    """An invocation as the dispatcher keeps it (only these are read here)."""

    id: str
    group_id: str


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
    outcomes: list[tuple[Outcome, Tracked]] = field(default_factory=list)
    requeue: dict[str, tuple[Tracked, str]] = field(default_factory=dict)
    refund: set[str] = field(default_factory=set)
    workers: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    inits: list[dict] = field(default_factory=list)
    lost_workers: list[tuple[str, float]] = field(default_factory=list)
    dispatched: list[str] = field(default_factory=list)
    file_bytes: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)  # (worker, context) -> counts
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
        self.file_bytes.update(newer.file_bytes)
        if self.first_outcome is None:
            self.first_outcome = newer.first_outcome
        self.run_seconds += newer.run_seconds
        return self


class Ledger:
    def __init__(self, store: Store, guard: StoreGuard):
        self.store = store
        self.guard = guard
        self._p = _Pending()

    # -- what a pass decided ----------------------------------------------------
    def outcome(self, outcome: Outcome, it: Tracked) -> None:
        p = self._p
        p.outcomes.append((outcome, it))
        if p.first_outcome is None:
            p.first_outcome = time.monotonic()
        p.run_seconds += max(0.0, outcome.finished_at - outcome.started_at)

    def requeue(self, it: Tracked, note: str, refund: bool = False) -> None:
        """Back to the queue once this is on record; ``refund``: the attempt did not count."""
        self._p.requeue[it.id] = (it, note)
        if refund:
            self._p.refund.add(it.id)

    def worker(self, name: str, host: str, pid: int) -> None:
        self._p.workers[name] = (name, host, pid)

    def inits(self, inits: list[dict]) -> None:
        self._p.inits += inits

    def lost_worker(self, name: str, at: float) -> None:
        self._p.lost_workers.append((name, at))

    def dispatched(self, ids: list[str]) -> None:
        """Shipped: marked with the next commit, sharing its transaction."""
        self._p.dispatched += ids

    def file_bytes(self, worker: str, counts: dict[str, tuple[int, int]]) -> None:
        """A worker's cumulative bytes of context files, per context: (from the source, from peers)."""
        self._p.file_bytes.update({(worker, key): n for key, n in counts.items()})

    # -- writing it -------------------------------------------------------------
    def due(self) -> float | None:
        """Seconds until what the passes decided must be written (0: now), None
        when there is nothing to write. Losses and returns go at once."""
        p = self._p
        if p.requeue or p.inits or p.lost_workers:
            return 0.0
        if p.outcomes:
            hold = min(COMMIT_INTERVAL, RESULT_WAIT * p.run_seconds / len(p.outcomes))
            return max(0.0, p.first_outcome + hold - time.monotonic())
        if p.dispatched or p.file_bytes:  # no hurry: they ride with the next outcomes, or go alone after the interval
            return max(0.0, p.since + COMMIT_INTERVAL - time.monotonic())
        return None

    def commit(self, force: bool = False) -> tuple[list[Final], list[Tracked]]:
        """Write what is due (or everything, ``force``). Returns the outcomes newly
        on record, to push to clients, and the invocations whose return to the
        queue is on record, to dispatch again.

        Raises StoreDown when the write failed: it is kept, whole, for a later commit."""
        due = self.due()
        if due is None or (due > 0 and not force):
            return [], []
        p, self._p = self._p, _Pending()
        try:
            recorded = self.guard.call(
                self.store.record_outcomes, [o for o, _ in p.outcomes], p.workers.values(), p.inits,
                requeue={i: note for i, (_, note) in p.requeue.items()}, refund=p.refund,
                lost_workers=p.lost_workers, dispatched=p.dispatched, file_bytes=p.file_bytes)
        except StoreDown:
            if p.failing_since is None:
                p.failing_since = time.monotonic()
            self._p = p.then(self._p)
            raise
        finals = {o.id for o, _ in p.outcomes}
        return ([Final(o.id, it.group_id, o.state, o.payload, o.error) for o, it in p.outcomes if o.id in recorded],
                [it for i, (it, _) in p.requeue.items() if i not in finals])  # not cancelled while waiting

    def unrecorded(self) -> bool:
        """Whether anything decided waits to be written (the store failed)."""
        return self._p.failing_since is not None

    def overdue(self) -> list[Final]:
        """Outcomes that have waited for the store longer than its retry window
        and were not refused yet: their clients are told (they stay pending here,
        and are recorded and pushed once the store is back)."""
        p = self._p
        if p.failing_since is None or not self.guard.overdue(p.failing_since):
            return []
        out = [Final(o.id, it.group_id, o.state, None, None) for o, it in p.outcomes if o.id not in p.refused]
        p.refused.update(f.id for f in out)
        return out
