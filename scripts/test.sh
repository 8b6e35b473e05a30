#!/usr/bin/env bash
# Installs faas and its test services (PostgreSQL, sshd, Slurm from Debian's
# packages), then runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
bash .ci/services.sh install
exec .venv/bin/python -m pytest "$@"
