"""Warm contexts on real Parsl workers: initialised once per worker process,
shared by separate client processes, results in order, errors isolated."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from conftest import local_config, run_client, status
from sample_functions import add_offset, check_add_offset_results

from faas import Executor, ctx_function
from faas.errors import SerializationError


def test_context_initialised_once_per_worker_across_client_processes(endpoint, tmp_path):
    ep = endpoint("warm", local_config(workers=2))
    log = tmp_path / "inits.log"
    run_client("pid_loader.py", "warm", str(log), "200")
    first = Counter(log.read_text().split())
    worker_pids = {str(p.pid) for p in ep.workers()}
    assert first and set(first) <= worker_pids, (first, worker_pids)
    assert all(n == 1 for n in first.values()), f"a worker initialised its context twice: {first}"

    run_client("pid_loader.py", "warm", str(log), "200")
    second = Counter(log.read_text().split())
    assert all(n == 1 for n in second.values()), f"a worker re-initialised its context: {second}"
    assert set(second) <= worker_pids

    info = status("warm")
    assert info["invocations"]["succeeded"] == 400
    (ctx,) = info["contexts"]
    assert ctx["inits"] == sum(second.values())


def test_map_order_remote_traceback_and_batch_mates(endpoint, faas_home):
    endpoint("batch", local_config(workers=2, max_batch=50))
    with Executor(endpoint="batch") as ex:
        assert list(ex.map(add_offset, range(12))) == [1000 + x for x in range(12)]

        futures = [ex.submit(add_offset, x) for x in range(100)]
        check_add_offset_results(futures)
        failed_id = futures[13].task_id

    # the failing invocation shared its batch (same worker, same dispatch) with others that succeeded
    from sqlalchemy import select

    from faas.endpoint.config import load_config
    from faas.endpoint.daemon import open_store
    from faas.home import EndpointDir
    from faas.store.models import Invocation

    epdir = EndpointDir.of("batch")
    store = open_store(epdir, load_config(epdir.config))
    with store.engine.connect() as conn:
        rows = conn.execute(select(Invocation.id, Invocation.state, Invocation.dispatched_at,
                                   Invocation.worker_id)).all()
    store.close()
    failed = next(r for r in rows if r.id == failed_id)
    mates = [r for r in rows if r.dispatched_at == failed.dispatched_at and r.worker_id == failed.worker_id
             and r.id != failed_id]
    assert failed.state.value == "failed"
    assert mates and all(r.state.value == "succeeded" for r in mates)


def test_unserialisable_argument_fails_at_submit(endpoint):
    endpoint("ser", local_config(workers=1))
    with Executor(endpoint="ser") as ex:
        with pytest.raises(SerializationError, match="cannot be serialised"):
            ex.submit(add_offset, threading.Lock())
        with pytest.raises(TypeError, match="not callable"):
            ex.submit(42, 1)
        assert ex.submit(add_offset, 1).result(timeout=60) == 1001
    assert status("ser")["invocations"]["succeeded"] == 1


def test_direct_call_runs_locally_with_a_warm_context():
    calls = []

    def loader():
        calls.append(1)
        return 7

    @ctx_function(model=loader)
    def times(ctx, x):
        return ctx * x

    assert [times(x) for x in range(5)] == [0, 7, 14, 21, 28]
    assert len(calls) == 1


def test_embedded_endpoint_runs_a_script_with_nothing_started(tmp_path):
    out = run_client("embedded.py", str(tmp_path / "home"))
    assert out.split() == ["1000,1001,1002", "ok"]
