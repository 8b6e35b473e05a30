"""Set-up shared by the benchmark scripts; Parsl and faas' engine are imported
only when used, so scripts can report what they skip where Parsl is missing."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Sequence


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
