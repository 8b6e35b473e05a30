"""The fact-verification example on the real SmolLM2-135M through a real
endpoint with two workers, and what the endpoint tells about it afterwards:
``faas-endpoint report`` (text and timeline plot) and progress bars; its
prefix-cached scoring against whole prompts.

One endpoint and one model cache serve the whole session: the GGUF conversion
(~20 s on two cores) happens once, in whichever worker gets there first.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import matplotlib.image
import pytest
import torch
from conftest import ROOT, RunningEndpoint, cli, local_config, write_config
from sqlalchemy import create_engine, text

from faas import Executor, as_completed, ctx_function
from faas.errors import ContextInitError
from faas.warm_pool.gguf import CONVERSIONS_LOG, smollm2_gguf_path
from faas.warm_pool.loaders import CausalLM

EXAMPLE = ROOT / "examples" / "fact_verification"
sys.path.insert(0, str(EXAMPLE))
import scoring  # noqa: E402
from run import verify  # noqa: E402  (the example's own ctx_function)

CLAIMS = [json.loads(line) for line in (EXAMPLE / "claims.jsonl").read_text().splitlines()]
# Two full batches of the batched ``verify``: each worker's first batch takes one, so both load the model.
ROWS = CLAIMS[:2 * verify.batch_size]


@pytest.fixture(scope="session")
def llm(tmp_path_factory):
    """A 2-worker endpoint with an empty model cache; the example's function run
    twice on the same claims, one claim per invocation."""
    home, cache = tmp_path_factory.mktemp("faas-home"), tmp_path_factory.mktemp("model-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAAS_HOME", str(home))
        mp.setenv("FAAS_NODE_CACHE", str(cache))  # the daemon, and so its workers, inherit it
        write_config(home, "llm", local_config(workers=2))
        ep = RunningEndpoint(home, "llm")
        ep.start()
        try:
            with Executor(endpoint="llm") as ex:
                runs = [list(ex.map(verify, [r["claim"] for r in ROWS], [r["evidence"] for r in ROWS]))
                        for _ in range(2)]
            yield {"home": home, "cache": cache, "runs": runs, "store": ep.path / "store.db",
                   "env": {"FAAS_HOME": str(home), "FAAS_NODE_CACHE": str(cache)}}
        finally:
            ep.stop()


def _rows(store: Path, table: str) -> list[dict]:
    engine = create_engine(f"sqlite:///{store}")
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(text(f"SELECT * FROM {table}"))]
    engine.dispose()
    return rows


def test_labels_come_from_the_model_deterministically(llm):
    first, second = llm["runs"]
    assert len(first) == len(ROWS)
    assert set(first) <= {"SUPPORTS", "REFUTES"}
    assert first == second


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2's own tokenizer and chat template, from the bundled GGUF."""
    return _smollm2_tokenizer()


