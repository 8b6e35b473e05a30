"""The Parsl side of an endpoint: a DataFlowKernel with one HighThroughputExecutor.

Parsl's provider and strategy get and release the blocks; the executor runs
one worker loop (:func:`faas.warm_pool.loop.serve`) in each worker, which pulls
batches from the dispatcher. Parsl's own retries are off: the dispatcher
retries per invocation, with the store as its record.

On opportunistic clusters blocks come and go, so three Parsl defaults are
changed here, by subclassing and documented hooks rather than patching Parsl:

- the scheduler is polled every ``engine.provider_poll_interval`` seconds
  instead of the provider's fixed interval (60 s for Slurm, Condor, PBS), so a
  preempted block is noticed and replaced within seconds;
- ``min_blocks`` is kept even while idle (Parsl's strategy replaces a lost
  block only when tasks are waiting);
- a block that ends is no reason to fail everything: Parsl's default
  ``block_error_handler`` marks the executor bad, failing all tasks for good,
  once its first blocks have failed, and a preempted block can count. Here the
  executor gives up only when ``engine.max_failed_blocks`` blocks in a row
  ended without a worker ever registering (a broken ``worker_init`` or an
  unreachable address), so that a broken setup fails invocations with the
  cause instead of submitting jobs forever. Work lost with a block is retried
  by the dispatcher (``dispatch.max_attempts``).
"""

from __future__ import annotations

import logging
import os
import sys
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

from parsl import python_app
from parsl.config import Config
from parsl.dataflow.dflow import DataFlowKernel
from parsl.executors import HighThroughputExecutor
from parsl.jobs.errors import TooManyJobFailuresError
from parsl.jobs.states import JobState, JobStatus

from faas.endpoint.config import EngineConfig
from faas.warm_pool.loop import serve

log = logging.getLogger(__name__)
LABEL = "faas"


class Engine(Protocol):
    """What the dispatcher and server need of the worker engine: start loop
    tasks (each ends, with its Future, when its worker is retired or lost), say
    whether workers cannot start at all, and how many loops it can hold.
    ParslEngine is the one users configure; the seam lets a simulated fleet
    (benchmarks/fleet.py) stand in for Parsl under the real daemon."""

    loops_per_block: int  # loops started together when work waits
    max_loops: int
    min_loops: int

    def start_loop(self, token: str, link) -> Future: ...

    def failure(self) -> BaseException | None: ...

    def managers(self) -> list[dict[str, Any]]: ...

    def shutdown(self) -> None: ...


class ParslEngine:
    def __init__(self, cfg: EngineConfig, run_dir: Path, prewarm: list[str] | None = None):
        self.cfg = cfg
        self.prewarm = prewarm  # modules each worker imports as it starts (faas.warm_pool.prewarm)
        put_parsl_scripts_on_path()
        self.htex = ClusterExecutor(
            poll_interval=cfg.provider_poll_interval,
            label=LABEL,
            provider=cfg.provider.build(),
            address=cfg.worker_address(),
            max_workers_per_node=cfg.max_workers_per_node,
            cores_per_worker=cfg.cores_per_worker,
            mem_per_worker=cfg.mem_per_worker,
            available_accelerators=worker_accelerators(cfg),
            heartbeat_period=cfg.heartbeat_period,
            heartbeat_threshold=cfg.heartbeat_threshold,
            interchange_launch_cmd=[sys.executable, "-m", "faas.endpoint.interchange_guard", str(os.getpid())],
            block_error_handler=give_up_after(cfg.max_failed_blocks),
        )
        self.dfk = DataFlowKernel(Config(
            executors=[self.htex],
            run_dir=str(run_dir),
            strategy="htex_auto_scale",  # also releases idle blocks while others are busy
            strategy_period=cfg.strategy_period,
            max_idletime=cfg.max_idletime,
            retries=0,
        ))
        self._serve = python_app(serve, data_flow_kernel=self.dfk, executors=[LABEL])
        provider = self.htex.provider
        self.loops_per_block = cfg.max_workers_per_node * provider.nodes_per_block
        self.max_loops = self.loops_per_block * provider.max_blocks
        self.min_loops = self.loops_per_block * provider.min_blocks

    def start_loop(self, token: str, link) -> Future:
        """A worker loop task (faas.warm_pool.loop.serve) that connects back over ``link``."""
        return self._serve(link.addresses, token, link.server_public, link.client_public, link.client_secret,
                           float(self.cfg.heartbeat_threshold), self.prewarm, link.files)

    def failure(self) -> BaseException | None:
        """Why the executor gave up on its blocks (see give_up_after), or None."""
        return self.htex.executor_exception if self.htex.bad_state_is_set else None

    def managers(self) -> list[dict[str, Any]]:
        """Connected worker pools (one per node), as the interchange sees them."""
        return self.htex.connected_managers()

    def shutdown(self) -> None:
        self.dfk.cleanup()


