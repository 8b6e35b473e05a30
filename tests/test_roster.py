"""The roster's indexes, kept current loop by loop, always equal what a scan of
every loop computes (the scan the dispatcher made on every pass before)."""

from __future__ import annotations

import math
import random

import pytest

from faas.endpoint.policy import Holders
from faas.endpoint.roster import PREFETCH, Roster
from faas.endpoint.workers import LoopBatch, WorkerLoop

KEYS = ["a", "b", "c"]


def holds(lp: WorkerLoop, key: str) -> bool:
    """Loaded, or about to be: a batch of it is on its way to the loop."""
    return bool(lp.contexts.get(key, {}).get("loaded")) or any(b.context_key == key for b in lp.batches.values())


def scanned(loops: list[WorkerLoop], key: str, besides: WorkerLoop) -> Holders:
    rates = [lp.rates.get(key) for lp in loops if lp is not besides and holds(lp, key)]
    return Holders.of(rates)


def check(roster: Roster, loops: list[WorkerLoop]) -> None:
    for n in range(PREFETCH):
        assert {lp.token for lp in roster.with_room(n)} == {lp.token for lp in loops
                                                           if lp.ready and len(lp.batches) == n}
    assert roster.unready == sum(not lp.ready for lp in loops)
    for key in KEYS:
        assert roster.holder_count(key) == sum(holds(lp, key) for lp in loops)
        assert roster.in_flight(key) == sum(len(b.open) for lp in loops for b in lp.batches.values()
                                            if b.context_key == key)
        costs = [1.0 / lp.rates[key] for lp in loops if key in lp.rates]
        if costs:
            assert roster.cost(key) == pytest.approx(sum(costs) / len(costs))
            assert roster.rate(key) == pytest.approx(len(costs) / sum(costs))
        else:
            assert roster.rate(key) is None
        for lp in loops:
            got, want = roster.holders(key, besides=lp), scanned(loops, key, lp)
            assert (got.count, got.unmeasured) == (want.count, want.unmeasured)
            assert got.rate_sum == pytest.approx(want.rate_sum, abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_indexes_follow_every_change(seed):
    rng = random.Random(seed)
    roster, loops, ids = Roster(), [], iter(range(10**9))
    for _ in range(600):
        op = rng.random()
        if op < 0.1 or not loops:
            lp = WorkerLoop(f"t{next(ids)}")
            roster.add(lp)
            loops.append(lp)
        elif op < 0.2:
            lp = rng.choice(loops)
            lp.contexts = {"a": {"loaded": True}} if rng.random() < 0.5 else {}
            roster.mark_ready(lp)
        elif op < 0.45:  # a batch shipped
            lp = rng.choice([lp for lp in loops if lp.ready and len(lp.batches) < PREFETCH] or loops)
            if lp.ready and len(lp.batches) < PREFETCH:
                n = rng.randint(1, 4)
                bid = next(ids)
                lp.batches[bid] = LoopBatch(bid, rng.choice(KEYS), n, {f"i{bid}.{j}" for j in range(n)})
                roster.update(lp)
        elif op < 0.8:  # an invocation ended
            busy = [lp for lp in loops if lp.batches]
            if busy:
                lp = rng.choice(busy)
                b = rng.choice(list(lp.batches.values()))
                b.open.pop()
                if b.open:
                    roster.ended(lp, b.context_key)
                else:
                    del lp.batches[b.id]
                    lp.measured(b.context_key, b.size, rng.uniform(0.1, 2.0))
                    roster.update(lp)
        elif op < 0.9:  # its warm pool reports
            lp = rng.choice(loops)
            if lp.ready:
                lp.contexts = {k: {"loaded": rng.random() < 0.5} for k in rng.sample(KEYS, 2)}
                roster.update(lp)
        else:  # lost or retired
            lp = loops.pop(rng.randrange(len(loops)))
            assert roster.remove(lp.token) is lp
        check(roster, loops)
    assert not math.isnan(roster.cost("a"))

