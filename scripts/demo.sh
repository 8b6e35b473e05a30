#!/usr/bin/env bash
# Installs faas into .venv and runs the demo on an embedded local endpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh llm
exec .venv/bin/python examples/quickstart.py "$@"
