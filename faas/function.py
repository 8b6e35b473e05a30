"""``@ctx_function``: a function whose first parameter is a warm context.

The decorated object is what clients ship (by value, with cloudpickle) to
workers. Called directly it runs in this process with a local warm context.
A plain callable submitted to an Executor is wrapped as a function without a
context (:meth:`CtxFunction.plain`): an ordinary FaaS call.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

from faas.warm_pool.registry import process_pool
from faas.warm_pool.spec import ContextSpec

NO_CONTEXT = "no-context"  # the context key of plain functions


class CtxFunction:
    """``spec`` None: a plain function, called without a context.

    ``batch_size`` > 1 makes it a batched function: each parameter receives a
    list (one element per invocation merged into the call) and it returns a
    list of as many results; callers still submit one invocation per item.
    """

    def __init__(self, fn: Callable[..., Any], spec: ContextSpec | None, retries: int = 0,
                 timeout: float | None = None, batch_size: int = 1, batch_wait: float = 0.0):
        if not callable(fn):
            raise TypeError(f"ctx_function needs a callable, got {fn!r}")
        _check_options(retries, timeout, batch_size, batch_wait)
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.spec = spec
        self.retries = retries
        self.timeout = timeout
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.source: tuple[str, list[str]] | None = None  # (file, lines), filled when shipped

    @classmethod
    def plain(cls, fn: Callable[..., Any]) -> CtxFunction:
        return cls(fn, None)

    @property
    def context_key(self) -> str:
        return self.spec.key if self.spec is not None else NO_CONTEXT

    @property
    def context_description(self) -> str:
        return self.spec.description if self.spec is not None else "(no context)"

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        if self.spec is None:
            return self.fn(*args, **kwargs)
        return process_pool().call(self.spec, self.fn, args, kwargs)

    def __repr__(self) -> str:
        return f"<ctx_function {self.__qualname__} context={self.context_description}>"


def _check_options(retries: int, timeout: float | None, batch_size: int, batch_wait: float) -> None:
    if not isinstance(retries, int) or retries < 0:
        raise ValueError("retries must be an int >= 0")
    if timeout is not None and not timeout > 0:
        raise ValueError("timeout must be a number of seconds > 0, or None")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError("batch_size must be an int >= 1")
    if not batch_wait >= 0:
        raise ValueError("batch_wait must be >= 0 seconds")


def ctx_function(fn: Callable | None = None, *, model: str | Callable[..., Any],
                 files: str | os.PathLike | Sequence[str | os.PathLike] | None = None, retries: int = 0,
                 timeout: float | None = None, batch_size: int = 1, batch_wait: float = 0.0, **options: Any):
    """Declare the context ``fn`` needs.

    ``model`` is a Hugging Face model id or local folder (loaded with
    transformers: tokenizer + causal LM on ``cuda`` when present) or a callable
    returning any context object. ``options`` go to the loader and are part of
    the context's identity. ``files`` (a loader's; a folder, a file or a list of
    them, as workers see them): staged in each node's cache, checked against
    their hashes and copied between nodes, so the source is read once per
    fleet; the loader receives the node-local copy as ``files=`` (a path, or a
    list of paths). A ``model`` that is an absolute folder path is staged so too.
    ``retries`` lets an invocation whose own code raised (or timed out) be run
    again (system failures are always retried).
    ``timeout``: seconds one invocation may run on a worker before it is
    interrupted and fails with InvocationTimeout (default: the endpoint's); a
    batched function's merged call that overruns it is run again one member at
    a time, each with the whole timeout.
    ``batch_size``/``batch_wait``: merge up to ``batch_size`` queued invocations
    into one call, waiting at most ``batch_wait`` seconds for more (see
    :class:`CtxFunction`).
    """
    if not (isinstance(model, str) or callable(model)):
        raise TypeError("model must be a model id/folder or a loader callable")
    if files is not None and isinstance(model, str):
        raise TypeError("files= is for a loader callable; a model folder names its files itself")
    if files is not None and not isinstance(files, (str, os.PathLike)):
        files = tuple(os.fspath(f) for f in files)
    spec = ContextSpec(model, dict(options), os.fspath(files) if isinstance(files, os.PathLike) else files)

    def wrap(f: Callable[..., Any]) -> CtxFunction:
        if isinstance(f, CtxFunction):
            raise TypeError(f"{f!r} is already a ctx_function; decorate its .fn to give it another context")
        return CtxFunction(f, spec, retries, timeout, batch_size, batch_wait)

    _check_options(retries, timeout, batch_size, batch_wait)
    return wrap(fn) if fn is not None else wrap
