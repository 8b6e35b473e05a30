"""The worker loops, and the indexes the dispatcher places work by, kept
current as batches start and end.

With hundreds of loops, recomputing who has room, who holds each context and
how much of it is in flight on every pass made dispatch cost grow with the
fleet (at 1,488 simulated workers it took half of the daemon's loop). Here
each loop's share of the indexes is recomputed only when that loop changes
(:meth:`Roster.update`), so a pass costs what it ships.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from faas.endpoint.policy import Holders
from faas.endpoint.workers import WorkerLoop

PREFETCH = 2  # batches a loop holds: one running, one queued behind it


@dataclass
class _Share:
    """What one loop adds to the indexes; taken out again before it changes."""

    room: int | None = None  # batches it has, when it is ready and has room for another (not while preloading)
    held: dict[str, float | None] = field(default_factory=dict)  # context -> its rate there (None: not measured)
    parked: set[str] = field(default_factory=set)  # contexts it holds in host memory
    open: dict[str, int] = field(default_factory=dict)  # context -> its invocations sent and not finished
    costs: dict[str, float] = field(default_factory=dict)  # context -> its measured seconds per invocation


class Roster:
    def __init__(self) -> None:
        self.loops: dict[str, WorkerLoop] = {}
        self._shares: dict[str, _Share] = {}
        self._room: list[dict[str, WorkerLoop]] = [{} for _ in range(PREFETCH)]  # by batches held; ordered
        self._holders: dict[str, set[str]] = {}  # context -> loops holding it (loaded, or a batch on its way)
        self._rates: dict[str, list[float]] = {}  # context -> [rate sum, unmeasured holders] over its holders
        self._open: dict[str, int] = {}  # context -> invocations in flight
        self._costs: dict[str, list[float]] = {}  # context -> [seconds-per-invocation sum, loops measured]
        self.unready = 0  # loops started that have not said ready

    def __contains__(self, token: str) -> bool:
        return token in self.loops

    def __len__(self) -> int:
        return len(self.loops)

    def __iter__(self) -> Iterator[WorkerLoop]:
        """Every loop, ready or not (a snapshot: loops may be removed meanwhile)."""
        return iter(list(self.loops.values()))

    def get(self, token: str) -> WorkerLoop | None:
        return self.loops.get(token)

    def add(self, loop: WorkerLoop) -> None:
        self.loops[loop.token] = loop
        self._shares[loop.token] = _Share()
        self.unready += not loop.ready

    def remove(self, token: str) -> WorkerLoop | None:
        loop = self.loops.pop(token, None)
        if loop is not None:
            self._apply(token, self._shares.pop(token), -1)
            self.unready -= not loop.ready
        return loop

    def mark_ready(self, loop: WorkerLoop) -> None:
        if not loop.ready:
            loop.ready = True
            self.unready -= 1
        self.update(loop)

    def update(self, loop: WorkerLoop) -> None:
        """Call after anything of ``loop`` changed: its batches, contexts or rates."""
        if loop.token not in self.loops:
            return
        old, new = self._shares[loop.token], _share_of(loop)
        self._apply(loop.token, old, -1)
        self._apply(loop.token, new, +1)
        self._shares[loop.token] = new

    def ended(self, loop: WorkerLoop, key: str) -> None:
        """One of ``loop``'s invocations of ``key`` left its batch, which goes on
        (the common case, so it costs O(1); a batch that ends takes :meth:`update`)."""
        share = self._shares.get(loop.token)
        if share is not None and share.open.get(key):
            share.open[key] -= 1
            self._open[key] -= 1
            if not self._open[key]:
                del self._open[key]

    # -- what dispatch reads --------------------------------------------------
    def with_room(self, batches: int) -> list[WorkerLoop]:
        """Ready loops holding exactly ``batches`` batches (< PREFETCH), in the order they got room."""
        return list(self._room[batches].values())

    def has_room(self) -> bool:
        return any(self._room)

    def idle(self) -> Iterator[WorkerLoop]:
        """Ready loops without a batch (a snapshot: they may be retired meanwhile)."""
        return iter(list(self._room[0].values()))

    def holds(self, loop: WorkerLoop, key: str) -> bool:
        return key in self._shares[loop.token].held

    def parked(self, loop: WorkerLoop) -> set[str]:
        """Contexts ``loop`` has parked in host memory (a wake away)."""
        return self._shares[loop.token].parked

    def holder_count(self, key: str) -> int:
        return len(self._holders.get(key, ()))

    def holder_tokens(self, key: str) -> set[str]:
        return self._holders.get(key, set())

    def holders(self, key: str, besides: WorkerLoop) -> Holders:
        """The context's holders other than ``besides``, for the batch-size rule."""
        count = self.holder_count(key)
        total, unmeasured = self._rates.get(key, (0.0, 0))
        mine = self._shares[besides.token].held
        if key in mine:
            count -= 1
            rate = mine[key]
            total, unmeasured = (total - rate, unmeasured) if rate is not None else (total, unmeasured - 1)
        return Holders(count, max(0.0, total) if count else 0.0, int(unmeasured))

    def in_flight(self, key: str | None = None) -> int:
        return self._open.get(key, 0) if key is not None else sum(self._open.values())

    def rate(self, key: str) -> float | None:
        """Invocations/s of ``key`` on a worker, averaged over those measured; None: none yet."""
        total, n = self._costs.get(key, (0.0, 0))
        return n / total if n and total > 0 else None

    def cost(self, key: str) -> float:
        """Seconds per invocation of ``key`` on one worker, as measured so far
        (not measured yet: the other contexts' mean), so that workers follow
        the waiting work rather than its count when one model is slower."""
        total, n = self._costs.get(key, (0.0, 0))
        if n:
            return total / n
        means = [t / c for t, c in self._costs.values() if c]
        return sum(means) / len(means) if means else 1.0

    def status(self) -> dict[str, dict[str, dict]]:
        """Per ready loop (by worker name): its warm pool, its start-up timings and its node cache."""
        ready = [lp for lp in self.loops.values() if lp.ready]
        return {"worker_contexts": {lp.name: lp.contexts for lp in ready},
                "worker_prewarm": {lp.name: lp.prewarm for lp in ready},
                "worker_files": {lp.name: lp.files for lp in ready}}

    # -- bookkeeping ----------------------------------------------------------
    def _apply(self, token: str, share: _Share, sign: int) -> None:
        loop = self.loops.get(token)
        if share.room is not None:
            if sign > 0:
                self._room[share.room][token] = loop
            else:
                self._room[share.room].pop(token, None)
        for key, rate in share.held.items():
            holders = self._holders.setdefault(key, set())
            agg = self._rates.setdefault(key, [0.0, 0])
            if sign > 0:
                holders.add(token)
            else:
                holders.discard(token)
            if rate is None:
                agg[1] += sign
            else:
                agg[0] += sign * rate
            if not holders:
                del self._holders[key], self._rates[key]  # drift of the float sum ends with its last holder
        for key, n in share.open.items():
            self._open[key] = self._open.get(key, 0) + sign * n
            if not self._open[key]:
                del self._open[key]
        for key, cost in share.costs.items():
            agg = self._costs.setdefault(key, [0.0, 0])
            agg[0] += sign * cost
            agg[1] += sign
            if not agg[1]:
                del self._costs[key]


def _share_of(loop: WorkerLoop) -> _Share:
    room = loop.ready and len(loop.batches) < PREFETCH and loop.preloading is None
    share = _Share(room=len(loop.batches) if room else None, costs={k: 1.0 / r for k, r in loop.rates.items()},
                   parked={k for k, stats in loop.contexts.items() if stats.get("parked")})
    held = {k for k, stats in loop.contexts.items() if stats.get("loaded")}
    if loop.preloading is not None:
        held.add(loop.preloading)
    for b in loop.batches.values():
        held.add(b.context_key)
        share.open[b.context_key] = share.open.get(b.context_key, 0) + len(b.open)
    share.held = {k: loop.rates.get(k) for k in held}
    return share
