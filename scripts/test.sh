#!/usr/bin/env bash
# Installs faas and its test services (PostgreSQL, sshd, Slurm and Chromium from
# Debian's packages), then lints with ruff, builds the documentation site into
# site/ with strict checking (a broken link or reference fails; --quiet would
# hide the warnings strict counts) and runs the test suite. The Globus Compute
# tests run afterwards in .venv-globus: globus-compute-endpoint pins click<8.4,
# which the llm extra's huggingface_hub outgrew, so the two cannot share a
# virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
bash .ci/services.sh install
.venv/bin/python -m ruff check faas tests benchmarks examples
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict
.venv/bin/python -m pytest "$@"
bash scripts/install.sh globus-test .venv-globus
exec .venv-globus/bin/python -m pytest -q tests/test_globus.py
