"""What a context is and how it is named.

A context is declared by a loader (a Hugging Face model id or local folder, or
any callable) plus keyword options, and the files it reads, if any. Its key must
be the same in every client process that declares it, so that two separate
sessions share one warm context on a worker: it hashes the loader's code, never
the pickled bytes, which differ between processes.

Files are staged in the node's cache before the loader runs
(:mod:`faas.warm_pool.files`): a loader declared with ``files=`` receives the
node-local copy as its ``files`` argument (a path for a path, a list of paths
for a list); a ``model`` that is an absolute folder path is loaded from the
node-local copy of that folder.
"""

from __future__ import annotations

import hashlib
import json
import os
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
    files: str | tuple[str, ...] | None = None  # a path, or several: given to the loader as node-local copies
    key: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.files, (list, tuple)):
            object.__setattr__(self, "files", tuple(str(f) for f in self.files))
        elif self.files is not None:
            object.__setattr__(self, "files", str(self.files))
        h = hashlib.sha256()
        h.update(_loader_identity(self.loader))
        h.update(json.dumps(self.options, sort_keys=True, default=repr).encode())
        if self.files is not None:  # contexts without files keep the keys they had
            h.update(b"files:" + json.dumps(self.files).encode())
        object.__setattr__(self, "key", h.hexdigest()[:32])

    @property
    def description(self) -> str:
        name = self.loader if isinstance(self.loader, str) else _qualname(self.loader)
        shown = {**self.options, **({"files": self.files} if self.files is not None else {})}
        opts = ", ".join(f"{k}={v!r}" for k, v in sorted(shown.items()))
        return f"{name}({opts})" if opts else str(name)

    @property
    def staged_files(self) -> str | tuple[str, ...] | None:
        """What is staged in the node cache before loading: ``files``, or a ``model`` naming a local folder."""
        if isinstance(self.loader, str) and os.path.isabs(os.path.expanduser(self.loader)):
            return self.loader
        return self.files

    def load(self) -> Any:
        files = self.staged_files
        local = None
        if files is not None:
            from faas.warm_pool.files import process_files

            local = process_files().stage(self.key, files)
        if isinstance(self.loader, str):
            from faas.warm_pool.loaders import load_causal_lm

            return load_causal_lm(str(local) if local is not None else self.loader, **self.options)
        return self.loader(**self.options) if local is None else self.loader(files=local, **self.options)


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
