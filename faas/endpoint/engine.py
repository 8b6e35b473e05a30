"""The Parsl side of an endpoint: a DataFlowKernel with one HighThroughputExecutor.

Parsl's provider and strategy get and release the blocks; the executor runs
:func:`faas.warm_pool.runner.run_batch` in its workers. Parsl's own retries are
off: the dispatcher retries per invocation, with the store as its record.
"""

from __future__ import annotations

import logging
import os
import sys
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from parsl import python_app
from parsl.config import Config
from parsl.dataflow.dflow import DataFlowKernel
from parsl.executors import HighThroughputExecutor

from faas.endpoint.config import EngineConfig
from faas.warm_pool.runner import run_batch

log = logging.getLogger(__name__)
LABEL = "faas"


class ParslEngine:
    def __init__(self, cfg: EngineConfig, run_dir: Path):
        self.cfg = cfg
        put_parsl_scripts_on_path()
        self.htex = HighThroughputExecutor(
            label=LABEL,
            provider=cfg.provider.build(),
            address=cfg.address,
            max_workers_per_node=cfg.max_workers_per_node,
            cores_per_worker=cfg.cores_per_worker,
            mem_per_worker=cfg.mem_per_worker,
            available_accelerators=cfg.available_accelerators,
            heartbeat_period=cfg.heartbeat_period,
            heartbeat_threshold=cfg.heartbeat_threshold,
            interchange_launch_cmd=[sys.executable, "-m", "faas.endpoint.interchange_guard", str(os.getpid())],
            # preempted blocks are normal here: Parsl must keep replacing them rather
            # than declare the executor broken; the dispatcher retries the invocations
            block_error_handler=False,
        )
        self.dfk = DataFlowKernel(Config(
            executors=[self.htex],
            run_dir=str(run_dir),
            strategy_period=cfg.strategy_period,
            max_idletime=cfg.max_idletime,
            retries=0,
        ))
        self._app = python_app(run_batch, data_flow_kernel=self.dfk, executors=[LABEL])

    def submit(self, functions: dict[str, bytes], items: list[tuple[str, str, bytes]],
               idle_timeout: float | None) -> Future:
        return self._app(functions, items, idle_timeout)

    def managers(self) -> list[dict[str, Any]]:
        """Connected worker pools (one per node), as the interchange sees them."""
        return self.htex.connected_managers()

    def shutdown(self) -> None:
        self.dfk.cleanup()


def put_parsl_scripts_on_path() -> None:
    """Parsl starts ``interchange.py`` and ``process_worker_pool.py`` by name:
    find them beside this interpreter even when its environment is not activated."""
    bindir = os.path.dirname(sys.executable)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([bindir, os.environ.get("PATH", "")])
