"""Holders follow demand: the rules as pure functions (targets, the choice of a
free worker, what a joining worker preloads), and on real Parsl workers: a hot
context spreads only as far as its backlog pays for its loads; a joining
worker preloads the context short of holders; the holders a recently used
context keeps are not retired at max_idletime."""

from __future__ import annotations

import time

from conftest import local_config, status

from faas import Executor, ctx_function
from faas.endpoint.config import EndpointConfig
from faas.endpoint.placement import Placement
from faas.endpoint.policy import PAYBACK, choose_context, fleet_shares, preload, target_holders
from faas.endpoint.roster import Roster
from faas.endpoint.workers import WorkerLoop

# -- the rules ----------------------------------------------------------------------


def test_contexts_share_the_fleet_by_their_work():
    assert fleet_shares({"a": 100.0, "b": 300.0}, 8) == {"a": 2.0, "b": 6.0}
    assert fleet_shares({}, 8) == {} and fleet_shares({"a": 0.0}, 8) == {}


def test_a_context_wants_its_share_as_far_as_its_loads_pay():
    # 400 s of work, loads of 10 s: one holder per PAYBACK loads' worth, however large its share
    assert target_holders(400.0, 400, load=10.0, share=50.0, live=True, min_holders=1) == 400 / (PAYBACK * 10) == 4
    assert target_holders(12_000.0, 120, load=10.0, share=7.5, live=True, min_holders=1) == 7.5  # its share
    assert target_holders(10_000.0, 5, load=10.0, share=50.0, live=True, min_holders=1) == 5  # one per invocation
    assert target_holders(1.0, 10, load=10.0, share=50.0, live=True, min_holders=2) == 2  # cold: the floor
    assert target_holders(0.0, 0, load=10.0, share=0.0, live=True, min_holders=2) == 2  # used recently
    assert target_holders(0.0, 0, load=10.0, share=0.0, live=False, min_holders=2) == 0  # neither: frees them
    assert target_holders(30.0, 30, load=0.0, share=50.0, live=True, min_holders=1) == 30  # load not measured: free


def test_a_worker_leaves_a_context_with_a_worker_too_many_for_one_that_lacks_one():
    backlog = {"hot": 500.0, "cold": 20.0}
    assert choose_context({"cold"}, backlog, {"hot": 1, "cold": 3}) == "cold"  # without targets: its own
    assert choose_context({"cold"}, backlog, {"hot": 1, "cold": 3}, {"hot": 3.0, "cold": 1.0}) == "hot"
    # less than a whole worker each way: it stays (no moving back and forth as the backlogs drain)
    assert choose_context({"cold"}, backlog, {"hot": 2, "cold": 3}, {"hot": 2.6, "cold": 2.4}) == "cold"
    assert choose_context({"cold"}, backlog, {"hot": 1, "cold": 2}, {"hot": 1.5, "cold": 0.5}) == "cold"
    assert choose_context({"cold"}, backlog, {"hot": 1, "cold": 1}, {"hot": 3.0, "cold": 0.0}) == "cold"  # its last


def test_a_parked_context_is_almost_warm():
    backlog, holders, targets = {"a": 100.0, "b": 30.0}, {"a": 1, "b": 5}, {"a": 10.0, "b": 1.0}
    assert choose_context(set(), backlog, holders, targets) == "a"  # b has holders enough
    assert choose_context(set(), backlog, holders, targets, parked={"b"}) == "b"  # a wake away: cheapest work
    # its own has a worker too many; b lacks half of one: enough for a wake, not for a load
    assert choose_context({"a"}, backlog, {"a": 12, "b": 5}, {"a": 10.5, "b": 5.5}, parked={"b"}) == "b"
    assert choose_context({"a"}, backlog, {"a": 12, "b": 5}, {"a": 10.5, "b": 5.5}) == "a"


def test_a_free_worker_stays_idle_when_no_context_lacks_holders():
    assert choose_context(set(), {"a": 5.0}, {"a": 1}, {"a": 1.0}) is None
    assert choose_context(set(), {"a": 5.0}, {"a": 1}) == "a"  # without targets: any backlog
    assert choose_context(set(), {"a": 5.0, "b": 5.0}, {"a": 1, "b": 1}, {"a": 1.2, "b": 2.5}) == "b"
    assert choose_context(set(), {"a": 5.0}, {"a": 1}, {"a": 1.9}) is None  # a load for less than a whole worker
    assert choose_context(set(), {"a": 5.0}, {"a": 0}, {"a": 0.5}) == "a"  # nobody holds it: someone must


