"""The GPUs of this node, for the default worker layout (one worker per GPU).

In order, the first source that exists decides:

1. ``CUDA_VISIBLE_DEVICES``, ids as given (indices, ``GPU-…`` or ``MIG-…``
   UUIDs): a scheduler that set it has given this job exactly those GPUs. Empty
   or ``-1`` means none; as in CUDA, the list ends at the first negative or
   empty entry.
2. ``nvidia-smi -L``: its ``GPU N:`` lines, ids ``N``.
3. torch, only if this process has imported it already: importing torch to
   count GPUs would cost seconds on every ``configure`` and embedded start,
   and a node whose driver has no ``nvidia-smi`` is rare enough.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys

log = logging.getLogger(__name__)
_SMI_GPU = re.compile(r"^GPU (\d+):", re.MULTILINE)


def visible_gpus() -> list[str]:
    """Ids of the GPUs workers on this node may use, in the form Parsl's
    ``available_accelerators`` (and so each worker's CUDA_VISIBLE_DEVICES) takes."""
    if (env := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return parse_visible_devices(env)
    if (smi := shutil.which("nvidia-smi")) is not None:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("nvidia-smi -L failed (%s); assuming no GPU", e)
            return []
        return _SMI_GPU.findall(out.stdout) if out.returncode == 0 else []
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return [str(i) for i in range(torch.cuda.device_count())]
    return []


def parse_visible_devices(value: str) -> list[str]:
    ids = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        ids.append(entry)
    return ids
