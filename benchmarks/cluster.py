"""What a real cluster charges a simulated fleet (benchmarks/fleet.py) for moving
a context: reading its files from the shared filesystem (whose aggregate
bandwidth its concurrent readers share), copying them from a peer's node
cache over the node link (a holder's link shared by the copies it serves),
reading them from the node's own disk, initialising the model in memory, and
parking or waking it over PCIe.

Times here are the paper's (seconds on real hardware); :class:`Pipe` runs on
the fleet's clock, which divides them by its scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True)
class Cluster:
    shared_fs: float = 2 * GB  # bytes/s, all readers of the shared filesystem together
    link: float = 12.5 * GB  # bytes/s, each node's network link (100 Gb/s)
    disk: float = 3 * GB  # bytes/s, each node's local disk (NVMe)
    pcie: float = 25 * GB  # bytes/s, host memory <-> GPU
    init: float = 5.0  # seconds of in-memory initialisation after a load's bytes are read

    def describe(self) -> str:
        return (f"shared filesystem {self.shared_fs / GB:g} GB/s aggregate, node link {self.link / GB:g} GB/s, "
                f"node disk {self.disk / GB:g} GB/s, host-to-GPU {self.pcie / GB:g} GB/s, in-memory "
                f"initialisation {self.init:g} s after the bytes are read")


class Flow:
    """Bytes on their way through a :class:`Pipe`; ``done`` is called when the last one arrives."""

    def __init__(self, size: float, done: Callable[[], None]):
        self.remaining = size
        self.done = done


class Pipe:
    """Bandwidth shared equally by the flows through it, each also capped at
    ``cap`` (a reader's own link). ``clock()`` is the fleet's paper time;
    ``at(t, fn)`` calls ``fn`` at paper time ``t``."""

    def __init__(self, capacity: float, cap: float, clock: Callable[[], float],
                 at: Callable[[float, Callable[[], None]], None]):
        self.capacity, self.cap = capacity, cap
        self.clock, self.at = clock, at
        self.flows: list[Flow] = []
        self._last = 0.0
        self._version = 0

    def rate(self) -> float:
        return min(self.cap, self.capacity / len(self.flows)) if self.flows else 0.0

    def add(self, flow: Flow) -> None:
        self._advance()
        self.flows.append(flow)
        self._schedule()

    def remove(self, flow: Flow) -> float:
        """Take ``flow`` out unfinished (its source or reader is gone); returns its bytes left."""
        self._advance()
        self.flows.remove(flow)
        self._schedule()
        return flow.remaining

    def _advance(self) -> None:
        now = self.clock()
        moved = self.rate() * (now - self._last)
        for f in self.flows:
            f.remaining -= moved
        self._last = now

    def _schedule(self) -> None:
        self._version += 1
        if self.flows:
            version = self._version
            left = max(0.0, min(f.remaining for f in self.flows))
            self.at(self.clock() + left / self.rate(), lambda: self._due(version))

    def _due(self, version: int) -> None:
        if version != self._version:
            return  # the flows changed since: a later event stands
        self._advance()
        done = [f for f in self.flows if f.remaining <= 1.0]
        self.flows = [f for f in self.flows if f.remaining > 1.0]
        self._schedule()
        for f in done:
            f.done()
