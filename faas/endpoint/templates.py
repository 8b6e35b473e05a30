"""Commented config templates for ``faas-endpoint configure --provider``.

Each template runs one worker per GPU (``available_accelerators``, with
``max_workers_per_node`` matching) and asks the scheduler for those GPUs in its
own terms. The local template takes this node's GPUs (:mod:`faas.endpoint.gpus`)
unless told a count. Every template loads and validates as written; the values a site
must change (partition, image, environment) are marked.
"""

from __future__ import annotations

import json
import os
import sys

from faas.endpoint.gpus import visible_gpus

PROVIDERS = ("local", "slurm", "condor", "pbs", "kubernetes")
_QUEUE_PARAM = {"slurm": "partition", "pbs": "queue"}


def config_template(name: str, provider: str = "local", *, gpus: int | list[str] | None = None,
                    workers: int | None = None, partition: str | None = None) -> str:
    """The config text. ``gpus`` is a count or a list of GPU ids; by default this
    node's GPUs for the local provider (none: CPU workers) and 1 on a cluster.

    More ``workers`` than GPUs given is an error; more than this node's GPUs
    found is cut to one per GPU, because the embedded endpoint passes its CPU
    default (2) and a config that wants GPUs shared says so itself.
    """
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; choose from {', '.join(PROVIDERS)}")
    if partition is not None and provider not in _QUEUE_PARAM:
        raise ValueError(f"--partition applies to {' and '.join(_QUEUE_PARAM)}, not {provider}")
    found = gpus is None and provider == "local"
    if gpus is None:
        gpus = visible_gpus() if found else 1
    count = gpus if isinstance(gpus, int) else len(gpus)
    if count and workers and workers > count:
        if not found:
            raise ValueError(f"{workers} workers for {count} GPUs: each worker gets one GPU")
        workers = count
    if provider == "local":
        workers = workers or count or max(1, min(4, os.cpu_count() or 2))
    else:
        workers = workers or count or 4
    return _align("".join([
        _header(name, provider, count),
        _engine(provider, workers, gpus),
        _PROVIDERS[provider](gpus=count, workers=workers, partition=partition, init=_worker_init()),
        _REST,
    ]))


def _align(text: str, column: int = 36) -> str:
    """Line up the comments marked ``#~`` at one column."""
    lines = []
    for line in text.splitlines():
        code, sep, comment = line.partition(" #~")
        lines.append(f"{code.ljust(column)} #{comment}" if sep else line)
    return "\n".join(lines) + "\n"


def _header(name: str, provider: str, gpus: int) -> str:
    where = "this machine" if provider == "local" else f"blocks (batch jobs) from {provider}"
    gpu_note = f", {gpus} GPU(s) per node, one worker per GPU" if gpus else ""
    return f"# faas endpoint {name!r}: Parsl workers on {where}{gpu_note}.\n"


def _engine(provider: str, workers: int, gpus: int | list[str]) -> str:
    if isinstance(gpus, list):
        accel = (f"  available_accelerators: {json.dumps(gpus)} #~ this node's GPUs: each worker gets one "
                 f"as CUDA_VISIBLE_DEVICES\n" if gpus else "")
    else:
        accel = (f"  available_accelerators: {gpus} #~ workers get CUDA_VISIBLE_DEVICES 0..{gpus - 1}, one each\n"
                 if gpus else "")
    if provider == "local":
        return f"""\
engine:
  type: HighThroughputEngine
  max_workers_per_node: {workers} #~ worker processes; each keeps its own warm contexts
{accel}  address: 127.0.0.1
  heartbeat_period: 30 #~ seconds; a worker silent for heartbeat_threshold is lost
  heartbeat_threshold: 120
  strategy_period: 0.5 #~ seconds between Parsl's scaling decisions
"""
    return f"""\
engine:
  type: HighThroughputEngine
  max_workers_per_node: {workers} #~ worker processes per node; each keeps its own warm contexts
{accel}  address: null #~ where workers reach this machine; null: they try all its addresses
  # address_interface: ib0           # or: the address of this interface (instead of address)
  heartbeat_period: 10 #~ seconds; a node silent for heartbeat_threshold is lost and
  heartbeat_threshold: 30 #~   its invocations run again elsewhere (dispatch.max_attempts)
  strategy_period: 1 #~ seconds between Parsl's scaling decisions
  provider_poll_interval: 10 #~ seconds between scheduler queries: how soon a preempted block
 #~   is noticed and replaced (Parsl's own default: 60)
  max_idletime: 300 #~ seconds an idle block is kept before it is released
  max_failed_blocks: 3 #~ give up when this many blocks in a row ended before their
 #~   workers registered (broken worker_init); 0: never
"""


