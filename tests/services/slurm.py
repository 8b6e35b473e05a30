"""A throw-away single-node Slurm cluster (munged, slurmctld, slurmd) on this machine.

    with slurm_cluster(tmp_path) as cluster:
        env = {**os.environ, **cluster.env}
        subprocess.run(["sbatch", "--wrap", "hostname"], env=env)

Slurm commands find the cluster through ``SLURM_CONF`` only, so every
``sbatch``/``squeue``/``scancel`` must run with ``cluster.env`` (for Parsl's
SlurmProvider, which runs them with the test process's environment, put it in
``os.environ``, e.g. with ``monkeypatch.setenv``). Jobs run as root on this
machine, in the submitter's environment, and can reach services on 127.0.0.1.

The node is this machine as ``slurmd -C`` sees it, in partition ``debug``.
Nothing is tracked with cgroups (Debian's slurm needs no cgroup.conf then) and
there is no accounting database, so ``sacct`` fails; use ``squeue``. Unlike the
other services, slurmctld and slurmd listen on all interfaces (Slurm has no
option to bind to loopback only); everything else talks to them via 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from ._util import free_port, kill_strays, require, stop, wait_until

MUNGED, MUNGEKEY = "/usr/sbin/munged", "/usr/sbin/mungekey"
SLURMCTLD, SLURMD = "/usr/sbin/slurmctld", "/usr/sbin/slurmd"
PARTITION = "debug"
KILL_WAIT = 2  # seconds between SIGTERM and SIGKILL when a job is cancelled


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    conf_path: Path
    env: dict[str, str]
    partition: str
    node: str


def _slurm(args: list[str], env: dict[str, str]) -> str:
    return subprocess.run(args, env=env, capture_output=True, text=True, check=True, timeout=30).stdout


def _this_node() -> tuple[str, str]:
    """(name, hardware) of this machine, e.g. ("vm", "CPUs=2 ... RealMemory=24105")."""
    line = subprocess.run([SLURMD, "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    match = re.fullmatch(r"NodeName=(\S+) (.*)", line)
    if not match:
        raise RuntimeError(f"unexpected `slurmd -C` output: {line!r}")
    return match[1], match[2]


def _write_conf(tmpdir: Path, node: str, hardware: str, munge_socket: Path) -> Path:
    conf = tmpdir / "slurm.conf"
    for directory in ("state", "spool"):
        (tmpdir / directory).mkdir()
    conf.write_text(
        f"""\
ClusterName=faastest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={tmpdir / "state"}
SlurmdSpoolDir={tmpdir / "spool"}
SlurmctldPidFile={tmpdir / "slurmctld.pid"}
SlurmdPidFile={tmpdir / "slurmd.pid"}
SlurmctldLogFile={tmpdir / "slurmctld.log"}
SlurmdLogFile={tmpdir / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
SlurmdTimeout=10
MessageTimeout=5
KillWait={KILL_WAIT}
MinJobAge=2
NodeName={node} NodeAddr=127.0.0.1 {hardware} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    )
    return conf


def _daemon(args: list[str], tmpdir: Path, name: str, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    """Start a foreground daemon; its stdout/stderr (early errors included) go to ``name.out``."""
    out = tmpdir / f"{name}.out"
    with out.open("ab") as f:
        return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env), out


@contextlib.contextmanager
def slurm_cluster(tmpdir: str | Path) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd; yield the cluster once its node is idle.

    On exit all jobs are cancelled, the daemons stopped, and job processes that
    escaped Slurm's process tracking are killed.
    """
    require(MUNGED, MUNGEKEY, SLURMCTLD, SLURMD, "/usr/bin/sinfo", "/usr/bin/squeue", "/usr/bin/scancel")
    tmpdir = Path(tmpdir)
    node, hardware = _this_node()
    munge_key, munge_socket = tmpdir / "munge.key", tmpdir / "munge.socket"
    conf = _write_conf(tmpdir, node, hardware, munge_socket)
    # Daemons and jobs inherit SLURM_CONF, which also tells kill_strays which
    # processes belong to this cluster.
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SLURM_CONF": str(conf)}
    subprocess.run([MUNGEKEY, "--create", "--keyfile", munge_key], check=True)
    daemons: list[tuple[subprocess.Popen, Path]] = []
    try:
        # --force: munged refuses to run as root otherwise.
        munged = [MUNGED, "--foreground", "--force", f"--key-file={munge_key}", f"--socket={munge_socket}",
                  f"--pid-file={tmpdir / 'munged.pid'}", f"--log-file={tmpdir / 'munged.log'}",
                  f"--seed-file={tmpdir / 'munged.seed'}"]
        daemons.append(_daemon(munged, tmpdir, "munged", env))
        wait_until(munge_socket.exists, "munged's socket", procs=tuple(daemons))
        daemons.append(_daemon([SLURMCTLD, "-D", "-f", conf], tmpdir, "slurmctld", env))
        daemons.append(_daemon([SLURMD, "-D", "-f", conf, "-N", node], tmpdir, "slurmd", env))
        wait_until(
            lambda: _slurm(["sinfo", "--noheader", "--nodes", node, "--format", "%T"], env).strip() == "idle",
            f"node {node} to be idle",
            procs=tuple(daemons),
        )
        yield SlurmCluster(conf, {"SLURM_CONF": str(conf)}, PARTITION, node)
    finally:
        try:
            if len(daemons) == 3 and all(proc.poll() is None for proc, _ in daemons):
                _cancel_all(env)
        finally:
            for proc, _ in reversed(daemons):
                stop(proc)
            kill_strays("SLURM_CONF", str(conf))


def _jobs(env: dict[str, str]) -> list[str]:
    return _slurm(["squeue", "--noheader", "--format", "%A"], env).split()


def _cancel_all(env: dict[str, str]) -> None:
    if jobs := _jobs(env):
        _slurm(["scancel", *jobs], env)
        wait_until(lambda: not _jobs(env), "cancelled jobs to end", timeout=KILL_WAIT + 15)
