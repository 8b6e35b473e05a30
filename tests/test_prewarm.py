"""prewarm on a CPU worker: imports timed per module, no CUDA step without a
GPU, and a module that cannot be imported is reported, never raised; a real
endpoint's workers prewarm what the config lists before they say ready."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT, local_config, status

from faas import Executor, ctx_function
from faas.warm_pool.prewarm import prewarm


def _default_prewarm(visible_devices: str) -> dict:
    """prewarm() in a fresh process that Parsl pinned to ``visible_devices``."""
    code = "import json; from faas.warm_pool.prewarm import prewarm; print(json.dumps(prewarm()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": visible_devices}).stdout
    return json.loads(out.splitlines()[-1])


def test_default_on_a_gpu_worker_imports_torch_and_transformers():
    report = _default_prewarm("0")
    assert set(report["imports"]) == {"torch", "transformers", "transformers.modeling_utils"} and not report["errors"]
    assert all(s > 0 for s in report["imports"].values())
    if not torch_sees_a_gpu():
        assert report["cuda"] is None
    assert report["total"] >= sum(report["imports"].values())


def test_default_on_a_cpu_worker_imports_nothing():
    report = _default_prewarm("")
    assert report["imports"] == {} and report["cuda"] is None and not report["errors"]


def torch_sees_a_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def test_failures_are_reported_not_raised(tmp_path, monkeypatch):
    (tmp_path / "broken_at_import.py").write_text("raise RuntimeError('needs a licence server')\n")
    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit('no display')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    report = prewarm(["json", "no_such_module_here", "broken_at_import", "exits_at_import"])
    assert list(report["imports"]) == ["json"] and report["imports"]["json"] >= 0
    assert report["errors"] == {"no_such_module_here": "ModuleNotFoundError: No module named 'no_such_module_here'",
                                "broken_at_import": "RuntimeError: needs a licence server",
                                "exits_at_import": "SystemExit: no display"}


def test_empty_list_disables_it():
    report = prewarm([])
    assert report["imports"] == {} and report["cuda"] is None and report["errors"] == {}


@ctx_function(model=dict)
def modules_loaded(ctx, names):
    return [name in sys.modules for name in names]


def test_endpoint_workers_prewarm_the_configured_modules(endpoint):
    endpoint("warm", local_config(workers=2, prewarm="[colorsys, no_such_module_here]"))
    with Executor(endpoint="warm") as ex:
        assert ex.submit(modules_loaded, ["colorsys"]).result(timeout=120) == [True]
    reports = status("warm")["live"]["worker_prewarm"]
    assert reports, "no worker reported its start-up"
    for report in reports.values():
        assert list(report["imports"]) == ["colorsys"]
        assert report["errors"] == {"no_such_module_here": "ModuleNotFoundError: No module named "
                                                           "'no_such_module_here'"}
        assert report["loop_started"] > 0 and report["ready_after"] >= report["total"]