def test_a_joining_worker_preloads_the_context_that_lacks_most_holders():
    targets, holders = {"a": 4.0, "b": 3.0, "c": 1.0}, {"a": 3, "b": 1, "c": 0}
    assert preload(set(), targets, holders, {"a": 100.0, "b": 5.0}) == "b"  # lacks 2, against 1 and 1
    assert preload({"b"}, targets, holders, {"a": 100.0}) == "a"  # ties: most work
    assert preload(set(), {"a": 1.0}, {"a": 1}, {"a": 100.0}) is None


def test_a_context_whose_load_failed_is_loaded_only_with_work_until_a_load_succeeds():
    """A loader that takes its process down would otherwise take down every
    worker that joins and preloads it, for ever (nothing it ran counts an attempt)."""
    loops = Roster()
    loops.add(joining := WorkerLoop("joining"))
    placement = Placement({}, loops, {}, EndpointConfig())
    placement.last_used["c"] = time.monotonic()  # used recently: it wants its min_holders
    assert placement.preload_for(joining, time.monotonic()) == "c"
    placement.load_failed("c")
    assert placement.preload_for(joining, time.monotonic()) is None
    placement.loaded("c", 2.0)  # it loaded somewhere, with work
    assert placement.preload_for(joining, time.monotonic()) == "c"


def test_an_idle_worker_takes_the_work_a_held_up_holder_sits_on():
    """A holder whose current invocation runs far longer than usual (its work's
    measured cost said it would be quick) is no holder: an idle worker takes
    the work taken back from it, though the context has as many holders as
    its target."""
    from collections import deque
    from types import SimpleNamespace

    from faas.endpoint.workers import LoopBatch

    loops = Roster()
    busy, idle = WorkerLoop("busy"), WorkerLoop("idle")
    for loop in (busy, idle):
        loops.add(loop)
        loops.mark_ready(loop)
    busy.contexts, busy.rates = {"c": {"loaded": True}}, {"c": 500.0}  # measured on a 2 ms call
    loops.update(busy)
    queues = {"c": deque([SimpleNamespace(function_id="f")])}
    placement = Placement(queues, loops, {}, EndpointConfig())
    placement.loaded("c", 0.001)
    shipped = []

    def ship(loop, key, size):
        queues[key].popleft()
        del queues[key]
        loop.batches[1] = LoopBatch(1, key, size, {"x"})
        shipped.append(loop.token)

    def held_up(loop, now):
        return loop is busy

    placement.fill(time.monotonic(), ship, held_up)
    assert shipped == []  # c has its one holder: the idle worker would load it for nothing
    placement.held_up = {"busy"}  # as Upkeep finds it, running for seconds
    placement.fill(time.monotonic(), ship, held_up)
    assert shipped == ["idle"]


# -- on real workers ------------------------------------------------------------------
def _slow_load(name, seconds):
    time.sleep(seconds)  # stands in for reading a model
    return {"name": name}


def _call(ctx, x, seconds):
    time.sleep(seconds)
    return ctx["name"], x


def _holders_of(name: str, fn) -> dict[str, dict]:
    """Per worker, its warm pool's statistics of ``fn``'s context."""
    workers = status(name)["live"]["worker_contexts"]
    return {w: ctx[fn.context_key] for w, ctx in workers.items() if fn.context_key in ctx}


def test_a_hot_context_spreads_as_far_as_its_backlog_pays_for_the_loads(endpoint):
    # four workers on however few cores (Parsl starts no more than cores / cores_per_worker)
    endpoint("spread", local_config(workers=4).replace("  address:", "  cores_per_worker: 0.25\n  address:"))
    fn = ctx_function(model=_slow_load, name="hot", seconds=0.3)(_call)
    with Executor(endpoint="spread") as ex:
        assert ex.submit(fn, -1, 0.1).result(timeout=60) == ("hot", -1)  # one worker holds it
        # 0.8 s of work: a second holder would spend more loading than it saves
        assert list(ex.map(fn, range(8), [0.1] * 8, timeout=60)) == [("hot", x) for x in range(8)]
        assert len(_holders_of("spread", fn)) == 1
        # 20 s of work: every worker's load pays for itself many times over
        assert list(ex.map(fn, range(200), [0.1] * 200, timeout=120)) == [("hot", x) for x in range(200)]
    holders = _holders_of("spread", fn)
    assert len(holders) == 4 and all(s["inits"] == 1 and s["loaded"] for s in holders.values()), holders


