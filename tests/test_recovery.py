"""Failures on real Parsl workers and a real daemon: user errors, retries,
failing loaders, lost workers, a SIGKILLed daemon, reattaching clients; the
last two on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from conftest import RunningEndpoint, cli, local_config, run_client, status, write_config

from faas import Executor, ctx_function
from faas.errors import ContextInitError, InvocationFailed, RemoteTraceback

FAST_HEARTBEAT = (1, 3)


def _count_runs(path):
    return {"log": path}


def flaky(ctx, key, fail_times):
    """Fails the first ``fail_times`` runs of ``key`` (runs are counted in a file)."""
    with open(ctx["log"], "a") as f:
        f.write(f"{key}\n")
    runs = open(ctx["log"]).read().split().count(key)
    if runs <= fail_times:
        raise RuntimeError(f"{key} failed on run {runs}")
    return runs


def test_user_errors_are_not_retried_unless_asked(endpoint, tmp_path):
    endpoint("user", local_config(workers=1))
    log = tmp_path / "runs.log"
    plain = ctx_function(model=_count_runs, path=str(log))(flaky)
    retried = ctx_function(model=_count_runs, path=str(log), retries=2)(flaky)
    with Executor(endpoint="user") as ex:
        with pytest.raises(RuntimeError, match="once failed on run 1"):
            ex.submit(plain, "once", 1).result(timeout=60)
        assert ex.submit(retried, "twice", 2).result(timeout=60) == 3
        with pytest.raises(RuntimeError, match="always failed on run 3"):
            ex.submit(retried, "always", 99).result(timeout=60)
    runs = log.read_text().split()
    assert (runs.count("once"), runs.count("twice"), runs.count("always")) == (1, 3, 3)


def _exploding_loader(log):
    with open(log, "a") as f:
        f.write("load\n")
    raise OSError("weights file is corrupt")


def test_failing_loader_is_retried_once_then_fails_its_invocations(endpoint, tmp_path):
    ep = endpoint("loader", local_config(workers=2))
    log = tmp_path / "loads.log"
    broken = ctx_function(model=_exploding_loader, log=str(log))(lambda ctx, x: x)
    healthy = ctx_function(model=_count_runs, path=str(tmp_path / "ok.log"))(lambda ctx, x: x + 1)
    with Executor(endpoint="loader") as ex:
        futures = [ex.submit(broken, x) for x in range(20)]
        for fut in futures:
            with pytest.raises(ContextInitError) as info:
                fut.result(timeout=60)
            assert isinstance(info.value.__cause__, RemoteTraceback)
            assert "weights file is corrupt" in info.value.__cause__.tb
        assert list(ex.map(healthy, range(5))) == [1, 2, 3, 4, 5]  # the daemon and other contexts live on
    loads = log.read_text().split()
    assert 2 <= len(loads) <= 8, f"the loader ran {len(loads)} times"
    (ctx,) = [c for c in status("loader")["contexts"] if "_exploding_loader" in c["description"]]
    assert ctx["inits"] == 0 and ctx["init_failures"] == len(loads)
    assert ep.running()


@ctx_function(model=dict)
def kill_my_worker(ctx, x):
    os.kill(os.getpid(), signal.SIGKILL)


def test_invocation_gives_up_after_max_attempts_listing_them(endpoint):
    endpoint("doomed", local_config(workers=1, heartbeat=FAST_HEARTBEAT, extra="  max_attempts: 2\n"))
    with Executor(endpoint="doomed") as ex:
        with pytest.raises(InvocationFailed, match="gave up after 2 attempts") as info:
            ex.submit(kill_my_worker, 1).result(timeout=120)
    attempts = [line.strip() for line in info.value.__cause__.tb.splitlines()[1:]]
    assert [a.split(" at ")[0] for a in attempts] == ["attempt 1", "attempt 2"]
    # Parsl says so (WorkerLost, ManagerLost), or the endpoint finds first that the loop's socket is gone
    causes = ("WorkerLost", "ManagerLost", "its worker loop is unreachable")
    assert all("its worker was lost" in a and any(c in a for c in causes) for a in attempts), attempts


def test_reattach_after_the_first_client_vanished_then_purge(endpoint, store_url):
    endpoint("reattach", local_config(workers=2, extra=f"store:\n  url: {store_url}\n"))
    group = uuid.uuid4().hex
    done_when_left = int(run_client("reattach_first.py", "reattach", group, "60"))
    assert done_when_left < 60
    with Executor(endpoint="reattach", task_group_id=group) as ex:
        futures = ex.reload_tasks()
        assert len(futures) == 60
        assert sorted(f.result(timeout=120) for f in futures) == [3 * x for x in range(60)]
    assert status("reattach")["invocations"]["succeeded"] == 60
    assert "purged 0" in cli("purge", "reattach").stdout  # younger than the retention time
    assert "purged 60" in cli("purge", "reattach", "--older-than", "0").stdout
    assert status("reattach")["invocations"]["succeeded"] == 0


def logged_double(ctx, x):
    with open(ctx["log"], "a") as f:
        f.write(f"{x}\n")
    time.sleep(0.02)
    return 2 * x


def test_daemon_sigkill_then_restart_completes_everything_once(faas_home, tmp_path, store_url):
    write_config(faas_home, "crash", local_config(workers=2, max_batch=8, heartbeat=FAST_HEARTBEAT,
                                                  extra=f"store:\n  url: {store_url}\n"))
    ep = RunningEndpoint(faas_home, "crash")
    ep.start()
    log = tmp_path / "runs.log"
    fn = ctx_function(model=_count_runs, path=str(log))(logged_double)
    ex = Executor(endpoint="crash")
    try:
        futures = [ex.submit(fn, x) for x in range(300)]
        while sum(f.done() for f in futures) < 50:
            time.sleep(0.05)
        old = ep.pid
        os.kill(old, signal.SIGKILL)
        recorded = _recorded_results(store_url)
        assert 50 <= len(recorded) < 300
        ep.start()  # a stale pid file and socket must not block the restart
        assert ep.pid != old
        assert [f.result(timeout=180) for f in futures] == [2 * x for x in range(300)]
        # the function went with the first submissions only: the restarted daemon knows it from the store
        assert [ex.submit(fn, x).result(timeout=60) for x in range(300, 303)] == [600, 602, 604]
    finally:
        ex.shutdown(cancel_futures=True)
        ep.stop()
    runs = log.read_text().split()
    again = [x for x in recorded if runs.count(str(x)) > 1]
    assert not again, f"invocations with a recorded result ran again: {again}"
    assert status("crash")["invocations"]["succeeded"] == 303


def _recorded_results(store_url) -> set[int]:
    """Arguments of the invocations whose result the store holds."""
    import cloudpickle
    from sqlalchemy import select

    from faas.store import Store
    from faas.store.models import Invocation

    store = Store(store_url)
    with store.engine.connect() as conn:
        rows = conn.execute(select(Invocation.args).where(Invocation.state == "succeeded")).scalars().all()
    store.close()
    return {cloudpickle.loads(a)[0][0] for a in rows}
