"""The dispatcher's rules as pure functions, without Parsl, sockets or a store."""

from __future__ import annotations

from faas.endpoint.policy import (
    FIRST_BATCH,
    Holders,
    LoopLoad,
    Step,
    after_attempt,
    after_loss,
    batch_size,
    blamed_contexts,
    should_reclaim,
)
from faas.protocol import Kind


def test_first_batch_is_small_until_the_worker_is_measured():
    assert batch_size(LoopLoad(None, 0), Holders(), queued=1000, in_flight=0, max_batch=64,
                      max_batch_seconds=10) == FIRST_BATCH
    assert batch_size(LoopLoad(None, 0), Holders(), queued=2, in_flight=0, max_batch=64, max_batch_seconds=10) == 2


def test_a_batched_function_gets_batches_it_can_fill():
    assert batch_size(LoopLoad(None, 0), Holders(), 1000, 0, 64, 10, min_batch=32) == 32
    assert batch_size(LoopLoad(100.0, 0), Holders.of([100.0]), 10, 0, 64, 10, min_batch=8) == 8


def test_batches_follow_speed_and_backlog():
    fast, slow = LoopLoad(100.0, 0), LoopLoad(10.0, 0)
    big_fast = batch_size(fast, Holders.of([slow.rate]), 1000, 0, 1000, 100)
    big_slow = batch_size(slow, Holders.of([fast.rate]), 1000, 0, 1000, 100)
    assert big_fast > 5 * big_slow  # the fast worker takes about ten times the slow one's share
    assert batch_size(fast, Holders.of([slow.rate]), 10, 0, 1000, 100) < big_fast  # small at the tail
    assert batch_size(LoopLoad(100.0, 0), Holders(), 1000, 0, 1000, max_batch_seconds=0.1) == 10  # 0.1 s of work


def test_a_busy_worker_is_left_idle_when_the_others_finish_sooner():
    busy = LoopLoad(1.0, outstanding=10)
    assert batch_size(busy, Holders.of([100.0]), queued=5, in_flight=0, max_batch=64,
                      max_batch_seconds=10) == 0


def test_what_becomes_of_an_attempt():
    assert after_attempt(Kind.OK, 1, 0, False, False) is Step.SUCCEEDED
    assert after_attempt(Kind.OK, 1, 0, cancel_requested=True, init_failed_before=False) is Step.CANCELLED
    assert after_attempt(Kind.ERROR, 1, 0, False, False) is Step.FAILED
    assert after_attempt(Kind.ERROR, 1, 1, False, False) is Step.RETRY
    assert after_attempt(Kind.TIMEOUT, 1, 0, False, False) is Step.FAILED
    assert after_attempt(Kind.CANCELLED, 1, 3, False, False) is Step.CANCELLED
    assert after_attempt(Kind.RETURNED, 1, 0, False, False) is Step.RETURN
    assert after_attempt(Kind.RETURNED, 1, 0, True, False) is Step.CANCELLED
    assert after_attempt(Kind.INIT_ERROR, 1, 0, False, init_failed_before=False) is Step.RETRY
    assert after_attempt(Kind.INIT_ERROR, 1, 0, False, init_failed_before=True) is Step.FAILED


def test_lost_workers_are_retried_up_to_max_attempts():
    assert after_loss(4, 5) is Step.RETRY
    assert after_loss(5, 5) is Step.FAILED


def test_a_loss_counts_against_the_context_the_worker_was_running():
    assert blamed_contexts({"crash"}, ["crash", "healthy"]) == {"crash"}
    assert blamed_contexts({"crash"}, ["healthy", "crash"]) == {"crash"}  # a report of its start arrived
    assert blamed_contexts(set(), ["crash", "healthy"]) == {"crash"}  # it died before its start was reported
    assert blamed_contexts(set(), []) == set()  # it held nothing


def test_invocations_that_only_waited_on_a_lost_worker_keep_their_attempts_within_a_bound():
    assert after_loss(5, 5, blamed=False, returned=0) is Step.RETURN  # even with its attempts used up
    assert after_loss(1, 5, blamed=False, returned=4) is Step.RETURN
    assert after_loss(1, 5, blamed=False, returned=5) is Step.RETRY  # workers keep dying while it waits
    assert after_loss(5, 5, blamed=False, returned=5) is Step.FAILED
    assert after_loss(1, 5, blamed=True, returned=0) is Step.RETRY


def test_queued_work_is_taken_back_from_a_worker_held_up():
    assert not should_reclaim(running_for=1.0, rate=100.0, queued_behind=5)
    assert should_reclaim(running_for=3.0, rate=100.0, queued_behind=5)
    assert not should_reclaim(running_for=3.0, rate=100.0, queued_behind=0)
    assert not should_reclaim(running_for=3.0, rate=0.5, queued_behind=5)  # usual: 2 s a call
    assert should_reclaim(running_for=11.0, rate=0.5, queued_behind=5)


def test_a_worker_that_would_load_the_context_stays_idle_when_its_holders_finish_first():
    holders = Holders.of([2.0, 2.0])  # 4 invocations/s together
    assert batch_size(LoopLoad(None, 0), holders, queued=8, in_flight=8, max_batch=64, max_batch_seconds=10,
                      load=5.0) == 0  # done in 4 s, before a 5 s load
    assert batch_size(LoopLoad(None, 0), holders, queued=100, in_flight=8, max_batch=64, max_batch_seconds=10,
                      load=5.0) == FIRST_BATCH  # 27 s of work left: worth loading


def test_an_idle_holder_takes_the_last_invocations_when_all_holders_are_idle():
    """Each of many idle holders' share of 2 invocations is under one: none may leave them queued."""
    idle = Holders.of([1.0] * 300)
    assert batch_size(LoopLoad(1.0, 0), idle, queued=2, in_flight=0, max_batch=64, max_batch_seconds=10) >= 1
    assert batch_size(LoopLoad(1.0, 0), idle, queued=2, in_flight=5, max_batch=64, max_batch_seconds=10) == 0
