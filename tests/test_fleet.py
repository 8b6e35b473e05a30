"""A small simulated fleet through the real daemon (benchmarks/fleet.py): the
real client socket, dispatcher, store and CurveZMQ worker socket, with 20
simulated GPU workers that join over time and are preempted without goodbye,
some found by the heartbeat, some reported by the engine."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import fleet  # noqa: E402

SCALE = 240.0  # paper seconds per second here


def trace() -> dict:
    """20 GPUs joining over the first minute (paper time); six are preempted at
    10-15 minutes, three silently and three reported, and replaced a minute later,
    well before the work (about 31 minutes of it per GPU) runs out."""
    slots = []
    for g in range(20):
        join = 3.0 * g
        if g < 6:
            leave = 600.0 + 60.0 * g
            slots.append({"id": len(slots), "speed": 1.0, "join": join, "leave": leave,
                          "end": "silent" if g % 2 else "report"})
            join = leave + 60.0
        slots.append({"id": len(slots), "speed": 0.8 + 0.02 * g, "join": join, "leave": None, "end": "report"})
    return {"name": "test", "gpus": 20, "slots": slots}


def test_small_fleet_loses_and_duplicates_nothing():
    r = fleet.run_fleet(trace(), 2000, clients=2, scale=SCALE, heartbeat=(1, 2), log=lambda _: None)
    assert r["lost"] == 0, fleet.report(r)
    assert r["duplicated"] == 0, fleet.report(r)
    assert r["lost_on_preemption"] > 0, "the trace's preemptions took no work with them"
    assert r["idle_joined"] == [], f"workers that joined but got no work: {r['idle_joined']}\n{fleet.report(r)}"
    assert r["loads_min"] == 26  # every slot that joined ran work
