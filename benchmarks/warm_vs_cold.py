"""Warm contexts vs loading the context in every task.

N invocations on W local workers of a function whose context costs LOAD
seconds to build and whose call costs CALL seconds. faas keeps the context warm
in each worker; the baseline is a plain Parsl python_app on an identical
HighThroughputExecutor that loads the context inside every task, with the same
batch size. Prints both makespans and the ratio.

    python benchmarks/warm_vs_cold.py [--n 400] [--workers 2] [--load 2] [--call 0.02] [--batch 16]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from faas import Executor, ctx_function


def make_context(load_seconds: float):
    time.sleep(load_seconds)  # stands in for reading and placing model weights
    return {"pid": os.getpid()}


def work(ctx, x, call_seconds):
    time.sleep(call_seconds)
    return x * 2


def run_faas(args) -> float:
    os.environ["FAAS_HOME"] = tempfile.mkdtemp(prefix="faas-bench-")
    from faas.endpoint.home import EndpointDir

    epdir = EndpointDir.of("bench")
    epdir.path.mkdir(parents=True)
    epdir.config.write_text(f"""\
engine:
  max_workers_per_node: {args.workers}
  strategy_period: 0.5
dispatch:
  max_batch: {args.batch}
""")
    from faas.endpoint import daemon

    daemon.start_background(epdir)
    try:
        fn = ctx_function(model=make_context, load_seconds=args.load)(work)
        with Executor(endpoint="bench") as ex:
            # workers up, no context loaded yet (the baseline waits for its workers too)
            ex.submit(ctx_function(model=dict)(work), -1, 0).result()
            t0 = time.perf_counter()
            results = list(ex.map(fn, range(args.n), [args.call] * args.n))
            elapsed = time.perf_counter() - t0
        assert results == [2 * x for x in range(args.n)]
        return elapsed
    finally:
        daemon.stop(epdir)


def cold_batch(items, load_seconds, call_seconds):
    """The baseline task: self-contained, since Parsl ships it by reference to ``__main__``."""
    import time

    time.sleep(load_seconds)  # the context, loaded again in every task
    out = []
    for x in items:
        time.sleep(call_seconds)
        out.append(x * 2)
    return out


def run_parsl(args) -> float:
    import parsl
    from parsl import python_app
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    from faas.endpoint.engine import put_parsl_scripts_on_path

    put_parsl_scripts_on_path()

    run_dir = Path(tempfile.mkdtemp(prefix="parsl-bench-"))
    htex = HighThroughputExecutor(label="cold", address="127.0.0.1", max_workers_per_node=args.workers,
                                  provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))
    dfk = parsl.load(Config(executors=[htex], run_dir=str(run_dir), strategy_period=0.5))
    try:
        app = python_app(cold_batch, data_flow_kernel=dfk)
        app([], 0, 0).result()  # workers up
        t0 = time.perf_counter()
        batches = [list(range(i, min(i + args.batch, args.n))) for i in range(0, args.n, args.batch)]
        futures = [app(b, args.load, args.call) for b in batches]
        results = [r for f in futures for r in f.result()]
        elapsed = time.perf_counter() - t0
        assert results == [2 * x for x in range(args.n)]
        return elapsed
    finally:
        dfk.cleanup()
        parsl.clear()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--load", type=float, default=2.0)
    p.add_argument("--call", type=float, default=0.02)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    ideal = args.load + args.n * args.call / args.workers
    warm = run_faas(args)
    cold = run_parsl(args)
    print(f"N={args.n} workers={args.workers} load={args.load}s call={args.call * 1000:.0f}ms batch={args.batch}")
    print(f"faas (warm contexts):         {warm:7.2f} s   ({warm / ideal:.2f}x the ideal {ideal:.2f} s)")
    print(f"Parsl, context loaded per task: {cold:7.2f} s")
    print(f"speed-up: {cold / warm:.2f}x")


if __name__ == "__main__":
    main()