def test_prompts_tokenised_after_the_shared_prefix_match_whole_prompts(smollm2_tokenizer):
    """scoring.encode_prompts tokenises the worked examples once: for every claim, the
    ids and mask must be those of tokenising each whole prompt with left padding."""
    tokenizer = smollm2_tokenizer
    rows = [*CLAIMS, scoring.CONTENT_FREE]
    whole = tokenizer([scoring.build_prompt(tokenizer, r["claim"], r["evidence"]) for r in rows], padding=True,
                      padding_side="left", add_special_tokens=False, return_tensors="pt")
    fast = scoring.encode_prompts(tokenizer, rows)
    assert len(scoring.shared_prefix(tokenizer)[1]) > 100  # the examples: most of each prompt
    assert fast["input_ids"].tolist() == whole["input_ids"].tolist()
    assert fast["attention_mask"].tolist() == whole["attention_mask"].tolist()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_prefix_cached_scores_match_whole_prompts_on_all_claims(device, request):
    """scoring.Verifier (the worked examples' keys and values computed once, each row's own
    tokens run against them, right-padded, in batches of 1-64) against whole prompts, on all
    360 claims in fp32: the same scores and labels. The model is a tiny random Llama on
    SmolLM2's tokenizer and chat template, its weights large enough that a token's position or
    presence moves the scores by whole units (tried: positions off by one, left padding at the
    prefix's positions, a prefix one token short, the last column read for every row, and the
    calibration left out each fail here). On a GPU node without the SmolLM2 GGUF, gpu.py's
    word-level tokenizer stands in."""
    from transformers import LlamaConfig, LlamaForCausalLM

    try:
        tokenizer = request.getfixturevalue("smollm2_tokenizer")
    except FileNotFoundError:
        if device == "cpu":
            raise
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from gpu import synthetic_tokenizer

        tokenizer = synthetic_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=128, vocab_size=len(tokenizer),
                                         tie_word_embeddings=True, initializer_range=0.2))
    model = model.to(device).eval()
    verifier = scoring.Verifier.from_lm(CausalLM(model, tokenizer, torch.device(device)))
    chunks, start = [], 0
    for size in itertools.cycle((1, 7, 64)):
        if start >= len(CLAIMS):
            break
        chunks.append(CLAIMS[start:start + size])
        start += size

    def table(scores):
        return torch.tensor([[row[label] for label in scoring.ANSWERS] for row in scores])

    whole = table([s for chunk in chunks for s in scoring.batch_label_scores(model, tokenizer, chunk)])
    cached = table([s for chunk in chunks for s in verifier.scores(chunk)])
    assert whole.std(dim=0).min() > 0.5  # the claims' scores differ widely: a wrong token would show
    torch.testing.assert_close(cached, whole, rtol=0, atol=1e-4 if device == "cpu" else 1e-3)
    assert (cached.argmax(dim=1) == whole.argmax(dim=1)).all()


@pytest.mark.parametrize("options, expected", [({}, "float32"), ({"dtype": "bfloat16"}, "bfloat16"),
                                               ({"dtype": None}, None)])
def test_example_loads_fp32_unless_told(monkeypatch, options, expected):
    """The example's context asks the loader for fp32 on any device (in bf16 its labels move with the
    batch: benchmarks/label_stability.py); a dtype given, or None (the loader's choice), goes through."""
    from faas.warm_pool import loaders

    asked = []

    def loader(checkpoint, **kwargs):
        asked.append(kwargs)
        raise LookupError("stop here: only the arguments matter")

    monkeypatch.setattr(loaders, "load_causal_lm", loader)
    with pytest.raises(LookupError):
        scoring.load_verifier("some/checkpoint", device="cuda", **options)
    assert asked == [{"device": "cuda", "dtype": expected}]


def test_real_model_prefix_cached_scores_match_whole_prompts(llm):
    """The same on SmolLM2-135M itself (fp32, from the session's converted model cache), a few claims."""
    verifier = scoring.load_verifier(cache_dir=str(llm["cache"]), dtype="float32")
    rows = CLAIMS[::90]
    whole = scoring.batch_label_scores(verifier.model, verifier.tokenizer, rows)
    cached = verifier.scores(rows)
    for w, c in zip(whole, cached):
        assert c == pytest.approx(w, abs=2e-4)
    assert scoring.score_batch(verifier, rows) == [max(w, key=w.get) for w in whole]


def test_two_workers_share_one_conversion_of_the_model(llm):
    inits = [i for i in _rows(llm["store"], "context_inits") if "load_verifier" in _description(llm, i)]
    assert all(i["error"] is None for i in inits)
    assert len({i["worker_id"] for i in inits}) == 2, "both workers should have loaded the model"
    lines = (llm["cache"] / "converted" / CONVERSIONS_LOG).read_text().splitlines()
    assert len(lines) == 1, lines


def _description(llm, init_row) -> str:
    return {c["key"]: c["description"] for c in _rows(llm["store"], "contexts")}[init_row["context_key"]]