class ClusterExecutor(HighThroughputExecutor):
    """HTEX that polls its scheduler at our interval and keeps ``min_blocks``."""

    def __init__(self, *, poll_interval: float | None, **kwargs):
        super().__init__(**kwargs)
        self._poll_interval = poll_interval
        self._first_poll = True

    @property
    def status_polling_interval(self):
        return self._poll_interval or super().status_polling_interval

    def poll_facade(self) -> None:
        """Called by Parsl's JobStatusPoller thread, just before its strategy runs."""
        super().poll_facade()
        if self._first_poll:  # the strategy has not launched init_blocks yet
            self._first_poll = False
            return
        active = sum(1 for s in self.status_facade.values() if not s.terminal)
        if not self.bad_state_is_set and active < self.provider.min_blocks:
            log.info("%d of min_blocks %d blocks left; submitting more", active, self.provider.min_blocks)
            self.scale_out_facade(self.provider.min_blocks - active)


def worker_accelerators(cfg: EngineConfig) -> list[str]:
    """The accelerator of each worker slot, for Parsl's ``available_accelerators``.

    Parsl starts no more workers than accelerators, so a config that asks for
    more workers than GPUs gets the ids repeated in turn, and a warning: those
    processes share a GPU, each with its own copy of every context.
    """
    acc = cfg.available_accelerators
    ids = [str(i) for i in range(acc)] if isinstance(acc, int) else list(acc)
    if not ids or cfg.max_workers_per_node <= len(ids):
        return ids
    log.warning("max_workers_per_node (%d) exceeds available_accelerators (%d): worker processes will share "
                "a GPU, each with its own copy of every context", cfg.max_workers_per_node, len(ids))
    return [ids[i % len(ids)] for i in range(cfg.max_workers_per_node)]


def give_up_after(limit: int):
    """A block_error_handler: mark the executor bad once the last ``limit``
    blocks all ended without a worker registering (HTEX reports those as
    MISSING); blocks that ran and were then lost do not count. 0: never."""

    def handler(executor, status: dict[str, JobStatus]) -> None:
        if limit == 0 or executor.bad_state_is_set:
            return
        last = sorted(status, key=int)[-limit:]
        if len(last) == limit and all(status[b].state == JobState.MISSING for b in last):
            blocks = "\n".join(f"  block {b} (job {executor.blocks_to_job_id.get(b)}): {_output(status[b])}"
                               for b in last)
            executor.set_bad_state_and_fail_all(TooManyJobFailuresError(
                f"the last {limit} blocks ended before their workers registered; check the provider's "
                f"worker_init and engine.address (job scripts and output: {executor.provider.script_dir}):\n"
                f"{blocks}"))

    return handler


def _output(s: JobStatus) -> str:
    for name, text in (("stderr", s.stderr_summary), ("stdout", s.stdout_summary)):
        if text and text.strip():
            return f"{name}: {text.strip()}"
    return "no output"


def put_parsl_scripts_on_path() -> None:
    """Parsl starts ``interchange.py`` and ``process_worker_pool.py`` by name:
    find them beside this interpreter even when its environment is not activated."""
    bindir = os.path.dirname(sys.executable)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([bindir, os.environ.get("PATH", "")])
