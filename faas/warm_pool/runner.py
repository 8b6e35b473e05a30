"""Run one batch of invocations in a worker process (for the worker loop, and
as the task body that Globus Compute endpoints run).

Payloads stay opaque to the daemon: functions, arguments and results are
cloudpickled bytes that only workers and clients open. One invocation's
exception is caught and returned, so it never fails its batch mates.
"""

from __future__ import annotations

import linecache
import os
import socket
import time
import traceback
from typing import Any

import cloudpickle

from faas.errors import ContextInitError, RemoteError, SerializationError
from faas.warm_pool.registry import process_pool

_functions: dict[str, Any] = {}  # function id -> unpickled ctx_function, per worker process

OK, ERROR, INIT_ERROR = "ok", "error", "init_error"


def run_batch(functions: dict[str, bytes], items: list[tuple[str, str, bytes]],
              idle_timeout: float | None = None, memory_budget: int | None = None) -> dict[str, Any]:
    """Run ``items`` = [(invocation id, function id, pickled (args, kwargs))].

    Returns the worker's identity, one outcome per item
    ``(id, kind, payload, traceback text, started, finished)``, the context
    init events this batch caused and the warm pool's statistics.
    """
    pool = process_pool()
    pool.idle_timeout = idle_timeout
    pool.memory_budget = memory_budget
    failed_inits: dict[str, str] = {}  # a loader that failed is not retried within the batch
    outcomes = []
    for inv_id, fid, args_blob in items:
        started = time.time()
        try:
            fn = _function(fid, functions)
            key = fn.spec.key
            if key in failed_inits:
                raise ContextInitError(f"context {fn.spec.description} failed to initialise")
            args, kwargs = cloudpickle.loads(args_blob)
            try:
                ctx = pool.acquire(fn.spec)
            except Exception:
                failed_inits[key] = traceback.format_exc()
                raise ContextInitError(f"context {fn.spec.description} failed to initialise") from None
            try:
                value = fn.fn(ctx, *args, **kwargs)
            finally:
                pool.release(fn.spec)
            outcome = (OK, _dumps_result(value), None)
        except ContextInitError as e:
            outcome = (INIT_ERROR, _dumps_exception(e), failed_inits[key])
        except Exception as e:
            outcome = (ERROR, _dumps_exception(e), traceback.format_exc())
        outcomes.append((inv_id, *outcome, started, time.time()))
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "outcomes": outcomes,
        "inits": [vars(e) for e in pool.drain_events()],
        "contexts": pool.snapshot(),
    }


def _function(fid: str, bodies: dict[str, bytes]) -> Any:
    fn = _functions.get(fid)
    if fn is None:
        fn = _functions[fid] = cloudpickle.loads(bodies[fid])
        _restore_source(fn)
    return fn


def _restore_source(fn: Any) -> None:
    """cloudpickle names by-value code ``<dynamic-code>``; give the user's
    function back its file name and lines so remote tracebacks show them."""
    source = getattr(fn, "source", None)
    code = getattr(fn.fn, "__code__", None)
    if not source or code is None or code.co_filename != "<dynamic-code>":
        return
    filename, lines = source
    fn.fn.__code__ = code.replace(co_filename=filename)
    linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)


def _dumps_result(value: Any) -> bytes:
    try:
        return cloudpickle.dumps(value)
    except Exception as e:
        raise SerializationError(f"the result ({type(value).__name__}) could not be pickled: {e}") from e


def _dumps_exception(exc: BaseException) -> bytes:
    try:
        blob = cloudpickle.dumps(exc)
        cloudpickle.loads(blob)  # some exceptions pickle but cannot be rebuilt
        return blob
    except Exception:
        return cloudpickle.dumps(RemoteError(type(exc).__qualname__, str(exc)))
