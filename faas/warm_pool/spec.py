"""What a context is and how it is named.

A context is declared by a loader (a Hugging Face model id or local folder, or
any callable) plus keyword options. Its key must be the same in every client
process that declares it, so that two separate sessions share one warm context
on a worker: it hashes the loader's code, never the pickled bytes, which differ
between processes.
"""

from __future__ import annotations

import hashlib
import json
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle


@dataclass(frozen=True)
class ContextSpec:
    """``key`` is computed once, where the context is declared, and travels
    with the spec: a worker uses the key the client computed rather than
    hashing the code it unpickled (whose bytes and pickled state may differ)."""

    loader: str | Callable[..., Any]
    options: dict[str, Any] = field(default_factory=dict)
    key: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        h = hashlib.sha256()
        h.update(_loader_identity(self.loader))
        h.update(json.dumps(self.options, sort_keys=True, default=repr).encode())
        object.__setattr__(self, "key", h.hexdigest()[:32])

    @property
    def description(self) -> str:
        name = self.loader if isinstance(self.loader, str) else _qualname(self.loader)
        opts = ", ".join(f"{k}={v!r}" for k, v in sorted(self.options.items()))
        return f"{name}({opts})" if opts else str(name)

    def load(self) -> Any:
        if isinstance(self.loader, str):
            from faas.warm_pool.loaders import load_causal_lm

            return load_causal_lm(self.loader, **self.options)
        return self.loader(**self.options)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def _loader_identity(loader: Any) -> bytes:
    if isinstance(loader, str):
        return b"model:" + loader.encode()
    if isinstance(loader, types.FunctionType):
        return _qualname(loader).encode() + _code_fingerprint(loader.__code__)
    # partials, callable instances: their pickled state is the best identity we have
    return _qualname(loader).encode() + hashlib.sha256(cloudpickle.dumps(loader)).digest()


def _code_fingerprint(code: types.CodeType) -> bytes:
    """Bytecode, names and constants (recursively): stable across processes and
    paths, different as soon as the loader's body changes."""
    h = hashlib.sha256(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        h.update(_code_fingerprint(const) if isinstance(const, types.CodeType) else repr(const).encode())
    return h.digest()
