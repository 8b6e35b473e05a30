"""The invocation is the unit: outcomes stream per invocation (not per batch),
futures go RUNNING, cancel and timeouts reach the workers, and the Executor
keeps the concurrent.futures contract. All on real Parsl workers."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import gc
import itertools
import os
import re
import signal
import time
import weakref

import pytest
from conftest import local_config, run_client, status

from faas import Executor, ctx_function
from faas.errors import InvocationTimeout


def _flag_loader(folder):
    return {"folder": folder}


def _sleep_then(ctx, seconds, value, mark=None):
    time.sleep(seconds)
    if mark:
        with open(os.path.join(ctx["folder"], mark), "w") as f:
            f.write(str(os.getpid()))
    return value


def _pid(ctx, x):
    return os.getpid()


def test_a_finished_invocation_resolves_while_its_batch_mates_run(endpoint, tmp_path):
    endpoint("stream", local_config(workers=1, max_batch=16))
    fn = ctx_function(model=_flag_loader, folder=str(tmp_path))(_sleep_then)
    with Executor(endpoint="stream") as ex:
        assert ex.submit(fn, 0, "warm").result(timeout=60) == "warm"
        fast = ex.submit(fn, 0.0, "fast")
        slow = [ex.submit(fn, 3.0, i) for i in range(3)]  # one batch with the fast one (first batch: 4)
        done, _ = cf.wait([fast, *slow], timeout=60, return_when=cf.FIRST_COMPLETED)
        assert done == {fast}, "a result waited for its batch mates"
        deadline = time.monotonic() + 2.5  # its start is reported right after the fast one's result
        while not slow[0].running():
            assert time.monotonic() < deadline and not slow[0].done(), "the next invocation never went RUNNING"
            time.sleep(0.01)
        assert [f.result(timeout=60) for f in slow] == [0, 1, 2]


def test_cancel_pending_never_runs_and_is_recorded(endpoint, tmp_path):
    endpoint("cancel", local_config(workers=1))
    fn = ctx_function(model=_flag_loader, folder=str(tmp_path))(_sleep_then)
    with Executor(endpoint="cancel") as ex:
        blocker = ex.submit(fn, 2.0, "blocker")
        deadline = time.monotonic() + 60
        while not blocker.running():
            assert time.monotonic() < deadline, "the future never went RUNNING"
            time.sleep(0.05)
        pending = [ex.submit(fn, 0, i, mark=f"ran-{i}") for i in range(20)]
        assert all(f.cancel() for f in pending)
        assert blocker.result(timeout=60) == "blocker"
        assert ex.submit(fn, 0, "after").result(timeout=60) == "after"
    assert not list(tmp_path.glob("ran-*")), "a cancelled invocation ran"
    counts = status("cancel")["invocations"]
    assert counts["succeeded"] == 2 and counts["pending"] == counts["dispatched"] == 0
    assert counts["cancelled"] <= 20  # those cancelled before they left the client were never sent


def test_interrupt_stops_a_running_invocation_and_the_worker_goes_on(endpoint, tmp_path):
    endpoint("interrupt", local_config(workers=1))
    fn = ctx_function(model=_flag_loader, folder=str(tmp_path))(_sleep_then)
    pid = ctx_function(model=_flag_loader, folder=str(tmp_path))(_pid)
    with Executor(endpoint="interrupt") as ex:
        worker = ex.submit(pid, 0).result(timeout=60)
        long = ex.submit(fn, 600, "never", mark="finished")
        deadline = time.monotonic() + 60
        while not long.running():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not long.cancel()  # the contract: a running future is not cancelled locally
        t0 = time.monotonic()
        assert long.interrupt()
        with pytest.raises(cf.CancelledError):
            long.result(timeout=30)
        assert time.monotonic() - t0 < 10
        assert ex.submit(pid, 1).result(timeout=60) == worker  # same process: it was interrupted, not replaced
    assert not (tmp_path / "finished").exists()
    assert status("interrupt")["invocations"]["cancelled"] == 1


def _block_interrupts_and_sleep(ctx, seconds):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # as native code that never returns would
    try:
        time.sleep(seconds)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    return "finished"


def test_timeouts_interrupt_or_replace_the_worker_and_batch_mates_go_on(endpoint, tmp_path):
    endpoint("timeout", local_config(workers=2, extra="  timeout_grace: 1\n  invocation_timeout: 30\n"))
    sleepy = ctx_function(model=_flag_loader, folder=str(tmp_path), timeout=1)(_sleep_then)
    stuck = ctx_function(model=_flag_loader, folder=str(tmp_path), timeout=1)(_block_interrupts_and_sleep)
    with Executor(endpoint="timeout") as ex:
        assert ex.submit(sleepy, 0, "warm").result(timeout=60) == "warm"
        t0 = time.monotonic()
        hung = ex.submit(sleepy, 600, "never")
        mates = [ex.submit(sleepy, 0.05, i) for i in range(20)]
        assert [f.result(timeout=60) for f in mates] == list(range(20))
        with pytest.raises(InvocationTimeout, match="timeout of 1s"):
            hung.result(timeout=60)
        assert time.monotonic() - t0 < 20

        native = ex.submit(stuck, 600)
        mates = [ex.submit(sleepy, 0.05, i) for i in range(20)]
        with pytest.raises(InvocationTimeout, match="worker process was replaced"):
            native.result(timeout=60)
        assert [f.result(timeout=90) for f in mates] == list(range(20))
        assert ex.submit(sleepy, 0, "still serving").result(timeout=90) == "still serving"
    assert status("timeout")["invocations"]["failed"] == 2


@pytest.mark.parametrize("how", ["nowait", "noshutdown"])
def test_pending_work_finishes_when_the_script_leaves_early(endpoint, tmp_path, how):
    endpoint("early", local_config(workers=2))
    out = tmp_path / "results"
    printed = run_client("exit_early.py", "early", str(out), "10", how)
    assert sorted(int(x) for x in out.read_text().split()) == [x * x for x in range(10)]
    if how == "nowait":
        assert float(printed.split()[2].rstrip("s")) < 2, printed  # shutdown(wait=False) returned at once
        assert "RuntimeError: cannot schedule new futures after shutdown" in printed


def _scale(ctx, x):
    return ctx["k"] * x


def test_the_concurrent_futures_contract(endpoint):
    endpoint("contract", local_config(workers=2))
    scale = ctx_function(model=lambda k: {"k": k}, k=3)(_scale)
    with Executor(endpoint="contract") as ex, Executor(endpoint="contract") as other:
        ids = [f.task_id for f in [*(ex.submit(pow, 2, 8) for _ in range(50)), other.submit(pow, 2, 8)]]
        assert len(set(ids)) == len(ids) and all(re.fullmatch("[0-9a-f]{32}", i) for i in ids), ids[-2:]
        assert ex.submit(pow, 2, 8).result(timeout=60) == 256  # plain callables: no context
        assert list(ex.map(str, range(3))) == ["0", "1", "2"]
        assert list(ex.map(scale, range(10), chunksize=4)) == [3 * x for x in range(10)]
        assert list(itertools.islice(ex.map(scale, itertools.count(), buffersize=4), 6)) == [0, 3, 6, 9, 12, 15]
        with pytest.raises(ValueError):
            ex.map(scale, range(3), chunksize=0)

        slow = ctx_function(model=dict)(lambda ctx, s: time.sleep(s) or s)
        t0 = time.monotonic()
        with pytest.raises(cf.TimeoutError):
            list(ex.map(slow, [0.8] * 6, timeout=1.5))  # one deadline, not 1.5 s per item
        assert time.monotonic() - t0 < 5

        def local(ctx, x):
            return x

        fn = ctx_function(model=dict)(local)
        assert ex.submit(fn, 1).result(timeout=60) == 1
        ref = weakref.ref(fn)
        del fn
        gc.collect()
        assert ref() is None, "the executor keeps submitted functions alive"

        results = ex.map(ctx_function(model=dict)(lambda ctx, x: Box(x)), range(3))
        first = next(results)
        box = weakref.ref(first)
        del first
        gc.collect()
        assert box() is None, "map keeps a yielded result alive"
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(pow, 2, 2)


class Box:
    def __init__(self, x):
        self.x = x


def test_bad_arguments_are_refused_clearly():
    with pytest.raises(ValueError, match="embedded_workers"):
        Executor(embedded_workers=0)
    with pytest.raises(ValueError, match="timeout"):
        ctx_function(model=dict, timeout=0)
    with pytest.raises(ValueError, match="batch_size"):
        ctx_function(model=dict, batch_size=0)

    @ctx_function(model=dict)
    def takes_self(ctx, self):
        return self

    assert takes_self(self=5) == 5  # a direct call with a keyword named self


def _named(name):
    return name


def _closure_loader(base):
    def load():
        return base
    return load


def test_client_and_worker_agree_on_context_keys(endpoint, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the missing model fails at once, not after the hub's timeouts
    endpoint("keys", local_config(workers=1))
    fns = [ctx_function(model=_named, name="plain")(_pid),
           ctx_function(model=functools.partial(_named, "partial"))(_pid),
           ctx_function(model=_closure_loader("closure"))(_pid),
           ctx_function(model="no/such-model-here")(_pid)]
    with Executor(endpoint="keys") as ex:
        futures = [ex.submit(fn, 0) for fn in fns]
        cf.wait(futures, timeout=120)
    (worker_stats,) = status("keys")["live"]["worker_contexts"].values()
    assert {fn.context_key for fn in fns} <= set(worker_stats)
    assert futures[3].exception() is not None  # the model cannot load here; its key was still the client's
