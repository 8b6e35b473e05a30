"""Zero-shot-style fact verification by next-token scoring with a small chat model.

Rather than generating an answer and parsing it, read the model's distribution
for the first token of the assistant's reply and compare "Yes" against "No":
one forward pass per batch, no sampling, and a score usable for thresholds.

SmolLM2-135M answers "No" to almost every such question when asked cold, so the
prompt carries four worked examples as earlier chat turns, and the scores are
calibrated against a content-free question (Zhao et al., 2021, "Calibrate
Before Use"): each answer's log-probability minus its log-probability when
claim and evidence are "N/A". That removes the model's prior for one answer.

The worked examples are three quarters of every prompt, so the context a worker
keeps (:class:`Verifier`, loaded by :func:`load_verifier`) holds their keys and
values, computed once, and the content-free question's log-probabilities; each
call then runs only the claims' own tokens. :func:`batch_label_scores` runs
whole prompts: the reference the cached scores are tested against.

    python examples/fact_verification/scoring.py --limit 40 [--dtype bfloat16] [--compare]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

QUESTION = "Does the evidence support the claim? Answer Yes or No."
ANSWERS = {"SUPPORTS": "Yes", "REFUTES": "No"}
# Demonstrations shown before every question; none of them is in claims.jsonl.
EXAMPLES = [
    ("Honey is a sweet food made by bees.", "Bees make honey.", "Yes"),
    ("The river is 300 kilometres long.", "The river is 30 kilometres long.", "No"),
    ("Oslo is the capital of Norway.", "Oslo is the capital of Sweden.", "No"),
    ("Cats are mammals that usually have four legs.", "Cats usually have four legs.", "Yes"),
]
CONTENT_FREE = {"claim": "N/A", "evidence": "N/A"}


def _question(claim: str, evidence: str) -> dict:
    return {"role": "user", "content": f"Evidence: {evidence}\nClaim: {claim}\n{QUESTION}"}


def build_prompt(tokenizer, claim: str, evidence: str) -> str:
    """The chat-templated prompt, ending where the assistant's reply begins."""
    messages = []
    for example_evidence, example_claim, answer in EXAMPLES:
        messages += [_question(example_claim, example_evidence), {"role": "assistant", "content": answer}]
    messages.append(_question(claim, evidence))
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def shared_prefix(tokenizer) -> tuple[str, list[int]]:
    """The start every prompt shares (the worked examples), as text and as
    token ids, tokenised once: it is most of each prompt. It is cut right after
    a special token, where a tokenizer splits the text before anything else, so
    a prompt's ids are the prefix's followed by those of the rest.

    Kept on the tokenizer, not in this module: workers get this module's code
    by value (run.py), and a cache here would travel with it."""
    cached = getattr(tokenizer, "_fact_verification_prefix", None)
    if cached is None:
        common = os.path.commonprefix([build_prompt(tokenizer, "A", "A"), build_prompt(tokenizer, "B", "B")])
        cut = max((common.rfind(t) + len(t) for t in tokenizer.all_special_tokens if t in common), default=0)
        prefix = common[:cut]
        cached = prefix, tokenizer(prefix, add_special_tokens=False)["input_ids"]
        tokenizer._fact_verification_prefix = cached
    return cached


def suffix_ids(tokenizer, rows) -> list[list[int]]:
    """The token ids of each row's prompt after the shared prefix."""
    prefix, _ = shared_prefix(tokenizer)
    rests = []
    for row in rows:
        prompt = build_prompt(tokenizer, row["claim"], row["evidence"])
        if not prompt.startswith(prefix):
            raise ValueError("this chat template renders the worked examples differently for each claim")
        rests.append(prompt[len(prefix):])
    return tokenizer(rests, add_special_tokens=False)["input_ids"]


