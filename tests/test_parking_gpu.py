"""The host-memory tier on a GPU: two SmolLM2-135M-shaped models (random
weights, bf16, loaded from disk by faas' default loader) that do not fit the
GPU together under the worker's memory budget, used in turn: after each has
loaded once, every switch wakes the other from host memory; the loader runs
exactly twice and the models' outputs are unchanged by the trip. Prints wake
time against load time (the target: waking at least 10x faster). Skipped
without CUDA; ``pytest -m gpu`` runs it on a GPU machine."""

from __future__ import annotations

import statistics
import time

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu  # skipped without CUDA (conftest)

SWITCHES = 8
MB = 2**20


def _save_model(folder, seed: int) -> None:
    """A SmolLM2-135M-shaped Llama with random weights, and a small tokenizer, as a checkpoint folder."""
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True)
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(99)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(folder)


def _logits(ctx, ids):
    with torch.no_grad():
        return ctx.model(torch.tensor([ids], device=ctx.device)).logits[0, -1].float().cpu()


def test_two_models_that_do_not_fit_together_wake_from_host_memory(tmp_path, monkeypatch):
    from faas.warm_pool.registry import WarmPool
    from faas.warm_pool.spec import ContextSpec

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # relative folders: loaded where they are (an absolute one is staged in the node cache)
    specs = []
    for name, seed in (("a", 1), ("b", 2)):
        _save_model(tmp_path / name, seed)
        specs.append(ContextSpec(f"./{name}"))
    torch.cuda.empty_cache()
    pool = WarmPool(memory_budget=400 * MB, host_budget=2048 * MB)  # each model is ~270 MB in bf16
    ids = list(range(1, 33))
    first: dict[str, torch.Tensor] = {}
    wakes, switches = [], []
    for i in range(2 + SWITCHES):
        spec = specs[i % 2]
        before = pool.stats[spec.key].wake_seconds if spec.key in pool.stats else 0.0
        t0 = time.perf_counter()
        out = pool.call(spec, _logits, (ids,), {})
        if i >= 2:
            switches.append(time.perf_counter() - t0)
            wakes.append(pool.stats[spec.key].wake_seconds - before)
        assert torch.equal(out, first.setdefault(spec.key, out)), "a woken model computes what it did before"
        other = specs[(i + 1) % 2].key
        if other in pool.stats:
            assert pool.snapshot()[other]["parked"], "the other model was parked to make room"
    stats = [pool.stats[s.key] for s in specs]
    assert [s.inits for s in stats] == [1, 1]  # the loader ran exactly twice
    assert [s.wakes for s in stats] == [SWITCHES // 2] * 2 and all(s.releases == 0 for s in stats)
    load = statistics.mean(s.init_seconds for s in stats)
    wake = statistics.median(wakes)
    print(f"\nload {load * 1000:.0f} ms (mean of 2), wake {wake * 1000:.1f} ms (median of {len(wakes)}, max "
          f"{max(wakes) * 1000:.1f}): waking is {load / wake:.0f}x faster than loading; a whole switch (park the "
          f"other, wake, one forward pass) {statistics.median(switches) * 1000:.1f} ms; footprint "
          f"{stats[0].footprint / MB:.0f} MB")
    pool.teardown()
