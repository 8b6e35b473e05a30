"""``@ctx_function``: a function whose first parameter is a warm context.

The decorated object is what clients ship (by value, with cloudpickle) to
workers. Called directly it runs in this process with a local warm context.
A plain callable submitted to an Executor (any that ``concurrent.futures``
takes: builtins, partials, bound methods, callable objects, ``operator``'s
getters) is wrapped as a function without a context
(:meth:`CtxFunction.plain`): an ordinary FaaS call. A partial of a
ctx_function is not plain: :func:`unbind` finds its context.
"""

from __future__ import annotations

import functools
import linecache
import os
import types
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
        if not isinstance(getattr(self, "__qualname__", None), str):  # a partial, a callable object, ...
            self.__qualname__ = self.__name__ = callable_name(fn)
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

    def keep_source(self) -> None:
        """Before it is shipped: the lines of the user's file, so that remote tracebacks show them."""
        target = _python_function(self.fn)
        if target is not None and self.source is None:
            filename = target.__code__.co_filename
            self.source = (filename, linecache.getlines(filename))

    def restore_source(self) -> None:
        """On a worker: cloudpickle names by-value code ``<dynamic-code>``; give the
        user's function back its file name and lines (see :meth:`keep_source`)."""
        target = _python_function(self.fn)
        if not self.source or target is None or target.__code__.co_filename != "<dynamic-code>":
            return
        filename, lines = self.source
        target.__code__ = target.__code__.replace(co_filename=filename)
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)


def callable_name(fn: Any) -> str:
    """A name for records and reports: a function's qualified name (a bound
    method's is its function's), a partial's function's, else its type's (a
    callable object, ``operator.itemgetter(1)``)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None)
    return name if isinstance(name, str) else type(fn).__qualname__


def unbind(fn: Any) -> tuple[Any, tuple, dict]:
    """(what to ship, its bound arguments, its bound keywords): a partial (nested
    too) of a ctx_function is that ctx_function, so that it keeps its context,
    with the partial's arguments; anything else is itself, with none."""
    args, keywords, inner = (), {}, fn
    while isinstance(inner, functools.partial):
        args, keywords, inner = (*inner.args, *args), {**inner.keywords, **keywords}, inner.func
    return (inner, args, keywords) if isinstance(inner, CtxFunction) else (fn, (), {})


class Chunk:
    """``fn`` over a chunk of ``map``'s items, called as ``(*context, chunk)``;
    ``args`` and ``keywords`` (a partial's) go after the context, before each item."""

    def __init__(self, fn: Callable[..., Any], args: tuple = (), keywords: dict | None = None):
        self.fn, self.args, self.keywords = fn, args, keywords or {}

    def __call__(self, *args: Any) -> list[Any]:
        *ctx, chunk = args
        return [self.fn(*ctx, *self.args, *item, **self.keywords) for item in chunk]


def _python_function(fn: Any) -> types.FunctionType | None:
    """The Python function whose code ``fn`` runs (through partials, bound methods
    and wrappers), or None (a builtin, a callable object)."""
    while not isinstance(fn, types.FunctionType):
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif isinstance(fn, types.MethodType):
            fn = fn.__func__
        elif isinstance(fn, CtxFunction | Chunk):
            fn = fn.fn
        else:
            return None
    return fn


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
