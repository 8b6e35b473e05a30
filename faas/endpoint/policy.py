"""The dispatcher's rules, as pure functions over typed records: how many
workers each context should have, which context a free worker serves (or a
joining one preloads), how large its batch is, what becomes of an invocation
after an attempt ends, and when queued work is taken back from a busy worker.
No I/O here, so every rule is tested without Parsl, sockets or a store.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from faas.protocol import Kind, retryable

FIRST_BATCH = 4  # invocations in a worker's first batch of a context, before its speed is known
RECLAIM_MIN_SECONDS = 2.0  # an invocation running this long (and several times its usual time) holds up its queue
PAYBACK = 10.0  # a worker that loads a context should get at least this many loads' worth of its work
SLACK = 0.05  # a context's holders may stray this far from its target (and a worker) before one moves


@dataclass
class LoopLoad:
    """What the batch-size rule needs to know of one worker loop and a context."""

    rate: float | None  # measured invocations/s of this context on this loop; None: not measured yet
    outstanding: int  # invocations of any context sent to the loop and not finished

    @property
    def busy(self) -> bool:
        return self.outstanding > 0


@dataclass
class Holders:
    """The other workers holding a context, summed: the dispatcher keeps these
    sums current as batches start and end, so the rule costs the same with
    ten holders or a thousand."""

    count: int = 0
    rate_sum: float = 0.0  # invocations/s of those measured
    unmeasured: int = 0  # those whose speed is not known yet

    @classmethod
    def of(cls, rates: list[float | None]) -> Holders:
        return cls(len(rates), sum(r for r in rates if r is not None), sum(r is None for r in rates))


def fleet_shares(work: dict[str, float], fleet: int) -> dict[str, float]:
    """Each context's share of a fleet of ``fleet`` workers, in proportion to
    its work (waiting and running, in seconds on one worker): shares that let
    every context's holders finish together."""
    total = sum(work.values())
    return {k: fleet * w / total for k, w in work.items()} if total > 0 else {}


def target_holders(waiting: float, invocations: int, load: float, share: float, live: bool,
                   min_holders: int) -> float:
    """How many workers a context should have: its ``share`` of the fleet
    (:func:`fleet_shares`), but no more than one per ``PAYBACK`` loads' worth of
    its waiting work (``waiting`` seconds on one worker, not yet sent to any: a
    worker that loads it for ``load`` seconds must get that back many times
    over; a load not measured yet counts as free), nor than one per invocation
    (waiting or running); and at least ``min_holders`` while it is ``live`` (work
    waiting or running, or used within the idle timeout). A hot context
    spreads; a cold one frees them. A fraction: a context is short of holders
    by ``target - holders``."""
    need = min(float(invocations), share, waiting / (PAYBACK * load) if load > 0 else math.inf)
    return max(need, float(min_holders) if live else 0.0)


def choose_context(holds: set[str], backlog: dict[str, float], holders: dict[str, int],
                   targets: dict[str, float] | None = None, parked: set[str] = frozenset()) -> str | None:
    """The context a free worker should serve next.

    ``holds``: contexts the worker holds; ``backlog``: waiting work per context
    (invocations, or the seconds they take); ``holders``: workers holding (or
    about to hold) each context; ``targets``: how many each should have
    (:func:`target_holders`); ``parked``: contexts the worker has parked in host
    memory, which it wakes at almost no cost.

    A worker keeps to a context it holds, the one with most backlog per holder,
    unless some context with backlog has no holder at all and the worker's
    context keeps another, or its context has more holders than its target (and
    another holder) and another lacks some (or lacks any and is parked here),
    each by a whole worker and ``SLACK`` of its target: then it moves to the one
    that lacks most, a parked one first. The margins keep workers from moving
    back and forth as the backlogs drain and the measured costs that size the
    targets wobble. A worker holding nothing useful takes a
    parked context with backlog, else the one that lacks most holders among
    those that lack a whole worker or have none (with no targets: the one with
    most backlog per holder, counting itself); none: it stays idle.
    """
    wanted = {k: n for k, n in backlog.items() if n > 0}
    if not wanted:
        return None
    held = [k for k in wanted if k in holds]
    orphans = [k for k in wanted if not holders.get(k)]
    if targets is None:
        if held:
            best = max(held, key=lambda k: wanted[k] / max(1, holders.get(k, 1)))
            return max(orphans, key=wanted.__getitem__) if orphans and holders.get(best, 1) > 1 else best
        return max(wanted, key=lambda k: wanted[k] / (holders.get(k, 0) + 1))

    def lack(k: str) -> float:
        return targets.get(k, 0.0) - holders.get(k, 0)

    def margin(k: str) -> float:
        return max(1.0, SLACK * targets.get(k, 0.0))

    if held:
        best = max(held, key=lambda k: wanted[k] / max(1, holders.get(k, 1)))
        if orphans and holders.get(best, 1) > 1:
            return max(orphans, key=wanted.__getitem__)
        if lack(best) <= -margin(best) and holders.get(best, 1) > 1:  # never its last holder while it has work
            elsewhere = [k for k in wanted if k != best and (lack(k) >= margin(k) or k in parked and lack(k) > 0)]
            if elsewhere:
                return max(elsewhere, key=lambda k: (k in parked, lack(k)))
        return best
    candidates = [k for k in wanted if lack(k) >= 1 or k in parked or not holders.get(k)]
    return max(candidates, key=lambda k: (k in parked, lack(k))) if candidates else None


