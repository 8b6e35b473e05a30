"""The dispatcher's own handling, on a real store with no workers or sockets:
rules that need the dispatcher's state, not only the policy's pure functions."""

from __future__ import annotations

from faas import protocol
from faas.endpoint.config import EndpointConfig
from faas.endpoint.dispatcher import Dispatcher
from faas.endpoint.items import Item
from faas.endpoint.policy import RECLAIM_MIN_SECONDS
from faas.endpoint.storeguard import StoreGuard
from faas.endpoint.workers import LoopBatch, WorkerLoop
from faas.protocol import Kind, OutcomeInfo
from faas.store import State, Store, sqlite_url


def dispatcher(tmp_path) -> Dispatcher:
    return Dispatcher(Store(sqlite_url(tmp_path)), engine=None, config=EndpointConfig(), worker_link=None,
                      notify=lambda *_: None, guard=StoreGuard(60.0))


def test_a_loop_not_measured_yet_is_judged_by_the_others_speed(tmp_path):
    """A model whose calls take seconds: a loop's first calls of it are not
    'held up' (its queue taken back) while the others' measured speed says
    such a call is usual; with no measurement anywhere, the floor applies."""
    d = dispatcher(tmp_path)
    first, other = WorkerLoop("first"), WorkerLoop("other")
    for lp in (first, other):
        lp.contexts = {"k": {"loaded": True}}
        d.loops.add(lp)
        d.loops.mark_ready(lp)
    now = 1000.0
    d.items["i1"] = Item("i1", "g", "f", "k", b"")
    first.batches[1] = LoopBatch(1, "k", 2, {"i1", "i2"})
    first.running["i1"] = now - 3 * RECLAIM_MIN_SECONDS
    d.loops.update(first)
    assert d.upkeep.held_up(first, now)  # nothing known of the context: the floor
    other.rates["k"] = 1 / 20.0  # 20 s a call, measured on the other loop
    d.loops.update(other)
    assert not d.upkeep.held_up(first, now)
    first.running["i1"] = now - 101.0  # five times the usual
    assert d.upkeep.held_up(first, now)


def test_a_fault_handling_one_outcome_fails_it_and_spares_its_message_mates(tmp_path, monkeypatch):
    """Every future ends: an error in the daemon's own handling of one outcome
    fails that invocation with a clear error; the others of the message are recorded."""
    d = dispatcher(tmp_path)
    loop = WorkerLoop("w")
    d.loops.add(loop)
    d.loops.mark_ready(loop)
    ids = ["a", "b", "c"]
    loop.batches[1] = LoopBatch(1, "k", 3, set(ids))
    for i in ids:
        d.items[i] = Item(i, "g", "f", "k", b"", attempts=1, loop="w", batch=1)
    real = d._on_outcome

    def faulty(it, info, payload, worker):
        if it.id == "b":
            raise KeyError("a bug")
        real(it, info, payload, worker)

    monkeypatch.setattr(d, "_on_outcome", faulty)
    outcomes = [OutcomeInfo(id=i, kind=Kind.OK, started=1.0, finished=2.0) for i in ids]
    d.on_progress("w", protocol.Progress(started=[], outcomes=outcomes), [b"r"] * 3)
    recorded = {o.id: (o.state, o.error) for o, _ in d.ledger._p.outcomes}
    assert recorded["a"] == (State.SUCCEEDED, None) and recorded["c"] == (State.SUCCEEDED, None)
    assert recorded["b"][0] is State.FAILED and "KeyError: 'a bug'" in recorded["b"][1]
    assert not d.items and not loop.batches  # nothing left waiting
