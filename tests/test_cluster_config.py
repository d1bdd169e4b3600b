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
DOCKERFILE = ROOT / "Dockerfile"
SCRIPT = ROOT / "scripts" / "cluster_search.py"
NODE_SETUP = ROOT / "scripts" / "node_setup.sh"
REPO_MOUNT = "~/finetune-search"

# GPUs per instance for the AWS types a cluster.yaml here may use.
AWS_GPUS = {
    "g4dn.xlarge": 1,
    "g4dn.12xlarge": 4,
    "g5.xlarge": 1,
    "g5.2xlarge": 1,
    "g5.12xlarge": 4,
    "g5.48xlarge": 8,
    "g6.xlarge": 1,
    "g6.12xlarge": 4,
    "p3.2xlarge": 1,
    "p3.8xlarge": 4,
    "p4d.24xlarge": 8,
}


def raw_config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text(encoding="utf-8"))


def prepared_config() -> dict[str, Any]:
    """The config as `ray up` holds it just before it contacts the cloud."""
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(raw_config()))


def worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: node
        for name, node in config["available_node_types"].items()
        if name != config["head_node_type"]
    }


def ray_pin() -> str:
    """The Ray version pyproject.toml pins (``ray[...]==X.Y.Z``)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the pin is one line, a regex reads it
        requirements = re.findall(r'"(ray\[[^"]*)"', text)
    else:
        requirements = tomllib.loads(text)["project"]["dependencies"]
    pins = [
        m.group(1)
        for r in requirements
        if (m := re.fullmatch(r"ray(?:\[[^\]]*\])?==([0-9][0-9.]*)", r.replace(" ", "")))
    ]
    if len(pins) != 1:
        raise AssertionError(f"pyproject.toml must pin ray exactly once, got {requirements}")
    return pins[0]


def load_script():
    spec = importlib.util.spec_from_file_location("cluster_search", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


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


def test_docker_image_is_a_cuda_12_image_of_the_pinned_ray():
    docker = raw_config()["docker"]
    image = docker["image"]
    match = re.fullmatch(
        r"rayproject/ray:(?P<ray>[0-9.]+)-py3(?P<minor>\d+)-cu(?P<cuda>\d+)", image
    )
    assert match, f"not a rayproject/ray:<version>-py3XX-cuXXX image: {image}"
    assert match["ray"] == ray_pin()
    assert int(match["minor"]) >= 10  # requires-python >= 3.10
    # tensorflow[and-cuda] brings CUDA 12.5+ and cuDNN 9 wheels: a CUDA 12 image from 12.5 on
    # (Ray's cu124+ images carry cuDNN 9), never the `-gpu` alias (CUDA 12.1, cuDNN 8).
    major, minor = int(match["cuda"][:2]), int(match["cuda"][2:])
    assert major == 12 and minor >= 5, image
    assert docker["container_name"]
    assert "--ulimit nofile=65536:65536" in docker["run_options"]


def test_every_node_type_boots_the_one_pinned_gpu_driver_ami():
    """Without ImageId Ray picks its old default (Ubuntu 18.04, a CUDA 11 era driver)."""
    config = prepared_config()
    images = {
        name: node["node_config"].get("ImageId", "")
        for name, node in config["available_node_types"].items()
    }
    for name in worker_types(config):
        assert re.fullmatch(r"ami-[0-9a-f]{17}", images[name]), (name, images[name])
    assert len(set(images.values())) == 1, images  # one AMI to update, as the README says
    assert config["provider"]["region"] == "us-west-2"  # AMI ids are per region


def test_gpus_reach_the_worker_containers_only():
    config = prepared_config()
    docker = config["docker"]
    assert "--gpus all" in docker["worker_run_options"]
    assert not any(
        "--gpus" in option for option in docker["run_options"] + docker.get("head_run_options", [])
    )
    for name, node in config["available_node_types"].items():
        assert "docker" not in node, f"{name} overrides the docker settings"


def test_workers_fail_their_set_up_when_tensorflow_sees_no_gpu():
    config = prepared_config()
    check = "python ~/finetune-search/scripts/check_gpu.py"
    assert config["worker_setup_commands"][-1] == check  # after the install
    assert check not in config["head_setup_commands"]  # the head has no GPU


def test_every_node_installs_the_mounted_project_through_node_setup():
    assert raw_config()["setup_commands"] == ["bash ~/finetune-search/scripts/node_setup.sh"]
    commands = NODE_SETUP.read_text(encoding="utf-8")
    assert re.search(r'pip install -e "\$repo\[gpu\]"', commands), commands
    assert 'pip install --no-deps -e "$repo"' in commands
    # The image's Ray stays: nothing upgrades it or installs another version.
    assert not re.search(r"pip install\b[^\n]*(-U\b|--upgrade)", commands)
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
    # setenv first, so that the value the script exports is removed again after the test
    # (delenv of an unset variable records nothing to undo).
    monkeypatch.setenv("FINETUNE_SEARCH_AUTOSCALING", "unset by the test")
    monkeypatch.delenv("FINETUNE_SEARCH_AUTOSCALING")
    return calls


def test_script_runs_the_config_on_the_cluster_with_passthrough_options(cli_calls, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = load_script().main(
        [
            "configs/cifar10.yaml",
            "--storage",
            "s3://b/fs",
            "--set",
            "search.num_samples=4",
            "--name",
            "c10",
        ]
    )
    assert code == 0
    assert cli_calls == [
        [
            "run",
            "configs/cifar10.yaml",
            "--address",
            "auto",
            "--set",
            "search.num_samples=4",
            "--storage",
            "s3://b/fs",
            "--name",
            "c10",
        ]
    ]
    assert os.environ["FINETUNE_SEARCH_AUTOSCALING"] == "1"


def test_script_finds_a_relative_config_in_the_mounted_repository(
    cli_calls, monkeypatch, tmp_path
):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    spec = home / "finetune-search" / "configs" / "cifar10.yaml"
    spec.parent.mkdir(parents=True)
    spec.write_text("name: x\n")
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)  # where `ray submit` runs the script: the home directory
    load_script().main(["configs/cifar10.yaml", "--address", "10.0.0.1:6379"])
    assert cli_calls == [["run", str(spec), "--address", "10.0.0.1:6379"]]


def test_smoke_test_runs_the_quickstart_with_two_one_epoch_trials_on_gpus(cli_calls):
    from search.spec import load_spec

    script = load_script()
    script.main(["--smoke-test"])
    assert cli_calls == [
        [
            "run",
            "--address",
            "auto",
            "--set",
            "search.num_samples=2",
            "--set",
            "train.epochs=1",
            "--set",
            "resources.gpus_per_trial=1",
        ]
    ]
    spec = load_spec(None, script.SMOKE_TEST_OVERRIDES)
    assert spec.search.num_samples == 2 and spec.train.epochs == 1
    assert spec.resources.gpus_per_trial == 1


def test_smoke_test_asks_for_a_gpu_on_an_autoscaling_cluster_that_has_none_yet(
    cli_calls, monkeypatch
):
    import ray

    from search.driver.cluster import resolve_gpus
    from search.spec import load_spec

    script = load_script()
    script.main(["--smoke-test"])  # exports FINETUNE_SEARCH_AUTOSCALING=1, as on the head
    argv = cli_calls[0]
    overrides = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]
    spec = load_spec(None, overrides)
    # The cluster as it starts: the head alone, no GPU.
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 8.0}}])
    assert resolve_gpus(spec) == 1.0


# --------------------------------------------------------------------------------------------
# the image: Dockerfile, scripts/image_requirements.py, scripts/node_setup.sh, check_gpu.py


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined, comments out."""
    lines = [
        line
        for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [tuple(line.strip().split(None, 1)) for line in joined.splitlines() if line.strip()]


def fake_pip(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose `pip` logs its arguments (and any -r file) instead of installing."""
    bin_dir, log = tmp_path / "bin", tmp_path / "pip.log"
    bin_dir.mkdir()
    (bin_dir / "pip").write_text(
        "#!/usr/bin/env bash\n"
        f'echo "pip $*" >> {log}\n'
        "for ((i = 1; i < $#; i++)); do\n"
        '  if [ "${!i}" = "-r" ]; then j=$((i + 1)); cat "${!j}" >> '
        f"{log}; fi\n"
        "done\n"
    )
    (bin_dir / "pip").chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    path = os.pathsep.join(
        [str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    )
    return {**os.environ, "PATH": path, "HOME": str(home)}, log


def run_node_setup(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(NODE_SETUP), str(ROOT)], env=env, capture_output=True, text=True, timeout=120
    )


def test_dockerfile_builds_on_the_clusters_image():
    instructions = dockerfile_instructions()
    assert [args for op, args in instructions if op == "FROM"] == [raw_config()["docker"]["image"]]


def test_dockerfile_lists_no_package_itself_only_what_pyproject_gives():
    pip_commands = [
        c
        for op, args in dockerfile_instructions()
        if op == "RUN"
        for c in args.split("&&")
        if "pip " in c
    ]
    assert pip_commands, "the Dockerfile installs nothing"
    for command in pip_commands:
        assert re.fullmatch(r"\s*pip install --no-cache-dir -r requirements\.txt\s*", command), (
            command
        )


def test_dockerfile_build_installs_pyprojects_list_and_nodes_then_install_only_the_code(tmp_path):
    """The Dockerfile's COPY and RUN, replayed with a logging pip, then a node's set-up."""
    import importlib.util as util

    spec = util.spec_from_file_location(
        "image_requirements", ROOT / "scripts" / "image_requirements.py"
    )
    image_requirements = util.module_from_spec(spec)
    spec.loader.exec_module(image_requirements)
    env, log = fake_pip(tmp_path)
    home = Path(env["HOME"])

    def local(path: str) -> str:
        return path.replace("/home/ray", str(home))

    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for op, args in dockerfile_instructions():
        if op == "COPY":
            *sources, dest = [a for a in args.split() if not a.startswith("--")]
            Path(local(dest)).mkdir(parents=True)
            for source in sources:
                assert f"!{source}" in ignored, f"{source} is not in the build context"
                (Path(local(dest)) / Path(source).name).write_bytes((ROOT / source).read_bytes())
        elif op == "RUN":
            done = subprocess.run(
                ["bash", "-c", local(args)], env=env, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, done.stderr
    wanted = image_requirements.requirements(
        (ROOT / "pyproject.toml").read_text(encoding="utf-8"), ["gpu"]
    )
    assert "tensorflow[and-cuda]>=2.16" in wanted and f"ray[tune,default]=={ray_pin()}" in wanted
    assert not any(r.startswith("pytest") for r in wanted)  # not the test extra
    assert log.read_text().splitlines() == [
        "pip install --no-cache-dir -r requirements.txt",
        *wanted,
    ]
    assert not (home / "image-build").exists()

    log.unlink()
    done = run_node_setup(env)
    assert done.returncode == 0, done.stderr
    assert "installing the code only" in done.stdout
    assert log.read_text().splitlines() == [f"pip install --no-deps -e {ROOT}"]


def test_node_setup_installs_everything_on_the_stock_image_keeping_its_ray(tmp_path):
    import ray

    env, log = fake_pip(tmp_path)
    done = run_node_setup(env)
    assert done.returncode == 0, done.stderr
    assert "no baked dependencies" in done.stdout
    assert log.read_text().splitlines() == [
        f"pip install -e {ROOT}[gpu] ray[tune,default]=={ray.__version__}"
    ]


def test_node_setup_installs_everything_when_pyproject_changed_since_the_image(tmp_path):
    env, log = fake_pip(tmp_path)
    (Path(env["HOME"]) / ".finetune-search-deps").write_text("0" * 64 + "\n")
    done = run_node_setup(env)
    assert done.returncode == 0, done.stderr
    assert "changed since the image was built" in done.stdout
    assert log.read_text().startswith(f"pip install -e {ROOT}[gpu] ")


def test_image_requirements_rejects_an_unknown_extra_with_status_2(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "image_requirements.py"),
            str(ROOT / "pyproject.toml"),
            "--extra",
            "gpus",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: ") and "'gpus'" in done.stderr
    assert "Traceback" not in done.stderr


def load_check_gpu():
    spec = importlib.util.spec_from_file_location("check_gpu", ROOT / "scripts" / "check_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_tensorflow(gpus: list[str]) -> Any:
    from types import SimpleNamespace

    devices = [SimpleNamespace(name=name) for name in gpus]
    return SimpleNamespace(
        __version__="2.21.0",
        config=SimpleNamespace(
            list_physical_devices=lambda kind: list(devices) if kind == "GPU" else []
        ),
    )


def test_gpu_check_fails_loudly_when_tensorflow_sees_no_gpu(capsys):
    assert load_check_gpu().main(fake_tensorflow([])) == 1
    err = capsys.readouterr().err
    assert "sees no GPU" in err and "--gpus all" in err and "nvidia-smi" in err


def test_gpu_check_passes_and_names_the_gpus(capsys):
    gpus = ["/physical_device:GPU:0", "/physical_device:GPU:1"]
    assert load_check_gpu().main(fake_tensorflow(gpus)) == 0
    assert "sees 2 GPU(s): /physical_device:GPU:0, /physical_device:GPU:1" in (
        capsys.readouterr().out
    )


def test_smoke_test_with_a_config_is_a_usage_error(cli_calls):
    with pytest.raises(SystemExit) as exit_info:
        load_script().main(["--smoke-test", "configs/cifar10.yaml"])
    assert exit_info.value.code == 2
    assert cli_calls == []
