"""faas: warm-context functions as a service on opportunistic GPU clusters."""

from faas.client.base import ComputeFuture
from faas.client.executor import Executor
from faas.client.progress import as_completed
from faas.function import ctx_function

__all__ = ["ComputeFuture", "Executor", "as_completed", "ctx_function"]
