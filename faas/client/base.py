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
  (or shut down without waiting) still finishes, as with CPython's executors,
  unless its endpoint makes no progress for ``exit_timeout`` seconds or the
  user presses Ctrl-C (:mod:`faas.client.exit_wait`).
- a client that cannot go on (one of its threads failed, the endpoint stopped
  for good, its key was refused) fails every open future and refuses new work
  with the same error (:meth:`FaasExecutor._break`).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures import Executor as _StdExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from faas.client import exit_wait, serialize
from faas.client.progress import track
from faas.function import Chunk, CtxFunction, callable_name, unbind

_live: weakref.WeakSet[FaasExecutor] = weakref.WeakSet()
_exiting = False
_abandoned = threading.Event()  # set when the wait at interpreter exit gave up: waits still running end


class ComputeFuture(Future):
    """A future with the invocation's id (``task_id``, as in Globus Compute).
    Cancelling it before it runs cancels the invocation on the endpoint too.
    Once it is done, ``output`` holds what the invocation wrote to stdout and
    stderr and logged, as ``(stream, text)`` in order, and ``worker`` the
    worker (``host:pid``) that ran it."""

    def __init__(self, task_id: str, on_cancel: Callable[[str], None] | None = None):
        super().__init__()
        self.task_id = task_id
        self._on_cancel = on_cancel
        self.output: list[tuple[str, str]] = []
        self.worker: str | None = None

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
    """``exit_timeout``: seconds without progress after which the wait at
    interpreter exit gives up (see :mod:`faas.client.exit_wait`)."""

    def __init__(self, exit_timeout: float = exit_wait.EXIT_TIMEOUT) -> None:
        if not isinstance(exit_timeout, int | float) or not exit_timeout > 0:
            raise ValueError(f"exit_timeout must be a number of seconds > 0, not {exit_timeout!r}")
        self.exit_timeout = exit_timeout
        self._shutdown = False
        self._broken: BaseException | None = None  # why this client cannot go on
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
        if self._broken is not None:
            raise self._broken
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

    def _wait_unless_abandoned(self, futures: Iterable[Future]) -> None:
        """As :meth:`_wait`, until the wait at interpreter exit gives up (a thread's wait)."""
        for fut in futures:
            while not _abandoned.is_set():
                try:
                    fut.exception(timeout=0.5)
                    break
                except CancelledError:
                    break
                except FutureTimeout:
                    pass

    def _break(self, error: BaseException) -> None:
        """This client cannot go on: every open future fails with ``error``, and
        new submissions are refused with it."""
        with self._lock:
            if self._broken is None:
                self._broken = error
            futures, self._futures = list(self._futures.values()), {}
        fail(futures, error)

    # -- the wait at interpreter exit (faas.client.exit_wait) ----------------------------
    def _progress(self) -> Any:
        """Changes whenever the work makes progress."""
        pending = self._pending()
        return len(pending), sum(f.running() for f in pending)

    def _keepalive(self) -> None:
        """Called about once a second while waiting at exit."""

    def _exit_report(self, pending: list[Future], why: str) -> str:
        """What is left when the wait at exit gives up, and what to do about it."""
        return f"faas: stopped waiting at exit for {len(pending)} invocations: {why}; they may still run"

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
        if buffersize is not None and not isinstance(buffersize, int):  # as Python 3.14's
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        deadline = None if timeout is None else time.monotonic() + timeout
        calls: Iterator[tuple] = zip(*iterables)
        if chunksize > 1:
            fn, items = _chunked(fn), calls
            calls = ((chunk,) for chunk in iter(lambda: tuple(itertools.islice(items, chunksize)), ()))
        futures: deque[Future] = deque(self.submit(fn, *args) for args in
                                       (itertools.islice(calls, buffersize) if buffersize else calls))
        if buffersize is None:
            track(list(futures), progress, desc=callable_name(fn))
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


_chunk_functions: weakref.WeakKeyDictionary[Any, CtxFunction] = weakref.WeakKeyDictionary()


def _chunked(fn: Callable) -> CtxFunction:
    """``fn`` over a chunk of items, in the same context: one per ctx_function (or partial of
    one), kept while it lives; a plain callable's is made per ``map`` (kept, it would keep it alive)."""
    base, args, keywords = unbind(fn)
    if not isinstance(base, CtxFunction):
        return _chunk_named(CtxFunction.plain(Chunk(_checked_callable(fn))), fn)
    if base.batch_size > 1:
        raise ValueError(f"{base.__qualname__} is batched already: map it with chunksize=1")
    wrapped = _chunk_functions.get(fn)
    if wrapped is None:
        wrapped = _chunk_functions[fn] = _chunk_named(
            CtxFunction(Chunk(base.fn, args, keywords), base.spec, base.retries, base.timeout), fn)
    return wrapped


def _chunk_named(wrapped: CtxFunction, fn: Callable) -> CtxFunction:
    wrapped.__qualname__ = wrapped.__name__ = f"{callable_name(fn)}[chunk]"
    return wrapped


def resolve_call(fn: Callable, args: tuple, kwargs: dict) -> tuple[Callable, tuple, dict]:
    """What ``submit(fn, *args, **kwargs)`` ships: a partial of a ctx_function is
    that ctx_function (in its context), its bound arguments before ``args``."""
    base, bound, keywords = unbind(fn)
    return base, (*bound, *args), {**keywords, **kwargs}


def _checked_callable(fn: Any) -> Callable:
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    return fn


def fail(futures: Iterable[Future], exc: BaseException) -> None:
    """Fail those of ``futures`` not done yet (one resolved meanwhile by another thread is left as it is),
    each with its own copy of ``exc``: a shared one would grow a traceback each time one is raised."""
    for fut in futures:
        if not fut.done():
            with contextlib.suppress(InvalidStateError):
                fut.set_exception(_own_copy(exc))


def _own_copy(exc: BaseException) -> BaseException:
    try:
        new = copy.copy(exc)
    except Exception:  # an exception class that cannot be rebuilt from its args: share it
        return exc
    new.__cause__, new.__traceback__ = exc.__cause__, None
    return new


def _at_exit() -> None:
    """Before the interpreter joins its threads: no new work, and work already
    submitted finishes, within the bounds of :func:`faas.client.exit_wait.wait_at_exit`."""
    global _exiting
    _exiting = True
    try:
        exit_wait.wait_at_exit(list(_live))
    finally:
        _abandoned.set()  # what still waits (a shutdown(wait=False)'s closer) stops waiting


threading._register_atexit(_at_exit)
