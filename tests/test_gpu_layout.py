"""GPU-aware worker layout: the node's GPUs (CUDA_VISIBLE_DEVICES, nvidia-smi)
become one worker each, pinned with Parsl's available_accelerators, in
`faas-endpoint configure` and so in the embedded endpoint (which runs
`configure --workers 2`); a CPU node keeps its layout; more workers than GPUs
only when a config asks, with a warning."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
from click.testing import CliRunner

from faas import Executor, ctx_function
from faas.endpoint.cli import main
from faas.endpoint.config import EngineConfig, load_config
from faas.endpoint.engine import worker_accelerators
from faas.endpoint.gpus import parse_visible_devices, visible_gpus

NO_GPU_HERE = shutil.which("nvidia-smi") is None


def _configure(faas_home, name: str, *args: str) -> EngineConfig:
    result = CliRunner().invoke(main, ["configure", name, *args])
    assert result.exit_code == 0, result.output
    return load_config(faas_home / "endpoints" / name / "config.yaml").engine


@pytest.mark.parametrize("value, ids", [("3,5", ["3", "5"]), ("", []), ("-1", []), ("0,-1,2", ["0"]),
                                        (" GPU-1a2b , MIG-3c4d", ["GPU-1a2b", "MIG-3c4d"])])
def test_visible_devices_as_cuda_reads_them(value, ids):
    assert parse_visible_devices(value) == ids


def test_one_worker_per_visible_gpu(faas_home, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert visible_gpus() == ["3", "5"]
    # the embedded endpoint's `--workers 2`, or more, never puts two workers on one GPU found here
    for name, args in (("default", ()), ("embedded", ("--workers", "2")), ("many", ("--workers", "8"))):
        engine = _configure(faas_home, name, *args)
        assert (engine.max_workers_per_node, engine.available_accelerators) == (2, ["3", "5"])
        assert worker_accelerators(engine) == ["3", "5"]
    engine = _configure(faas_home, "one", "--workers", "1")
    assert (engine.max_workers_per_node, engine.available_accelerators) == (1, ["3", "5"])
    engine = _configure(faas_home, "cpu", "--gpus", "0")
    assert engine.available_accelerators == []
    result = CliRunner().invoke(main, ["configure", "given", "--gpus", "2", "--workers", "4"])
    assert result.exit_code == 2 and "4 workers for 2 GPUs: each worker gets one GPU" in result.output


@pytest.mark.parametrize("env", ["", None], ids=["empty", "unset"])
def test_cpu_node_keeps_its_layout(faas_home, monkeypatch, env):
    if env is None:
        if not NO_GPU_HERE:
            pytest.skip("nvidia-smi is here: this node has GPUs")
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert visible_gpus() == []
    engine = _configure(faas_home, "embedded", "--workers", "2")
    assert (engine.max_workers_per_node, engine.available_accelerators) == (2, [])
    engine = _configure(faas_home, "cpu")
    assert (engine.max_workers_per_node, engine.available_accelerators) == (max(1, min(4, os.cpu_count())), [])


def test_sharing_gpus_only_when_the_config_asks(caplog):
    caplog.set_level(logging.WARNING, logger="faas.endpoint.engine")
    assert worker_accelerators(EngineConfig(available_accelerators=["3", "5"])) == ["3", "5"]
    assert worker_accelerators(EngineConfig(available_accelerators=2, max_workers_per_node=1)) == ["0", "1"]
    assert not caplog.records
    shared = EngineConfig(available_accelerators=["3", "5"], max_workers_per_node=3)
    assert worker_accelerators(shared) == ["3", "5", "3"]
    (record,) = caplog.records
    assert "max_workers_per_node (3) exceeds available_accelerators (2)" in record.getMessage()
    assert "share a GPU" in record.getMessage()


def _visible(ctx, x):
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_embedded_workers_are_pinned_to_the_visible_gpus(faas_home, monkeypatch):
    if not NO_GPU_HERE:
        pytest.skip("nvidia-smi is here: Parsl renumbers the ids by the GPUs it lists")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    fn = ctx_function(model=dict)(_visible)
    with Executor(endpoint=None) as ex:
        seen = set(ex.map(fn, range(200)))
    by_pid: dict[int, set] = {}
    for pid, dev in seen:
        by_pid.setdefault(pid, set()).add(dev)
    assert all(len(devs) == 1 for devs in by_pid.values()), by_pid
    assert {d for devs in by_pid.values() for d in devs} <= {"3", "5"}
