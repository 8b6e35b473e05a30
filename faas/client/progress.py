"""Progress bars (tqdm) for futures: count, rate and ETA as invocations finish.

The bar advances from each future's done-callback, so it counts completions in
whatever order they come, even while the caller waits on results in order
(``Executor.map``). ``progress=None`` shows it only when stderr is a terminal,
so logs and pipes stay clean.
"""

from __future__ import annotations

import concurrent.futures
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future

from tqdm import tqdm


def track(futures: list[Future], progress: bool | None = None, desc: str | None = None) -> None:
    """Show a bar over ``futures`` that closes when the last one is done (or cancelled)."""
    enabled = sys.stderr.isatty() if progress is None else progress
    if not enabled or not futures:
        return
    bar = tqdm(total=len(futures), desc=desc, unit="call", file=sys.stderr, dynamic_ncols=True)
    lock = threading.Lock()  # callbacks run on the client's IO thread and, for done futures, here

    def advance(_: Future) -> None:
        with lock:
            bar.update(1)
            if bar.n == bar.total:
                bar.close()

    for fut in futures:
        fut.add_done_callback(advance)


def as_completed(futures: Iterable[Future], timeout: float | None = None, progress: bool | None = None,
                 desc: str | None = None) -> Iterator[Future]:
    """``concurrent.futures.as_completed`` with a progress bar."""
    futures = list(futures)
    track(futures, progress, desc)
    return concurrent.futures.as_completed(futures, timeout)
