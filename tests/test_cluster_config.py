"""cluster.yaml as Ray's own validator sees it, and the `ray submit` script's command line.

`ray up` loads the YAML, runs ``prepare_config`` (defaults, merged setup commands, docker
checks, per-type worker limits), asks AWS for instance resources, then runs
``validate_config`` (Ray's JSON schema and cross-field rules). Everything but the AWS call runs
here, offline.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "cluster.yaml"
SCRIPT = ROOT / "scripts" / "cluster_search.py"
REPO_MOUNT = "~/finetune-search"

# GPUs per instance for the AWS types a cluster.yaml here may use.
AWS_GPUS = {"g4dn.xlarge": 1, "g4dn.12xlarge": 4, "g5.xlarge": 1, "g5.2xlarge": 1,
            "g5.12xlarge": 4, "g5.48xlarge": 8, "g6.xlarge": 1, "g6.12xlarge": 4,
            "p3.2xlarge": 1, "p3.8xlarge": 4, "p4d.24xlarge": 8}


def raw_config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text(encoding="utf-8"))


def prepared_config() -> dict[str, Any]:
    """The config as `ray up` holds it just before it contacts the cloud."""
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(raw_config()))


def worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: node for name, node in config["available_node_types"].items()
            if name != config["head_node_type"]}


def ray_pin() -> str:
    """The Ray version pyproject.toml pins (``ray[...]==X.Y.Z``)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the pin is one line, a regex reads it
        requirements = re.findall(r'"(ray\[[^"]*)"', text)
    else:
        requirements = tomllib.loads(text)["project"]["dependencies"]
    pins = [m.group(1) for r in requirements
            if (m := re.fullmatch(r"ray(?:\[[^\]]*\])?==([0-9][0-9.]*)", r.replace(" ", "")))]
    if len(pins) != 1:
        raise AssertionError(f"pyproject.toml must pin ray exactly once, got {requirements}")
    return pins[0]