def test_example_script_prints_accuracy_throughput_and_cold_warm_per_worker(llm):
    proc = subprocess.run([sys.executable, str(EXAMPLE / "run.py"), "--endpoint", "llm", "--rows", "4",
                           "--batch", "2"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **llm["env"]})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "accuracy" in proc.stdout and "claims/s" in proc.stdout and "invocations/s" in proc.stdout
    workers = [line.split() for line in proc.stdout.splitlines() if line.startswith(socket.gethostname() + ":")]
    assert workers and sum(int(w[1]) for w in workers) == 4  # four invocations of one claim


# -- report ------------------------------------------------------------------------------------

def _load_log(path):
    return {"log": path}


def _flaky(ctx, key, fail_times):
    """Fails the first ``fail_times`` runs of ``key`` (runs are counted in a file)."""
    with open(ctx["log"], "a") as f:
        f.write(f"{key}\n")
    if open(ctx["log"]).read().split().count(key) <= fail_times:
        raise RuntimeError(f"{key} fails")
    return key


def _broken_loader():
    raise OSError("weights file is corrupt")


def _expected(store: Path, since: float | None) -> dict[str, dict[str, dict]]:
    """Per worker and per context figures computed straight from the store's rows."""
    descriptions = {c["key"]: c["description"] for c in _rows(store, "contexts")}
    calls = [r for r in _rows(store, "invocations") if since is None or r["submitted_at"] >= since]
    all_inits = _rows(store, "context_inits")
    inits = [i for i in all_inits if since is None or i["started_at"] >= since]
    out: dict[str, dict[str, dict]] = {"worker": {}, "context": {}}

    def slot(kind, name):
        return out[kind].setdefault(name, dict(inits=0, init_s=0.0, failed_inits=0, invocations=0,
                                               durations=[], cold=[], failed=0, retried=0))

    for c in calls:
        ran = bool(c["worker_id"]) and c["started_at"] is not None
        cold = ran and any(i["worker_id"] == c["worker_id"] and i["context_key"] == c["context_key"]
                           and c["started_at"] <= i["started_at"] <= c["finished_at"]
                           for i in all_inits)
        for f in [slot("context", descriptions[c["context_key"]])] + ([slot("worker", c["worker_id"])] if ran else []):
            f["invocations"] += 1
            f["failed"] += c["state"] == "failed"
            f["retried"] += c["attempts"] > 1
            if ran:
                (f["cold"] if cold else f["durations"]).append(c["finished_at"] - c["started_at"])
    for i in inits:
        for f in (slot("context", descriptions[i["context_key"]]), slot("worker", i["worker_id"])):
            f["failed_inits" if i["error"] else "inits"] += 1
            f["init_s"] += i["seconds"]
    return out


def _mean(values):
    return sum(values) / len(values) if values else None


def _parse_tables(report: str) -> dict[str, dict[str, list[str]]]:
    """{"worker"|"context": {name: [11 column values]}} from the report text."""
    tables, current = {}, None
    for line in report.splitlines():
        first = line.split(maxsplit=1)[0] if line.strip() else ""
        if first in ("worker", "context") and "invocations" in line:
            current = tables.setdefault(first, {})
        elif not line.strip():
            current = None
        elif current is not None:
            name, *values = line.rsplit(maxsplit=11)
            current[name] = values
    return tables


def _assert_report_matches_store(report: str, store: Path, since: float | None):
    expected = _expected(store, since)
    tables = _parse_tables(report)
    for kind in ("worker", "context"):
        assert set(tables.get(kind, {})) == set(expected[kind]), (kind, report)
        for name, e in expected[kind].items():
            inits, init_s, failed_inits, invocations, mean, cold, warm, failed, retried, _, _ = tables[kind][name]
            assert (int(inits), int(failed_inits), int(invocations), int(failed), int(retried)) == (
                e["inits"], e["failed_inits"], e["invocations"], e["failed"], e["retried"]), (kind, name)
            assert float(init_s) == pytest.approx(e["init_s"], abs=0.006)
            for shown, values in ((mean, e["durations"] + e["cold"]), (cold, e["cold"]), (warm, e["durations"])):
                value = _mean(values)
                assert shown == "-" if value is None else float(shown) == pytest.approx(value, abs=6e-4)


