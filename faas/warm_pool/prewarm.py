"""Pay a worker's fixed start-up costs before its first batch arrives.

A cold context on a GPU worker costs more than reading weights: importing torch
and transformers (seconds), creating the CUDA context and cuBLAS handle (a
second or more). A worker that does these when it starts, while the endpoint
still routes work elsewhere, gets its first batch with only the weights left
to read. The timings it returns say where a cold start goes.

By default only a worker that has a GPU prewarms: on a CPU worker whose
functions may never touch torch, importing it would cost seconds at every
(re)start and hundreds of MB per process for nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import sys
import time
from typing import Any

log = logging.getLogger(__name__)
# transformers loads its model base classes (modeling_utils, ~1.4 s) only at the first model load
DEFAULT_MODULES = ("torch", "transformers", "transformers.modeling_utils")


def prewarm(modules: list[str] | None = None) -> dict[str, Any]:
    """Import ``modules`` (None: those of ``DEFAULT_MODULES`` that are
    installed, on a worker with a GPU; []: nothing at all), then initialise
    CUDA if torch sees a GPU.

    Returns seconds per step: ``{"imports": {module: s}, "cuda": s or None (no
    GPU, or torch not imported), "total": s, "errors": {step: message}}``.
    Never raises: a worker that cannot prewarm still serves, and its first
    batch reports the real error.
    """
    t0 = time.perf_counter()
    report: dict[str, Any] = {"imports": {}, "cuda": None, "errors": {}}
    if modules is None:
        modules = [m for m in DEFAULT_MODULES if _installed(m.partition(".")[0])] if has_gpu() else []  # no import
    for name in modules:
        t = time.perf_counter()
        try:
            importlib.import_module(name)
        except (Exception, SystemExit) as e:  # a module may even call sys.exit when it lacks something
            report["errors"][name] = f"{type(e).__name__}: {e}"
            log.warning("prewarm: cannot import %s: %s", name, report["errors"][name])
            continue
        report["imports"][name] = time.perf_counter() - t
    if modules and "torch" in sys.modules:
        t = time.perf_counter()
        try:
            if _init_cuda(sys.modules["torch"]):
                report["cuda"] = time.perf_counter() - t
        except Exception as e:
            report["errors"]["cuda"] = f"{type(e).__name__}: {e}"
            log.warning("prewarm: CUDA initialisation failed: %s", report["errors"]["cuda"])
    report["total"] = time.perf_counter() - t0
    return report


def has_gpu() -> bool:
    """Whether this process may use a GPU, told without importing torch: Parsl
    pins a GPU worker with CUDA_VISIBLE_DEVICES; where that is unset, a node
    with the NVIDIA driver's nvidia-smi has GPUs for every process."""
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    if devices is not None:
        first = devices.split(",")[0].strip()
        return bool(first) and not first.startswith("-")
    return shutil.which("nvidia-smi") is not None


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _init_cuda(torch) -> bool:
    """The CUDA context, the caching allocator and a cuBLAS handle: what a first
    forward pass would otherwise create. False where there is no GPU."""
    if not torch.cuda.is_available():
        return False
    torch.cuda.init()
    x = torch.ones(8, 8, device="cuda")
    (x @ x).sum().item()
    torch.cuda.synchronize()
    return True
