"""The host-memory tier's mechanics, on CPU: a context with its own park/wake
is parked instead of released when it must make room, woken instead of
reloaded, and parked contexts share the host budget, least recently used
released first. Real loaders that really allocate memory; the GPU case is
tests/test_parking_gpu.py."""

from __future__ import annotations

import pytest

from faas.warm_pool.parking import parking_for
from faas.warm_pool.registry import WarmPool
from faas.warm_pool.spec import ContextSpec

MB = 2**20


class Weights:
    """A context that parks itself: its "device" bytes move to a host buffer and back."""

    def __init__(self, name: str, mb: int):
        self.name = name
        self.device = bytearray(b"\x01" * (mb * MB))  # written, so resident
        self.host = None
        self.moves: list[str] = []

    def park(self):
        self.host, self.device = bytes(self.device), None
        self.moves.append("park")
        return len(self.host)

    def wake(self):
        if self.moves[-1:] == ["fail"]:
            raise OSError("the copy back failed")
        self.device, self.host = bytearray(self.host), None
        self.moves.append("wake")


def _weights(name, mb):
    return Weights(name, mb)


def _spec(name, mb=50):
    return ContextSpec(_weights, {"name": name, "mb": mb})


def _use(pool, spec):
    """The invocation checks it got its own context, on its "device"."""
    return pool.call(spec, lambda ctx: (ctx.name, len(ctx.device)), (), {})


def _state(pool, *specs):
    snap = pool.snapshot()
    return ["loaded" if snap[s.key]["loaded"] else "parked" if snap[s.key]["parked"] else "-" for s in specs]


def test_a_context_pushed_out_is_parked_and_woken_not_reloaded():
    pool = WarmPool(memory_budget=120 * MB, host_budget=200 * MB)
    a, b, c = _spec("a"), _spec("b"), _spec("c")
    first_a = pool.acquire(a)
    pool.release(a)
    _use(pool, b)
    assert _use(pool, c) == ("c", 50 * MB)  # a and b do not both fit beside c: a, least recently used, is parked
    assert _state(pool, a, b, c) == ["parked", "loaded", "loaded"]
    assert pool.stats[a.key].host_bytes == 50 * MB
    assert _use(pool, a) == ("a", 50 * MB)  # woken: b is parked to make room first
    assert _state(pool, a, b, c) == ["loaded", "parked", "loaded"]
    assert pool.acquire(a) is first_a and first_a.moves == ["park", "wake"]
    pool.release(a)
    sa, sb, sc = (pool.stats[x.key] for x in (a, b, c))
    assert [sa.inits, sb.inits, sc.inits] == [1, 1, 1]  # no loader ran twice
    assert (sa.parks, sa.wakes, sb.parks, sb.wakes) == (1, 1, 1, 0)
    assert sa.wake_seconds > 0 and sa.host_bytes == 0
    assert sa.releases == sb.releases == sc.releases == 0


def test_parked_contexts_share_the_host_budget_least_recently_used_released_first():
    pool = WarmPool(memory_budget=60 * MB, host_budget=110 * MB)  # one on the "device", two parked
    a, b, c, d = (_spec(n) for n in "abcd")
    for s in (a, b, c, d):
        _use(pool, s)
    # d on the device; c and b parked; a, parked first and least recently used, was released for room
    assert _state(pool, a, b, c, d) == ["-", "parked", "parked", "loaded"]
    assert (pool.stats[a.key].parks, pool.stats[a.key].releases) == (1, 1)
    assert sum(pool.stats[x.key].host_bytes for x in (a, b, c, d)) == 100 * MB
    _use(pool, b)  # woken, d parked first: while b is still in host memory, c (least recently used) makes room
    assert _state(pool, a, b, c, d) == ["-", "loaded", "-", "parked"]
    _use(pool, a)  # loaded again (it was released); b parked beside d
    assert _state(pool, a, b, c, d) == ["loaded", "parked", "-", "parked"]
    assert [pool.stats[x.key].inits for x in (a, b, c, d)] == [2, 1, 1, 1]


def test_a_context_larger_than_the_host_budget_is_released():
    pool = WarmPool(memory_budget=60 * MB, host_budget=40 * MB)
    a, b = _spec("a"), _spec("b")
    _use(pool, a)
    _use(pool, b)
    assert _state(pool, a, b) == ["-", "loaded"]
    assert (pool.stats[a.key].parks, pool.stats[a.key].releases) == (0, 1)
    off = WarmPool(memory_budget=60 * MB, host_budget=0)  # 0: no host tier
    _use(off, a)
    _use(off, b)
    assert _state(off, a, b) == ["-", "loaded"]


def test_idle_release_covers_parked_contexts_except_those_kept():
    pool = WarmPool(idle_timeout=10, memory_budget=60 * MB, host_budget=200 * MB)
    a, b, c = _spec("a"), _spec("b"), _spec("c")
    for s in (a, b, c):
        _use(pool, s)
    assert _state(pool, a, b, c) == ["parked", "parked", "loaded"]
    pool.keep = {a.key}
    last = max(s.last_used for s in pool.stats.values())
    assert sorted(pool.release_idle(now=last + 11)) == sorted([b.key, c.key])
    assert _state(pool, a, b, c) == ["parked", "-", "-"]
    assert pool.stats[b.key].host_bytes == 0
    pool.keep = set()
    assert pool.release_idle(now=last + 11) == [a.key]


def test_a_failed_wake_loads_the_context_again():
    pool = WarmPool(memory_budget=60 * MB, host_budget=200 * MB)
    a, b = _spec("a"), _spec("b")
    ctx = pool.acquire(a)
    pool.release(a)
    _use(pool, b)
    ctx.moves.append("fail")
    assert _use(pool, a) == ("a", 50 * MB)
    assert (pool.stats[a.key].inits, pool.stats[a.key].wakes) == (2, 0)


def test_torch_modules_on_the_cpu_have_no_faster_tier():
    torch = pytest.importorskip("torch")
    from faas.warm_pool.loaders import CausalLM

    lm = CausalLM(model=torch.nn.Linear(4, 4), tokenizer=None, device=torch.device("cpu"))
    assert parking_for(lm) is None and parking_for(lm.model) is None and parking_for({"m": lm.model}) is None
    assert parking_for(Weights("x", 1)) is not None
