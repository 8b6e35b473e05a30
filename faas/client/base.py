"""What faas' executors share: the ``concurrent.futures.Executor`` contract.

- ``submit`` takes any callable: a ctx_function, or a plain one (run without a
  context); functions are cached weakly, so a submitted function is not kept
  alive by the executor.
- ``map`` has one deadline for the whole iteration, ``buffersize`` (submit at
  most that many ahead of the consumer), ``chunksize`` (that many items per
  invocation), and releases each result as it is yielded.
- ``cancel()`` of a future that has not started reaches the endpoint.
- after ``shutdown`` and at interpreter exit ``submit`` raises RuntimeError;
  at interpreter exit, work submitted to an executor that was never shut down
  still finishes, as with CPython's executors.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures import Executor as _StdExecutor
from typing import Any

from faas.client import serialize
from faas.client.progress import track
from faas.function import CtxFunction

_live: weakref.WeakSet[FaasExecutor] = weakref.WeakSet()
_exiting = False


class ComputeFuture(Future):
    """A future with the invocation's id (``task_id``, as in Globus Compute).
    Cancelling it before it runs cancels the invocation on the endpoint too."""

    def __init__(self, task_id: str, on_cancel: Callable[[str], None] | None = None):
        super().__init__()
        self.task_id = task_id
        self._on_cancel = on_cancel

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        if self._on_cancel is not None:
            self._on_cancel(self.task_id)
        return True

    def interrupt(self) -> bool:
        """Cancel the invocation even while it runs: the worker interrupts it
        (or drops its result) and this future ends with CancelledError. False
        when it had already finished."""
        if self.cancel():
            return True
        if self.done() or self._on_cancel is None:
            return False
        self._on_cancel(self.task_id)
        return True


class FaasExecutor(_StdExecutor):
    def __init__(self) -> None:
        self._shutdown = False
        self._id_prefix, self._id_counter = os.urandom(8).hex(), itertools.count()
        self._lock = threading.Lock()
        self._futures: dict[str, ComputeFuture] = {}  # by task id, not resolved yet
        self._functions: weakref.WeakKeyDictionary[Any, tuple[str, bytes]] = weakref.WeakKeyDictionary()
        _live.add(self)

    # -- for subclasses ---------------------------------------------------------
    def _new_id(self) -> str:
        """An invocation id, 32 hex digits as uuid4's: 64 random bits per
        executor, then a counter. As unique and as hard to guess from outside
        (a cancel names ids), without reading the OS's entropy per invocation."""
        return f"{self._id_prefix}{next(self._id_counter):016x}"

    def _pending(self) -> list[Future]:
        """Futures not done yet."""
        with self._lock:
            return [f for f in self._futures.values() if not f.done()]

    def _check_open(self) -> None:
        if _exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _function(self, fn: Callable) -> tuple[CtxFunction, str, bytes]:
        """(the ctx_function to ship, its id, its pickled body), pickled once per
        function. The cache holds only the id and bytes: a value that referred
        to ``fn`` would keep its weak key alive for ever."""
        ctx_fn = fn if isinstance(fn, CtxFunction) else CtxFunction.plain(_checked_callable(fn))
        try:
            cached = self._functions.get(fn)
        except TypeError:  # not weakly referenceable (a builtin): pickled each time
            cached = None
        if cached is None:
            cached = serialize.function_blob(ctx_fn)
            try:
                self._functions[fn] = cached
            except TypeError:
                pass
        return (ctx_fn, *cached)

    def _wait(self, futures: Iterable[Future]) -> None:
        for fut in futures:
            try:
                fut.exception()
            except CancelledError:
                pass

    # -- the contract -----------------------------------------------------------
    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None, chunksize: int = 1,
            buffersize: int | None = None, progress: bool | None = None) -> Iterator[Any]:
        """``concurrent.futures.Executor.map``: results in order, ``timeout``
        one deadline for the whole iteration. ``chunksize`` items go in one
        invocation; ``buffersize`` bounds the invocations submitted ahead of
        the consumer. ``progress`` shows a bar of completed invocations (None:
        only when stderr is a terminal; not with ``buffersize``)."""
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be a positive int")
        if buffersize is not None and (not isinstance(buffersize, int) or buffersize < 1):
            raise ValueError("buffersize must be None or a positive int")
        deadline = None if timeout is None else time.monotonic() + timeout
        calls: Iterator[tuple] = zip(*iterables)
        if chunksize > 1:
            fn, items = _chunked(fn), calls
            calls = ((chunk,) for chunk in iter(lambda: tuple(itertools.islice(items, chunksize)), ()))
        futures: deque[Future] = deque(self.submit(fn, *args) for args in
                                       (itertools.islice(calls, buffersize) if buffersize else calls))
        if buffersize is None:
            track(list(futures), progress, desc=getattr(fn, "__qualname__", None))
        return _results(weakref.ref(self), fn, futures, calls if buffersize else iter(()), deadline, chunksize > 1)


def _results(executor_ref, fn, futures: deque[Future], more: Iterator[tuple], deadline: float | None,
             chunked: bool) -> Iterator[Any]:
    """Yield results in order. No local name holds a future or a result across
    a ``yield``: each is released once the consumer drops it."""
    try:
        while futures:
            if (executor := executor_ref()) is not None and (args := next(more, None)) is not None:
                futures.append(executor.submit(fn, *args))
            del executor
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if chunked:
                yield from _result_or_cancel(futures.popleft(), timeout)
            else:
                yield _result_or_cancel(futures.popleft(), timeout)
    finally:
        for fut in futures:
            fut.cancel()


def _result_or_cancel(fut: Future, timeout: float | None) -> Any:
    try:
        return fut.result(timeout)
    except BaseException:
        fut.cancel()
        raise


def _apply_chunk(fn: Callable, *args: Any) -> list[Any]:
    """Run over one chunk of ``map``'s items (``args`` ends with the chunk);
    for a ctx_function the first of ``args`` is its context."""
    *ctx, chunk = args
    return [fn(*ctx, *item) for item in chunk]


_chunk_functions: weakref.WeakKeyDictionary[CtxFunction, CtxFunction] = weakref.WeakKeyDictionary()


def _chunked(fn: Callable) -> CtxFunction:
    """``fn`` over a chunk of items, in the same context (one per ctx_function, kept while it lives)."""
    if not isinstance(fn, CtxFunction):
        return CtxFunction.plain(functools.partial(_apply_chunk, _checked_callable(fn)))
    if fn.batch_size > 1:
        raise ValueError(f"{fn.__qualname__} is batched already: map it with chunksize=1")
    wrapped = _chunk_functions.get(fn)
    if wrapped is None:
        wrapped = CtxFunction(functools.partial(_apply_chunk, fn.fn), fn.spec, fn.retries, fn.timeout)
        wrapped.__qualname__ = wrapped.__name__ = f"{fn.__qualname__}[chunk]"
        _chunk_functions[fn] = wrapped
    return wrapped


def _checked_callable(fn: Any) -> Callable:
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    return fn


def _at_exit() -> None:
    """Before the interpreter joins its threads: no new work, and work already
    submitted to executors that were never shut down finishes."""
    global _exiting
    _exiting = True
    for executor in list(_live):
        if not executor._shutdown:
            executor._wait(executor._pending())


threading._register_atexit(_at_exit)