def _report(llm, *args) -> str:
    proc = subprocess.run([sys.executable, "-m", "faas.endpoint.cli", "report", "llm", *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **llm["env"]})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_report_figures_match_the_store(llm, tmp_path, monkeypatch):
    monkeypatch.setenv("FAAS_HOME", llm["env"]["FAAS_HOME"])
    between = time.time()
    log = str(tmp_path / "runs.log")
    retried = ctx_function(model=_load_log, path=log, retries=1)(_flaky)
    broken = ctx_function(model=_broken_loader)(lambda ctx, x: x)
    with Executor(endpoint="llm") as ex:
        assert list(ex.map(retried, ["a", "b", "c"], [0, 1, 0])) == ["a", "b", "c"]
        with pytest.raises(RuntimeError, match="d fails"):
            ex.submit(retried, "d", 5).result(timeout=60)
        with pytest.raises(ContextInitError):
            ex.submit(broken, 1).result(timeout=60)

    everything = _report(llm)
    _assert_report_matches_store(everything, llm["store"], None)
    tables = _parse_tables(everything)
    verifier = next(v for k, v in tables["context"].items() if "load_verifier" in k)
    # both workers loaded it (a worker that joins while work waits preloads it, before its first call: then no
    # call of it is cold), and a load costs more than a warm call
    assert int(verifier[0]) >= 2 and float(verifier[1]) / int(verifier[0]) > float(verifier[6])
    assert verifier[5] == "-" or float(verifier[5]) > float(verifier[6])  # a cold call, if any, is slower
    flaky = next(v for k, v in tables["context"].items() if "runs.log" in k)
    assert flaky[7:9] == ["1", "2"]  # d failed; b and d were retried
    assert int(next(v for k, v in tables["context"].items() if "_broken_loader" in k)[2]) >= 1

    iso = datetime.fromtimestamp(between).isoformat()
    recent = _report(llm, "--since", iso)
    _assert_report_matches_store(recent, llm["store"], between)
    assert not any("load_verifier" in name for name in _parse_tables(recent)["context"])
    assert "invocations: 0 " in _report(llm, "--since", "2999-01-01T00:00")
    assert "invocations: 0 " not in _report(llm, "--since", "1h")
    bad = cli("report", "llm", "--since", "yesterday", check=False)
    assert bad.returncode != 0 and "neither a duration" in bad.stderr


def test_report_plots_a_timeline_png(llm, tmp_path):
    png = tmp_path / "timeline.png"
    out = _report(llm, "--plot", str(png))
    assert str(png) in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert (width, height) == (900, 550)
    assert png.stat().st_size > 10_000  # axes, steps and init spans, not a blank canvas


# -- progress ----------------------------------------------------------------------------------

@ctx_function(model=_load_log, path="unused")
def _double(ctx, x):
    return 2 * x


def test_progress_bars_show_counts_when_asked(llm, capsys, monkeypatch):
    monkeypatch.setenv("FAAS_HOME", llm["env"]["FAAS_HOME"])
    with Executor(endpoint="llm") as ex:
        assert list(ex.map(_double, range(10), progress=True)) == [2 * x for x in range(10)]
        assert "10/10" in capsys.readouterr().err

        futures = [ex.submit(_double, x) for x in range(7)]
        assert sorted(f.result() for f in as_completed(futures, progress=True)) == [2 * x for x in range(7)]
        assert "7/7" in capsys.readouterr().err

        assert list(ex.map(_double, range(5))) == [2 * x for x in range(5)]  # stderr is not a terminal
        assert list(as_completed([ex.submit(_double, 1)], progress=False))[0].result() == 2
        assert capsys.readouterr().err == ""
