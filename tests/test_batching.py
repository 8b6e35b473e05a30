"""Batched ctx_functions on real workers: one call over many invocations,
each invocation keeping its own future, record and error."""

from __future__ import annotations

import os
import time

import pytest
from conftest import local_config, status

from faas import Executor, ctx_function
from faas.errors import InvocationTimeout


def _calls_log(folder):
    return {"log": os.path.join(folder, f"calls-{os.getpid()}")}


def _double(ctx, xs):
    with open(ctx["log"], "a") as f:
        f.write(f"{len(xs)}\n")
    if 13 in xs:
        raise ValueError("13 is unlucky")
    return [2 * x for x in xs]


def _short(ctx, xs):
    return xs[:-1]


def _single(ctx, x):
    return -x


def _sizes(folder):
    return [int(n) for p in folder.glob("calls-*") for n in p.read_text().split()]


def test_batched_results_in_order_each_recorded_and_the_culprit_isolated(endpoint, tmp_path):
    endpoint("batched", local_config(workers=1))
    double = ctx_function(model=_calls_log, folder=str(tmp_path), batch_size=16, batch_wait=0.05)(_double)
    single = ctx_function(model=_calls_log, folder=str(tmp_path))(_single)
    with Executor(endpoint="batched") as ex:
        futures = [ex.submit(double, x) for x in range(100)]
        singles = [ex.submit(single, x) for x in range(10)]  # the same context, unbatched
        for x, fut in enumerate(futures):
            if x == 13:
                with pytest.raises(ValueError, match="unlucky"):
                    fut.result(timeout=120)
            else:
                assert fut.result(timeout=120) == 2 * x
        assert [f.result(timeout=60) for f in singles] == [-x for x in range(10)]
    sizes = _sizes(tmp_path)
    assert max(sizes) > 1, f"no call merged invocations: {sizes}"
    assert max(sizes) <= 16
    info = status("batched")
    assert info["invocations"]["succeeded"] == 109 and info["invocations"]["failed"] == 1
    assert sum(c["inits"] for c in info["contexts"]) == 1  # batched and unbatched share the warm context


def test_a_wrong_length_return_is_a_clear_error(endpoint, tmp_path):
    endpoint("short", local_config(workers=1))
    short = ctx_function(model=_calls_log, folder=str(tmp_path), batch_size=8)(_short)
    with Executor(endpoint="short") as ex:
        futures = [ex.submit(short, x) for x in range(5)]
        for fut in futures:
            with pytest.raises(ValueError, match="returned 0 results for 1 inputs"):
                fut.result(timeout=60)


def test_a_lone_invocation_waits_batch_wait_and_no_longer(endpoint, tmp_path):
    endpoint("wait", local_config(workers=1))
    double = ctx_function(model=_calls_log, folder=str(tmp_path), batch_size=64, batch_wait=1.5)(_double)
    with Executor(endpoint="wait") as ex:
        assert ex.submit(double, 1).result(timeout=60) == 2  # warm: context loaded
        t0 = time.monotonic()
        assert ex.submit(double, 2).result(timeout=60) == 4
        waited = time.monotonic() - t0
    assert 1.4 < waited < 4.0, waited


def _slow(ctx, xs):
    """0.5 s a call; 3 raises, 5 hangs (until interrupted)."""
    time.sleep(60 if 5 in xs else 0.5)
    if 3 in xs:
        raise ValueError("3 is unlucky")
    return [-x for x in xs]


def test_a_failed_merged_call_reruns_each_member_with_its_own_timeout(endpoint, tmp_path):
    """The merged call of 0..7 overruns (5 hangs); run again one by one, eight calls of 0.5 s
    outlast the 3 s timeout together but not each: only 3 (raises) and 5 (hangs) fail."""
    endpoint("slow", local_config(workers=1))
    slow = ctx_function(model=_calls_log, folder=str(tmp_path), batch_size=8, batch_wait=1.0, timeout=3)(_slow)
    with Executor(endpoint="slow") as ex:
        assert ex.submit(slow, 0).result(timeout=60) == 0  # warm: the eight below arrive together
        futures = [ex.submit(slow, x) for x in range(8)]
        for x, fut in enumerate(futures):
            if x == 3:
                with pytest.raises(ValueError, match="unlucky"):
                    fut.result(timeout=120)
            elif x == 5:
                with pytest.raises(InvocationTimeout):
                    fut.result(timeout=120)
            else:
                assert fut.result(timeout=120) == -x
