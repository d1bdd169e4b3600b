"""Real GPUs (skipped where TensorFlow sees none): what a trial's TensorFlow sees, the precision
``auto`` picks, and the memory cap of trials packed on one GPU.

Each search runs the real trainable, wrapped by :func:`record_devices`, which writes what the
trial's own TensorFlow reports into a probe folder after training.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import pytest

from search.driver.service import run_search
from search.outputs.results import load_trials
from search.trial.trainable import train_trial
from tests.helpers import tiny_spec

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def record_devices(config: dict, *, data: Any, fixed: dict) -> None:
    """Trains, then records the trial's view of its devices in ``probe_dir/<trial>.json``.

    With ``probe_memory``, every trial of the search waits for the others (so all of them
    hold their GPU memory at once) and tries to allocate 1.2x its memory cap.
    """
    import ray
    import tensorflow as tf
    from ray import tune

    train_trial(config, data=data, fixed=fixed)
    trial_id = tune.get_context().get_trial_id()
    probe_dir = fixed["probe_dir"]
    gpus = tf.config.list_physical_devices("GPU")
    details = tf.config.experimental.get_device_details(gpus[0]) if gpus else {}
    seen = {
        "ray_gpu_ids": [str(i) for i in ray.get_gpu_ids()],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "tf_gpus": len(gpus),
        "logical_gpus": len(tf.config.list_logical_devices("GPU")),
        "compute_capability": list(details.get("compute_capability", ())),
    }
    if fixed.get("probe_memory"):
        configs = tf.config.get_logical_device_configuration(gpus[0]) or []
        cap_mb = configs[0].memory_limit if configs else None
        seen["memory_limit_mb"] = cap_mb
        open(os.path.join(probe_dir, f"{trial_id}.ready"), "w").close()
        deadline = time.time() + 300
        while (
            len([f for f in os.listdir(probe_dir) if f.endswith(".ready")]) < fixed["probe_trials"]
        ):
            if time.time() > deadline:
                raise RuntimeError("the packed trials never ran at the same time")
            time.sleep(0.2)
        seen["together_at"] = time.time()
        try:
            floats = int((cap_mb or 0) * 1.2 * 2**20 / 4)
            with tf.device("/GPU:0"):
                big = tf.ones((floats,), tf.float32)
                float(tf.reduce_sum(big[:1]))
            seen["over_cap_allocation"] = "succeeded"
        except tf.errors.ResourceExhaustedError:
            seen["over_cap_allocation"] = "refused"
        seen["peak_bytes"] = tf.config.experimental.get_memory_info("GPU:0")["peak"]
    with open(os.path.join(probe_dir, f"{trial_id}.json"), "w") as out:
        json.dump(seen, out)


def probed_search(
    tmp_path, name: str, gpus_per_trial: float, trials: int, **settings: Any
) -> tuple[list, dict[str, dict]]:
    import ray.cloudpickle as cloudpickle

    from tests.search.driver import fault_trainables

    # Ray's workers cannot import `tests`: ship this module and the wrapper by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    fault_trainables.ship_by_value()
    probe = tmp_path / f"probe-{name}"
    probe.mkdir()
    spec = tiny_spec(
        tmp_path,
        name,
        train__epochs=1,
        search={"num_samples": trials, "max_concurrent": trials, "seed": 0, "baseline": False},
        scheduler={"name": "fifo"},
        resources={"cpus_per_trial": 1, "gpus_per_trial": gpus_per_trial},
    )
    trainable = fault_trainables.with_settings(record_devices, probe_dir=str(probe), **settings)
    summary = run_search(spec, num_cpus=max(2, trials), trainable=trainable)
    trials_ = load_trials(summary.experiment_dir)
    seen = {t.trial_id: json.loads((probe / f"{t.trial_id}.json").read_text()) for t in trials_}
    return trials_, seen


@pytest.fixture(scope="module")
def whole_gpu_search(tmp_path_factory):
    """One trial holding one whole GPU."""
    return probed_search(tmp_path_factory.mktemp("gpu"), "whole", 1, 1)


def test_trial_tensorflow_sees_only_its_assigned_gpu(whole_gpu_search):
    trials, seen = whole_gpu_search
    (trial,) = trials
    view = seen[trial.trial_id]
    assert trial.status(1) == "complete"
    assert len(view["ray_gpu_ids"]) == 1
    assert view["cuda_visible_devices"] == view["ray_gpu_ids"][0]
    assert view["tf_gpus"] == 1 and view["logical_gpus"] == 1
    assert trial.history[-1]["gpu_ids"] == view["ray_gpu_ids"][0]


def test_mixed_precision_auto_picks_bfloat16_from_ampere_on(whole_gpu_search):
    trials, seen = whole_gpu_search
    (trial,) = trials
    major = seen[trial.trial_id]["compute_capability"][0]
    expected = "mixed_bfloat16" if major >= 8 else "mixed_float16" if major >= 7 else "float32"
    assert trial.history[-1]["precision"] == expected


def test_two_trials_packed_on_one_gpu_cannot_exceed_their_memory_caps(tmp_path):
    from search.trial.backends import gpu_total_memory_mb

    total_mb = gpu_total_memory_mb()
    assert total_mb, "nvidia-smi reports no memory total"
    trials, seen = probed_search(tmp_path, "packed", 0.5, 2, probe_memory=True, probe_trials=2)
    assert len(trials) == 2 and all(t.status(1) == "complete" for t in trials)
    views = list(seen.values())
    cap_mb = int(total_mb * 0.5 * 0.95)
    for view in views:
        assert view["memory_limit_mb"] == cap_mb
        assert view["over_cap_allocation"] == "refused"
        assert view["peak_bytes"] <= cap_mb * 2**20
    if len({v["cuda_visible_devices"] for v in views}) == 1:
        # Both trials on the same GPU at once: together they fit in it.
        assert 2 * cap_mb <= total_mb
