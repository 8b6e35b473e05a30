"""Store writes that fail are retried, never fatal.

The disk under the endpoint folder fills, another process holds SQLite's write
lock (a long ``purge``), the PostgreSQL server restarts: each makes a store
call raise. The daemon's loop must neither exit nor wait out the outage (it
still answers ping and status, and hears its workers), so a failed call is
retried on later passes of the loop, with back-off, and what it carried waits
in memory. Whatever could not be recorded within ``store.retry_for`` seconds
is refused to its client as ``StoreUnavailable`` (protocol code
``store_unavailable``), with the cause; an outcome so refused is still
recorded once the store is back (it is never dropped), and pushed again.

Only a failure of the store itself is an outage: I/O, locks, a lost
connection, a full disk (:func:`is_outage`). A request the store refuses for
its own content (a constraint it violates, a value it cannot take) fails
alone and at once (:class:`Rejected`): it is neither retried nor allowed to
hold up anyone else's.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import exc as sa

from faas.errors import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
FIRST_DELAY = 0.1  # seconds before the first retry; doubles up to LONGEST_DELAY
LONGEST_DELAY = 2.0
LOCK_WAIT = 0.2  # seconds the daemon's store call waits for SQLite's write lock before it fails (and is retried)
DRAIN_SECONDS = 0.05  # of waiting requests handled per pass of the loop, at most
REQUEST_BYTES = 2048  # what a waiting request takes besides its frames (a small submit: 2.4 KB, measured)
CODE = "store_unavailable"  # protocol.Error.code of a refusal; the client raises StoreUnavailable


class StoreDown(Exception):
    """A store call failed, or was not tried because the store failed recently; retry later."""


class Rejected(Exception):
    """The store refused this call for what it carried, not for being down: trying again cannot help."""


_CONTENT = (sa.IntegrityError, sa.DataError, sa.ProgrammingError, sa.NotSupportedError)


def is_outage(e: sa.SQLAlchemyError) -> bool:
    """Whether a failed store call is the store's failure (retried) rather than its call's (refused alone):
    the driver's errors except those about the statement's content, a dropped connection, an exhausted pool."""
    if getattr(e, "connection_invalidated", False):
        return True
    if isinstance(e, sa.DBAPIError):
        return not isinstance(e, _CONTENT)
    return isinstance(e, (sa.DisconnectionError, sa.TimeoutError))


class StoreGuard:
    """Runs store calls; after a failure, further calls fail fast (StoreDown) until
    the next retry is due, so an outage costs the loop one short wait per retry."""

    def __init__(self, retry_for: float):
        self.retry_for = retry_for
        self.down_since: float | None = None  # monotonic time of the outage's first failure
        self.cause = ""
        self._next_try = 0.0
        self._delay = FIRST_DELAY
        self._tried = 0.0  # monotonic time of the latest call that reached the store

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        now = time.monotonic()
        if now < self._next_try:
            raise StoreDown(self.cause)
        self._tried = now
        try:
            out = fn(*args, **kwargs)
        except sa.SQLAlchemyError as e:
            if not is_outage(e):
                raise Rejected(f"the store refused it: {describe(e)}") from e
            raise self.failed(e) from e
        if self.down_since is not None:
            log.warning("the store is back after %.1fs", time.monotonic() - self.down_since)
            self.down_since, self.cause, self._delay, self._next_try = None, "", FIRST_DELAY, 0.0
        return out

    def wait(self, fn: Callable[..., T], *args: Any) -> T:
        """Call, retrying with back-off for up to ``retry_for`` seconds (where
        nothing is being served yet: the daemon's start)."""
        deadline = time.monotonic() + self.retry_for
        while True:
            try:
                return self.call(fn, *args)
            except StoreDown:
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"the store failed for {self.retry_for:.0f}s: {self.cause}") from None
                time.sleep(max(0.0, self._next_try - time.monotonic()))

    def failed(self, e: BaseException) -> StoreDown:
        """Count ``e`` as an outage: later calls fail fast until the next retry is due."""
        now = time.monotonic()
        self.cause = describe(e)
        if self.down_since is None:
            self.down_since = now
            log.error("a store write failed (retried for up to %.0fs): %s", self.retry_for, self.cause)
        else:
            log.debug("store still failing: %s", self.cause)
        self._next_try = now + self._delay
        self._delay = min(2 * self._delay, LONGEST_DELAY)
        return StoreDown(self.cause)

    def overdue(self, since: float) -> bool:
        """Whether what waits since ``since`` has waited out the retry window, the
        store failing at its end too: past the window, the next call tries the
        store at once, and only its failure makes it overdue."""
        deadline = since + self.retry_for
        if time.monotonic() <= deadline:
            return False
        if self._tried > deadline:
            return True
        self._next_try = min(self._next_try, deadline)
        return False

    def refusal(self, what: str) -> str:
        return f"the endpoint could not record {what} for {self.retry_for:.0f}s: {self.cause}"

    def status(self) -> dict[str, Any] | None:
        """None while the store works; else for how long it has failed, and why."""
        if self.down_since is None:
            return None
        return {"failing_for": time.monotonic() - self.down_since, "cause": self.cause}


@dataclass
class _Request:
    since: float
    ident: bytes
    msg: Any
    body: list[bytes]
    size: int


class DeferredRequests:
    """Client requests that need the store, waiting for it in arrival order:
    once one waits, later ones queue behind it (a cancel never overtakes its
    submit). They hold at most ``max_bytes`` of memory."""

    def __init__(self, guard: StoreGuard, max_bytes: int):
        self.guard = guard
        self.max_bytes = max_bytes
        self.bytes = 0
        self._queue: deque[_Request] = deque()

    def __bool__(self) -> bool:
        return bool(self._queue)

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, ident: bytes, msg: Any, body: list[bytes]) -> bool:
        """Whether it was taken (False: the queue is full)."""
        size = REQUEST_BYTES + sum(len(b) for b in body)
        if self.bytes + size > self.max_bytes:
            return False
        self._queue.append(_Request(time.monotonic(), ident, msg, body, size))
        self.bytes += size
        return True

    def idents(self) -> set[bytes]:
        """The clients whose requests wait."""
        return {req.ident for req in self._queue}

    def retry(self, handle: Callable[[bytes, Any, list[bytes]], None],
              refuse: Callable[[bytes, Any, str], None]) -> None:
        """Handle waiting requests in order until one fails again, for at most
        ``DRAIN_SECONDS`` (the store back, thousands may wait: the loop goes on
        between); those waiting longer than ``retry_for`` are refused."""
        until = time.monotonic() + DRAIN_SECONDS
        while self._queue and time.monotonic() < until:
            req = self._queue[0]
            try:
                handle(req.ident, req.msg, req.body)
            except StoreDown:
                if not self.guard.overdue(req.since):
                    return
                refuse(req.ident, req.msg, self.guard.refusal(f"this {req.msg.type} request"))
            self._queue.popleft()
            self.bytes -= req.size


def describe(e: BaseException) -> str:
    """The driver's message (``database is locked``, ``database or disk is full``,
    ``connection refused``), without SQLAlchemy's SQL and parameters."""
    orig = getattr(e, "orig", None)
    text = str(orig if orig is not None else e).strip().splitlines()
    return f"{type(orig if orig is not None else e).__name__}: {text[0] if text else ''}"
