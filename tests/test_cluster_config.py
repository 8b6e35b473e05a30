"""Cluster configs: every kind of mistake is reported by `faas-endpoint start`
with its key and file, and nothing starts; the templates of `configure
--provider` and the example configs load as written."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import psutil
import pytest
import yaml
from click.testing import CliRunner
from conftest import ROOT, cli, write_config

from faas.endpoint.cli import main
from faas.endpoint.config import ConfigError, load_config
from faas.endpoint.templates import PROVIDERS

HAVE_KUBERNETES = importlib.util.find_spec("kubernetes") is not None
K8S_MISSING = "KubernetesProvider needs the 'kubernetes' package"


def slurm(provider: str = "", engine: str = "") -> str:
    return f"""\
engine:
  max_workers_per_node: 2
{engine}  provider:
    type: SlurmProvider
    partition: debug
{provider}"""


MISTAKES = {
    "unknown key": (slurm(engine="  max_worker_per_node: 2\n"),
                    "engine.max_worker_per_node: Extra inputs are not permitted"),
    "unknown provider parameter": (slurm("    partiton: gpu\n"),
                                   "engine.provider.partiton: SlurmProvider has no such parameter"),
    "provider parameter of a wrong type": (slurm("    nodes_per_block: two\n"),
                                           "engine.provider.nodes_per_block: expected int, got str 'two'"),
    "unquoted walltime": (slurm("    walltime: 1:30:00\n"),
                          "engine.provider.walltime: expected str, got int 5400 (quote it"),
    "required provider parameter missing": (
        "engine:\n  provider:\n    type: KubernetesProvider\n    namespace: faas\n",
        "engine.provider.image: required by KubernetesProvider"),
    "unknown provider type": (slurm().replace("SlurmProvider", "SlurmProvidr"),
                              "engine.provider.type: unknown provider type 'SlurmProvidr'; known: "),
    "unknown launcher type": (slurm("    launcher:\n      type: SrunLaunch\n"),
                              "engine.provider.launcher.type: unknown launcher type 'SrunLaunch'; known: "),
    "launcher parameter of a wrong type": (slurm("    launcher:\n      type: SrunLauncher\n      overrides: 5\n"),
                                           "engine.provider.launcher.overrides: expected str, got int 5"),
    "missing network interface": (slurm(engine="  address_interface: nope0\n"),
                                  "engine.address_interface: this machine has no interface 'nope0'"),
    "prewarm entry that is no module name": ("warm_pool:\n  prewarm: [torch, 'torch 2']\n",
                                             "warm_pool.prewarm: not module names: 'torch 2'"),
    "heartbeat threshold below its period": (slurm(engine="  heartbeat_period: 10\n  heartbeat_threshold: 5\n"),
                                             "engine: heartbeat_threshold (5) must exceed heartbeat_period (10)"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_start_reports_the_key_and_file_and_starts_nothing(faas_home, mistake):
    text, expected = MISTAKES[mistake]
    name = f"bad{list(MISTAKES).index(mistake)}"  # short: the endpoint's socket path has a length limit
    write_config(faas_home, name, text)
    proc = cli("start", name, check=False)
    assert proc.returncode != 0
    assert str(faas_home / "endpoints" / name / "config.yaml") in proc.stderr
    assert expected in proc.stderr, proc.stderr
    assert not (faas_home / "endpoints" / name / "daemon.pid").exists()
    assert not [p for p in psutil.process_iter(["cmdline"]) if name in (p.info["cmdline"] or [])]


def test_all_mistakes_in_a_file_are_reported_at_once(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(slurm("    partiton: gpu\n    nodes_per_block: two\n",
                          engine="  address_interface: nope0\n") + "dispatch:\n  max_batch: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    keys = [line.split(":")[0].strip() for line in str(err.value).splitlines()[1:]]
    assert keys == ["engine.address_interface", "engine.provider.partiton", "engine.provider.nodes_per_block",
                    "dispatch.max_batch"], str(err.value)


def test_kubernetes_without_its_package_is_named(tmp_path):
    if HAVE_KUBERNETES:
        pytest.skip("the kubernetes package is installed here")
    path = tmp_path / "config.yaml"
    path.write_text("engine:\n  provider:\n    type: KubernetesProvider\n    image: python:3.11\n")
    with pytest.raises(ConfigError, match=K8S_MISSING + r".*pip install 'parsl\[kubernetes\]'"):
        load_config(path)


def _loads(path: Path):
    """The config, or None where the only problem is the kubernetes package
    missing here (the template is validated against Parsl's signature all the same)."""
    try:
        return load_config(path)
    except ConfigError as e:
        problems = str(e).splitlines()[1:]
        if not HAVE_KUBERNETES and len(problems) == 1 and K8S_MISSING in problems[0]:
            return None
        raise


GPU_REQUEST = {  # provider: (Parsl class, how the template asks for 4 GPUs)
    "slurm": ("SlurmProvider", "#SBATCH --gpus-per-node=4"),
    "condor": ("CondorProvider", "request_gpus = 4"),
    "pbs": ("PBSProProvider", "ngpus=4"),
    "kubernetes": ("KubernetesProvider", '"nvidia.com/gpu": "4"'),
    "local": ("LocalProvider", "available_accelerators: 4"),
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_configure_templates_load_with_one_worker_per_gpu(faas_home, provider):
    result = CliRunner().invoke(main, ["configure", f"ep-{provider}", "--provider", provider, "--gpus", "4"])
    assert result.exit_code == 0, result.output
    path = faas_home / "endpoints" / f"ep-{provider}" / "config.yaml"
    text = path.read_text()
    cls, request = GPU_REQUEST[provider]
    assert request in text
    assert "display_name" not in text
    data = yaml.safe_load(text)["engine"]
    assert data["available_accelerators"] == 4 and data["max_workers_per_node"] == 4
    config = _loads(path)
    if provider == "kubernetes" and not HAVE_KUBERNETES:
        assert config is None  # its only problem: the package is missing here
    else:
        assert config.engine.provider.type == cls and config.engine.max_workers_per_node == 4


def test_configure_options(faas_home):
    runner = CliRunner()
    ok = runner.invoke(main, ["configure", "s", "--provider", "slurm", "--partition", "a100", "--gpus", "0"])
    assert ok.exit_code == 0, ok.output
    config = load_config(faas_home / "endpoints" / "s" / "config.yaml")
    params = config.engine.provider.model_extra
    assert params["partition"] == "a100" and "scheduler_options" not in params  # no GPU request
    assert config.engine.available_accelerators == []
    bad = runner.invoke(main, ["configure", "c", "--provider", "condor", "--partition", "x"])
    assert bad.exit_code == 2 and "--partition applies to slurm and pbs" in bad.output
    bad = runner.invoke(main, ["configure", "w", "--provider", "slurm", "--gpus", "2", "--workers", "4"])
    assert bad.exit_code == 2 and "each worker gets one GPU" in bad.output
    assert not (faas_home / "endpoints" / "c").exists() and not (faas_home / "endpoints" / "w").exists()


@pytest.mark.parametrize("example", sorted((ROOT / "examples" / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_example_configs_load(example):
    _loads(example)


def test_display_name_of_older_configs_is_ignored_with_a_warning(tmp_path, caplog):
    path = tmp_path / "config.yaml"
    path.write_text("display_name: old\nengine:\n  max_workers_per_node: 3\n")
    assert load_config(path).engine.max_workers_per_node == 3
    assert f"{path}: display_name is ignored" in caplog.text
