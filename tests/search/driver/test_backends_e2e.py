"""A search on the JAX and on the PyTorch backend, through the CLI as a user runs it: ASHA,
checkpoints, the driver SIGKILLed and ``resume`` continuing trials from their checkpoints,
``export``, and the exported model loaded with plain Keras on every backend."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from search.outputs.results import load_trials
from tests.helpers import REPO, cli, kill_when, tiny_raw
from tests.search.driver.test_resume_faults import snapshot_resumes_from_epoch, start_driver

pytestmark = pytest.mark.slow

# What a loader on another backend prints: the exported model's outputs on fixed inputs.
LOAD_AND_PREDICT = """
import sys, numpy as np, keras
model = keras.saving.load_model(sys.argv[1])
x = np.random.default_rng(0).random((4, *model.input_shape[1:]), dtype=np.float32)
print("BACKEND", keras.backend.backend())
print("OUTPUT", np.asarray(keras.ops.convert_to_numpy(model(x, training=False))).tolist())
"""


def backend_spec(tmp_path: Path, backend: str) -> Path:
    """Two small_cnn trials, 3 epochs on 100 digits, ASHA from epoch 1, flip+crop augmentation
    (the NumPy pipeline's path), on ``backend``."""
    raw = tiny_raw(
        tmp_path,
        train__epochs=3,
        train__backend=backend,
        train__augment="flip+crop",
        dataset={"name": "digits", "subset": 100, "val_fraction": 0.3, "seed": 0},
        model={
            "backbone": "small_cnn",
            "weights": "none",
            "dense_units": 16,
            "upsample": 1,
            "noise_std": 0.01,
        },
        space={"learning_rate": {"loguniform": [0.001, 0.01]}},
        search={"num_samples": 2, "max_concurrent": 2, "seed": 0, "baseline": False},
        scheduler={"grace_period": 1, "reduction_factor": 2},
    )
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def load_on(backend: str, model_path: Path) -> np.ndarray:
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, str(model_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(
        line.split(" ", 1)
        for line in done.stdout.splitlines()
        if line.startswith(("BACKEND", "OUTPUT"))
    )
    assert lines["BACKEND"] == backend
    return np.array(json.loads(lines["OUTPUT"]))


@pytest.mark.parametrize(
    ("backend", "loaders"),
    [
        ("jax", ("tensorflow", "jax", "torch")),
        ("torch", ("tensorflow",)),
    ],
)
def test_search_on_backend_resumes_from_checkpoints_and_exports_a_portable_model(
    tmp_path, backend, loaders
):
    spec_path = backend_spec(tmp_path, backend)
    experiment = tmp_path / "results" / backend
    log_path = tmp_path / "run.log"
    driver = start_driver(spec_path, backend, log_path)
    # Kill the driver (and the Ray it started) as soon as Ray's state in storage would continue
    # a trial from its checkpoint of epoch 1.
    kill_when(
        lambda: snapshot_resumes_from_epoch(experiment, 1),
        driver,
        log_path,
        "a snapshot holding a running trial's checkpoint of epoch 1",
    )

    done = cli("resume", str(experiment), "--num-cpus", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = load_trials(str(experiment))
    assert len(trials) == 2
    assert {t.status(3).value for t in trials} <= {"complete", "stopped"}
    assert any(t.status(3).value == "complete" for t in trials)
    assert {r["backend"] for t in trials for r in t.history} == {backend}
    # A trial the kill interrupted continued from its checkpoint in a new attempt: its epochs
    # go on from the last checkpointed one, none trained twice.
    for trial in trials:
        assert [int(r["epoch"]) for r in trial.history] == list(range(1, trial.epochs_run + 1))
    assert any(len({r["attempt_started_at"] for r in t.history}) == 2 for t in trials)

    out = tmp_path / "export"
    done = cli("export", str(experiment), "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(out / "history.csv", newline="") as handle:
        assert {row["backend"] for row in csv.DictReader(handle)} == {backend}
    outputs = {name: load_on(name, out / "best_model.keras") for name in loaders}
    first = outputs[loaders[0]]
    assert first.shape == (4, 10)
    for name, output in outputs.items():
        np.testing.assert_allclose(output, first, atol=1e-5, err_msg=name)
