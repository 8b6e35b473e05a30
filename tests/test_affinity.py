"""Context-aware placement: the choice rule, and on real workers, two contexts
alternating on two workers whose memory fits one context each: no worker
thrashes between them (asserted through the warm pools' statistics)."""

from __future__ import annotations

from conftest import local_config, status

from faas import Executor, ctx_function
from faas.endpoint.policy import choose_context


def test_a_worker_keeps_to_the_context_it_holds():
    assert choose_context({"a"}, {"a": 10, "b": 50}, {"a": 1, "b": 1}) == "a"


def test_a_context_nobody_holds_gets_a_worker_that_can_be_spared():
    assert choose_context({"a"}, {"a": 10, "b": 5}, {"a": 2}) == "b"
    assert choose_context({"a"}, {"a": 10, "b": 5}, {"a": 1}) == "a"  # a would lose its only worker


def test_a_free_worker_takes_most_backlog_per_holder():
    assert choose_context(set(), {"a": 100, "b": 60}, {"a": 2, "b": 0}) == "b"
    assert choose_context(set(), {"a": 100, "b": 60}, {"a": 0, "b": 0}) == "a"
    assert choose_context({"a"}, {"a": 0, "b": 3}, {"a": 1, "b": 1}) == "b"
    assert choose_context({"a"}, {}, {}) is None


def _weights(name, mb):
    return {"name": name, "weights": b"\x01" * (mb * 2**20)}


def test_two_contexts_two_workers_no_thrashing(endpoint):
    endpoint("affinity", local_config(workers=2, max_batch=8,
                                      extra="warm_pool:\n  memory_budget: 90MiB\n"))
    a = ctx_function(model=_weights, name="a", mb=60)(lambda ctx, x: (ctx["name"], x))
    b = ctx_function(model=_weights, name="b", mb=60)(lambda ctx, x: (ctx["name"], x))
    with Executor(endpoint="affinity") as ex:
        futures = [ex.submit(fn, x) for x in range(150) for fn in (a, b)]  # alternating
        results = [f.result(timeout=120) for f in futures]
    assert results == [(n, x) for x in range(150) for n in "ab"]
    workers = status("affinity")["live"]["worker_contexts"]
    stats = [s for per_worker in workers.values() for s in per_worker.values()]
    # no worker loads a context twice: it keeps to one, and switches at most once, when its
    # own context's backlog is gone (random placement re-loads dozens of times here)
    assert all(s["inits"] == 1 for s in stats), workers
    assert sum(s["evictions"] for s in stats) <= 1
