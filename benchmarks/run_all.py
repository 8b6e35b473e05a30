"""faas benchmark suite: one command runs all, prints a table and writes JSON.

    python benchmarks/run_all.py [--only B1,B3] [--json benchmarks/results.json] [--quick]

Every comparison runs on the same machine, on the same number of local workers,
in one run. See benchmarks/README.md for the method and the latest figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil
from _common import cached_batch, plain_parsl  # benchmarks/ is this script's folder, first on sys.path

from faas import Executor, ctx_function
from faas.endpoint import daemon
from faas.home import EndpointDir

WORKERS = 2


# -- set-up helpers -----------------------------------------------------------
@contextlib.contextmanager
def endpoint(extra: str = "", workers: int = WORKERS, max_batch: int = 64, heartbeat=(30, 120)):
    """A throw-away local endpoint; yields its EndpointDir."""
    os.environ["FAAS_HOME"] = tempfile.mkdtemp(prefix="faas-bench-")
    epdir = EndpointDir.of("bench")
    epdir.path.mkdir(parents=True)
    epdir.config.write_text(f"""\
engine:
  max_workers_per_node: {workers}
  heartbeat_period: {heartbeat[0]}
  heartbeat_threshold: {heartbeat[1]}
  strategy_period: 0.5
dispatch:
  max_batch: {max_batch}
  max_attempts: 50
{extra}""")
    daemon.start_background(epdir)
    try:
        yield epdir
    finally:
        daemon.stop(epdir)


def warm_up(ex: Executor) -> None:
    """Workers connected, no context loaded (the baselines wait for their workers too)."""
    list(ex.map(ctx_function(model=dict)(noop), range(4 * WORKERS)))


def noop(ctx, x):
    return x


def sleepy_context(load_seconds):
    time.sleep(load_seconds)  # stands in for reading and placing model weights
    return {"pid": os.getpid()}


def sleepy_call(ctx, x, call_seconds):
    time.sleep(call_seconds)
    return 2 * x


def cold_batch(items, load_seconds, call_seconds):
    """Baseline task: loads the context in every task (self-contained: Parsl ships it by reference)."""
    import time

    time.sleep(load_seconds)
    out = []
    for x in items:
        time.sleep(call_seconds)
        out.append(2 * x)
    return out


# -- the benchmarks -----------------------------------------------------------
def b1_makespan(n=400, load=2.0, call=0.02, batch=16, kill_every: float | None = None) -> dict:
    """faas (warm) vs Parsl tasks loading the context each time, or keeping it in a
    per-process global (same batch size), vs ideal."""
    ideal = WORKERS * load / WORKERS + n * call / WORKERS  # each worker loads once, in parallel
    fn = ctx_function(model=sleepy_context, load_seconds=load)(sleepy_call)
    with endpoint(max_batch=batch), Executor(endpoint="bench") as ex:
        warm_up(ex)
        t0 = time.perf_counter()
        assert list(ex.map(fn, range(n), [call] * n)) == [2 * x for x in range(n)]
        warm = time.perf_counter() - t0
    from parsl import python_app

    baselines = {}
    for name, body in (("cold_parsl_s", cold_batch), ("cached_parsl_s", cached_batch)):
        with plain_parsl(WORKERS) as dfk:
            app = python_app(body, data_flow_kernel=dfk)
            [app([], 0, 0).result() for _ in range(WORKERS)]  # the workers are up (no context loaded)
            t0 = time.perf_counter()
            futures = [app(list(range(i, min(i + batch, n))), load, call) for i in range(0, n, batch)]
            assert [r for f in futures for r in f.result()] == [2 * x for x in range(n)]
            baselines[name] = time.perf_counter() - t0
    return {"n": n, "load_s": load, "call_s": call, "batch": batch, "faas_s": warm, **baselines,
            "ideal_s": ideal, "speedup_vs_cold": baselines["cold_parsl_s"] / warm,
            "speedup_vs_cached": baselines["cached_parsl_s"] / warm, "fraction_of_ideal": ideal / warm}


def b2_throughput(n=5000, latency_samples=300) -> dict:
    """No-op invocations/s end to end (each recorded in the store) vs raw HTEX no-op
    tasks/s on the same workers; single-invocation latency over ipc."""
    fn = ctx_function(model=dict)(noop)
    with endpoint(), Executor(endpoint="bench") as ex:
        warm_up(ex)
        t0 = time.perf_counter()
        assert list(ex.map(fn, range(n))) == list(range(n))
        faas_rate = n / (time.perf_counter() - t0)
        lat = []
        for i in range(latency_samples):
            t = time.perf_counter()
            ex.submit(fn, i).result()
            lat.append((time.perf_counter() - t) * 1000)
    from parsl import python_app

    with plain_parsl(WORKERS) as dfk:
        app = python_app(_raw_noop, data_flow_kernel=dfk)
        [app(i).result() for i in range(4 * WORKERS)]
        t0 = time.perf_counter()
        assert [f.result() for f in [app(i) for i in range(n)]] == list(range(n))
        raw_rate = n / (time.perf_counter() - t0)
    lat.sort()
    return {"n": n, "faas_per_s": faas_rate, "raw_htex_per_s": raw_rate, "ratio": faas_rate / raw_rate,
            "latency_p50_ms": statistics.median(lat), "latency_p99_ms": lat[int(0.99 * (len(lat) - 1))]}


def _raw_noop(x):
    return x


def _speed_loader(claim_dir):
    """The first worker to load claims the slow role: it runs 3x slower."""
    try:
        os.close(os.open(os.path.join(claim_dir, "slow"), os.O_CREAT | os.O_EXCL))
        return {"factor": 3.0}
    except FileExistsError:
        return {"factor": 1.0}


def _hetero_call(ctx, x, call_seconds):
    time.sleep(call_seconds * ctx["factor"])
    return x


def b3_heterogeneous(n=600, call=0.02) -> dict:
    """One worker 3x slower: makespan vs the ideal proportional split."""
    claim = tempfile.mkdtemp(prefix="faas-claim-")
    fn = ctx_function(model=_speed_loader, claim_dir=claim)(_hetero_call)
    with endpoint(), Executor(endpoint="bench") as ex:
        warm_up(ex)
        list(ex.map(fn, range(2 * WORKERS), [call] * (2 * WORKERS)))  # both workers hold the context
        t0 = time.perf_counter()
        list(ex.map(fn, range(n), [call] * n))
        makespan = time.perf_counter() - t0
    rate = (WORKERS - 1) / call + 1 / (3 * call)  # invocations/s of all workers together
    ideal = n / rate
    return {"n": n, "call_s": call, "makespan_s": makespan, "ideal_s": ideal, "ratio_to_ideal": makespan / ideal}


def _weights(name, mb):
    time.sleep(0.5)
    return {"name": name, "weights": b"\x01" * (mb * 2**20)}


def _weighted_call(ctx, x):
    time.sleep(0.005)
    return ctx["name"]


def b4_two_contexts(n=400, mb=60) -> dict:
    """Two contexts submitted alternately to 2 workers whose memory fits one each:
    faas placement vs the same warm pool behind Parsl's own (random) placement."""
    fns = [ctx_function(model=_weights, name=name, mb=mb)(_weighted_call) for name in "ab"]
    budget = f"warm_pool:\n  memory_budget: {int(mb * 1.5)}MiB\n"
    with endpoint(extra=budget, max_batch=8) as epdir, Executor(endpoint="bench") as ex:
        warm_up(ex)
        t0 = time.perf_counter()
        futures = [ex.submit(fns[i % 2], i) for i in range(n)]
        [f.result() for f in futures]
        faas_s = time.perf_counter() - t0
        stats = daemon.request(epdir.address, "status")["status"]["worker_contexts"]
        faas_inits = sum(s["inits"] for w in stats.values() for s in w.values() if "_weights" in s["description"])
    from parsl import python_app

    from faas.client import serialize
    from faas.warm_pool.runner import run_batch

    with plain_parsl(WORKERS) as dfk:  # the same warm pool, batches placed by Parsl
        app = python_app(run_batch, data_flow_kernel=dfk)
        app({}, []).result()
        blobs = [serialize.function_blob(f) for f in fns]
        t0 = time.perf_counter()
        futures = []
        for start in range(0, n, 8):
            fid, body = blobs[(start // 8) % 2]
            items = [(str(i), fid, serialize.args_blob((i,), {}, None)) for i in range(start, start + 8)]
            futures.append(app({fid: body}, items, None, int(mb * 1.5) * 2**20))
        reports = [f.result() for f in futures]
        random_s = time.perf_counter() - t0
        random_inits = len({(r["pid"], e.context_key, e.started_at) for r in reports for e in r["inits"]})
    return {"n": n, "faas_s": faas_s, "faas_context_inits": faas_inits, "random_s": random_s,
            "random_context_inits": random_inits}


def b5_queue(n=100_000) -> dict:
    """100k queued invocations: submission rate and the daemon's peak memory."""
    fn = ctx_function(model=sleepy_context, load_seconds=0)(sleepy_call)
    with endpoint() as epdir, Executor(endpoint="bench") as ex:
        proc = psutil.Process(int(epdir.pidfile.read_text()))
        rss0 = proc.memory_info().rss
        t0 = time.perf_counter()
        for i in range(n):  # the workers drain slowly: the queue fills
            ex.submit(fn, i, 0.01)
        peak = rss0
        while True:
            st = daemon.request(epdir.address, "status", timeout=30)["status"]
            peak = max(peak, proc.memory_info().rss)
            recorded = st["backlog"] + st["batches_in_flight"]
            if recorded and time.perf_counter() - t0 > 1 and _all_acked(epdir, n):
                break
            time.sleep(0.2)
        rate = n / (time.perf_counter() - t0)
        ex.shutdown(cancel_futures=True)
    return {"n": n, "recorded_per_s": rate, "daemon_rss_mb_before": rss0 / 2**20,
            "daemon_rss_mb_peak": peak / 2**20}


def _all_acked(epdir, n) -> bool:
    from faas.endpoint.config import load_config

    store = daemon.open_store(epdir, load_config(epdir.config))
    try:
        return sum(store.counts_by_state().values()) >= n
    finally:
        store.close()


def _worker_pids(epdir) -> list[int]:
    """Worker processes that run our loops (not Parsl's own helper processes)."""
    status = daemon.request(epdir.address, "status")["status"]
    return [int(name.rsplit(":", 1)[1]) for name in status["worker_contexts"]]


def b6_preemption(n=800, load=2.0, call=0.02, every=2.5) -> dict:
    """B1 while a worker is SIGKILLed every few seconds: makespan overhead per kill."""
    fn = ctx_function(model=sleepy_context, load_seconds=load)(sleepy_call)
    out = {}
    for mode in ("quiet", "kills"):
        with endpoint(max_batch=16, heartbeat=(1, 3)) as epdir, Executor(endpoint="bench") as ex:
            warm_up(ex)
            kills, stop = [], threading.Event()

            def killer(epdir, stop, kills):  # arguments: this round's, not the loop's latest
                rng = random.Random(1)
                while not stop.wait(every):
                    pids = _worker_pids(epdir)
                    if pids:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(rng.choice(pids), signal.SIGKILL)
                            kills.append(time.time())

            t = threading.Thread(target=killer, args=(epdir, stop, kills), daemon=True)
            if mode == "kills":
                t.start()
            t0 = time.perf_counter()
            assert list(ex.map(fn, range(n), [call] * n)) == [2 * x for x in range(n)]
            out[mode] = time.perf_counter() - t0
            stop.set()
            out[f"{mode}_kills"] = len(kills)
    overhead = (out["kills"] - out["quiet"]) / max(1, out["kills_kills"])
    return {"n": n, "makespan_quiet_s": out["quiet"], "makespan_with_kills_s": out["kills"],
            "kills": out["kills_kills"], "overhead_per_kill_s": overhead}


def _finish_time(ctx, seconds):
    time.sleep(seconds)
    return time.time()


def b7_result_latency(n=400, call=0.02) -> dict:
    """From a worker finishing an invocation to the client's future resolving, mid-batch (ipc)."""
    fn = ctx_function(model=sleepy_context, load_seconds=0)(_finish_time)
    with endpoint(max_batch=32), Executor(endpoint="bench") as ex:
        warm_up(ex)
        resolved: dict[int, float] = {}
        futures = [ex.submit(fn, call) for _ in range(n)]
        for i, fut in enumerate(futures):
            fut.add_done_callback(lambda f, i=i: resolved.setdefault(i, time.time()))
        finished = [f.result() for f in futures]
    lat = sorted((resolved[i] - finished[i]) * 1000 for i in range(n))
    return {"n": n, "call_s": call, "latency_p50_ms": statistics.median(lat),
            "latency_p99_ms": lat[int(0.99 * (n - 1))], "latency_max_ms": lat[-1]}


def b8_sessions(sessions=3, n=200, load=2.0, call=0.02, batch=16) -> dict:
    """Client sessions one after another (a script run again): faas keeps the contexts warm
    between them; a Parsl script with a per-process global starts workers and loads again."""
    expected = [2 * x for x in range(n)]
    fn = ctx_function(model=sleepy_context, load_seconds=load)(sleepy_call)
    faas_times, parsl_times = [], []
    with endpoint(max_batch=batch):
        for _ in range(sessions):
            t0 = time.perf_counter()
            with Executor(endpoint="bench") as ex:
                assert list(ex.map(fn, range(n), [call] * n)) == expected
            faas_times.append(time.perf_counter() - t0)
    from parsl import python_app

    for _ in range(sessions):
        t0 = time.perf_counter()
        with plain_parsl(WORKERS) as dfk:
            app = python_app(cached_batch, data_flow_kernel=dfk)
            futures = [app(list(range(i, min(i + batch, n))), load, call) for i in range(0, n, batch)]
            assert [r for f in futures for r in f.result()] == expected
        parsl_times.append(time.perf_counter() - t0)
    return {"sessions": sessions, "n_per_session": n, "load_s": load,
            "faas_first_s": faas_times[0], "faas_later_mean_s": statistics.mean(faas_times[1:]),
            "cached_parsl_mean_s": statistics.mean(parsl_times),
            "speedup_total": sum(parsl_times) / sum(faas_times)}


BENCHMARKS = {"B1": b1_makespan, "B2": b2_throughput, "B3": b3_heterogeneous, "B4": b4_two_contexts,
              "B5": b5_queue, "B6": b6_preemption, "B7": b7_result_latency, "B8": b8_sessions}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset, e.g. B1,B3")
    p.add_argument("--json", type=Path, default=Path(__file__).with_name("results.json"))
    args = p.parse_args()
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")},
               "workers": WORKERS}
    for name in args.only.split(","):
        t0 = time.perf_counter()
        results[name] = BENCHMARKS[name]()
        print(f"{name} ({BENCHMARKS[name].__doc__.splitlines()[0]}) [{time.perf_counter() - t0:.0f}s]")
        for key, value in results[name].items():
            print(f"    {key:28s} {value:12.3f}" if isinstance(value, float) else f"    {key:28s} {value:>12}")
    args.json.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
