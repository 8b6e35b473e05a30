"""``@ctx_function``: a function whose first parameter is a warm context.

The decorated object is what clients ship (by value, with cloudpickle) to
workers. Called directly it runs in this process with a local warm context.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from faas.warm_pool.registry import process_pool
from faas.warm_pool.spec import ContextSpec


class CtxFunction:
    def __init__(self, fn: Callable[..., Any], spec: ContextSpec, retries: int = 0):
        if not callable(fn):
            raise TypeError(f"ctx_function needs a callable, got {fn!r}")
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.spec = spec
        self.retries = retries
        self.source: tuple[str, list[str]] | None = None  # (file, lines), filled when shipped

    @property
    def context_key(self) -> str:
        return self.spec.key

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return process_pool().call(self.spec, self.fn, args, kwargs)

    def __repr__(self) -> str:
        return f"<ctx_function {self.__qualname__} context={self.spec.description}>"


def ctx_function(fn: Callable | None = None, *, model: str | Callable[..., Any], retries: int = 0,
                 **options: Any):
    """Declare the context ``fn`` needs.

    ``model`` is a Hugging Face model id or local folder (loaded with
    transformers: tokenizer + causal LM on ``cuda`` when present) or a callable
    returning any context object. ``options`` go to the loader and are part of
    the context's identity. ``retries`` lets an invocation whose own code raised
    be run again (system failures are always retried).
    """
    if not (isinstance(model, str) or callable(model)):
        raise TypeError("model must be a model id/folder or a loader callable")
    if retries < 0:
        raise ValueError("retries must be >= 0")
    spec = ContextSpec(model, dict(options))

    def wrap(f: Callable[..., Any]) -> CtxFunction:
        if isinstance(f, CtxFunction):
            raise TypeError(f"{f!r} is already a ctx_function; decorate its .fn to give it another context")
        return CtxFunction(f, spec, retries)

    return wrap(fn) if fn is not None else wrap
