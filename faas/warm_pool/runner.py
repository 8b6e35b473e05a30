"""Run invocations in a worker process (for the worker loop, and as the task
body that Globus Compute endpoints run).

Payloads stay opaque to the daemon: functions, arguments and results are
cloudpickled bytes that only workers and clients open. Each invocation gets its
own outcome: an exception, even a BaseException such as SystemExit, is that
invocation's error and never fails the others. A batched function's merged
call that raises or overruns its timeout is run again one invocation at a
time, each with its own timeout, so that only the culprit fails. What a call
writes and logs is captured (:mod:`faas.warm_pool.output`) and goes with the
outcome of each of its invocations.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from faas.errors import (
    ContextInitError,
    Interrupted,
    InvocationTimeout,
    PayloadTooLarge,
    RemoteError,
    SerializationError,
    last_line,
)
from faas.lru import ByteLRU
from faas.protocol import InitInfo, Kind, OutcomeInfo
from faas.warm_pool.output import captured
from faas.warm_pool.registry import WarmPool, process_pool

FUNCTION_CACHE_BYTES = 256 * 2**20  # function bodies kept (least recently used go), unless the endpoint says
Result = tuple[OutcomeInfo, bytes]


@dataclass
class WorkItem:
    id: str
    function_id: str
    args: bytes  # pickled (args, kwargs)
    arrived: float = field(default_factory=time.monotonic)


class Runner:
    """Function bodies by id and the process's warm pool; one per worker process.

    Bodies are kept within a byte budget, least recently used go first (with
    their unpickled functions), and what they hold counts in the warm pool's
    memory budget; the evicted ones are reported (:meth:`take_dropped`) so
    that the endpoint sends them again when needed."""

    def __init__(self, pool: WarmPool | None = None, max_result_bytes: int | None = None,
                 function_cache_bytes: int = FUNCTION_CACHE_BYTES):
        self.pool = pool or process_pool()
        self.max_result_bytes = max_result_bytes
        self.output_log_level = logging.WARNING  # log records at or above it are part of an invocation's output
        self.bodies = ByteLRU(function_cache_bytes)  # as received; unpickled on first use
        self._functions: dict[str, Any] = {}
        self._dropped: list[str] = []
        self._failed_inits: dict[str, tuple[float, str]] = {}  # context key -> (when, loader's traceback)
        self.on_loading: Callable[[str], None] | None = None  # told before a context's loader runs (its key)
        self.on_init: Callable[[], None] | None = None  # told when a context was just initialised
        self.on_alone: Callable[[WorkItem], None] | None = None  # told as a merged call's member runs alone

    def add_bodies(self, bodies: dict[str, bytes], keep: Iterable[str] = ()) -> None:
        """``keep``: functions that queued work still needs (never evicted)."""
        keep = {*keep, *bodies}
        for fid, body in bodies.items():
            for gone in self.bodies.put(fid, body, keep):
                self._functions.pop(gone, None)
                self._dropped.append(gone)
        self.pool.held_elsewhere = self.bodies.nbytes

    def take_dropped(self) -> list[str]:
        dropped, self._dropped = self._dropped, []
        return dropped

    def function(self, fid: str) -> Any:
        """The unpickled function; KeyError when its body is not here (evicted)."""
        fn = self._functions.get(fid)
        body = self.bodies.get(fid)  # marks it recently used
        if fn is None:
            if body is None:
                raise KeyError(fid)
            fn = cloudpickle.loads(body)
            fn.restore_source()
            self._functions[fid] = fn
        return fn

    def preload(self, fid: str) -> None:
        """Load the context of function ``fid`` before any of its work comes
        (a loader that raises is reported with the init events, as for work)."""
        fn = self.function(fid)
        if fn.spec is not None:
            self.pool.preload(fn.spec)

    def run(self, fn: Any, items: list[WorkItem]) -> list[Result]:
        """Outcomes of ``items``, all invocations of ``fn``: one call per item, or
        merged calls when ``fn`` is batched."""
        if fn.batch_size > 1 and len(items) > 1:
            return self._run_merged(fn, items)
        return [self._run_one(fn, it) for it in items]

    def _run_one(self, fn: Any, it: WorkItem) -> Result:
        started = time.time()
        with captured(self.output_log_level) as output:
            try:
                args, kwargs = cloudpickle.loads(it.args)
                with self._context(fn, [it]) as ctx:
                    if fn.batch_size > 1:
                        value = _batch_results(fn, _call(fn, ctx, [[a] for a in args],
                                                         {k: [v] for k, v in kwargs.items()}), 1)[0]
                    else:
                        value = _call(fn, ctx, args, kwargs)
                result = self._ok(it, value, started)
            except BaseException as e:  # noqa: BLE001 - any exception of the user's code is this invocation's
                result = self.failed(it, e, started)
        return _with_output(result, output.chunks())

    def _run_merged(self, fn: Any, items: list[WorkItem]) -> list[Result]:
        started = time.time()
        calls, out = [], {}
        for it in items:
            try:
                calls.append((it, *cloudpickle.loads(it.args)))
            except BaseException as e:  # noqa: BLE001
                out[it.id] = self.failed(it, e, started)
        for group in _by_shape(calls):
            members, error = [it for it, _, _ in group], None
            with captured(self.output_log_level) as output:  # the merged call's output goes to each member
                try:
                    with self._context(fn, members) as ctx:
                        columns = [list(col) for col in zip(*(args for _, args, _ in group))]
                        kwcolumns = {k: [kw[k] for _, _, kw in group] for k in group[0][2]}
                        values = _batch_results(fn, _call(fn, ctx, columns, kwcolumns), len(group))
                except BaseException as e:  # noqa: BLE001 - find the culprit: each member alone
                    error = e
            if error is None:
                out.update({it.id: _with_output(self._ok(it, v, started), output.chunks())
                            for it, v in zip(members, values)})
            elif len(members) == 1 or isinstance(error, ContextInitError) or _cancelled(error):
                out.update({it.id: _with_output(self.failed(it, error, started), output.chunks())
                            for it in members})
            else:
                for it in members:
                    if self.on_alone is not None:
                        self.on_alone(it)
                    out[it.id] = self._run_one(fn, it)
        return [out[it.id] for it in items]

    @contextmanager
    def _context(self, fn: Any, items: list[WorkItem]) -> Iterator[Any]:
        """The warm context of ``fn`` (None for a plain function). A loader that
        failed is not run again for work that arrived before it failed."""
        if fn.spec is None:
            yield None
            return
        key = fn.spec.key
        failed = self._failed_inits.get(key)
        if failed is not None and max(it.arrived for it in items) <= failed[0]:
            raise _init_error(fn, failed[1])  # it failed since this work arrived: not again for it
        if self.on_loading is not None and not self.pool.loaded(key):
            self.on_loading(key)
        try:
            ctx = self.pool.acquire(fn.spec)
        except Exception:
            tb = traceback.format_exc()
            self._failed_inits[key] = (time.monotonic(), tb)
            raise _init_error(fn, tb) from None
        self._failed_inits.pop(key, None)
        if self.on_init is not None and self.pool.has_events():
            self.on_init()  # before the code runs: the endpoint learns the context is loaded
        try:
            yield ctx
        finally:
            self.pool.release(fn.spec)

    def _ok(self, it: WorkItem, value: Any, started: float) -> Result:
        try:
            payload = _dumps_result(value)
            if self.max_result_bytes is not None and len(payload) > self.max_result_bytes:
                raise PayloadTooLarge(f"the result pickles to {len(payload)} bytes, over the endpoint's limit of "
                                      f"{self.max_result_bytes} (its max_payload_bytes, or less where its store "
                                      f"takes less)")
        except Exception as e:
            return self.failed(it, e, started)
        return OutcomeInfo(id=it.id, kind=Kind.OK, started=started, finished=time.time()), payload

    def failed(self, it: WorkItem, exc: BaseException, started: float) -> Result:
        if isinstance(exc, ContextInitError):
            kind, tb = Kind.INIT_ERROR, getattr(exc, "tb", None)
        elif isinstance(exc, Interrupted):
            kind = Kind.TIMEOUT if exc.reason == "timeout" else Kind.CANCELLED
            exc, tb = InvocationTimeout(str(exc)), None
        else:
            kind, tb = Kind.ERROR, "".join(traceback.format_exception(exc))
        return (OutcomeInfo(id=it.id, kind=kind, error=tb, started=started, finished=time.time()),
                dumps_exception(exc) if kind is not Kind.CANCELLED else b"")

    def inits(self) -> list[InitInfo]:
        """Context initialisations since the last call (the worker reports them)."""
        return [InitInfo(**vars(e)) for e in self.pool.drain_events()]


def _with_output(result: Result, output: list[tuple[str, str]]) -> Result:
    if output:
        result[0].output = output
    return result


def _init_error(fn: Any, tb: str) -> ContextInitError:
    error = ContextInitError(f"context {fn.spec.description} failed to initialise: {last_line(tb)}")
    error.tb = tb  # the loader's traceback, reported as the invocation's
    return error


def _cancelled(exc: BaseException) -> bool:
    return isinstance(exc, Interrupted) and exc.reason != "timeout"


def _call(fn: Any, ctx: Any, args: Any, kwargs: dict) -> Any:
    return fn.fn(*args, **kwargs) if fn.spec is None else fn.fn(ctx, *args, **kwargs)


def _by_shape(calls: list[tuple[WorkItem, tuple, dict]]) -> list[list[tuple[WorkItem, tuple, dict]]]:
    """Invocations that can share one call: the same number of positional
    arguments and the same keyword names."""
    groups: dict[tuple, list] = {}
    for call in calls:
        groups.setdefault((len(call[1]), tuple(sorted(call[2]))), []).append(call)
    return list(groups.values())


def _batch_results(fn: Any, values: Any, n: int) -> list[Any]:
    if not isinstance(values, (list, tuple)) or len(values) != n:
        got = f"{len(values)} results" if isinstance(values, (list, tuple)) else type(values).__name__
        raise ValueError(f"batched function {fn.__qualname__} returned {got} for {n} inputs; "
                         "it must return a list with one result per input")
    return list(values)


def run_batch(functions: dict[str, bytes], items: list[tuple[str, str, bytes]],
              idle_timeout: float | None = None, memory_budget: int | None = None) -> dict[str, Any]:
    """Run ``items`` = [(invocation id, function id, pickled (args, kwargs))] in
    order, in this process (a Globus Compute task). Returns the worker's
    identity, one ``(OutcomeInfo, payload)`` per item and the context inits."""
    runner = _process_runner()
    runner.pool.idle_timeout, runner.pool.memory_budget = idle_timeout, memory_budget
    runner.add_bodies(functions, keep=[fid for _, fid, _ in items])
    outcomes = []
    for inv_id, fid, args in items:
        work = WorkItem(inv_id, fid, args)
        try:
            fn = runner.function(fid)
        except BaseException as e:  # noqa: BLE001
            outcomes.append(runner.failed(work, e, time.time()))
            continue
        outcomes += runner.run(fn, [work])
    return {"host": socket.gethostname(), "pid": os.getpid(), "outcomes": outcomes, "inits": runner.inits()}


@functools.cache
def _process_runner() -> Runner:
    return Runner()


def _dumps_result(value: Any) -> bytes:
    try:
        return cloudpickle.dumps(value)
    except Exception as e:
        raise SerializationError(f"the result ({type(value).__name__}) could not be pickled: {e}") from e


def dumps_exception(exc: BaseException) -> bytes:
    try:
        blob = cloudpickle.dumps(exc)
        cloudpickle.loads(blob)  # some exceptions pickle but cannot be rebuilt
        return blob
    except Exception:
        return cloudpickle.dumps(RemoteError(type(exc).__qualname__, str(exc)))
