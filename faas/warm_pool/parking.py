"""The host-memory tier: how a context is parked off its accelerator and woken.

A GPU worker that must make room for another context would otherwise drop the
old one and run its loader again when it is next needed: seconds to minutes of
reading files and building the model. Parked in host memory instead, it wakes
by one copy back over PCIe (tens of milliseconds for a small model). The warm
pool (:mod:`faas.warm_pool.registry`) decides when; this module knows how.

The convention, for a loader's context:

- an object with its own ``park()`` and ``wake()`` methods is parked by them:
  ``park()`` moves it off the accelerator and may return the bytes of host
  memory it now holds (None: the pool counts the footprint measured when it
  loaded); ``wake()`` moves it back. Neither is called while an invocation
  uses the context. Such a context says what parking means, so it is parked
  wherever it runs, on a CPU worker too;
- otherwise faas parks torch modules on an accelerator: the context itself,
  or those among its attributes (the default :class:`~faas.warm_pool.loaders.CausalLM`),
  or the values of a dict, list or tuple. Their parameters and buffers move
  to pinned host memory (pageable where pinning fails) and back to the device
  they came from; tied weights stay tied (each tensor moves in place).
  Anything else the context holds on the GPU stays there;
- anything else cannot be parked: it is released as before. On a CPU worker
  there is no faster tier: torch modules already in host memory are not
  parked, and the memory budget decides as it always has.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Parking(Protocol):
    def park(self) -> int | None: ...

    def wake(self) -> None: ...


def parking_for(value: Any) -> Parking | None:
    """How to park ``value``; None when it cannot be parked."""
    park, wake = getattr(value, "park", None), getattr(value, "wake", None)
    if callable(park) and callable(wake):
        return _Own(park, wake)
    modules = _torch_modules(value)
    if modules and any(t.device.type != "cpu" for t in _tensors(modules)):
        return TorchParking(modules)
    return None


class _Own:
    def __init__(self, park, wake):
        self.park, self.wake = park, wake


class TorchParking:
    """Moves the parameters and buffers of ``modules`` between their devices and host memory."""

    pin = True  # pinned host memory, until pinning fails once in this process

    def __init__(self, modules: list[Any]):
        self.modules = modules
        self._homes: list[tuple[Any, Any]] = []  # (tensor, the device it woke on)

    def park(self) -> int:
        import torch

        moved = [(t, t.device, self._host_copy(torch, t.data)) for t in _tensors(self.modules)
                 if t.device.type != "cpu"]
        _synchronize(torch, {dev for _, dev, _ in moved})
        for t, _, host in moved:
            t.data = host
        self._homes = [(t, dev) for t, dev, _ in moved]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the GPU's memory goes back to whoever shares it
        return sum(host.nbytes for _, _, host in moved)

    def wake(self) -> None:
        import torch

        for t, dev in self._homes:
            t.data = t.data.to(dev, non_blocking=True)
        _synchronize(torch, {dev for _, dev in self._homes})
        self._homes = []

    @classmethod
    def _host_copy(cls, torch, t):
        """A copy of ``t`` in pinned host memory (so the copy back runs at full
        PCIe speed), started asynchronously; pageable memory where pinning fails."""
        if t.device.type == "cuda" and cls.pin:
            try:
                host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                host.copy_(t, non_blocking=True)
                return host
            except RuntimeError as e:  # e.g. the locked-memory limit
                cls.pin = False
                log.warning("cannot pin host memory (%s); parking in pageable memory", e)
        return t.to("cpu")


def _torch_modules(value: Any) -> list[Any]:
    torch = sys.modules.get("torch")  # a context that holds torch modules has imported torch
    if torch is None:
        return []
    module = torch.nn.Module
    if isinstance(value, module):
        return [value]
    if isinstance(value, dict):
        members = list(value.values())
    elif isinstance(value, (list, tuple)):
        members = list(value)
    else:
        members = list(getattr(value, "__dict__", {}).values())
    found = {id(m): m for m in members if isinstance(m, module)}
    return list(found.values())


def _tensors(modules: list[Any]) -> list[Any]:
    """Each parameter and buffer once (a tied weight is one tensor)."""
    seen: dict[int, Any] = {}
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            seen.setdefault(id(t), t)
    return list(seen.values())


def _synchronize(torch, devices: set[Any]) -> None:
    for dev in devices:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
