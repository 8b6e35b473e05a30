"""Model loaders that turn a model name into a ready context."""

from __future__ import annotations

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


def load_causal_lm(model: str, device: str | None = None, dtype: str | None = None, **kwargs) -> CausalLM:
    """Load a Hugging Face model id or local folder with transformers.

    On a GPU worker Parsl's ``available_accelerators`` sets CUDA_VISIBLE_DEVICES,
    so ``cuda`` is the worker's own GPU.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = torch.device(device) if device else default_device()
    tokenizer = AutoTokenizer.from_pretrained(model, **kwargs)
    if dtype:
        kwargs["dtype"] = getattr(torch, dtype)
    lm = AutoModelForCausalLM.from_pretrained(model, **kwargs)
    lm.to(dev).eval()
    return CausalLM(model=lm, tokenizer=tokenizer, device=dev)
