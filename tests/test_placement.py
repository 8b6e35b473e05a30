"""Placement on real workers: one GPU per worker through Parsl's
available_accelerators, and the memory budget from the endpoint config reaching
the workers' warm pools (seen in the live status)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from conftest import local_config, status

from faas import Executor, ctx_function


def _allocate(name, mb):
    return {"name": name, "weights": b"\x01" * (mb * 2**20)}


def _device(ctx, x, folder):
    """Check in, then wait (a minute at most) until two workers have: so both
    take part, however the dispatcher splits the work."""
    Path(folder, str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(os.listdir(folder)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_each_worker_sees_its_own_accelerator(endpoint, tmp_path):
    config = local_config(workers=2).replace("  max_workers_per_node: 2\n",
                                             "  max_workers_per_node: 2\n  available_accelerators: ['0', '1']\n")
    endpoint("gpus", config)
    fn = ctx_function(model=_allocate, name="dev", mb=1)(_device)
    (checked_in := tmp_path / "checked-in").mkdir()
    with Executor(endpoint="gpus") as ex:
        seen = set(ex.map(fn, range(40), [str(checked_in)] * 40))
    by_pid: dict[int, set] = {}
    for pid, dev in seen:
        by_pid.setdefault(pid, set()).add(dev)
    assert len(by_pid) == 2 and all(len(devs) == 1 for devs in by_pid.values()), by_pid
    assert sorted(dev for devs in by_pid.values() for dev in devs) == ["0", "1"]  # two workers, two GPUs


def test_memory_budget_from_config_evicts_in_workers(endpoint):
    ep = endpoint("budget", local_config(workers=1, extra="warm_pool:\n  memory_budget: 120MiB\n"))
    fns = [ctx_function(model=_allocate, name=n, mb=50)(lambda ctx, x: ctx["name"]) for n in "abc"]
    with Executor(endpoint="budget") as ex:
        for round_ in range(2):
            for fn in fns:
                assert ex.submit(fn, round_).result(timeout=60) == fn.spec.options["name"]
    (worker_stats,) = status("budget")["live"]["worker_contexts"].values()
    assert sum(s["evictions"] for s in worker_stats.values()) >= 3
    assert sum(s["loaded"] for s in worker_stats.values()) <= 2
    assert ep.running()
