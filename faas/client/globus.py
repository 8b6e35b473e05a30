"""Run ctx_functions on an existing Globus Compute endpoint, with warm contexts.

Each Globus Compute task runs :func:`faas.warm_pool.runner.run_batch` in an
endpoint worker, whose per-process warm pool keeps contexts loaded between
tasks. At the Globus level only ``run_batch`` (by reference, with DillCode, the
SDK's default code strategy) and plain bytes (DillDataBase64, the default data
strategy) travel; the user's function and arguments are cloudpickled inside
those bytes, so code from ``__main__`` or a notebook runs there too. faas must
be installed on the endpoint's workers.

Invocations are grouped into few tasks because the web service limits request
rate and payload size; one invocation's exception never fails its batch mates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Future
from concurrent.futures import Executor as _BaseExecutor
from dataclasses import dataclass
from typing import Any

from faas.client import output, serialize
from faas.client.base import ComputeFuture, FaasExecutor, fail, resolve_call
from faas.client.batching import Batcher
from faas.errors import ClientError, PayloadTooLarge
from faas.function import CtxFunction
from faas.protocol import Kind, retryable
from faas.warm_pool.runner import run_batch


@dataclass(eq=False)
class _Invocation:
    future: ComputeFuture
    fn: CtxFunction
    fid: str
    fn_blob: bytes
    args_blob: bytes
    attempts: int = 0


class GlobusExecutor(FaasExecutor):
    """A ``concurrent.futures.Executor`` for ctx_functions (and plain functions)
    on a Globus Compute endpoint.

    ``GlobusExecutor(endpoint_id=..., **executor_kwargs)`` submits through a
    ``globus_compute_sdk.Executor(endpoint_id=..., **executor_kwargs)`` that it
    owns; ``GlobusExecutor(executor=ex)`` submits through ``ex`` (an existing
    SDK Executor, or any Executor that runs ``fn(*args)`` in a Globus Compute
    worker) and leaves it running at shutdown.

    A task carries at most ``max_batch`` invocations and ``max_batch_bytes``
    bytes of pickled functions and arguments (base64 adds a third on the
    wire); a partial batch goes ``batch_window`` seconds after its first
    invocation. Contexts unused for ``idle_timeout`` seconds are released
    (None: kept until the worker exits). What an invocation writes is printed
    here as its result arrives, as :class:`faas.Executor` does, unless
    ``forward_output`` is False.
    """

    def __init__(self, endpoint_id: str | None = None, *, executor: _BaseExecutor | None = None,
                 batch_window: float = 0.1, max_batch: int = 128, max_batch_bytes: int = 4 * 2**20,
                 idle_timeout: float | None = 3600.0, forward_output: bool = True, **executor_kwargs: Any):
        super().__init__()
        self.forward_output = forward_output
        if executor is None:
            try:
                import globus_compute_sdk
            except ImportError as e:
                raise ImportError("GlobusExecutor needs globus-compute-sdk: pip install 'faas[globus]'") from e
            executor = globus_compute_sdk.Executor(endpoint_id=endpoint_id, **executor_kwargs)
            self._owns_executor = True
        elif endpoint_id is not None or executor_kwargs:
            raise TypeError("pass either executor= or endpoint_id and Globus Compute Executor arguments")
        else:
            self._owns_executor = False
        self._executor = executor
        self.max_batch_bytes = max_batch_bytes
        self.idle_timeout = idle_timeout
        self._batcher: Batcher[_Invocation] = Batcher(self._send, window=batch_window, max_items=max_batch,
                                                      max_bytes=max_batch_bytes, name="faas-globus-batcher",
                                                      on_fatal=self._break)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> ComputeFuture:
        self._check_open()
        fn, args, kwargs = resolve_call(fn, args, kwargs)
        ctx_fn, fid, fn_blob = self._function(fn)
        if len(fn_blob) >= self.max_batch_bytes:
            raise PayloadTooLarge(f"{ctx_fn.__qualname__} pickles to {len(fn_blob)} bytes, over max_batch_bytes")
        args_blob = serialize.args_blob(args, kwargs, self.max_batch_bytes - len(fn_blob))
        inv = _Invocation(ComputeFuture(self._new_id()), ctx_fn, fid, fn_blob, args_blob)
        with self._lock:
            if self._broken is not None:  # broke since _check_open: this future would never end
                raise self._broken
            self._futures[inv.future.task_id] = inv.future
        inv.future.add_done_callback(self._forget)
        self._batcher.add(inv, len(args_blob), shared=(fid, len(fn_blob)))
        return inv.future

    def _forget(self, fut: Future) -> None:
        with self._lock:
            self._futures.pop(fut.task_id, None)

    # -- one Globus Compute task per batch (on the batcher's thread) -----------
    def _send(self, batch: list[_Invocation]) -> None:
        batch = [inv for inv in batch if inv.attempts or inv.future.set_running_or_notify_cancel()]
        if not batch:
            return
        for inv in batch:
            inv.attempts += 1
        functions = {inv.fid: inv.fn_blob for inv in batch}
        items = [(inv.future.task_id, inv.fid, inv.args_blob) for inv in batch]
        try:
            task = self._executor.submit(run_batch, functions, items, self.idle_timeout)
        except Exception as e:
            _fail(batch, e)
            return
        task.add_done_callback(functools.partial(self._on_task_done, batch))

    def _on_task_done(self, batch: list[_Invocation], task: Future) -> None:
        """On the SDK's thread, which swallows what a callback raises: that breaks this executor instead."""
        try:
            self._task_outcomes(batch, task)
        except BaseException as e:  # noqa: BLE001
            self._break(ClientError.of("handling a Globus Compute task's outcome", e))

    def _task_outcomes(self, batch: list[_Invocation], task: Future) -> None:
        try:
            report = task.result()
        except (Exception, CancelledError) as e:  # the whole task failed, e.g. its worker was lost
            _fail(batch, e)
            return
        by_id = {inv.future.task_id: inv for inv in batch}
        worker = f"{report['host']}:{report['pid']}"
        for info, payload in report["outcomes"]:
            inv = by_id[info.id]
            if retryable(info.kind, inv.attempts, inv.fn.retries):
                self._retry(inv)
                continue
            inv.future.output, inv.future.worker = info.output, worker
            if self.forward_output and info.output:
                output.forward(worker, info.output)
            if info.kind is Kind.OK:
                try:
                    value = serialize.load_result(payload)
                except Exception as e:  # e.g. the result's class cannot be imported here
                    inv.future.set_exception(serialize.unloadable(payload, e))
                else:
                    inv.future.set_result(value)
            else:
                inv.future.set_exception(serialize.remote_exception(payload, info.error))

    def _retry(self, inv: _Invocation) -> None:
        try:
            self._batcher.add(inv, len(inv.args_blob), shared=(inv.fid, len(inv.fn_blob)))
        except RuntimeError as e:  # shut down without waiting
            inv.future.set_exception(e)

    # -- lifecycle ----------------------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        futures = self._pending()
        if cancel_futures:
            for fut in futures:
                fut.cancel()  # only those not yet sent: a sent task cannot be recalled
        self._batcher.flush()
        if wait:
            self._wait(futures)
        self._batcher.close()
        if self._owns_executor:
            self._executor.shutdown(wait=wait, cancel_futures=cancel_futures)


def _fail(invocations: Iterable[_Invocation], exc: BaseException) -> None:
    fail([inv.future for inv in invocations], exc)