def _worker_init() -> str:
    """Activate the environment this command runs in, which clusters usually share."""
    if sys.prefix != sys.base_prefix:
        return f"source {sys.prefix}/bin/activate"
    return ""


def _blocks(max_blocks: int) -> str:
    return f"""\
    init_blocks: 1 #~ blocks follow the backlog between min_blocks and max_blocks
    min_blocks: 0
    max_blocks: {max_blocks}
"""


def _local(gpus: int, workers: int, partition: str | None, init: str) -> str:
    return """\
  provider:
    type: LocalProvider
    init_blocks: 1
    min_blocks: 1
    max_blocks: 1
"""


def _init_line(init: str) -> str:
    return (f'    worker_init: "{init}" #~ before the workers start; they need faas\n'
            if init else
            '    worker_init: "" #~ e.g. "source /shared/venv/bin/activate": workers need faas\n')


def _slurm(gpus: int, workers: int, partition: str | None, init: str) -> str:
    gpu = (f'    scheduler_options: "#SBATCH --gpus-per-node={gpus}" #~ or "#SBATCH --gres=gpu:{gpus}"\n'
           if gpus else "")
    return f"""\
  provider:
    type: SlurmProvider
    partition: {partition or "gpu"} #~ CHANGE: your partition
    # account: myproject
    walltime: "04:00:00" #~ always quote: YAML reads 4:00:00 as a number
    nodes_per_block: 1
{gpu}{_init_line(init)}{_blocks(4)}"""


def _condor(gpus: int, workers: int, partition: str | None, init: str) -> str:
    gpu = f'    scheduler_options: "request_gpus = {gpus}" #~ submit-file lines, as they are\n' if gpus else ""
    return f"""\
  provider:
    type: CondorProvider
    cores_per_slot: {workers}
    mem_per_slot: {8 * max(1, gpus)} #~ GB
{gpu}    requirements: "" #~ e.g. "(CUDACapability >= 7.0)"
{_init_line(init)}{_blocks(10)}"""


def _pbs(gpus: int, workers: int, partition: str | None, init: str) -> str:
    gpu = f'    select_options: "ngpus={gpus}" #~ -l select=1:ncpus=...:ngpus={gpus}\n' if gpus else ""
    return f"""\
  provider:
    type: PBSProProvider
    queue: {partition or "gpu"} #~ CHANGE: your queue
    # account: myproject
    cpus_per_node: {workers}
{gpu}    walltime: "04:00:00" #~ always quote: YAML reads 4:00:00 as a number
{_init_line(init)}{_blocks(4)}"""


def _kubernetes(gpus: int, workers: int, partition: str | None, init: str) -> str:
    gpu = (f'    extra_requests: {{"nvidia.com/gpu": "{gpus}"}}\n'
           f'    extra_limits: {{"nvidia.com/gpu": "{gpus}"}}\n' if gpus else "")
    return f"""\
  provider:
    type: KubernetesProvider #~ needs: pip install 'parsl[kubernetes]'
    image: python:3.11 #~ CHANGE: an image with faas, Parsl and your packages
    namespace: default
    init_cpu: {workers}
    max_cpu: {workers}
    init_mem: "{8 * max(1, gpus)}Gi"
    max_mem: "{8 * max(1, gpus)}Gi"
{gpu}    worker_init: "" #~ runs in the pod before the workers start
{_blocks(4)}"""


_PROVIDERS = {"local": _local, "slurm": _slurm, "condor": _condor, "pbs": _pbs, "kubernetes": _kubernetes}

_REST = """\
dispatch:
  max_batch: 64 #~ upper bound; batches shrink as the backlog drains
  max_batch_seconds: 10 #~ and hold at most this much measured work
  max_attempts: 5 #~ tries of an invocation whose worker was lost
warm_pool:
  idle_timeout: 3600 #~ seconds before an unused context is released
  prewarm: null #~ modules a worker imports when it starts (null: torch and
 #~   transformers with its model classes on a GPU worker, if installed; []: none), then CUDA is initialised
  node_cache: null #~ context files' cache on each node's local disk (null: $FAAS_NODE_CACHE or its temp folder)
  peer_copy: true #~ nodes copy context files from each other: the shared filesystem is read once
  host_budget: null #~ host memory per GPU worker for contexts parked off its GPU (null: half the node's, shared)
  min_holders: 1 #~ workers kept holding a context used within idle_timeout (0: every idle GPU goes back)
store:
  url: null #~ null: SQLite in this folder; or any SQLAlchemy URL
  retention: 604800 #~ seconds results are kept for reattaching clients
"""
