"""The store on real SQLite and a real PostgreSQL server: idempotent
submission, the state machine, one transaction per batch, recovery's view of
unfinished work, purging."""

from __future__ import annotations

import time

import pytest

from faas.store import Outcome, State, Store, sqlite_url


@pytest.fixture
def store(store_url):
    s = Store(store_url)
    s.add_function("f", "fn", "ctx", "loader()", 0, b"body")
    yield s
    s.close()


def _rows(*ids, group="g"):
    return [dict(id=i, group_id=group, function_id="f", context_key="ctx", args=b"a") for i in ids]


def test_sqlite_wal_mode_and_owner_only_file(tmp_path):
    store = Store(sqlite_url(tmp_path))
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert (tmp_path / "store.db").stat().st_mode & 0o777 == 0o600
    store.close()


def test_resubmission_is_idempotent(store):
    assert store.add_invocations(_rows("a", "b")) == {"a", "b"}
    assert store.add_invocations(_rows("b", "c")) == {"c"}
    assert store.counts_by_state()["pending"] == 3


def test_a_function_keeps_its_retries_and_batch_size(store):
    store.add_function("g", "batched", "ctx", "loader()", 2, b"body", batch_size=8)
    functions = store.functions()
    assert (functions["g"]["retries"], functions["g"]["batch_size"]) == (2, 8)
    assert functions["f"]["batch_size"] == 1


def test_a_dispatch_mark_written_with_its_outcome_is_the_same_record(store):
    """Shipped and finished within one write: one UPDATE does both (the mark of
    one requeued meanwhile is still written on its own, before its requeue)."""
    from sqlalchemy import select

    from faas.store.models import Invocation

    store.add_invocations(_rows("a", "b", "c"))
    store.mark_dispatched(["c"])
    done = [Outcome(i, State.SUCCEEDED, i.encode(), None, "h:1", 1.0, 2.0) for i in "abc"]
    recorded = store.record_outcomes(done, [("h:1", "h", 1)], dispatched=["a", "b"], requeue={"b": "returned"})
    assert recorded == {"a", "b", "c"}
    with store.engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(Invocation))}
    assert {i: (r.state, r.attempts, r.result) for i, r in rows.items()} == {
        "a": (State.SUCCEEDED, 1, b"a"), "b": (State.SUCCEEDED, 1, b"b"), "c": (State.SUCCEEDED, 1, b"c")}
    assert rows["b"].history == "returned\n"
    assert all(r.dispatched_at is not None for r in rows.values())


def test_state_machine_never_overwrites_a_final_result(store):
    store.add_invocations(_rows("a", "b"))
    store.mark_dispatched(["a", "b"])
    first = Outcome("a", State.SUCCEEDED, b"first", None, "h:1", 1.0, 2.0)
    assert store.record_outcomes([first], [("h:1", "h", 1)]) == {"a"}
    late = Outcome("a", State.FAILED, b"late", "tb", "h:2", 3.0, 4.0)
    assert store.record_outcomes([late]) == set()
    store.requeue({"a": "late note", "b": "lost"})  # a final invocation is never requeued
    (row,) = store.final_results(ids=["a"])
    assert row["state"] is State.SUCCEEDED and row["result"] == b"first"
    assert [r["id"] for r in store.unfinished()] == ["b"]
    assert store.unfinished()[0]["state"] is State.PENDING


def test_long_batches_record_each_invocation_once_across_in_lists(store):
    """Batches longer than one IN list (the hot reads pad theirs to a power of
    two), part of them already on record or final: each id is inserted and
    finished once, a late outcome changes nothing, an unknown id is not recorded."""
    ids = [f"i{n:04d}" for n in range(700)]
    assert store.add_invocations(_rows(*ids[:300])) == set(ids[:300])
    assert store.add_invocations(_rows(*ids)) == set(ids[300:])  # 512 + 188 ids, 300 of them known
    early = [Outcome(i, State.FAILED, b"early", "tb", "h:1", 1.0, 2.0) for i in ids[:5]]
    assert store.record_outcomes(early, [("h:1", "h", 1)], dispatched=ids[:5]) == set(ids[:5])
    done = [Outcome(i, State.SUCCEEDED, i.encode(), None, "h:1", 1.0, 2.0) for i in [*ids, "unknown"]]
    assert store.record_outcomes(done, [("h:1", "h", 1)], dispatched=ids[5:]) == set(ids[5:])
    assert store.counts_by_state() == {**{s.value: 0 for s in State}, "failed": 5, "succeeded": 695}
    rows = {r["id"]: r for r in store.final_results(ids=[*ids, "unknown"])}
    assert len(rows) == 700 and rows["i0004"]["result"] == b"early" and rows["i0699"]["result"] == b"i0699"


def test_attempts_count_dispatches(store):
    store.add_invocations(_rows("a"))
    for n in range(1, 4):
        store.mark_dispatched(["a"])
        store.requeue({"a": f"attempt {n} lost"})
    (row,) = store.unfinished()
    assert row["attempts"] == 3
    assert row["history"].splitlines() == ["attempt 1 lost", "attempt 2 lost", "attempt 3 lost"]


def test_purge_removes_only_old_final_invocations(store):
    store.add_invocations(_rows("old", "new", "open"))
    store.mark_dispatched(["old", "new", "open"])
    now = time.time()
    store.record_outcomes([Outcome("old", State.SUCCEEDED, b"r", None, "h:1", now - 100, now - 100),
                           Outcome("new", State.SUCCEEDED, b"r", None, "h:1", now, now)], [("h:1", "h", 1)])
    assert store.purge(older_than=50) == 1
    assert sorted(store.counts_by_state().items()) == [("cancelled", 0), ("dispatched", 1), ("failed", 0),
                                                        ("pending", 0), ("succeeded", 1)]


def test_context_summary_counts_inits_and_states(store):
    store.add_invocations(_rows("a", "b"))
    store.mark_dispatched(["a", "b"])
    store.record_outcomes([Outcome("a", State.SUCCEEDED, b"r", None, "h:1", 1, 2)], [("h:1", "h", 1)],
                          [dict(context_key="ctx", description="loader()", worker_id="h:1", started_at=1.0,
                                seconds=2.5, error=None),
                           dict(context_key="ctx", description="loader()", worker_id="h:1", started_at=0.0,
                                seconds=0.5, error="boom"),
                           dict(context_key="inner", description="other()", worker_id="h:1", started_at=0.0,
                                seconds=0.1, error=None)])
    ctx, inner = sorted(store.context_summary(), key=lambda c: c["key"])
    assert inner["description"] == "other()" and inner["inits"] == 1
    assert ctx["inits"] == 1 and ctx["init_failures"] == 1 and ctx["init_seconds"] == 3.0
    assert ctx["invocations"] == {"succeeded": 1, "dispatched": 1}
    assert [w["id"] for w in store.workers()] == ["h:1"]
