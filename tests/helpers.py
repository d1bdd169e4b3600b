"""Shared test helpers: the tiny experiment spec every search test builds on, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

# A search that trains in seconds on CPU: 200 digits images, the small CNN, 6 trials x 3 epochs.
TINY_SPEC: dict[str, Any] = {
    "name": "tiny",
    "dataset": {"name": "digits", "subset": 200, "val_fraction": 0.25, "seed": 0},
    "model": {"backbone": "small_cnn", "weights": "none", "dense_units": 32},
    "train": {"epochs": 3, "batch_size": 32, "optimizer": "adam"},
    "space": {
        "noise_std": {"loguniform": [0.001, 0.1]},
        "upsample": {"choice": [1, 2]},
        "dropout": {"uniform": [0.3, 0.8]},
        "learning_rate": {"loguniform": [0.0003, 0.01]},
    },
    "search": {"num_samples": 6, "max_concurrent": 2, "seed": 0, "baseline": True},
    "scheduler": {"grace_period": 1, "reduction_factor": 3},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": "auto"},
}


def tiny_raw(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """TINY_SPEC stored under tmp_path, with ``section__key=value`` or ``section=value``
    changes."""
    spec = json.loads(json.dumps(TINY_SPEC))
    spec["storage"] = str(tmp_path / "results")
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            spec[section][field] = value
        else:
            spec[section] = value
    return spec


def tiny_spec(tmp_path: Path, name: str = "tiny", **changes: Any) -> Any:
    """The tiny spec, validated, under ``name``."""
    from search.spec import load_spec_dict

    return load_spec_dict({**tiny_raw(tmp_path, **changes), "name": name})


def write_spec(tmp_path: Path, **changes: Any) -> Path:
    """The tiny spec written to ``tmp_path/spec.yaml``."""
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(tmp_path, **changes)))
    return path


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> SHA-256 of its bytes): two digests are equal
    only if no file was added, removed or changed."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def cli(*args: str, timeout: float = 600, **kwargs: Any) -> subprocess.CompletedProcess:
    """Runs ``python -m search ARGS`` from the repository, as a user would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "search", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env, **kwargs)


def study_trials(experiment_dir: Path | str, study_name: str | None = None) -> dict[str, Any]:
    """The experiment's Optuna trials by Ray trial id (``#<number>`` for unlinked ones), read
    without writing to the experiment."""
    from search.driver.study import ATTR_RAY_TRIAL, load_study_readonly

    name = study_name or str(experiment_dir).rstrip("/").rsplit("/", 1)[-1]
    study = load_study_readonly(str(experiment_dir), name)
    assert study is not None, f"no study {name!r} in {experiment_dir}"
    return {t.user_attrs.get(ATTR_RAY_TRIAL, f"#{t.number}"): t for t in study.trials}
