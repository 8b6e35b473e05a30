"""Endpoints whose workers are Slurm jobs, on a real throw-away Slurm cluster:
blocks that follow the backlog, warm contexts, idle release, preemption
(scancel) and a broken worker_init.

Timings are printed (see them with ``pytest -s``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, RunningEndpoint, session_processes, started_endpoints, status
from services._util import wait_until
from services.slurm import slurm_cluster

CLIENT = ROOT / "tests" / "clients" / "cluster_client.py"


def slurm_config(*, min_blocks: int, max_blocks: int = 1, heartbeat: tuple[int, int] = (2, 6),
                 max_idletime: float = 60, worker_init: str = "", extra: str = "") -> str:
    return f"""\
engine:
  max_workers_per_node: 2
  address_interface: lo            # jobs run on this machine
  heartbeat_period: {heartbeat[0]}
  heartbeat_threshold: {heartbeat[1]}
  strategy_period: 0.5
  provider_poll_interval: 1
  max_idletime: {max_idletime}
{extra}  provider:
    type: SlurmProvider
    partition: debug
    exclusive: false               # one CPU per job: a replacement may start beside a dying job
    walltime: "00:30:00"
    init_blocks: 1
    min_blocks: {min_blocks}
    max_blocks: {max_blocks}
    worker_init: "{worker_init}"
    launcher:
      type: SingleNodeLauncher
      debug: true
dispatch:
  max_attempts: 3
