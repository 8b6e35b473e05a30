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
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from faas.errors import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
FIRST_DELAY = 0.1  # seconds before the first retry; doubles up to LONGEST_DELAY
LONGEST_DELAY = 2.0
LOCK_WAIT = 0.2  # seconds the daemon's store call waits for SQLite's write lock before it fails (and is retried)
CODE = "store_unavailable"  # protocol.Error.code of a refusal; the client raises StoreUnavailable


class StoreDown(Exception):
    """A store call failed, or was not tried because the store failed recently; retry later."""


class StoreGuard:
    """Runs store calls; after a failure, further calls fail fast (StoreDown) until
    the next retry is due, so an outage costs the loop one short wait per retry."""

    def __init__(self, retry_for: float):
        self.retry_for = retry_for
        self.down_since: float | None = None  # monotonic time of the outage's first failure
        self.cause = ""
        self._next_try = 0.0
        self._delay = FIRST_DELAY

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        now = time.monotonic()
        if now < self._next_try:
            raise StoreDown(self.cause)
        try:
            out = fn(*args, **kwargs)
        except SQLAlchemyError as e:
            self._failed(e)
            raise StoreDown(self.cause) from e
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

    def _failed(self, e: SQLAlchemyError) -> None:
        now = time.monotonic()
        self.cause = _describe(e)
        if self.down_since is None:
            self.down_since = now
            log.error("a store write failed (retried for up to %.0fs): %s", self.retry_for, self.cause)
        else:
            log.debug("store still failing: %s", self.cause)
        self._next_try = now + self._delay
        self._delay = min(2 * self._delay, LONGEST_DELAY)

    def overdue(self, since: float) -> bool:
        return time.monotonic() - since > self.retry_for

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


class DeferredRequests:
    """Client requests that need the store, waiting for it in arrival order:
    once one waits, later ones queue behind it (a cancel never overtakes its
    submit)."""

    def __init__(self, guard: StoreGuard):
        self.guard = guard
        self._queue: deque[_Request] = deque()

    def __bool__(self) -> bool:
        return bool(self._queue)

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, ident: bytes, msg: Any, body: list[bytes]) -> None:
        self._queue.append(_Request(time.monotonic(), ident, msg, body))

    def idents(self) -> set[bytes]:
        """The clients whose requests wait."""
        return {req.ident for req in self._queue}

    def retry(self, handle: Callable[[bytes, Any, list[bytes]], None],
              refuse: Callable[[bytes, Any, str], None]) -> None:
        """Handle waiting requests in order until one fails again; those waiting
        longer than ``retry_for`` are refused."""
        while self._queue:
            req = self._queue[0]
            try:
                handle(req.ident, req.msg, req.body)
            except StoreDown:
                if not self.guard.overdue(req.since):
                    return
                refuse(req.ident, req.msg, self.guard.refusal(f"this {req.msg.type} request"))
            self._queue.popleft()


def _describe(e: SQLAlchemyError) -> str:
    """The driver's message (``database is locked``, ``database or disk is full``,
    ``connection refused``), without SQLAlchemy's SQL and parameters."""
    orig = getattr(e, "orig", None)
    text = str(orig if orig is not None else e).strip().splitlines()
    return f"{type(orig if orig is not None else e).__name__}: {text[0] if text else ''}"
