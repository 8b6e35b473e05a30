"""Warm contexts inside a Globus Compute endpoint: GlobusExecutor's tasks run
through a real GlobusComputeEngine started here; only the web service, which
cannot be reached from tests, is left out (see globus_local.py)."""

from __future__ import annotations

import os
from collections import Counter

import pytest

pytest.importorskip("globus_compute_endpoint")

from globus_compute_sdk.errors import TaskExecutionFailed  # noqa: E402
from globus_local import LocalGlobusEndpoint  # noqa: E402
from sample_functions import add_offset, check_add_offset_results, load_offset  # noqa: E402

from faas import ctx_function  # noqa: E402
from faas.client.globus import GlobusExecutor  # noqa: E402
from faas.errors import ContextInitError, PayloadTooLarge  # noqa: E402


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    ep = LocalGlobusEndpoint(tmp_path_factory.mktemp("globus-endpoint"), workers=2)
    yield ep
    ep.shutdown()


def tasks_during(endpoint: LocalGlobusEndpoint, before: int) -> list[int]:
    return endpoint.task_sizes[before:]


def record_pid(logfile):
    with open(logfile, "a") as f:
        f.write(f"{os.getpid()}\n")
    return {"pid": os.getpid()}


def test_context_initialised_once_per_worker_across_tasks_and_sessions(endpoint, tmp_path):
    log = tmp_path / "inits.log"

    @ctx_function(model=record_pid, logfile=str(log))
    def square(ctx, x):
        return ctx["pid"], x * x

    before = len(endpoint.task_sizes)
    ran_on = set()
    for _session in range(2):  # two clients, one after the other, on the same endpoint
        with GlobusExecutor(executor=endpoint, max_batch=10, batch_window=5.0) as ex:
            results = list(ex.map(square, range(100)))
        assert [r[1] for r in results] == [x * x for x in range(100)]
        ran_on |= {pid for pid, _ in results}

    tasks = len(tasks_during(endpoint, before))
    assert tasks == 20  # 200 invocations, 10 per task
    inits = Counter(int(line) for line in log.read_text().split())
    assert all(n == 1 for n in inits.values()), f"a worker initialised its context twice: {inits}"
    assert set(inits) == ran_on <= endpoint.pool_pids()
    assert sum(inits.values()) <= 2 < tasks  # two workers, warm across tasks and sessions


def no_gpu_here():
    raise RuntimeError("no GPU here")


@ctx_function(model=no_gpu_here)
def needs_gpu(ctx, x):
    return x


def test_results_and_exceptions_round_trip_in_one_task(endpoint):
    before = len(endpoint.task_sizes)
    with GlobusExecutor(executor=endpoint, max_batch=50, batch_window=0.5) as ex:
        futures = [ex.submit(add_offset, x) for x in range(20)]
        broken = ex.submit(needs_gpu, 1)
        check_add_offset_results(futures)
        with pytest.raises(ContextInitError) as info:
            broken.result(timeout=60)
        assert "no GPU here" in info.value.__cause__.tb
    assert len(tasks_during(endpoint, before)) == 1  # the failures had batch mates that succeeded
    assert len({f.task_id for f in [*futures, broken]}) == 21


def test_user_errors_are_retried_in_a_later_task(endpoint, tmp_path):
    marker = tmp_path / "first-attempt"

    @ctx_function(model=load_offset, offset=0, retries=1)
    def flaky(ctx, x):
        if not marker.exists():
            marker.touch()
            raise OSError("transient")
        return x

    before = len(endpoint.task_sizes)
    with GlobusExecutor(executor=endpoint, batch_window=0.1) as ex:
        assert ex.submit(flaky, 7).result(timeout=60) == 7
    assert len(tasks_during(endpoint, before)) == 2


def test_batches_respect_the_byte_limit(endpoint):
    @ctx_function(model=load_offset, offset=0)
    def size(ctx, blob):
        return len(blob)

    limit = 350_000
    before = len(endpoint.task_sizes)
    with GlobusExecutor(executor=endpoint, max_batch_bytes=limit, batch_window=2.0) as ex:
        assert list(ex.map(size, [b"x" * 100_000] * 12)) == [100_000] * 12
        with pytest.raises(PayloadTooLarge):
            ex.submit(size, b"x" * limit)
    sizes = tasks_during(endpoint, before)
    assert len(sizes) == 4  # 3 invocations of 100 kB each per task
    assert all(s < limit * 1.4 for s in sizes), sizes  # base64 adds a third on the wire


def test_plain_callables_run_without_a_context(endpoint, capsys):
    with GlobusExecutor(executor=endpoint, batch_window=0.1) as ex:
        assert ex.submit(len, "abc").result(timeout=60) == 3
        said = ex.submit(print, "said on a worker")  # its output is printed here, as faas.Executor does
        assert said.result(timeout=60) is None and said.output == [("stdout", "said on a worker\n")]
        assert f"(worker {said.worker}) said on a worker\n" in capsys.readouterr().out
        with pytest.raises(TypeError, match="is not callable"):
            ex.submit("len", "abc")


def test_a_failed_task_fails_each_of_its_invocations(endpoint):
    @ctx_function(model=load_offset, offset=0)
    def large(ctx, n):
        return b"x" * n

    with GlobusExecutor(executor=endpoint, max_batch=2, batch_window=5.0) as ex:
        futures = [ex.submit(large, 6 * 2**20) for _ in range(2)]  # together over the 10 MiB result limit
        for fut in futures:
            with pytest.raises(TaskExecutionFailed, match="MaxResultSizeExceeded"):
                fut.result(timeout=60)


def test_shutdown_cancels_what_was_not_sent(endpoint):
    before = len(endpoint.task_sizes)
    ex = GlobusExecutor(executor=endpoint, batch_window=30.0)
    futures = [ex.submit(add_offset, x) for x in range(3)]
    ex.shutdown(cancel_futures=True)
    assert all(f.cancelled() for f in futures)
    assert tasks_during(endpoint, before) == []
    with pytest.raises(RuntimeError):
        ex.submit(add_offset, 1)
