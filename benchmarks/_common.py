"""Set-up shared by the benchmark scripts; Parsl and faas' engine are imported
only when used, so scripts can report what they skip where Parsl is missing."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Sequence

# Parsl's workers import this module by name (see cached_batch): put its folder on their path.
_HERE = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join([_HERE, *filter(None, [os.environ.get("PYTHONPATH")])])
_CONTEXT: dict = {}  # cached_batch's context, in each Parsl worker's copy of this module


def cached_batch(items, load_seconds, call_seconds):
    """The strongest plain-Parsl baseline: the context kept in a module global
    of the worker process, loaded by the first task that needs it. Parsl ships
    this function by reference, so the global outlives the task."""
    if _CONTEXT.get("load_seconds") != load_seconds:
        time.sleep(load_seconds)  # stands in for reading and placing model weights
        _CONTEXT["load_seconds"] = load_seconds
    out = []
    for x in items:
        time.sleep(call_seconds)
        out.append(2 * x)
    return out


@contextlib.contextmanager
def plain_parsl(workers: int, accelerators: Sequence[str] = ()):
    """A plain Parsl HighThroughputExecutor on local workers (one per accelerator when given)."""
    import parsl
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    from faas.endpoint.engine import put_parsl_scripts_on_path

    put_parsl_scripts_on_path()
    htex = HighThroughputExecutor(label="plain", address="127.0.0.1", max_workers_per_node=workers,
                                  available_accelerators=list(accelerators),
                                  provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))
    dfk = parsl.load(Config(executors=[htex], run_dir=tempfile.mkdtemp(prefix="parsl-bench-"),
                            strategy_period=0.5))
    try:
        yield dfk
    finally:
        dfk.cleanup()
        parsl.clear()
