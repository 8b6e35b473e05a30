"""The wait at interpreter exit, bounded.

A script that submitted work and ends without ``shutdown()`` (or dies of an
unrelated exception) waits, as with CPython's executors, until every
submission is acknowledged and every result is in. But never without end:
when an executor's work makes no progress (nothing acknowledged, started or
finished, and nothing running at an endpoint that still answers) for its
``exit_timeout`` seconds, or when the user presses Ctrl-C, the wait stops and
says on stderr what is still pending and how to collect it later; the work
recorded at the endpoint goes on there.
"""

from __future__ import annotations

import sys
import time
from typing import Any

EXIT_TIMEOUT = 60.0  # seconds without progress before the wait at exit gives up (Executor(exit_timeout=...))
POLL = 0.1


def wait_at_exit(executors: list[Any]) -> None:
    """Wait for the pending work of ``executors`` (FaasExecutors), each within its own bound."""
    watched = {ex: (ex._progress(), time.monotonic()) for ex in executors if ex._pending()}
    next_beat = time.monotonic()
    try:
        while watched:
            now = time.monotonic()
            beat = now >= next_beat
            if beat:
                next_beat = now + 1.0
            for ex, (progress, since) in list(watched.items()):
                pending = ex._pending()
                if not pending:
                    del watched[ex]
                    continue
                latest = ex._progress()
                if latest != progress:
                    watched[ex] = (latest, now)
                elif now - since > ex.exit_timeout:
                    del watched[ex]
                    _say(ex._exit_report(pending, f"no progress for {ex.exit_timeout:g}s (exit_timeout)"))
                    continue
                if beat:
                    ex._keepalive()
            time.sleep(POLL)
    except KeyboardInterrupt:
        for ex in watched:
            _say(ex._exit_report(ex._pending(), "interrupted (Ctrl-C)"))


def _say(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed: nothing more to do
        pass
