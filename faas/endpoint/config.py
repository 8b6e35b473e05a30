"""Endpoint configuration: YAML in the style of Globus Compute endpoint configs.

    engine:
      type: HighThroughputEngine
      max_workers_per_node: 2
      provider:
        type: LocalProvider      # or SlurmProvider, CondorProvider, ...
        init_blocks: 1

Validated when loaded, so a mistake is reported with its key and file before
anything starts. Provider and launcher parameters are checked against the Parsl
class's own signature.
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from faas.errors import FaasError


class ConfigError(FaasError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _parsl_class(module: str, name: str, kind: str):
    import importlib

    mod = importlib.import_module(module)
    cls = getattr(mod, name, None)
    if not inspect.isclass(cls):
        known = sorted(n for n in dir(mod) if n.endswith(kind))
        raise ValueError(f"unknown {kind.lower()} type {name!r}; known: {', '.join(known)}")
    return cls


def _check_params(cls, params: dict[str, Any]) -> None:
    allowed = set(inspect.signature(cls).parameters) - {"self", "launcher"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"{cls.__name__} has no parameter {', '.join(unknown)}; "
                         f"it takes: {', '.join(sorted(allowed))}")


class LauncherConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str

    @model_validator(mode="after")
    def _known(self):
        _check_params(_parsl_class("parsl.launchers", self.type, "Launcher"), self.model_extra or {})
        return self

    def build(self):
        return _parsl_class("parsl.launchers", self.type, "Launcher")(**(self.model_extra or {}))


class ProviderConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str = "LocalProvider"
    launcher: LauncherConfig | None = None

    @model_validator(mode="after")
    def _known(self):
        _check_params(_parsl_class("parsl.providers", self.type, "Provider"), self.model_extra or {})
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
    type: Literal["HighThroughputEngine"] = "HighThroughputEngine"
    max_workers_per_node: int = Field(2, ge=1)
    cores_per_worker: float = Field(1.0, gt=0)
    mem_per_worker: float | None = None
    available_accelerators: int | list[str] = Field(default_factory=list)
    address: str | None = "127.0.0.1"
    heartbeat_period: int = Field(30, ge=1)
    heartbeat_threshold: int = Field(120, ge=1)
    strategy_period: float = Field(1.0, gt=0)
    max_idletime: float = Field(120.0, ge=0)
    provider: ProviderConfig = Field(default_factory=_default_provider)


class DispatchConfig(_Strict):
    max_batch: int = Field(64, ge=1)
    max_attempts: int = Field(5, ge=1)


class WarmPoolConfig(_Strict):
    idle_timeout: float | None = Field(3600.0, gt=0)


class StoreConfig(_Strict):
    url: str | None = None  # default: SQLite in the endpoint folder
    retention: float = Field(7 * 86400.0, gt=0)  # seconds a final result is kept


_TCP_ADDRESS = re.compile(r"^tcp://(\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\*|[0-9]{1,5})$")


class EndpointConfig(_Strict):
    display_name: str | None = None
    listen: list[str] = Field(default_factory=list)  # tcp://HOST:PORT, CURVE-encrypted (port 0: any)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    dispatch: DispatchConfig = Field(default_factory=DispatchConfig)
    warm_pool: WarmPoolConfig = Field(default_factory=WarmPoolConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    max_payload_bytes: int = Field(64 * 2**20, ge=1024)

    @field_validator("engine", "dispatch", "warm_pool", "store", mode="before")
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


def load_config(path: Path) -> EndpointConfig:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys to values")
    try:
        return EndpointConfig.model_validate(data)
    except ValidationError as e:
        problems = "\n".join(f"  {'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
                             for err in e.errors())
        raise ConfigError(f"{path}: invalid endpoint config:\n{problems}") from None


def default_config_text(name: str, workers: int | None = None) -> str:
    workers = workers or max(1, min(4, os.cpu_count() or 2))
    return f"""\
# faas endpoint {name!r}: a Parsl HighThroughputExecutor on this machine.
display_name: {name}
engine:
  type: HighThroughputEngine
  max_workers_per_node: {workers}   # worker processes; each keeps its own warm contexts
  address: 127.0.0.1
  heartbeat_period: 30               # seconds; a worker silent for heartbeat_threshold is lost
  heartbeat_threshold: 120
  strategy_period: 0.5               # seconds between Parsl's scaling decisions
  provider:
    type: LocalProvider
    init_blocks: 1
    min_blocks: 1
    max_blocks: 1
dispatch:
  max_batch: 64                      # upper bound; batches shrink as the backlog drains
  max_attempts: 5                    # tries of an invocation whose worker was lost
warm_pool:
  idle_timeout: 3600                 # seconds before an unused context is released
store:
  url: null                          # null: SQLite in this folder; or any SQLAlchemy URL
  retention: 604800                  # seconds results are kept for reattaching clients
# listen: [tcp://0.0.0.0:5555]       # direct access, CurveZMQ-encrypted: faas-endpoint authorize
"""