def preload(holds: set[str], targets: dict[str, float], holders: dict[str, int],
            work: dict[str, float]) -> str | None:
    """The context a joining worker should load before any work reaches it:
    the one that lacks most holders (then with most work) among those it does
    not hold; None when none lacks a whole worker."""
    short = {k: t - holders.get(k, 0) for k, t in targets.items() if k not in holds and t - holders.get(k, 0) >= 1}
    return max(short, key=lambda k: (short[k], work.get(k, 0.0))) if short else None


def batch_size(me: LoopLoad, others: Holders, queued: int, in_flight: int, max_batch: int,
               max_batch_seconds: float, min_batch: int = 1, load: float = 0.0) -> int:
    """Guided self-scheduling, weighted by measured speed: about half of what
    ``me`` can run before the context's remaining work (``queued`` waiting plus
    ``in_flight`` on its holders) would be done by all holders (``me`` and
    ``others``). A worker's first batch is small (its speed is not known);
    no batch holds more than ``max_batch_seconds`` of work. ``min_batch``: a
    batched function's size, so a worker can fill one merged call. 0: leave
    the loop idle, the others finish sooner: also when ``me`` would first
    spend ``load`` seconds loading the context and its measured holders would
    be done with it by then (near the end of a run, a load only delays it)."""
    if load > 0 and others.count and not others.unmeasured:
        if (queued + in_flight) / others.rate_sum <= load:
            return 0
    if me.rate is None:
        return min(max(FIRST_BATCH, min_batch), queued)
    cap = max(min_batch, min(max_batch, max(1, int(me.rate * max_batch_seconds))))
    if others.unmeasured:  # the others are not measured yet: split the backlog evenly
        return min(cap, queued, max(min_batch, math.ceil(queued / (2 * (others.count + 1)))))
    finish = (queued + in_flight) / (me.rate + others.rate_sum)  # seconds until all of it is done
    share = (finish - me.outstanding / me.rate) * me.rate
    if share < 0.5 and (me.busy or (others.count and in_flight)):  # none in flight: idle holders all say no
        return 0
    return min(cap, queued, max(min_batch, math.ceil(share / 2)))


class Step(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RETRY = "retry"  # runs again; the attempt counts
    RETURN = "return"  # runs again; it never started, so the attempt does not count


def after_attempt(kind: Kind, attempts: int, retries: int, cancel_requested: bool, init_failed_before: bool) -> Step:
    """What becomes of an invocation whose attempt on a worker ended with ``kind``.

    A cancelled invocation's result is dropped even when it finished; an
    invocation whose context's loader failed gets one more try (elsewhere or
    later) before it fails (``init_failed_before``)."""
    if kind is Kind.RETURNED:
        return Step.CANCELLED if cancel_requested else Step.RETURN
    if cancel_requested or kind is Kind.CANCELLED:
        return Step.CANCELLED
    if kind is Kind.OK:
        return Step.SUCCEEDED
    if kind is Kind.INIT_ERROR:
        return Step.FAILED if init_failed_before else Step.RETRY
    return Step.RETRY if retryable(kind, attempts, retries) else Step.FAILED


def blamed_contexts(running: set[str], batches: list[str]) -> set[str]:
    """The contexts a lost worker's loss counts against, from ``running`` (the
    contexts of the invocations it reported started: a context loads within its
    first invocation) and ``batches`` (its batches' contexts, oldest first).
    A worker's reports reach the endpoint before a loader runs (LoadAck), so a
    loader that takes its process down is found running. Reported running none,
    it was at work on its oldest batch: a worker runs its batches in order, and
    the report that one started may die with it (a function that aborts the
    process at once)."""
    if running:
        return running
    return {batches[0]} if batches else set()


def after_loss(attempts: int, max_attempts: int, blamed: bool = True, returned: int = 0) -> Step:
    """An invocation whose worker was lost: one of a ``blamed`` context runs
    again, up to ``max_attempts``; one that only waited there goes back without
    losing an attempt, at most ``max_attempts`` times (``returned``: so far), so
    that workers that keep dying while it waits still end it."""
    if not blamed and returned < max_attempts:
        return Step.RETURN
    return Step.FAILED if attempts >= max_attempts else Step.RETRY


def should_reclaim(running_for: float, rate: float | None, queued_behind: int) -> bool:
    """Take back a loop's unstarted invocations when the one it runs has run far
    longer than usual: a hung or slow invocation must not hold up the others."""
    usual = 1.0 / rate if rate else 0.0
    return queued_behind > 0 and running_for > max(RECLAIM_MIN_SECONDS, 5 * usual)
