"""The report's store queries on real SQLite and PostgreSQL, over hand-made
records whose figures are known: cold vs warm calls, failures, retries, failed
inits, given-up invocations, ``since``."""

from __future__ import annotations

import pytest

from faas.store import Outcome, State, Store
from faas.store.report import build_report, build_timeline, parse_since


def _init(worker, started_at, seconds, error=None, key="ctx"):
    return dict(context_key=key, description="loader()", worker_id=worker, started_at=started_at,
                seconds=seconds, error=error)


@pytest.fixture
def store(store_url):
    """Worker w1 runs a (cold: its init starts inside a), b, c; w2 runs d (cold,
    after a failed init on the same worker) and e (failed, on its 2nd attempt); f
    is given up without a worker; g is still pending."""
    s = Store(store_url)
    s.add_function("f", "fn", "ctx", "loader()", 0, b"body")
    ids = "abcdefg"
    s.add_invocations([dict(id=i, group_id="g", function_id="f", context_key="ctx", args=b"") for i in ids])
    s.mark_dispatched(list("abcdef"))
    s.requeue({"e": "attempt 1 lost"})
    s.mark_dispatched(["e"])
    ok, failed = State.SUCCEEDED, State.FAILED
    s.record_outcomes(
        [Outcome("a", ok, b"", None, "h:1", 100.0, 104.0), Outcome("b", ok, b"", None, "h:1", 104.0, 105.0),
         Outcome("c", ok, b"", None, "h:1", 105.0, 107.0), Outcome("d", ok, b"", None, "h:2", 100.0, 106.0),
         Outcome("e", failed, b"", "tb", "h:2", 106.0, 106.5), Outcome("f", failed, None, "gave up", "", 108.0, 108.0)],
        [("h:1", "h", 1), ("h:2", "h", 2)],
        [_init("h:1", 100.5, 3.0), _init("h:2", 99.0, 0.5, error="OSError"), _init("h:2", 101.0, 4.0)],
    )
    yield s
    s.close()


def test_figures_per_worker_and_context(store):
    report = build_report(store)
    assert report.states == {"pending": 1, "dispatched": 0, "succeeded": 4, "failed": 2, "cancelled": 0}
    w1, w2 = report.workers["h:1"], report.workers["h:2"]
    assert set(report.workers) == {"h:1", "h:2"}  # f ran on no worker
    assert (w1.invocations, w1.calls, w1.cold_calls, w1.failed, w1.retried) == (3, 3, 1, 0, 0)
    assert (w1.mean_call, w1.mean_cold, w1.mean_warm) == pytest.approx((7 / 3, 4.0, 1.5))
    assert (w1.inits, w1.init_failures, w1.init_seconds) == (1, 0, pytest.approx(3.0))
    assert (w2.invocations, w2.cold_calls, w2.failed, w2.retried) == (2, 1, 1, 1)
    assert (w2.mean_cold, w2.mean_warm) == pytest.approx((6.0, 0.5))
    assert (w2.inits, w2.init_failures, w2.init_seconds) == (1, 1, pytest.approx(4.5))
    ctx = report.contexts["loader()"]
    assert (ctx.invocations, ctx.calls, ctx.cold_calls, ctx.failed, ctx.retried) == (7, 5, 2, 2, 1)
    assert (ctx.inits, ctx.init_failures) == (2, 1)
    assert ctx.mean_call == pytest.approx((4 + 1 + 2 + 6 + 0.5) / 5)


def test_since_keeps_later_submissions_and_inits(store):
    assert sum(build_report(store, since=parse_since("1h")).states.values()) == 7
    later = build_report(store, since=100.8)  # every invocation was submitted now, after it
    assert later.contexts["loader()"].inits == 1 and later.contexts["loader()"].init_failures == 0
    assert build_report(store, since=parse_since("2999-01-01T00:00")).workers == {}


def test_timeline_spans_start_at_first_activity(store):
    timeline = build_timeline(store)
    spans = {w: (start, end) for w, start, end in timeline.workers}
    assert spans["h:1"][0] == 100.0 and spans["h:2"][0] == 99.0  # the failed init came first
    assert timeline.finished == sorted(timeline.finished) and len(timeline.finished) == 6
    assert [ok for *_, ok in timeline.inits] == [False, True, True]


def test_a_lost_workers_span_ends_when_it_was_lost(store):
    last_seen = {w: end for w, _, end in build_timeline(store).workers}
    store.record_outcomes([], lost_workers=[("h:2", 110.0), ("h:9", 111.0)])  # h:9 never reported: no row, no span
    spans = {w: (start, end) for w, start, end in build_timeline(store).workers}
    assert spans == {"h:1": (100.0, last_seen["h:1"]), "h:2": (99.0, 110.0)}
    assert build_timeline(store, since=110.5).workers == [("h:1", 110.5, last_seen["h:1"])]


def test_parse_since_durations_and_iso_times():
    assert parse_since("90s", now=1000.0) == 910.0
    assert parse_since("1.5h", now=10000.0) == 10000.0 - 5400
    assert parse_since("2d", now=200000.0) == 200000.0 - 172800
    assert parse_since("1970-01-01T00:01:00+00:00") == 60.0
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("yesterday")
