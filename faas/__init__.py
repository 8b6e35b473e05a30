"""faas: warm-context functions as a service on opportunistic GPU clusters.

The client names load on first use, so that workers importing
``faas.warm_pool`` need none of the client's packages (pyzmq, SQLAlchemy).
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {"ComputeFuture": "faas.client.base", "Executor": "faas.client.executor",
          "as_completed": "faas.client.progress", "ctx_function": "faas.function"}
__all__ = list(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'faas' has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_NAMES])
