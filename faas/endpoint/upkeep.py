"""The dispatcher's periodic looks over all its loops (every ``UPKEEP_PERIOD``):
idle loops retire, loops held up by one long invocation give their queued work
back, and each loop is told which contexts it must keep.

A loop idle for ``engine.max_idletime`` retires (above the engine's minimum),
unless it is one of the kept holders of a live context
(:meth:`~faas.endpoint.placement.Placement.kept`): the last holder of a context
whose next work may come seconds later stays. The same holders are told to
keep those contexts (``Keep``), so that their warm pools do not release them
for idleness either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faas import protocol
from faas.endpoint import policy
from faas.endpoint.placement import Placement
from faas.endpoint.roster import Roster
from faas.endpoint.workers import WorkerLoop

if TYPE_CHECKING:
    from faas.endpoint.engine import Engine
    from faas.endpoint.items import Item

UPKEEP_PERIOD = 0.1  # seconds between looks for held-up loops and idle ones to retire (scans of all loops)


class Upkeep:
    def __init__(self, loops: Roster, items: dict[str, Item], engine: Engine, placement: Placement,
                 max_idletime: float, outbox: list[tuple[str, list[bytes]]]):
        self.loops, self.items, self.engine, self.placement = loops, items, engine, placement
        self.max_idletime = max_idletime
        self.outbox = outbox
        self._last = 0.0  # monotonic
        self._told: set[str] = set()  # loops told to keep something

    def due(self, now: float) -> bool:
        if now - self._last < UPKEEP_PERIOD:
            return False
        self._last = now
        return True

    def run(self, now: float, queued: bool) -> None:
        kept = self.placement.kept(now)
        self._keep(kept)
        if not queued:
            self._retire_idle(now, kept)
        self._reclaim(now)

    def _keep(self, kept: dict[str, frozenset[str]]) -> None:
        """Tell each loop whose contexts to keep changed."""
        for token in self._told | kept.keys():
            loop = self.loops.get(token)
            keys = kept.get(token, frozenset())
            if loop is not None and loop.ready and keys != loop.kept:
                loop.kept = keys
                self.outbox.append((token, protocol.encode(protocol.Keep(contexts=sorted(keys)))))
        self._told = set(kept)

    def _retire_idle(self, now: float, kept: dict[str, Any]) -> None:
        for loop in self.loops.idle():
            if len(self.loops) <= self.engine.min_loops:
                return
            if now - loop.idle_since > self.max_idletime and loop.token not in kept:
                self.outbox.append((loop.token, protocol.encode(protocol.Retire())))
                self.loops.remove(loop.token)

    def held_up(self, loop: WorkerLoop, now: float) -> bool:
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
        # not measured on this loop yet: the others' usual time (a model's calls may take tens of seconds)
        return policy.should_reclaim(now - since, loop.rates.get(key) or self.loops.rate(key), 1)

    def _reclaim(self, now: float) -> None:
        held = set()
        for loop in self.loops:
            if not self.held_up(loop, now):
                continue
            held.add(loop.token)
            behind = [i for b in loop.batches.values() for i in b.open
                      if i not in loop.running and not self.items[i].reclaiming]
            if behind:
                for inv_id in behind:
                    self.items[inv_id].reclaiming = True
                self.outbox.append((loop.token, protocol.encode(protocol.Revoke(ids=behind, reason="reclaim"))))
        self.placement.held_up = held
