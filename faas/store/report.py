"""Where an endpoint's time went, read from its store: figures per worker and
per context, and the events of its timeline.

Read-only. Counts and sums are aggregated in SQL, so a report over hundreds of
thousands of invocations moves a handful of rows. A call is *cold* when its
context was initialised on its worker while it ran (the warm pool loads a
context inside the call that first needs it), *warm* otherwise.

Used by ``faas-endpoint report`` and by scripts that summarise their own run.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import and_, case, exists, func, select

from faas.store.models import Context, ContextFiles, ContextInit, Invocation, Worker
from faas.store.states import FINAL, State
from faas.store.store import Store

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """A duration back from now (``90s``, ``30m``, ``1h``, ``2d``) or an ISO time
    (``2026-05-01T12:00``, local time unless it carries an offset) -> epoch seconds."""
    match = _DURATION.match(text)
    if match:
        return (time.time() if now is None else now) - float(match[1]) * _UNIT_SECONDS[match[2]]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (90s, 30m, 1h, 2d) nor an ISO time") from None


@dataclass
class Figures:
    """Invocations and context inits of one worker or one context."""

    invocations: int = 0   # with any state; a worker's are those recorded as run by it
    failed: int = 0
    retried: int = 0       # needed more than one attempt
    calls: int = 0         # ran on a worker, so they have a duration
    call_seconds: float = 0.0
    cold_calls: int = 0
    cold_seconds: float = 0.0
    inits: int = 0
    init_failures: int = 0
    init_seconds: float = 0.0  # ok and failed inits
    source_bytes: int = 0  # of context files read from their source into node caches
    peer_bytes: int = 0  # of context files copied from other nodes' caches

    @property
    def mean_call(self) -> float | None:
        return self.call_seconds / self.calls if self.calls else None

    @property
    def mean_cold(self) -> float | None:
        return self.cold_seconds / self.cold_calls if self.cold_calls else None

    @property
    def mean_warm(self) -> float | None:
        warm = self.calls - self.cold_calls
        return (self.call_seconds - self.cold_seconds) / warm if warm else None


@dataclass
class Report:
    since: float | None
    states: dict[str, int]
    first_submitted: float | None
    last_finished: float | None
    workers: dict[str, Figures] = field(default_factory=dict)  # worker id (host:pid) -> figures
    contexts: dict[str, Figures] = field(default_factory=dict)  # context description -> figures

    @property
    def throughput(self) -> float | None:
        """Final invocations per second between the first submission and the last result."""
        done = sum(self.states.get(state.value, 0) for state in FINAL)
        if not done or self.first_submitted is None or self.last_finished is None:
            return None
        span = self.last_finished - self.first_submitted
        return done / span if span > 0 else None


def build_report(store: Store, since: float | None = None) -> Report:
    """Figures for invocations submitted and inits started at or after ``since``."""
    inv = Invocation
    ran = and_(inv.worker_id.is_not(None), inv.worker_id != "", inv.started_at.is_not(None),
               inv.finished_at.is_not(None))
    cold = exists().where(ContextInit.worker_id == inv.worker_id, ContextInit.context_key == inv.context_key,
                          ContextInit.started_at >= inv.started_at, ContextInit.started_at <= inv.finished_at)
    calls = select(
        inv.worker_id, inv.context_key, inv.state, inv.submitted_at, inv.finished_at,
        case((inv.attempts > 1, 1), else_=0).label("retried"),
        case((ran, inv.finished_at - inv.started_at)).label("seconds"),
        case((and_(ran, cold), 1), else_=0).label("cold"),
    )
    if since is not None:
        calls = calls.where(inv.submitted_at >= since)
    calls = calls.subquery()
    failed = case((calls.c.state == State.FAILED, 1), else_=0)
    init_failed = case((ContextInit.error.is_not(None), 1), else_=0)
    inits = select(ContextInit.worker_id, ContextInit.context_key, init_failed.label("failed"),
                   func.count().label("n"), func.sum(ContextInit.seconds).label("seconds"))
    if since is not None:
        inits = inits.where(ContextInit.started_at >= since)
    with store.engine.connect() as conn:
        names = dict(conn.execute(select(Context.key, Context.description)).all())
        states = {s.value: 0 for s in State}
        states.update({s.value: n for s, n in conn.execute(
            select(calls.c.state, func.count()).group_by(calls.c.state))})
        first_submitted, last_finished = conn.execute(
            select(func.min(calls.c.submitted_at), func.max(calls.c.finished_at))).one()
        report = Report(since, states, first_submitted, last_finished)
        for row in conn.execute(select(
                calls.c.worker_id, calls.c.context_key, calls.c.cold, func.count().label("n"),
                func.sum(failed).label("failed"), func.sum(calls.c.retried).label("retried"),
                func.count(calls.c.seconds).label("calls"), func.sum(calls.c.seconds).label("seconds"),
        ).group_by(calls.c.worker_id, calls.c.context_key, calls.c.cold)):
            for figures in _rows_for(report, row.worker_id, names.get(row.context_key, row.context_key)):
                figures.invocations += row.n
                figures.failed += row.failed or 0
                figures.retried += row.retried or 0
                figures.calls += row.calls
                figures.call_seconds += row.seconds or 0.0
                if row.cold:
                    figures.cold_calls += row.calls
                    figures.cold_seconds += row.seconds or 0.0
        for row in conn.execute(inits.group_by(ContextInit.worker_id, ContextInit.context_key, init_failed)):
            for figures in _rows_for(report, row.worker_id, names.get(row.context_key, row.context_key)):
                if row.failed:
                    figures.init_failures += row.n
                else:
                    figures.inits += row.n
                figures.init_seconds += row.seconds or 0.0
        files = select(ContextFiles.worker_id, ContextFiles.context_key, ContextFiles.source_bytes,
                       ContextFiles.peer_bytes)
        for row in conn.execute(files.where(ContextFiles.updated_at >= since) if since is not None else files):
            for figures in _rows_for(report, row.worker_id, names.get(row.context_key, row.context_key)):
                figures.source_bytes += row.source_bytes
                figures.peer_bytes += row.peer_bytes
    return report


def _rows_for(report: Report, worker_id: str | None, context: str) -> list[Figures]:
    """The worker's and the context's figures that a store row adds to (no
    worker row for invocations that never ran or were given up)."""
    rows = [report.contexts.setdefault(context, Figures())]
    if worker_id:
        rows.append(report.workers.setdefault(worker_id, Figures()))
    return rows


_COLUMNS = ("inits", "init s", "failed inits", "invocations", "mean s", "cold s", "warm s", "failed", "retried",
            "source MB", "peer MB")


def render_text(report: Report) -> str:
    """The report as aligned plain-text tables."""
    def when(t: float | None) -> str:
        return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t is not None else "-"

    def secs(v: float | None) -> str:
        return f"{v:.3f}" if v is not None else "-"

    def table(title: str, rows: dict[str, Figures]) -> list[str]:
        width = max([len(title), *map(len, rows)])
        out = [f"{title:<{width}}  " + "  ".join(f"{c:>{max(len(c), 7)}}" for c in _COLUMNS)]
        for name, f in sorted(rows.items()):
            values = (f.inits, f"{f.init_seconds:.2f}", f.init_failures, f.invocations, secs(f.mean_call),
                      secs(f.mean_cold), secs(f.mean_warm), f.failed, f.retried, f"{f.source_bytes / 1e6:.1f}",
                      f"{f.peer_bytes / 1e6:.1f}")
            out.append(f"{name:<{width}}  " + "  ".join(f"{v!s:>{max(len(c), 7)}}"
                                                         for c, v in zip(_COLUMNS, values)))
        return out

    total = sum(report.states.values())
    rate = report.throughput
    lines = [
        f"since {when(report.since)}" if report.since is not None else "all records",
        f"invocations: {total} (" + ", ".join(f"{k} {v}" for k, v in report.states.items()) + ")",
        f"first submitted {when(report.first_submitted)}, last finished {when(report.last_finished)}"
        + (f": {rate:.3f} invocations/s" if rate is not None else ""),
        "",
        *table("worker", report.workers),
        "",
        *table("context", report.contexts),
        "",
        "mean/cold/warm s: seconds per call on its worker; cold calls initialised their context",
        "source/peer MB: context files copied into node caches from their source and from other nodes",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Timeline:
    """Events to draw: when each worker was active, when invocations finished,
    and each context init (worker, started_at, seconds, ok)."""

    workers: list[tuple[str, float, float]]
    finished: list[float]
    inits: list[tuple[str, float, float, bool]]


def build_timeline(store: Store, since: float | None = None) -> Timeline:
    """A worker is active from its first recorded activity (a call or an init)
    to its loss or last report: the store does not see idle connected workers."""
    inv = Invocation
    first_call = (select(inv.worker_id, func.min(inv.started_at).label("t"))
                  .where(inv.worker_id.is_not(None)).group_by(inv.worker_id).subquery())
    first_init = (select(ContextInit.worker_id, func.min(ContextInit.started_at).label("t"))
                  .group_by(ContextInit.worker_id).subquery())
    spans = (select(Worker.id, Worker.first_seen, Worker.last_seen, Worker.lost_at,
                    first_call.c.t.label("first_call"), first_init.c.t.label("first_init"))
             .outerjoin(first_call, first_call.c.worker_id == Worker.id)
             .outerjoin(first_init, first_init.c.worker_id == Worker.id))
    finished = (select(inv.finished_at).where(inv.state.in_(FINAL),
                                              inv.finished_at.is_not(None)).order_by(inv.finished_at))
    inits = select(ContextInit.worker_id, ContextInit.started_at, ContextInit.seconds,
                   ContextInit.error.is_(None)).order_by(ContextInit.started_at)
    if since is not None:
        spans = spans.where(func.coalesce(Worker.lost_at, Worker.last_seen) >= since)
        finished = finished.where(inv.submitted_at >= since)
        inits = inits.where(ContextInit.started_at >= since)
    with store.engine.connect() as conn:
        workers = []
        for w in conn.execute(spans):
            start = min(t for t in (w.first_seen, w.first_call, w.first_init) if t is not None)
            end = w.lost_at if w.lost_at is not None else w.last_seen
            workers.append((w.id, start if since is None else max(start, since), end))
        return Timeline(sorted(workers, key=lambda w: w[1]), list(conn.scalars(finished)),
                        [tuple(r) for r in conn.execute(inits)])
