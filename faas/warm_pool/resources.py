"""What a worker process holds of its node, as the dashboard shows it: its
resident memory, the node's, and its GPU's when torch is in use there.

Sampled when the loop says ready and with each answer to the endpoint's
heartbeat: a few system calls, and nothing imported that the worker has not
imported already (torch is asked only once a context brought it in)."""

from __future__ import annotations

import os
import sys
from typing import Any

import psutil


def sample() -> dict[str, Any]:
    memory = psutil.virtual_memory()
    out: dict[str, Any] = {"rss": psutil.Process().memory_info().rss, "host_total": memory.total,
                           "host_available": memory.available,
                           "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            out["gpu"] = {"name": torch.cuda.get_device_name(), "allocated": int(torch.cuda.memory_allocated()),
                          "reserved": int(torch.cuda.memory_reserved()), "used": int(total - free),
                          "total": int(total)}
    except Exception as e:  # a broken driver must not stop the loop's heartbeat
        out["gpu_error"] = f"{type(e).__name__}: {e}"
    return out
