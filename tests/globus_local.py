"""The execution side of a Globus Compute endpoint, run here without the web service.

:class:`LocalGlobusEndpoint` takes the place of ``globus_compute_sdk.Executor``
plus the web service: it serialises a submission with the SDK's own classes
(the function as ``register_function`` does, the arguments as a batch
submission does), joins them into the task buffer the service hands to the
endpoint, and runs it through a real ``GlobusComputeEngine`` (Parsl
HighThroughputExecutor, local provider). Results come back as the SDK returns
them: the deserialised value, or ``TaskExecutionFailed`` for an error result.
"""

from __future__ import annotations

import functools
import time
import uuid
from concurrent.futures import Executor, Future
from pathlib import Path

import psutil
from conftest import _alive, _cmdline
from globus_compute_common import messagepack
from globus_compute_common.messagepack.message_types import Task
from globus_compute_endpoint.engines import GCFuture, GlobusComputeEngine
from globus_compute_sdk.errors import TaskExecutionFailed
from globus_compute_sdk.sdk.batch import Batch
from globus_compute_sdk.sdk.client import FunctionRegistrationData
from globus_compute_sdk.serialize import DEFAULT_STRATEGY_CODE, DEFAULT_STRATEGY_DATA, ComputeSerializer
from parsl.providers import LocalProvider

from faas.endpoint.engine import put_parsl_scripts_on_path


class LocalGlobusEndpoint(Executor):
    def __init__(self, run_dir: Path, workers: int = 2):
        put_parsl_scripts_on_path()  # the engine starts `globus-compute-endpoint python-exec ...`
        self.run_dir = run_dir
        self.task_sizes: list[int] = []  # bytes of each packed task, in submission order
        self._serde = ComputeSerializer()
        self._before = {p.pid for p in psutil.Process().children(recursive=True)}
        self.engine = GlobusComputeEngine(
            address="127.0.0.1",
            max_workers_per_node=workers,
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
            job_status_kwargs={"strategy_period": 0.5},
            # an endpoint that accepts only the SDK's default strategies
            allowed_serializers=[type(DEFAULT_STRATEGY_CODE), type(DEFAULT_STRATEGY_DATA)],
        )
        self.engine.start(endpoint_id=uuid.uuid4(), run_dir=str(run_dir))
        self.processes: dict[int, psutil.Process] = {}
        try:
            self._wait_for_pool()
        except BaseException:
            self.engine.shutdown()
            raise

    def submit(self, fn, /, *args, **kwargs) -> Future:
        function_code = FunctionRegistrationData(function=fn).function_code
        batch = Batch(task_group_id=None)
        function_id = uuid.uuid4()
        batch.add(function_id, args, kwargs)
        task_id = uuid.uuid4()
        packed = messagepack.pack(Task(task_id=task_id, task_buffer=function_code + batch.tasks[function_id][0]))
        self.task_sizes.append(len(packed))
        result: Future = Future()
        done = GCFuture(task_id)
        done.add_done_callback(functools.partial(self._deliver, result))
        self.engine.submit(done, packed, resource_specification={})
        return result

    def _deliver(self, result: Future, done: GCFuture) -> None:
        res = messagepack.unpack(done.result())
        if res.is_error:
            result.set_exception(TaskExecutionFailed(res.data))
        else:
            result.set_result(self._serde.deserialize(res.data))

    def pool_pids(self) -> set[int]:
        """The live processes of this endpoint's worker pool (workers and their helpers)."""
        self._discover()
        return {p.pid for p in self.processes.values() if _alive(p) and "process_worker_pool" in _cmdline(p.parent())}

    def _discover(self) -> None:
        """Remember this engine's processes: the interchange (our child) and the
        worker pool, which the local provider detaches (its command line names
        run_dir), with the workers it spawns."""
        for p in psutil.Process().children(recursive=True):
            if p.pid not in self._before:
                self.processes[p.pid] = p
        for pool in psutil.process_iter():
            if "process_worker_pool" in _cmdline(pool) and str(self.run_dir) in _cmdline(pool):
                self.processes.update({p.pid: p for p in [pool, *pool.children(recursive=True)]})

    def _wait_for_pool(self) -> None:
        deadline = time.monotonic() + 60
        while not any("process_worker_pool" in _cmdline(p) for p in self.processes.values()):
            assert time.monotonic() < deadline, "the engine's worker pool did not start"
            time.sleep(0.2)
            self._discover()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the engine, then make sure every process it started is gone."""
        self._discover()
        self.engine.shutdown()
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in self.processes.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        leftovers = [p for p in self.processes.values() if _alive(p)]
        for p in leftovers:
            p.kill()
        assert not leftovers, f"processes left after shutdown: {[_cmdline(p) for p in leftovers]}"

