"""Zero-shot-style fact verification by next-token scoring with a small chat model.

Rather than generating an answer and parsing it, read the model's distribution
for the first token of the assistant's reply and compare "Yes" against "No":
one forward pass per batch, no sampling, and a score usable for thresholds.

SmolLM2-135M answers "No" to almost every such question when asked cold, so the
prompt carries four worked examples as earlier chat turns, and the scores are
calibrated against a content-free question (Zhao et al., 2021, "Calibrate
Before Use"): each answer's log-probability minus its log-probability when
claim and evidence are "N/A". That removes the model's prior for one answer.

    python examples/fact_verification/scoring.py --limit 40 [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

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


def encode_prompts(tokenizer, rows) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` of the rows' prompts,
    tokenising only what follows the shared prefix."""
    prefix, prefix_ids = shared_prefix(tokenizer)
    rests = []
    for row in rows:
        prompt = build_prompt(tokenizer, row["claim"], row["evidence"])
        if not prompt.startswith(prefix):
            raise ValueError("this chat template renders the worked examples differently for each claim")
        rests.append(prompt[len(prefix):])
    ids = [prefix_ids + rest for rest in tokenizer(rests, add_special_tokens=False)["input_ids"]]
    width = max(map(len, ids))
    return {"input_ids": torch.tensor([[tokenizer.pad_token_id] * (width - len(i)) + i for i in ids]),
            "attention_mask": torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])}


def answer_token_ids(tokenizer) -> dict[str, int]:
    """First token of each answer word, keyed by label.

    The reply starts right after "assistant\\n", so the answer carries no
    leading space: "Yes" and " Yes" are different tokens in SmolLM2's vocabulary.
    """
    return {label: tokenizer.encode(word, add_special_tokens=False)[0] for label, word in ANSWERS.items()}


def batch_label_scores(model, tokenizer, rows, calibrate: bool = True) -> list[dict[str, float]]:
    """Per row, the log-probability of each label's answer token, in one forward pass.

    With ``calibrate`` the content-free question rides in the same batch and its
    log-probabilities are subtracted. Left padding puts each prompt's last token
    at the final position; position ids count from each prompt's first real
    token, so a padded row scores as it would alone.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch_rows = [*rows, CONTENT_FREE] if calibrate else list(rows)
    batch = {k: v.to(model.device) for k, v in encode_prompts(tokenizer, batch_rows).items()}
    position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        logits = model(**batch, position_ids=position_ids, logits_to_keep=1).logits[:, -1, :]
    ids = list(answer_token_ids(tokenizer).items())
    logprobs = torch.log_softmax(logits.float(), dim=-1)[:, [token for _, token in ids]].cpu()
    if calibrate:
        logprobs = logprobs[:-1] - logprobs[-1]
    return [{label: float(value) for (label, _), value in zip(ids, row)} for row in logprobs]


def label_scores(model, tokenizer, claim: str, evidence: str) -> dict[str, float]:
    """Calibrated ``{"SUPPORTS": log p(Yes), "REFUTES": log p(No)}`` for one claim."""
    return batch_label_scores(model, tokenizer, [{"claim": claim, "evidence": evidence}])[0]


def score_batch(model, tokenizer, rows, calibrate: bool = True) -> list[str]:
    """The higher-scoring label for each ``{"claim", "evidence"}`` row."""
    scores = batch_label_scores(model, tokenizer, rows, calibrate=calibrate)
    return [max(row, key=row.get) for row in scores]


def main() -> None:
    """Accuracy of the bundled SmolLM2-135M on the first rows of claims.jsonl."""
    from faas.warm_pool.loaders import load_smollm2

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--data", type=Path, default=Path(__file__).with_name("claims.jsonl"))
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-calibrate", dest="calibrate", action="store_false")
    parser.add_argument("--dtype", default=None,
                        help="e.g. float32, bfloat16 (default: the loader's: bf16 on CUDA, float32 on CPU)")
    args = parser.parse_args()

    lm = load_smollm2(dtype=args.dtype)
    model, tokenizer = lm.model, lm.tokenizer

    rows = [json.loads(line) for line in args.data.read_text().splitlines()][: args.limit]
    predicted = []
    for start in range(0, len(rows), args.batch_size):
        predicted += score_batch(model, tokenizer, rows[start : start + args.batch_size], args.calibrate)
    correct = sum(p == row["label"] for p, row in zip(predicted, rows))
    supports = predicted.count("SUPPORTS")
    print(f"accuracy {correct}/{len(rows)} = {correct / len(rows):.1%}; predicted SUPPORTS {supports}/{len(rows)}")


if __name__ == "__main__":
    main()
