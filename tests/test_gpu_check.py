"""scripts/gpu-check.sh as a GPU node without network runs it, here in its CPU
mode: a wheelhouse built by scripts/build-wheelhouse.sh for this Python,
installed with --no-index into an empty folder, and benchmarks/gpu.py and the
tests marked gpu run on what it installed."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT


def test_gpu_check_runs_from_a_wheelhouse_for_this_python(tmp_path):
    wheels, figures = tmp_path / "wheels", tmp_path / "figures.txt"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("PYTHONPATH", None)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    build = subprocess.run(["bash", ROOT / "scripts" / "build-wheelhouse.sh", wheels, version], env=env,
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    assert f"for CPython {version}" in build.stdout
    names = {w.name.split("-")[0].lower() for w in wheels.glob("*.whl")}
    assert {"faas", "parsl", "pyzmq", "sqlalchemy", "pydantic", "gguf"} <= names
    assert not names & {"torch", "transformers", "numpy"}  # the GPU node's own

    check = subprocess.run(["bash", ROOT / "scripts" / "gpu-check.sh", wheels, figures, "--claims", "16",
                            "--rounds", "1", "--repeats", "1", "--no-parsl"],
                           env=env, capture_output=True, text=True, timeout=600)
    out = figures.read_text()
    assert check.returncode == 0, out[-5000:] + check.stderr[-3000:]
    site = re.search(r"into (\S+/faas-site\.\w+)\n", out).group(1)
    assert f"faas from {site}/faas/__init__.py" in out  # the wheel's faas, installed into the empty folder
    assert "benchmarks/gpu.py --cpu-smoke --claims 16" in out  # no CUDA here
    for section in ("(a) forward time by batch size", "(b) claims/s", "(c) cold start"):
        assert section in out
    assert "faas's efficiency" in out  # (b) ran, not skipped
    assert "tests marked gpu" in out and "needs a CUDA GPU" in out
    assert "FAILED" not in out
    assert not os.path.exists(site)  # removed at the end