"""


class SlurmEndpoint(RunningEndpoint):
    """Its workers belong to Slurm, not to the daemon's session: track the
    daemon and its interchange; the cluster fixture ends the jobs."""

    def track(self) -> None:
        self.processes.update({p.pid: p for p in session_processes(self.pid)})


@pytest.fixture
def cluster(start_service, monkeypatch):
    """The cluster, with SLURM_CONF in this process's environment (and so the daemon's)."""
    cluster = start_service(slurm_cluster)
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    return cluster


@pytest.fixture
def slurm_endpoint(cluster, faas_home):
    """Factory: slurm_endpoint(name, config) -> a started SlurmEndpoint, stopped
    after the test and before the cluster (this fixture is set up after it)."""
    yield from started_endpoints(faas_home, SlurmEndpoint)


def jobs() -> list[str]:
    out = subprocess.run(["squeue", "--noheader", "--format=%i"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    return out.split()


def client(name: str, tmp: Path, n: int, delay: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CLIENT), name, str(tmp / "inits.log"), str(tmp / "calls.log"),
                             str(n), str(delay)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def results(proc: subprocess.Popen, timeout: float = 120) -> list[dict]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"client failed ({proc.returncode}):\n{out}\n{err}"
    return json.loads(out)


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_slurm_blocks_follow_the_backlog_and_keep_contexts_warm(slurm_endpoint, tmp_path):
    config = slurm_config(min_blocks=0, max_blocks=2, max_idletime=3,
                          worker_init=f"touch {tmp_path / 'init_ran'}") + "warm_pool:\n  min_holders: 0\n"
    started = time.time()
    slurm_endpoint("slurm", config)
    answering = time.time() - started
    first = results(client("slurm", tmp_path, 4, 0.01))
    print(f"\n[slurm] endpoint start to first result: {min(r['arrived'] for r in first) - started:.1f}s "
          f"(daemon answering after {answering:.1f}s)")
    assert (tmp_path / "init_ran").exists(), "worker_init did not run"

    # A backlog (40 x 0.1 s on 2 workers per block) brings a second block, no more.
    proc = client("slurm", tmp_path, 40, 0.1)
    seen: set[str] = set()
    while proc.poll() is None:
        seen.update(jobs())
        time.sleep(0.2)
    rows = first + results(proc)
    assert sorted(r["square"] for r in rows) == sorted([x * x for x in range(4)] + [x * x for x in range(40)])
    block_jobs = {r["job"] for r in rows}
    assert None not in block_jobs and block_jobs <= seen and len(seen) == 2, (block_jobs, seen)
    inits = lines(tmp_path / "inits.log")
    assert len(set(inits)) == len(inits), "a worker initialised its context twice"
    assert {str(r["pid"]) for r in rows} <= set(inits)  # a joining worker may also preload it before work comes

    # Idle for max_idletime: the blocks are released; new work gets a new one.
    idle_from = time.time()
    wait_until(lambda: not jobs(), "the idle blocks to be released", timeout=30)
    print(f"[slurm] idle blocks released {time.time() - idle_from:.1f}s after the last result (max_idletime 3s)")
    again = results(client("slurm", tmp_path, 2, 0.01))
    assert sorted(r["square"] for r in again) == [0, 1] and {r["job"] for r in again}.isdisjoint(seen)
    new_inits = lines(tmp_path / "inits.log")[len(inits):]  # the new block's workers, each once
    assert {str(r["pid"]) for r in again} <= set(new_inits) and len(set(new_inits)) == len(new_inits) <= 2, new_inits
    assert set(new_inits).isdisjoint(inits)
    info = status("slurm")
    assert info["invocations"]["succeeded"] == 46 and info["invocations"]["failed"] == 0


def test_preempted_block_is_replaced_and_its_work_completes(slurm_endpoint, tmp_path):
    slurm_endpoint("preempt", slurm_config(min_blocks=1, heartbeat=(1, 3)))
    calls = tmp_path / "calls.log"
    # 12 invocations of 1 s on 2 workers: all dispatched at once, in 4 batches
    # of 3; cancel the block once the second round of batches is running.
    proc = client("preempt", tmp_path, 12, 1.0)
    try:
        wait_until(lambda: len(lines(calls)) >= 7, "the second round of batches", timeout=60)
        (old,) = jobs()
        cancelled = time.time()
        subprocess.run(["scancel", old], check=True, timeout=30)
        new = wait_until(lambda: [j for j in jobs() if j != old], "a replacement block", timeout=30)
        replaced = time.time() - cancelled
        rows = results(proc)
    finally:
        proc.kill()
    lost = [r for r in rows if r["job"] == new[0]]  # ran again on the replacement block
    done = max(r["arrived"] for r in rows) - cancelled
    print(f"\n[slurm] scancel {old} -> replacement job {new[0]} in squeue: {replaced:.1f}s; "
          f"-> its {len(lost)} lost invocations completed: {done:.1f}s (heartbeat_threshold 3s, 1s each)")
    for r in sorted(rows, key=lambda r: r["arrived"]):
        print(f"    x={r['x']:2d} job {r['job']} pid {r['pid']} at {r['arrived'] - cancelled:+.1f}s")

    assert sorted(r["x"] for r in rows) == list(range(12)) and all("error" not in r for r in rows), rows
    assert sorted(r["square"] for r in rows) == [x * x for x in range(12)]
    assert lost and {r["job"] for r in rows} == {old, new[0]}, rows
    assert replaced < 15, f"replacement block after {replaced:.1f}s"
    info = status("preempt")
    assert info["invocations"]["succeeded"] == 12 and info["invocations"]["failed"] == 0

    # An idle block that is preempted is replaced too (min_blocks: 1).
    (idle,) = jobs()
    cancelled = time.time()
    subprocess.run(["scancel", idle], check=True, timeout=30)
    wait_until(lambda: [j for j in jobs() if j not in (old, idle)], "a replacement for the idle block", timeout=30)
    print(f"[slurm] idle block {idle} cancelled -> replacement in squeue: {time.time() - cancelled:.1f}s")


def test_broken_worker_init_fails_invocations_with_the_cause(slurm_endpoint, faas_home, tmp_path):
    config = slurm_config(min_blocks=0, worker_init="echo no such environment >&2; exit 3",
                          extra="  max_failed_blocks: 2\n")
    slurm_endpoint("broken", config)
    rows = results(client("broken", tmp_path, 2, 0.01))
    assert [r.get("error") for r in rows if "error" in r] and all("error" in r for r in rows), rows
    assert all("blocks ended before their workers registered" in r["error"] for r in rows), rows[0]["error"]
    assert "no such environment" in rows[0]["error"]
    scripts = (faas_home / "endpoints" / "broken" / "runinfo").glob("*/submit_scripts/parsl.faas.block-*")
    assert len([s for s in scripts if s.suffix not in (".stdout", ".stderr")]) == 2, "not exactly 2 blocks"
    assert not lines(tmp_path / "inits.log")
    assert status("broken")["invocations"]["failed"] == 2