def encode_prompts(tokenizer, rows) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` of the rows' whole prompts,
    tokenising only what follows the shared prefix."""
    prefix_ids = shared_prefix(tokenizer)[1]
    ids = [prefix_ids + rest for rest in suffix_ids(tokenizer, rows)]
    width = max(map(len, ids))
    return {"input_ids": torch.tensor([[tokenizer.pad_token_id] * (width - len(i)) + i for i in ids]),
            "attention_mask": torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])}


def answer_token_ids(tokenizer) -> dict[str, int]:
    """First token of each answer word, keyed by label.

    The reply starts right after "assistant\\n", so the answer carries no
    leading space: "Yes" and " Yes" are different tokens in SmolLM2's vocabulary.
    """
    return {label: tokenizer.encode(word, add_special_tokens=False)[0] for label, word in ANSWERS.items()}


def answer_logprobs(model, hidden: torch.Tensor, answers: list[int]) -> torch.Tensor:
    """Log-probabilities (on the CPU) of the ``answers`` token ids after each row
    of ``hidden`` (the model's last hidden states, one row per prompt), the
    output layer computed in fp32: in bf16 a logit of ~20 is rounded to a step
    of 1/8, more than the calibrated margin of many claims (SmolLM2 in bf16
    labelled 52 of the 360 claims otherwise than in fp32 that way)."""
    head = model.get_output_embeddings()
    logits = torch.nn.functional.linear(hidden.float(), head.weight.float(),
                                        None if head.bias is None else head.bias.float())
    return torch.log_softmax(logits, dim=-1)[:, answers].cpu()


def whole_prompt_logprobs(model, batch: dict[str, torch.Tensor], answers: list[int]) -> torch.Tensor:
    """:func:`answer_logprobs` after each prompt of an :func:`encode_prompts`
    batch (on the model's device), in one forward pass. Left padding puts each
    prompt's last token at the final position; position ids count from each
    prompt's first real token, so a padded row scores as it would alone."""
    position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        hidden = model.base_model(**batch, position_ids=position_ids).last_hidden_state[:, -1]
        return answer_logprobs(model, hidden, answers)


def batch_label_scores(model, tokenizer, rows, calibrate: bool = True) -> list[dict[str, float]]:
    """Per row, the log-probability of each label's answer token, running whole
    prompts in one forward pass (the reference for :class:`Verifier`).

    With ``calibrate`` the content-free question rides in the same batch and its
    log-probabilities are subtracted.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch_rows = [*rows, CONTENT_FREE] if calibrate else list(rows)
    batch = {k: v.to(model.device) for k, v in encode_prompts(tokenizer, batch_rows).items()}
    answers = answer_token_ids(tokenizer)
    logprobs = whole_prompt_logprobs(model, batch, list(answers.values()))
    if calibrate:
        logprobs = logprobs[:-1] - logprobs[-1]
    return [dict(zip(answers, map(float, row))) for row in logprobs]


@dataclass
class Verifier:
    """The warm context: a causal LM (``model``, ``tokenizer``, ``device``, as
    faas' default context) with the shared prefix already run through it.

    ``prefix`` holds each layer's keys and values of the prefix (a batch of
    one), ``calibration`` the content-free question's answer log-probabilities:
    both computed once, when the context loads, and never written afterwards
    (each call builds its own cache around them).
    """

    model: Any
    tokenizer: Any
    device: Any
    prefix: list[tuple[torch.Tensor, torch.Tensor]]
    answers: dict[str, int]
    cache_arg: str  # the forward's cache argument: "past_key_values", or "cache" from transformers 5.25
    calibration: torch.Tensor | None = None

    @classmethod
    def from_lm(cls, lm) -> Verifier:
        """Runs ``lm`` (a model, tokenizer and device) over the shared prefix once."""
        from transformers import DynamicCache

        tokenizer, model = lm.tokenizer, lm.model
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        params = inspect.signature(model.base_model.forward).parameters
        cache_arg = "cache" if "cache" in params else "past_key_values"
        cache = DynamicCache()
        with torch.inference_mode():
            model.base_model(input_ids=torch.tensor([shared_prefix(tokenizer)[1]], device=lm.device),
                             use_cache=True, **{cache_arg: cache})
        verifier = cls(model, tokenizer, lm.device, [(layer.keys, layer.values) for layer in cache.layers],
                       answer_token_ids(tokenizer), cache_arg)
        verifier.calibration = verifier.forward(verifier.encode([CONTENT_FREE]))[0]
        return verifier

    @property
    def prefix_length(self) -> int:
        return self.prefix[0][0].shape[-2]

    def encode(self, rows) -> dict[str, torch.Tensor]:
        """The rows' tokens after the prefix, padded on the right: each row's
        tokens follow the prefix at their true positions, and the padding after
        them is never attended to by a real token (causal attention)."""
        ids = suffix_ids(self.tokenizer, rows)
        lengths = torch.tensor([len(i) for i in ids])
        width = int(lengths.max())
        suffix_mask = torch.arange(width) < lengths[:, None]
        return {"input_ids": torch.tensor([i + [self.tokenizer.pad_token_id] * (width - len(i)) for i in ids]),
                "attention_mask": torch.cat([torch.ones(len(ids), self.prefix_length, dtype=torch.long),
                                             suffix_mask.long()], dim=1),
                "position_ids": (self.prefix_length + torch.arange(width)).expand(len(ids), width),
                "lengths": lengths}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Answer-token log-probabilities (rows x labels, on the CPU, not
        calibrated) of a batch from :meth:`encode`, in one forward pass over
        its tokens against the prefix's keys and values."""
        from transformers import DynamicCache

        batch = {k: v.to(self.device) for k, v in batch.items()}
        lengths = batch.pop("lengths")
        size = len(lengths)
        with torch.inference_mode():
            cache = DynamicCache()  # a new one per call: the forward appends the rows' keys to it
            for layer, (keys, values) in enumerate(self.prefix):
                cache.update(keys.expand(size, -1, -1, -1), values.expand(size, -1, -1, -1), layer)
            hidden = self.model.base_model(**batch, use_cache=True, **{self.cache_arg: cache}).last_hidden_state
            last = hidden[torch.arange(size, device=hidden.device), lengths - 1]
            return answer_logprobs(self.model, last, list(self.answers.values()))

    def scores(self, rows, calibrate: bool = True) -> list[dict[str, float]]:
        """As :func:`batch_label_scores`, running only the rows' own tokens."""
        logprobs = self.forward(self.encode(rows))
        if calibrate:
            logprobs = logprobs - self.calibration
        return [dict(zip(self.answers, map(float, row))) for row in logprobs]


def load_verifier(checkpoint: str | None = None, dtype: str | None = "float32", **options) -> Verifier:
    """The example's context: SmolLM2-135M-Instruct (``load_smollm2``), or the
    causal LM in ``checkpoint`` (``load_causal_lm``), made a :class:`Verifier`.
    ``options`` go to the loader (``device``, ...).

    fp32 also on a GPU (None: the loader's choice, bf16 there): in bf16 this
    model's labels depend on the batch a claim is scored in (whole prompts at
    batch 1, 8 and 64 disagree on 31-38 of the 360 claims:
    ``benchmarks/label_stability.py``), and at the batch sizes a worker merges
    (up to 64) fp32 was as fast as bf16 on an H200."""
    from faas.warm_pool.loaders import load_causal_lm, load_smollm2

    options["dtype"] = dtype
    return Verifier.from_lm(load_smollm2(**options) if checkpoint is None else load_causal_lm(checkpoint, **options))


def label_scores(verifier: Verifier, claim: str, evidence: str) -> dict[str, float]:
    """Calibrated ``{"SUPPORTS": log p(Yes), "REFUTES": log p(No)}`` for one claim."""
    return verifier.scores([{"claim": claim, "evidence": evidence}])[0]


def score_batch(verifier: Verifier, rows, calibrate: bool = True) -> list[str]:
    """The higher-scoring label for each ``{"claim", "evidence"}`` row."""
    return [max(row, key=row.get) for row in verifier.scores(rows, calibrate=calibrate)]


def main() -> None:
    """Accuracy of the bundled SmolLM2-135M on the first rows of claims.jsonl;
    with ``--compare``, also the labels and scores of whole prompts beside the cached ones."""
    from faas.warm_pool.loaders import load_smollm2

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--data", type=Path, default=Path(__file__).with_name("claims.jsonl"))
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-calibrate", dest="calibrate", action="store_false")
    parser.add_argument("--dtype", default="float32", help="e.g. float32 (the example's), bfloat16")
    parser.add_argument("--compare", nargs="?", const="same", metavar="DTYPE",
                        help="score whole prompts too (in DTYPE, default --dtype) and count the labels that differ")
    args = parser.parse_args()

    rows = [json.loads(line) for line in args.data.read_text().splitlines()][: args.limit]
    chunks = [rows[start:start + args.batch_size] for start in range(0, len(rows), args.batch_size)]
    verifier = load_verifier(dtype=args.dtype)
    t = time.perf_counter()
    cached = [s for chunk in chunks for s in verifier.scores(chunk, args.calibrate)]
    seconds = time.perf_counter() - t
    predicted = [max(s, key=s.get) for s in cached]
    correct = sum(p == row["label"] for p, row in zip(predicted, rows))
    supports = predicted.count("SUPPORTS")
    print(f"accuracy {correct}/{len(rows)} = {correct / len(rows):.1%}; predicted SUPPORTS {supports}/{len(rows)}; "
          f"{len(rows) / seconds:.1f} claims/s")
    if args.compare:
        lm = verifier if args.compare == "same" else load_smollm2(dtype=args.compare)
        t = time.perf_counter()
        whole = [s for chunk in chunks for s in batch_label_scores(lm.model, lm.tokenizer, chunk, args.calibrate)]
        seconds = time.perf_counter() - t
        differ = sum(max(w, key=w.get) != p for w, p in zip(whole, predicted))
        gap = max(abs(w[label] - c[label]) for w, c in zip(whole, cached) for label in w)
        print(f"whole prompts ({args.compare if args.compare != 'same' else args.dtype}): "
              f"{differ}/{len(rows)} labels differ, scores differ by at most {gap:.2e}; "
              f"{len(rows) / seconds:.1f} claims/s")


if __name__ == "__main__":
    main()
