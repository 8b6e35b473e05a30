"""What ``faas dashboard`` shows, answered by the daemon from what it keeps in memory.

Watching the fleet must not slow it down (Dask's graph page starves its
scheduler beyond 100k tasks: dask/distributed#4055), so a view is built from:

- the dispatcher's own books as they stand: worker loops, their contexts,
  batches, memory and prewarm timings, the backlog;
- bounded rings fed by the ledger after each commit (:class:`Recorded`): the
  invocation stream (the last ``STREAM`` ends), recent failures, lost workers,
  context inits and per-second series of completions, latency and workers;
- the store only for the counts by state, counted once when a dashboard first
  asks (and again after this daemon purged) and then kept current from the
  commits, and for one invocation's record by its id, when a failure is opened.

Nothing a request does grows with the store or with the run.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from faas import protocol
from faas.endpoint.dispatcher import Dispatcher
from faas.endpoint.ledger import Recorded
from faas.store import FINAL, State, Store

log = logging.getLogger(__name__)
STREAM = 2000  # invocation ends kept for the stream (Dask's task stream keeps about as many)
FAILURES = 100
LOSSES = 200
INITS = 500
SERIES = 1800  # seconds of per-second series: the last 30 minutes


class FleetView:
    def __init__(self, store: Store, dispatcher: Dispatcher, status: Callable[[], dict[str, Any]], started_at: float):
        self.store, self.dispatcher, self.status, self.started_at = store, dispatcher, status, started_at
        dispatcher.ledger.watchers.append(self._recorded)
        self._counts: Counter[str] | None = None  # final states: from the store once asked, then from commits
        self._purged_seen = 0
        self._seq = itertools.count(1)
        self._last = 0  # the newest stream event's number
        self._stream: deque[tuple] = deque(maxlen=STREAM)  # (n, worker, started, finished, state)
        self._failures: deque[dict] = deque(maxlen=FAILURES)
        self._losses: deque[dict] = deque(maxlen=LOSSES)
        self._inits: deque[tuple] = deque(maxlen=INITS)  # (worker, context, started_at, seconds, ok)
        # [second, completed, failed, cancelled, latency sum, latency max, workers ready]
        self._series: deque[list] = deque(maxlen=SERIES)
        self._runs: dict[str, Counter[str]] = {}  # worker -> its invocations by final state

    # -- fed by the ledger, after each commit -------------------------------------
    def _recorded(self, rec: Recorded) -> None:
        now = time.time()
        bucket = self._bucket(now)
        for o, it in rec.outcomes:
            state = o.state.value
            if self._counts is not None:
                self._counts[state] += 1
            latency = max(0.0, now - getattr(it, "submitted", now))
            bucket[1 + (o.state is State.FAILED) + 2 * (o.state is State.CANCELLED)] += 1
            bucket[4] += latency
            bucket[5] = max(bucket[5], latency)
            if o.worker_id:
                self._runs.setdefault(o.worker_id, Counter())[state] += 1
                self._last = next(self._seq)
                self._stream.append((self._last, o.worker_id, o.started_at, o.finished_at, state))
            if o.state is State.FAILED:
                self._failures.append({"id": o.id, "worker": o.worker_id, "finished": o.finished_at or now,
                                       "attempts": getattr(it, "attempts", None), "reason": _reason(o.error)})
        for i in rec.inits:
            self._inits.append((i.get("worker_id"), i.get("description") or i.get("context_key"),
                                i.get("started_at"), i.get("seconds"), i.get("error") is None))
        for worker, at, cause in rec.lost_workers:
            runs = self._runs.pop(worker, Counter())
            self._losses.append({"worker": worker, "at": at, "cause": cause, "invocations": sum(runs.values())})

    def _bucket(self, now: float) -> list:
        second = int(now)
        if not self._series or self._series[-1][0] < second:
            loops = self.dispatcher.loops
            self._series.append([second, 0, 0, 0, 0.0, 0.0, len(loops) - loops.unready])
        return self._series[-1]

    # -- a dashboard asks ------------------------------------------------------------
    def answer(self, msg: protocol.FleetRequest) -> dict[str, Any]:
        return self.invocation(msg.invocation) if msg.invocation is not None else self.view(msg.after)

    def invocation(self, inv_id: str) -> dict[str, Any]:
        """One invocation's record (a lookup by primary key)."""
        try:
            return {"invocation": self.store.invocation(inv_id)}
        except Exception as e:  # the store is failing: the dashboard says so, the daemon goes on
            return {"invocation": None, "error": f"the store cannot be read: {type(e).__name__}: {e}"}

    def view(self, after: int = 0) -> dict[str, Any]:
        """The whole view; of the stream only the events after ``after``."""
        now = time.time()
        self._bucket(now)
        d = self.dispatcher
        status = self.status()
        newer = list(itertools.takewhile(lambda e: e[0] > after, reversed(self._stream)))[::-1]
        return {
            "name": status["name"], "time": now, "uptime": status["uptime"], "started_at": self.started_at,
            "store_failing": status["store_failing"], "managers": status["managers"],
            "worker_slots": status["worker_slots"], "backlog": d.backlog(),
            "invocations": self._invocation_counts(),
            "workers": [self._worker(loop, now) for loop in d.loops],
            "contexts": self._contexts(),
            "cursor": self._last, "stream": [list(e) for e in newer],
            "failures": list(self._failures), "losses": list(self._losses),
            "inits": [list(i) for i in self._inits], "series": [list(b) for b in self._series],
        }

    def _invocation_counts(self) -> dict[str, int] | None:
        store, d = self.store, self.dispatcher
        if self._counts is None or store.purged != self._purged_seen:
            try:  # the one count that reads the whole store: when first asked, and after a purge
                self._purged_seen = store.purged
                counts = store.counts_by_state()
            except Exception as e:
                log.warning("the dashboard's counts cannot be read from the store: %s", e)
                return None
            self._counts = Counter({s.value: counts.get(s.value, 0) for s in FINAL})
        flight = d.in_flight()
        return {State.PENDING.value: max(0, len(d.items) - flight), State.DISPATCHED.value: flight,
                **{s.value: self._counts[s.value] for s in FINAL}}

    def _worker(self, loop, now: float) -> dict[str, Any]:
        runs = self._runs.get(loop.name, Counter()) if loop.ready else Counter()
        return {"name": loop.name if loop.ready else f"(starting {loop.token[:8]})", "host": loop.host,
                "pid": loop.pid, "state": "busy" if loop.batches else "idle" if loop.ready else "starting",
                "running": len(loop.running), "queued": loop.outstanding() - len(loop.running),
                "invocations": sum(runs.values()), "failed": runs[State.FAILED.value],
                "contexts": loop.contexts, "prewarm": loop.prewarm, "resources": loop.resources, "files": loop.files,
                "rates": loop.rates, "silent_for": time.monotonic() - loop.last_heard if loop.ready else None}

    def _contexts(self) -> list[dict[str, Any]]:
        """Per context: where it is held, loading or queued, and each numeric
        statistic of the workers' warm pools summed (a flag counts its workers),
        whatever fields the pools report."""
        d = self.dispatcher
        out: dict[str, dict[str, Any]] = {}
        for loop in d.loops:
            for key, stats in loop.contexts.items():
                row = out.setdefault(key, _context_row(key, stats.get("description")))
                for field, value in stats.items():
                    if isinstance(value, (bool, int, float)) and field != "last_used":
                        row["stats"][field] = row["stats"].get(field, 0) + value
            for batch in loop.batches.values():
                row = out.setdefault(batch.context_key, _context_row(batch.context_key, None))
                if not loop.contexts.get(batch.context_key, {}).get("loaded"):
                    row["loading"] += 1
        for key, queue in d.queues.items():
            out.setdefault(key, _context_row(key, None))["queued"] = len(queue)
        for key, row in out.items():
            row["holders"], row["in_flight"] = d.loops.holder_count(key), d.loops.in_flight(key)
        return list(out.values())


def _context_row(key: str, description: str | None) -> dict[str, Any]:
    return {"key": key, "description": description or key[:12], "holders": 0, "loading": 0, "queued": 0,
            "in_flight": 0, "stats": {}}


def _reason(error: str | None) -> str:
    """A failure's reason: the last line of its traceback (the exception), or the platform's word."""
    lines = (error or "").strip().splitlines()
    return lines[-1][:300] if lines else "failed"