def _plain(seconds):
    time.sleep(seconds)
    return seconds


def test_a_joining_worker_preloads_and_kept_holders_are_not_retired(endpoint):
    """min_holders 2 and a context used once: a worker that joins (brought by
    plain work) loads it before any of its work comes, and neither of its two
    holders retires at max_idletime while it was used within idle_timeout."""
    config = local_config(workers=1, extra="warm_pool:\n  min_holders: 2\n").replace(
        "    max_blocks: 1\n", "    max_blocks: 2\n").replace("  strategy_period: 0.5\n",
                                                             "  strategy_period: 0.5\n  max_idletime: 1\n")
    endpoint("keep", config)
    fn = ctx_function(model=_slow_load, name="kept", seconds=0.1)(_call)
    with Executor(endpoint="keep") as ex:
        assert ex.submit(fn, 0, 0.0).result(timeout=60) == ("kept", 0)
        assert list(ex.map(_plain, [0.5] * 10, timeout=120)) == [0.5] * 10  # a backlog: a second worker joins
    deadline = time.monotonic() + 60
    while len(holders := _holders_of("keep", fn)) < 2:
        assert time.monotonic() < deadline, f"no second holder: {status('keep')['live']['worker_contexts']}"
        time.sleep(0.5)
    preloaded = [s for s in holders.values() if s["invocations"] == 0]
    assert len(preloaded) == 1 and preloaded[0]["inits"] == 1 and preloaded[0]["loaded"], holders
    time.sleep(3)  # three times max_idletime, both idle
    assert len(status("keep")["live"]["worker_contexts"]) == 2
    assert all(s["loaded"] for s in _holders_of("keep", fn).values())


def test_a_loop_preloads_and_keeps_what_the_endpoint_says():
    """The worker side, over a real socket: Preload loads the context before
    any work (reported in Progress.preloaded, no invocation counted); Keep
    reaches the warm pool, whose idle release then spares those contexts."""
    import threading

    import cloudpickle
    import zmq

    from faas import protocol
    from faas.warm_pool.loop import WorkerLoop

    fn = ctx_function(model=_slow_load, name="preloaded", seconds=0.0)(_call)
    zctx = zmq.Context()
    endpoint = zctx.socket(zmq.ROUTER)
    endpoint.bind("inproc://holders-test")
    sock = zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, b"loop")
    sock.connect("inproc://holders-test")
    loop = WorkerLoop(zctx, sock, heartbeat_threshold=30)
    ended: list[str] = []
    thread = threading.Thread(target=lambda: ended.append(loop.run()))
    thread.start()
    try:
        endpoint.send_multipart([b"loop", *protocol.encode(protocol.Keep(contexts=[fn.context_key]))])
        endpoint.send_multipart([b"loop", *protocol.encode(
            protocol.Preload(context_key=fn.context_key, function="f1", functions=["f1"]), [cloudpickle.dumps(fn)])])
        assert endpoint.poll(30_000), "no report from the loop"
        _, *frames = endpoint.recv_multipart()
        msg, _ = protocol.decode(frames, protocol.WORKER_REPORTS)
        assert msg.preloaded == [fn.context_key] and not msg.started
        stats = msg.contexts[fn.context_key]
        assert stats["loaded"] and (stats["inits"], stats["invocations"]) == (1, 0)
        pool = loop.runner.pool  # the process's own: other tests' contexts (and init events) may be in it too
        assert [i.context_key for i in msg.inits].count(fn.context_key) == 1
        assert pool.keep == {fn.context_key}
        idle_timeout, pool.idle_timeout = pool.idle_timeout, 10.0
        try:
            assert fn.context_key not in pool.release_idle(now=time.time() + 60)  # kept
            pool.keep = set()
            assert fn.context_key in pool.release_idle(now=time.time() + 60)
        finally:
            pool.idle_timeout = idle_timeout
    finally:
        endpoint.send_multipart([b"loop", *protocol.encode(protocol.Retire())])
        thread.join(30)
        zctx.destroy(linger=0)
    assert ended == ["retired"]
