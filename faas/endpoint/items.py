"""What the dispatcher keeps of each invocation and function, and the notes
it writes into an invocation's history when an attempt ends without a result."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Item:
    id: str
    group_id: str
    function_id: str
    context_key: str
    args: bytes
    attempts: int = 0
    history: list[str] = field(default_factory=list)  # why earlier attempts ended
    loop: str | None = None  # the loop it was sent to, while there
    batch: int | None = None
    cancel_requested: bool = False
    reclaiming: bool = False
    init_failures: int = 0  # attempts that ended with its context's loader raising
    returned: int = 0  # times it went back, without losing an attempt, from a worker lost running other work
    submitted: float = field(default_factory=time.time)  # when this endpoint got it (for result latency)


@dataclass
class FunctionMeta:
    retries: int = 0
    batch_size: int = 1
    context_key: str | None = None
    context: str = ""  # its context's description (its loader and options)


def loss_note(it: Item, worker: str, cause: str, blamed: bool, context: str, loading: bool) -> str:
    """Why ``it`` left a lost worker: the work that worker was doing is named,
    a loader that takes its process down included."""
    where = f"at {time.strftime('%H:%M:%S')} on {worker or 'a worker'}"
    if not blamed:
        return f"returned {where}: its worker was lost running other work ({cause})"
    doing = f"loading its context {context}" if loading else f"running work of its context {context}"
    return f"attempt {it.attempts} {where}: its worker was lost {doing} ({cause})"


def gave_up(it: Item, last: str) -> str:
    lines = "\n".join(f"  {h}" for h in [*it.history, last])
    return f"invocation {it.id} gave up after {it.attempts} attempts:\n{lines}\n"
