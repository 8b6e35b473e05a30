"""The default loader's choices: half precision, weights straight onto the GPU
and fused attention on CUDA (checked as arguments: no GPU here); fp32 on CPU,
checked by loading a tiny random Llama for real."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from faas.warm_pool.loaders import from_pretrained_kwargs, load_causal_lm

ON_GPU = {"device_map": "cuda", "low_cpu_mem_usage": True, "attn_implementation": "sdpa"}


@pytest.mark.parametrize("device, bf16, dtype, expected", [
    ("cuda", True, None, {**ON_GPU, "dtype": "bfloat16"}),
    ("cuda", False, None, {**ON_GPU, "dtype": "float16"}),
    ("cuda", True, "float32", {**ON_GPU, "dtype": "float32"}),
    ("cuda:1", True, None, {**ON_GPU, "device_map": "cuda:1", "dtype": "bfloat16"}),
    ("cpu", True, None, {}),
    ("cpu", False, "bfloat16", {"dtype": "bfloat16"}),
])
def test_load_arguments_by_device(device, bf16, dtype, expected):
    assert from_pretrained_kwargs(device, bf16, dtype) == expected


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    words = ["<unk>", "<pad>", "the", "claim", "is", "true", "Yes", "No"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>").save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(words), tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("dtype, expected", [(None, torch.float32), ("bfloat16", torch.bfloat16)])
def test_cpu_load_gives_logits(tiny_llama, dtype, expected):
    lm = load_causal_lm(tiny_llama, device="cpu", dtype=dtype)
    assert lm.device.type == "cpu" and next(lm.model.parameters()).dtype == expected
    assert not lm.model.training
    batch = lm.tokenizer(["the claim is true"], return_tensors="pt")
    with torch.inference_mode():
        logits = lm.model(**batch).logits
    assert logits.shape == (1, 4, 8) and torch.isfinite(logits.float()).all()
