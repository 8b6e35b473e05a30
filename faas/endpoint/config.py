"""Endpoint configuration: YAML in the style of Globus Compute endpoint configs.

    engine:
      type: HighThroughputEngine
      max_workers_per_node: 2
      provider:
        type: SlurmProvider      # any class in parsl.providers, with its parameters
        partition: gpu
        launcher:
          type: SrunLauncher     # any class in parsl.launchers

Validated when loaded, so that every mistake is reported with its key and file
before anything starts. Provider and launcher parameters are checked against
the Parsl class's signature (names, required ones, and types from its
annotations or defaults) without constructing it: constructing a provider talks
to its scheduler (SlurmProvider runs ``sacct``; KubernetesProvider loads a
kube config), which belongs to the daemon's start, not to validation.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import re
import typing
from pathlib import Path
from typing import Any, Literal

import typeguard
import yaml
from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, field_validator, model_validator

from faas.errors import FaasError

log = logging.getLogger(__name__)


class ConfigError(FaasError):
    pass


class ParamErrors(ValueError):
    """Problems with a Parsl class's parameters, each as (parameter, message),
    so that the report can name every key with its full path."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{k}: {m}" for k, m in problems))
        self.problems = problems


# Providers whose module needs a package that Parsl installs only with an extra.
_EXTRAS = {
    "KubernetesProvider": ("kubernetes", "kubernetes"),
    "AWSProvider": ("boto3", "aws"),
    "AzureProvider": ("azure", "azure"),
    "GoogleCloudProvider": ("googleapiclient", "google_cloud"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _parsl_class(module: str, name: str, kind: str):
    mod = importlib.import_module(module)
    cls = getattr(mod, name, None)
    if not inspect.isclass(cls):
        known = sorted(n for n in dir(mod) if n.endswith(kind))
        raise ParamErrors([("type", f"unknown {kind.lower()} type {name!r}; known: {', '.join(known)}")])
    return cls


def _check_params(cls, params: dict[str, Any], problems: list[tuple[str, str]] | None = None) -> None:
    """Names, required parameters and types, as Parsl's own constructor would check them;
    raises them, with any ``problems`` found before, as one ParamErrors."""
    signature = inspect.signature(cls)
    accepted = {n: p for n, p in signature.parameters.items() if n not in ("self", "launcher")}
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # annotations that do not resolve: check by defaults only
        hints = {}
    problems = list(problems or [])
    for name, param in accepted.items():
        if param.default is inspect.Parameter.empty and name not in params:
            problems.append((name, f"required by {cls.__name__} (it has no default)"))
    for name, value in params.items():
        if name not in accepted:
            problems.append((name, f"{cls.__name__} has no such parameter; "
                                   f"it takes: {', '.join(sorted(accepted))}"))
        elif (wrong := _type_problem(value, hints.get(name), accepted[name].default)) is not None:
            problems.append((name, wrong))
    if problems:
        raise ParamErrors(problems)


def _type_problem(value: Any, hint: Any, default: Any) -> str | None:
    """Why ``value`` does not fit the annotation (or, without one, the default's type)."""
    if hint is not None:
        try:
            typeguard.check_type(value, hint)
            return None
        except typeguard.TypeCheckError:
            expected = inspect.formatannotation(hint)
    elif default is None or default is inspect.Parameter.empty:
        return None
    elif isinstance(default, bool):
        expected = None if isinstance(value, bool) else "bool"
    elif isinstance(default, (int, float)):
        expected = None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    elif isinstance(default, str):
        expected = None if isinstance(value, str) else "str"
    else:
        return None
    if expected is None:
        return None
    quote = " (quote it: YAML reads 1:30:00 as a number)" if isinstance(value, int) and "str" in expected else ""
    return f"expected {expected}, got {type(value).__name__} {value!r}{quote}"


class LauncherConfig(BaseModel):
    """Other keys: the launcher class's parameters."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(description="Any class in `parsl.launchers` (e.g. SrunLauncher); its other keys are that "
                                  "class's parameters, checked against its signature when the config is loaded.")

    @model_validator(mode="after")
    def _known(self):
        _check_params(_parsl_class("parsl.launchers", self.type, "Launcher"), self.model_extra or {})
        return self

    def build(self):
        return _parsl_class("parsl.launchers", self.type, "Launcher")(**(self.model_extra or {}))


class ProviderConfig(BaseModel):
    """Other keys: the provider class's parameters."""

    model_config = ConfigDict(extra="allow")
    type: str = Field("LocalProvider", description=(
        "Any class in `parsl.providers` (SlurmProvider, CondorProvider, PBSProProvider, KubernetesProvider, ...); "
        "its other keys (init_blocks, min_blocks, max_blocks, partition, walltime, scheduler_options, ...) are "
        "that class's parameters, checked against its signature and types when the config is loaded."))
    launcher: LauncherConfig | None = Field(None, description=(
        "How a block starts its workers: `{type: SrunLauncher, ...}`, any class in `parsl.launchers` "
        "(null: the provider's default)."))

    @model_validator(mode="after")
    def _known(self):
        cls = _parsl_class("parsl.providers", self.type, "Provider")
        problems = []
        if self.type in _EXTRAS and importlib.util.find_spec(_EXTRAS[self.type][0]) is None:
            package, extra = _EXTRAS[self.type]
            problems.append(("type", f"{self.type} needs the {package!r} package on the endpoint's "
                                    f"machine: pip install 'parsl[{extra}]'"))
        _check_params(cls, self.model_extra or {}, problems)
        return self

    def build(self):
        cls = _parsl_class("parsl.providers", self.type, "Provider")
        kwargs = dict(self.model_extra or {})
        if self.launcher is not None:
            kwargs["launcher"] = self.launcher.build()
        return cls(**kwargs)


def _default_provider() -> ProviderConfig:
    return ProviderConfig(type="LocalProvider", init_blocks=1, min_blocks=1, max_blocks=1)


class EngineConfig(_Strict):
    type: Literal["HighThroughputEngine"] = Field("HighThroughputEngine", description=(
        "The Parsl executor the workers run under (Parsl's HighThroughputExecutor; the only one)."))
    max_workers_per_node: int = Field(2, ge=1, description=(
        "Worker processes per node, each with its own warm contexts; default: one per accelerator when "
        "`available_accelerators` is set."))
    cores_per_worker: float = Field(1.0, gt=0, description="Cores Parsl reserves for each worker process.")
    mem_per_worker: float | None = Field(None, description=(
        "GB of memory Parsl reserves for each worker process (null: no limit)."))
    available_accelerators: int | list[str] = Field(default_factory=list, description=(
        "GPU ids (`[\"3\", \"5\"]`) or a count (`4`): one worker each, pinned with CUDA_VISIBLE_DEVICES."))
    address: str | None = Field("127.0.0.1", description=(
        "Where workers reach the endpoint (null: workers try every address of this machine)."))
    address_interface: str | None = Field(None, description=(
        "Instead of `address`: the IPv4 address of this network interface (e.g. eth0, ib0)."))
    heartbeat_period: int = Field(30, ge=1, description="Seconds between heartbeats to workers and worker loops.")
    heartbeat_threshold: int = Field(120, ge=1, description=(
        "Seconds without a heartbeat after which a worker (or its loop) counts as lost and its work runs again."))
    strategy_period: float = Field(1.0, gt=0, description="Seconds between Parsl's scaling decisions.")
    provider_poll_interval: float | None = Field(None, gt=0, description=(
        "Seconds between queries of the scheduler (null: the provider's own; Slurm's is 60)."))
    max_idletime: float = Field(120.0, ge=0, description=(
        "Seconds before an idle worker loop above min_blocks retires and Parsl releases its idle block."))
    max_failed_blocks: int = Field(3, ge=0, description=(
        "Give up after this many blocks in a row never registered (0: never give up)."))
    provider: ProviderConfig = Field(default_factory=_default_provider, description=(
        "Where blocks of workers come from; default: one LocalProvider block on this machine."))

    @field_validator("address_interface")
    @classmethod
    def _interface_exists(cls, name: str | None) -> str | None:
        if name is not None:
            from parsl.addresses import address_by_interface
            try:
                address_by_interface(name)
            except OSError:
                import psutil
                raise ValueError(f"this machine has no interface {name!r} with an IPv4 address; "
                                 f"it has: {', '.join(sorted(psutil.net_if_addrs()))}") from None
        return name

    @model_validator(mode="after")
    def _consistent(self):
        if self.address_interface is not None and "address" in self.model_fields_set:
            raise ValueError("set address or address_interface, not both")
        if self.heartbeat_threshold <= self.heartbeat_period:
            raise ValueError(f"heartbeat_threshold ({self.heartbeat_threshold}) must exceed "
                             f"heartbeat_period ({self.heartbeat_period})")
        accelerators = self.accelerator_count
        if accelerators and "max_workers_per_node" not in self.model_fields_set:
            self.max_workers_per_node = accelerators
        # more workers than accelerators: they share GPUs, as asked (the engine warns at start)
        return self

    @property
    def accelerator_count(self) -> int:
        acc = self.available_accelerators
        return acc if isinstance(acc, int) else len(acc)

    def worker_address(self) -> str | None:
        """The address workers connect to (None: Parsl offers them all of this machine's)."""
        if self.address_interface is not None:
            from parsl.addresses import address_by_interface
            return address_by_interface(self.address_interface)
        return self.address


class DispatchConfig(_Strict):
    max_batch: int = Field(64, ge=1, description="Most invocations in one batch; batches follow the backlog.")
    max_batch_seconds: float = Field(10.0, gt=0, description=(
        "Most measured work (seconds) in one batch, so results flow and a preemption loses little."))
    max_attempts: int = Field(5, ge=1, description=(
        "Tries of an invocation whose worker was lost; then it fails with InvocationFailed."))
    invocation_timeout: float | None = Field(None, gt=0, description=(
        "Seconds an invocation may run before it is interrupted (null: no limit; a function's own timeout wins)."))
    timeout_grace: float = Field(10.0, gt=0, description=(
        "Seconds an interrupted invocation may go on (stuck in native code) before its worker process is replaced."))


_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class WarmPoolConfig(_Strict):
    idle_timeout: float | None = Field(3600.0, gt=0, description=(
        "Seconds before an unused context is released (null: never)."))
    memory_budget: ByteSize | None = Field(None, description=(
        "Memory per worker for its contexts (`8GiB`); the least recently used idle context is evicted before one "
        "that would not fit loads (null: the GPU's memory on a GPU worker, else unlimited)."))
    prewarm: list[str] | None = Field(None, description=(
        "Modules each worker imports as it starts, before CUDA is initialised (null: torch, transformers and its "
        "model classes on GPU workers, those installed; []: none). Timings: `status --json` (worker_prewarm)."))
    function_cache_bytes: ByteSize = Field(ByteSize(256 * 2**20), ge=2**20, description=(
        "Function bodies kept by the daemon and by each worker, least recently used going first (reloaded from the "
        "store, or sent again, when needed); a worker counts them in its memory_budget."))
    host_budget: ByteSize | None = Field(None, description=(
        "Host memory (e.g. 64GiB) each GPU worker may use for contexts parked off its GPU to make room for "
        "another: a parked context wakes by a copy back instead of running its loader again. null: half of the "
        "node's memory, shared by its workers; 0: contexts pushed off the GPU are released."))
    min_holders: int = Field(1, ge=0, description=(
        "Workers kept holding each context while it has queued work or was used within idle_timeout: the last "
        "ones are neither retired at engine.max_idletime nor release it for idleness. 0: no floor."))
    node_cache: str | None = Field(None, description=(
        "Folder of each node's cache of context files (the files a context names, staged once per node and "
        "checked against their hashes; GGUF conversions too), on the node's local disk; ~ and $VARIABLES are "
        "expanded on the node. None: $FAAS_NODE_CACHE, else faas-node-cache-USER in the node's temp folder."))
    peer_copy: bool = Field(True, description=(
        "Workers copy a context's files from other nodes' caches (CurveZMQ), so that the source (the shared "
        "filesystem) is read once per fleet; false: every node reads the source."))
    max_serving: int = Field(2, ge=1, description=(
        "Copies of context files each worker serves to others at once; more fetchers wait or copy from "
        "another holder, so copies spread as a tree."))
    serve_bandwidth: ByteSize | None = Field(None, ge=1, description=(
        "Bytes per second each worker serves to others in all (e.g. 500MB), to leave room on its node's "
        "link; None: as fast as it can."))
    node_cache_per_worker: bool = Field(False, description=(
        "Tests and benchmarks only: each worker process keeps its own node cache (a folder inside node_cache), "
        "so that the workers of one machine act as separate nodes."))
    output_log_level: int = Field(logging.WARNING, ge=0, description=(
        "Log records an invocation emits at or above this level (a name, e.g. WARNING or INFO, or a number) "
        "are part of its output, with what it writes to stdout and stderr: recorded in the store and "
        "printed by the client."))

    @field_validator("output_log_level", mode="before")
    @classmethod
    def _level(cls, level: Any) -> Any:
        """A level's name, as logging spells it, is its number."""
        if isinstance(level, str) and isinstance(number := logging.getLevelName(level.upper()), int):
            return number
        return level

    @field_validator("prewarm")
    @classmethod
    def _module_names(cls, names: list[str] | None) -> list[str] | None:
        """Names only: whether they import is the workers' environment's business, not the daemon's."""
        bad = [n for n in names or [] if not _MODULE_NAME.match(n)]
        if bad:
            raise ValueError(f"not module names: {', '.join(map(repr, bad))} (e.g. [torch, transformers])")
        return names


class StoreConfig(_Strict):
    url: str | None = Field(None, description=(
        "Any SQLAlchemy URL, e.g. `postgresql+psycopg://user@host/db` (null: SQLite, WAL, in the endpoint folder)."))
    retention: float = Field(7 * 86400.0, gt=0, description=(
        "Seconds a final result is kept; older ones are purged (also `faas-endpoint purge`)."))
    retry_for: float = Field(60.0, gt=0, description=(
        "Seconds a failing store write (disk full, SQLite locked by another process, PostgreSQL down) is retried "
        "before what it carried is refused to its clients with StoreUnavailable."))
    max_waiting_bytes: ByteSize = Field(ByteSize(256 * 2**20), ge=2**20, description=(
        "Client requests kept in memory while they wait for a failing store, at most (their messages, and "
        "about 2 KiB each besides); past it, a request that needs the store is refused at once with "
        "StoreUnavailable instead of waiting"))


class ClientsConfig(_Strict):
    """Limits that keep one client from hurting the others or the daemon."""

    max_message_bytes: ByteSize | None = Field(None, description=(
        "Largest whole message from a client, all frames (null: 4 x max_payload_bytes + 1 MiB); clients split "
        "their submissions to fit, and a larger one is refused as it is read."))
    send_hwm: int = Field(1000, ge=1, description="Replies ZeroMQ queues for each client.")
    buffer_bytes: ByteSize = Field(ByteSize(64 * 2**20), ge=0, description=(
        "Beyond send_hwm, bytes of replies that wait per client; over this (or buffer_messages, or stall_timeout) "
        "they are dropped and the client is told to reload, which it does by itself."))
    buffer_messages: int = Field(10_000, ge=0, description="Beyond send_hwm, replies that wait per client.")
    stall_timeout: float = Field(300.0, gt=0, description=(
        "Seconds a client's waiting replies may stand still before they are dropped and it is told to reload."))


_TCP_ADDRESS = re.compile(r"^tcp://(\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\*|[0-9]{1,5})$")


class EndpointConfig(_Strict):
    listen: list[str] = Field(default_factory=list, description=(
        "CurveZMQ listeners for tcp:// clients, `[tcp://0.0.0.0:5555]` (port 0: any free port); the ipc:// "
        "socket is always there."))
    engine: EngineConfig = Field(default_factory=EngineConfig, description="The workers: Parsl and its provider.")
    dispatch: DispatchConfig = Field(default_factory=DispatchConfig, description="Batches, retries and timeouts.")
    warm_pool: WarmPoolConfig = Field(default_factory=WarmPoolConfig, description="Each worker's live contexts.")
    store: StoreConfig = Field(default_factory=StoreConfig, description="The record of every invocation.")
    clients: ClientsConfig = Field(default_factory=ClientsConfig, description=(
        "Limits that keep one client from hurting the others or the daemon."))
    max_payload_bytes: int = Field(64 * 2**20, ge=1024, description=(
        "Largest pickled function or argument; clients learn it when they connect (PayloadTooLarge at submit)."))

    @field_validator("engine", "dispatch", "warm_pool", "store", "clients", mode="before")
    @classmethod
    def _none_is_default(cls, v):
        return {} if v is None else v

    @field_validator("listen")
    @classmethod
    def _tcp_addresses(cls, addresses: list[str]) -> list[str]:
        for address in addresses:
            match = _TCP_ADDRESS.match(address)
            if not match or match[2] != "*" and int(match[2]) > 65535:
                raise ValueError(f"{address!r} is not tcp://HOST:PORT (the ipc:// socket is always there)")
        return addresses

    def max_message_bytes(self) -> int:
        """The cap on a whole client message: by default room for a function body and
        its arguments at max_payload_bytes each, twice over, plus headers."""
        cap = self.clients.max_message_bytes
        return int(cap) if cap is not None else 4 * self.max_payload_bytes + 2**20


def load_config(path: Path) -> EndpointConfig:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys to values")
    if "display_name" in data:  # written by earlier templates, never used: the folder names an endpoint
        log.warning("%s: display_name is ignored (the endpoint's folder names it); remove it", path)
        del data["display_name"]
    try:
        return EndpointConfig.model_validate(data)
    except ValidationError as e:
        problems = "\n".join(f"  {key}: {msg}" for key, msg in _problems(e))
        raise ConfigError(f"{path}: invalid endpoint config:\n{problems}") from None


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    """(dotted key, message) for each mistake; a Parsl parameter's own key is named too."""
    out = []
    for err in error.errors():
        loc = [str(p) for p in err["loc"]]
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, ParamErrors):
            out.extend((".".join([*loc, key]), msg) for key, msg in cause.problems)
        else:
            msg = err["msg"].removeprefix("Value error, ")
            out.append((".".join(loc) or "(top level)", msg))
    return out
