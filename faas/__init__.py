"""faas: warm-context functions as a service on opportunistic GPU clusters."""

from faas.client.executor import ComputeFuture, Executor
from faas.function import ctx_function

__all__ = ["ComputeFuture", "Executor", "ctx_function"]
