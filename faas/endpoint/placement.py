"""Where work goes: which loop serves which context, how much of it, and which
context a joining loop preloads. The rules are :mod:`faas.endpoint.policy`'s;
this applies them to the dispatcher's queues and the roster's indexes.

Holders follow demand: per pass, each context with work gets a target number
of holders (:func:`policy.target_holders`): its share of the fleet in
proportion to its work (waiting and running, at its measured cost), so that
the contexts' holders finish together, capped where more holders would not
pay for their loads. A hot context spreads to the workers its work needs and
a cold one frees them. A context is *live* while it has work waiting or
running, or was used within ``warm_pool.idle_timeout``: it keeps
``warm_pool.min_holders`` holders (:meth:`Placement.kept`), which are neither
retired nor release it for idleness. A loop's parked contexts (in host memory)
are almost warm: moving to one costs a wake, not a load.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from faas.endpoint import policy
from faas.endpoint.config import EndpointConfig
from faas.endpoint.roster import PREFETCH, Roster
from faas.endpoint.workers import WorkerLoop
from faas.function import NO_CONTEXT

if TYPE_CHECKING:
    from faas.endpoint.items import FunctionMeta


class Placement:
    def __init__(self, queues: dict[str, deque[Any]], loops: Roster, functions: dict[str, FunctionMeta],
                 config: EndpointConfig):
        self.queues, self.loops, self.functions, self.cfg = queues, loops, functions, config
        self.load_seconds: dict[str, float] = {}  # context -> how long a worker takes to load it, smoothed
        self.last_used: dict[str, float] = {}  # context -> when it last had work shipped or finished (monotonic)
        # contexts whose loader failed (or took its worker down while preloading): loaded only with work, whose
        # attempts then count, until a load succeeds (a loader that crashes its process would otherwise take
        # down every worker that joins, and a broken one run again for each)
        self.unpreloadable: set[str] = set()
        # loops whose current invocation runs far longer than usual (kept by Upkeep): they do not count as
        # holders, so that an idle worker takes the work they hold up (its measured cost may be far off)
        self.held_up: set[str] = set()

    def loaded(self, key: str, seconds: float) -> None:
        """A loop reported a load of ``key`` that took ``seconds``."""
        old = self.load_seconds.get(key)
        self.load_seconds[key] = seconds if old is None else 0.7 * old + 0.3 * seconds
        self.unpreloadable.discard(key)

    def load_failed(self, key: str) -> None:
        self.unpreloadable.add(key)

    def live(self, key: str, now: float) -> bool:
        """Work waits or runs, or it was used within the idle timeout (None: forever)."""
        if key in self.queues or self.loops.in_flight(key):
            return True
        idle = self.cfg.warm_pool.idle_timeout
        return key in self.last_used and (idle is None or now - self.last_used[key] <= idle)

    def targets(self, now: float) -> dict[str, float]:
        """Holders each context with work, or live, should have (plain
        functions, with nothing to load: a worker per invocation)."""
        floor = self.cfg.warm_pool.min_holders
        out = {k: float(floor) for k in self.last_used if k != NO_CONTEXT and self.live(k, now)} if floor else {}
        counts = {k: len(q) + self.loops.in_flight(k) for k, q in self.queues.items()}
        work = {k: n * self.loops.cost(k) for k, n in counts.items()}
        shares = policy.fleet_shares(work, len(self.loops))  # loops on their way too: the fleet it is getting
        for k, n in counts.items():
            out[k] = float(n) if k == NO_CONTEXT else policy.target_holders(
                len(self.queues[k]) * self.loops.cost(k), n, self.load_seconds.get(k, 0.0), shares.get(k, 0.0),
                True, floor)
        return out

    # -- filling loops with room ------------------------------------------------
    def fill(self, now: float, ship: Callable[[WorkerLoop, str, int], None],
             held_up: Callable[[WorkerLoop, float], bool]) -> None:
        """Fill the loops that have room, least loaded first. Only the loops with
        room are visited, and the roster's sums stand in for the holders: a
        pass costs what it ships, not the size of the fleet."""
        levels = [self.loops.with_room(n) for n in range(PREFETCH)]
        if not any(levels):
            return  # most passes under load: every loop holds its batches
        targets = self.targets(now)
        for n in range(PREFETCH):
            for loop in levels[n]:  # grows as loops of the level before get a batch
                if not self.queues:
                    return
                if loop.token not in self.loops or len(loop.batches) != n or held_up(loop, now):
                    continue
                parked = self.loops.parked(loop)
                key = policy.choose_context({k for k in self.queues if self.loops.holds(loop, k)},
                                            {k: len(q) * self.loops.cost(k) for k, q in self.queues.items()},
                                            self._holder_counts(), targets, parked)
                if not key or n and not self.loops.holds(loop, key):
                    continue  # it moves to another context once free: not with that one's work waiting behind its own
                if not (size := self.batch_size(loop, key, key in parked)):
                    continue  # left idle: the others finish sooner
                self.last_used[key] = now
                ship(loop, key, size)
                if len(loop.batches) < PREFETCH:
                    levels[len(loop.batches)].append(loop)

    def _holder_counts(self) -> dict[str, int]:
        """Holders of each context with work, less those held up."""
        counts = {k: self.loops.holder_count(k) for k in self.queues}
        for token in self.held_up:
            if (loop := self.loops.get(token)) is not None:
                for k in counts:
                    counts[k] -= self.loops.holds(loop, k)
        return counts

    def batch_size(self, loop: WorkerLoop, key: str, parked: bool) -> int:
        queue = self.queues[key]
        fn = self.functions.get(queue[0].function_id)
        if self.loops.holds(loop, key):
            load = 0.0
        elif parked:  # a wake: its measured time on this loop (none yet: free)
            stats = loop.contexts.get(key, {})
            load = stats.get("wake_seconds", 0.0) / max(1, stats.get("wakes", 0))
        else:
            load = self.load_seconds.get(key, 0.0)
        return policy.batch_size(policy.LoopLoad(loop.rates.get(key), loop.outstanding()),
                                 self.loops.holders(key, besides=loop), len(queue), self.loops.in_flight(key),
                                 self.cfg.dispatch.max_batch, self.cfg.dispatch.max_batch_seconds,
                                 min_batch=fn.batch_size if fn else 1, load=load)

    # -- holders ----------------------------------------------------------------
    def preload_for(self, loop: WorkerLoop, now: float) -> str | None:
        """The context a joining loop should load before work reaches it (the
        one furthest short of its holders), if any."""
        targets = self.targets(now)
        for key in (NO_CONTEXT, *self.unpreloadable):
            targets.pop(key, None)
        holds = {k for k in targets if self.loops.holds(loop, k)}
        return policy.preload(holds, targets, {k: self.loops.holder_count(k) for k in targets},
                              {k: len(q) * self.loops.cost(k) for k, q in self.queues.items()})

    def kept(self, now: float) -> dict[str, frozenset[str]]:
        """Loop token -> the live contexts it must keep: ``min_holders`` holders
        of each (the same ones while they hold it), never retired, never told
        to release it for idleness."""
        floor = self.cfg.warm_pool.min_holders
        if not floor:
            return {}
        out: dict[str, set[str]] = {}
        for key in {*self.queues, *self.last_used} - {NO_CONTEXT}:
            if self.live(key, now):
                for token in heapq.nsmallest(floor, self.loops.holder_tokens(key)):
                    out.setdefault(token, set()).add(key)
            elif key not in self.queues:
                del self.last_used[key]  # neither live nor queued: forgotten until it is used again
        return {t: frozenset(keys) for t, keys in out.items()}
