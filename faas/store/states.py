"""The invocation state machine, written once.

Every state change in the store goes through :func:`allowed_sources`, so an
invocation can never move backwards (a recorded result is never overwritten by a
late duplicate) and recovery can ask "what is not final yet" in one place.
"""

from __future__ import annotations

import enum


class State(str, enum.Enum):
    PENDING = "pending"        # recorded, waiting for a worker
    DISPATCHED = "dispatched"  # shipped to a worker loop in a batch (running there, or queued)
    SUCCEEDED = "succeeded"    # result recorded
    FAILED = "failed"          # error recorded (user exception, timeout or gave up)
    CANCELLED = "cancelled"    # a client cancelled it before it finished


FINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})

# target state -> states it may be reached from
_TRANSITIONS: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.DISPATCHED}),  # requeued after a lost worker
    State.DISPATCHED: frozenset({State.PENDING}),
    State.SUCCEEDED: frozenset({State.PENDING, State.DISPATCHED}),
    State.FAILED: frozenset({State.PENDING, State.DISPATCHED}),
    State.CANCELLED: frozenset({State.PENDING, State.DISPATCHED}),
}


def allowed_sources(target: State) -> frozenset[State]:
    """States from which ``target`` may be entered."""
    return _TRANSITIONS[target]

