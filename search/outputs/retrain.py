"""Retraining an exported config: train on train+validation, test once on the held-out split.

ASHA never trains the winner past its rung, and a search's validation accuracy was used to pick
the winner, so neither is an honest estimate. ``retrain`` closes that loop: the full epochs on
all the non-test data, one evaluation on the test split that no search decision ever saw.

Determinism: with the same seed on the same machine, CPU runs give the same numbers (seeded
Python/NumPy/TensorFlow RNGs, seeded shuffling, ``enable_op_determinism``). On a GPU the same
holds for the ops TensorFlow has deterministic kernels for; an op without one raises an error
under op determinism instead of silently differing (pass ``deterministic=False`` to trade
that for speed). Different GPUs, driver or library versions can still change the last digits.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from search import storage
from search.errors import SpecError
from search.outputs.experiment import write_class_names
from search.spec import ExperimentSpec, load_spec
from search.trial import runtime


@dataclass
class RetrainResult:
    """What ``retrain`` measured and wrote."""

    out_dir: str
    metrics: dict[str, Any]
    history: list[dict[str, float]]


def retrain(
    config_path: str,
    *,
    epochs: int | None = None,
    out_dir: str | None = None,
    deterministic: bool = True,
) -> RetrainResult:
    """Trains an exported (fully fixed) config on train+validation and tests it once.

    Args:
        config_path: A spec with no searched settings (``best_config.yaml``).
        epochs: Override ``train.epochs``.
        out_dir: Where to write ``model.keras``, ``class_names.json``, ``metrics.json`` and
            ``history.csv``;
            default ``retrain-<name>`` beside the config.
        deterministic: Turn on TensorFlow's op determinism.

    Returns:
        The test metrics and per-epoch history.

    Raises:
        SpecError: When the config still searches settings, or the dataset has no test split.
    """
    overrides = [] if epochs is None else [f"train.epochs={epochs}"]
    spec = load_spec(config_path, overrides)
    if spec.space:
        raise SpecError(
            f"{config_path}: space: retrain needs every setting fixed (an exported "
            f"best_config.yaml), got searched keys {sorted(spec.space)}"
        )
    out_dir = out_dir or os.path.join(
        os.path.dirname(os.path.abspath(config_path)), f"retrain-{spec.name}"
    )
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SpecError(f"out_dir: must be a folder, got the file {out_dir}", key="out_dir")

    from search.data import load_dataset

    data = load_dataset(spec.dataset)
    if data.x_test is None or data.y_test is None or len(data.x_test) == 0:
        raise SpecError(f"dataset: retrain needs a test split, and {spec.dataset.name} has none")
    os.makedirs(out_dir, exist_ok=True)
    return _train_and_test(spec, data, out_dir, deterministic)


def _train_and_test(
    spec: ExperimentSpec, data: Any, out_dir: str, deterministic: bool
) -> RetrainResult:
    params = spec.fixed_config()
    runtime.prepare(params, gpu_fraction=1.0, deterministic=deterministic)
    x_train = np.concatenate([data.x_train, data.x_val])
    y_train = np.concatenate([data.y_train, data.y_val])
    model = runtime.build_compiled_model(params, data.input_shape, data.num_classes)
    train_ds, test_ds = runtime.make_pipelines(
        params, x_train, y_train, data.x_test, data.y_test, int(params["batch_size"])
    )
    began = time.perf_counter()
    fit = model.fit(train_ds, epochs=int(params["epochs"]), verbose=2)
    train_seconds = time.perf_counter() - began
    test_loss, test_accuracy = model.evaluate(test_ds, verbose=0)
    history = [
        {"epoch": i + 1, **{k: float(v[i]) for k, v in fit.history.items()}}
        for i in range(len(fit.history.get("loss", [])))
    ]
    metrics = {
        "experiment": spec.name,
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "epochs": int(params["epochs"]),
        "train_examples": int(len(x_train)),
        "test_examples": int(len(data.x_test)),
        "seed": int(params["seed"]),
        "deterministic": deterministic,
        "train_seconds": train_seconds,
    }
    with storage.atomic_path(storage.confined(out_dir, "model.keras")) as tmp:
        # Keras insists on the .keras suffix, which the temp path keeps.
        model.save(tmp)
    write_class_names(out_dir, data.class_names)
    with (
        storage.atomic_path(storage.confined(out_dir, "metrics.json")) as tmp,
        open(tmp, "w", encoding="utf-8") as f,
    ):
        json.dump(metrics, f, indent=2)
    with (
        storage.atomic_path(storage.confined(out_dir, "history.csv")) as tmp,
        open(tmp, "w", encoding="utf-8") as f,
    ):
        columns = list(history[0]) if history else ["epoch"]
        f.write(",".join(columns) + "\n")
        for row in history:
            f.write(",".join(str(row[c]) for c in columns) + "\n")
    return RetrainResult(out_dir=out_dir, metrics=metrics, history=history)