def load_script():
    spec = importlib.util.spec_from_file_location("cluster_search", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


# --------------------------------------------------------------------------------------------
# cluster.yaml


def test_cluster_yaml_passes_rays_own_validator():
    from ray.autoscaler._private.util import validate_config

    validate_config(prepared_config())


def test_validator_rejects_an_unknown_docker_key():
    """Fault injected: a misspelt key, so a passing validation above means something."""
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    config = prepared_config()
    config["docker"]["run_option"] = []
    with pytest.raises(jsonschema.ValidationError, match="run_option"):
        validate_config(config)


def test_head_node_type_has_no_gpu():
    config = prepared_config()
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert not re.match(r"[gp]\d", head["node_config"]["InstanceType"])
    assert head["max_workers"] == 0


def test_every_worker_type_scales_from_zero_and_has_a_gpu():
    config = prepared_config()
    workers = worker_types(config)
    assert workers, "no worker node type"
    for name, node in workers.items():
        assert node["min_workers"] == 0, name
        assert 1 <= node["max_workers"] <= config["max_workers"], name
        gpus = node["resources"].get("GPU", 0)
        assert gpus >= 1, name
        instance = node["node_config"]["InstanceType"]
        assert gpus == AWS_GPUS.get(instance, gpus), f"{name}: {instance} has a different count"
    assert {node["resources"]["GPU"] for node in workers.values()} >= {1, 4}


def test_every_node_gets_an_instance_profile_for_s3():
    """Trials on workers write checkpoints to s3://; Ray gives only the head a default role."""
    for name, node in raw_config()["available_node_types"].items():
        profile = node["node_config"].get("IamInstanceProfile", {})
        assert profile.get("Name") or profile.get("Arn"), name


def test_docker_image_is_the_gpu_image_of_the_pinned_ray():
    docker = raw_config()["docker"]
    image = docker["image"]
    match = re.fullmatch(r"rayproject/ray:(?P<ray>[0-9.]+)-py3(?P<minor>\d+)-gpu", image)
    assert match, f"not a rayproject/ray:<version>-py3XX-gpu image: {image}"
    assert match["ray"] == ray_pin()
    assert int(match["minor"]) >= 10  # requires-python >= 3.10
    assert docker["container_name"]
    assert "--ulimit nofile=65536:65536" in docker["run_options"]


def test_setup_commands_install_the_mounted_project_with_the_gpu_extra():
    config = raw_config()
    commands = " ".join(config["setup_commands"])
    assert re.search(r"pip install -e \S*finetune-search\[gpu\]", commands), commands
    assert "/finetune-search" in commands
    # The image's Ray stays: nothing upgrades or installs a Ray wheel of another version.
    assert not re.search(r"pip install\b[^;&|]*(-U\b|--upgrade)", commands)
    assert not re.search(r"ray\S*==\d", commands)


def test_file_mounts_put_this_repository_on_every_node():
    config = raw_config()
    assert (CLUSTER_YAML.parent / config["file_mounts"][REPO_MOUNT]).resolve() == ROOT
    excluded = " ".join(config["rsync_exclude"])
    for path in (".git", ".venv", "results"):
        assert path in excluded
    assert load_script().REPO_ON_CLUSTER == REPO_MOUNT


def test_head_exports_autoscaling_to_the_driver_before_ray_starts():
    commands = prepared_config()["head_start_ray_commands"]
    start = next(c for c in commands if "ray start --head" in c)
    assert start.index("FINETUNE_SEARCH_AUTOSCALING=1") < start.index("ray start --head")
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in start
    workers = " ".join(prepared_config()["worker_start_ray_commands"])
    assert "ray start --address=$RAY_HEAD_IP:6379" in workers


# --------------------------------------------------------------------------------------------
# scripts/cluster_search.py


def test_script_help_runs_and_shows_address_auto():
    result = run_script("--help")
    assert result.returncode == 0, result.stderr
    assert "--address" in result.stdout and "auto" in result.stdout
    assert "--smoke-test" in result.stdout


def test_script_rejects_an_unknown_argument_with_status_2_and_no_traceback():
    result = run_script("--no-such-flag")
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in result.stderr
    assert "Traceback" not in result.stderr


def test_script_reports_a_missing_config_with_status_2_and_no_traceback():
    result = run_script("no/such/spec.yaml")
    assert result.returncode == 2
    assert "no/such/spec.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_script_address_defaults_to_auto():
    assert load_script().build_parser().parse_args([]).address == "auto"


@pytest.fixture
def cli_calls(monkeypatch):
    """Records what the script passes to ``search.cli.main`` instead of running a search."""
    import search.cli

    calls: list[list[str]] = []
    monkeypatch.setattr(search.cli, "main", lambda argv: calls.append(list(argv)) or 0)
    monkeypatch.delenv("FINETUNE_SEARCH_AUTOSCALING", raising=False)
    return calls


def test_script_runs_the_config_on_the_cluster_with_passthrough_options(cli_calls, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = load_script().main(["configs/cifar10.yaml", "--storage", "s3://b/fs",
                               "--set", "search.num_samples=4", "--name", "c10"])
    assert code == 0
    assert cli_calls == [["run", "configs/cifar10.yaml", "--address", "auto",
                          "--set", "search.num_samples=4", "--storage", "s3://b/fs",
                          "--name", "c10"]]
    assert os.environ["FINETUNE_SEARCH_AUTOSCALING"] == "1"


def test_script_finds_a_relative_config_in_the_mounted_repository(cli_calls, monkeypatch,
                                                                   tmp_path):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    spec = home / "finetune-search" / "configs" / "cifar10.yaml"
    spec.parent.mkdir(parents=True)
    spec.write_text("name: x\n")
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)  # where `ray submit` runs the script: the home directory
    load_script().main(["configs/cifar10.yaml", "--address", "10.0.0.1:6379"])
    assert cli_calls == [["run", str(spec), "--address", "10.0.0.1:6379"]]


def test_smoke_test_runs_the_quickstart_with_two_one_epoch_trials(cli_calls):
    from search.spec import load_spec

    script = load_script()
    script.main(["--smoke-test"])
    assert cli_calls == [["run", "--address", "auto",
                          "--set", "search.num_samples=2", "--set", "train.epochs=1"]]
    spec = load_spec(None, script.SMOKE_TEST_OVERRIDES)
    assert spec.search.num_samples == 2 and spec.train.epochs == 1


def test_smoke_test_with_a_config_is_a_usage_error(cli_calls):
    with pytest.raises(SystemExit) as exit_info:
        load_script().main(["--smoke-test", "configs/cifar10.yaml"])
    assert exit_info.value.code == 2
    assert cli_calls == []
