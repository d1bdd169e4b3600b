"""The scale benchmark's stand-in for training: simulated learning curves, no TensorFlow.

:func:`simulated_trainable` has the real trainable's signature (``config, *, data, fixed``) and
reports one :class:`~search.trial.report.EpochReport` per epoch, as
:func:`search.trial.trainable.train_trial` does, but its ``val_accuracy`` comes from
:func:`simulated_accuracy`: a deterministic function of the config, the epoch and the seed, with
an optimum inside the search space (so TPE has something to learn) and a little noise. No
sleeps: every trial-epoch costs the trial next to nothing, so the run measures the driver.

Ray ships this module's functions to its workers by value (:func:`ship_by_value`), so the
workers need not import ``benchmarks/``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import tempfile
from collections.abc import Mapping
from typing import Any

# Where the simulated accuracy peaks, per searched setting, and how wide the peak is (in log10
# units for the log-scaled settings). The best config reaches PEAK_ACCURACY at max_t.
OPTIMUM: dict[str, tuple[float, float, bool]] = {  # key: (best value, width, log scale)
    "learning_rate": (3e-3, 0.6, True),
    "noise_std": (1e-2, 0.8, True),
    "dropout": (0.5, 0.25, False),
    "upsample": (4.0, 2.0, False),
    "freeze": (7.0, 8.0, False),
    "input_convs": (1.0, 1.5, False),
}
CHANCE_ACCURACY = 0.1  # ten classes
PEAK_ACCURACY = 0.95
NOISE_STD = 0.01  # per-epoch noise on val_accuracy


def config_quality(config: Mapping[str, Any]) -> float:
    """How good a config is, in (0, 1]: 1 at :data:`OPTIMUM`, a Gaussian bump around it.

    Settings the config lacks count as optimal; keys not in :data:`OPTIMUM` are ignored.

    Args:
        config: The trial's settings.

    Returns:
        The product of one Gaussian factor per setting.
    """
    quality = 1.0
    for key, (best, width, log) in OPTIMUM.items():
        if key not in config:
            continue
        value = float(config[key])
        distance = (math.log10(value) - math.log10(best)) if log else value - best
        quality *= math.exp(-0.5 * (distance / width) ** 2)
    return quality


def _noise(config: Mapping[str, Any], epoch: int, seed: int) -> float:
    # A hash of the config, not Python's hash(), which differs between processes.
    text = json.dumps(
        {"config": dict(config), "epoch": epoch, "seed": seed}, sort_keys=True, default=str
    )
    rng = random.Random(int(hashlib.sha256(text.encode()).hexdigest()[:16], 16))
    return rng.gauss(0.0, NOISE_STD)


def simulated_accuracy(config: Mapping[str, Any], epoch: int, seed: int = 0) -> float:
    """The simulated ``val_accuracy`` of ``config`` after ``epoch`` epochs.

    The curve rises from chance towards ``CHANCE + (PEAK - CHANCE) * quality`` with a time
    constant that shrinks as the learning rate grows (too small a rate learns slowly, which
    is what ASHA exploits), plus deterministic noise.

    Args:
        config: The trial's settings.
        epoch: Epochs trained, 1-based.
        seed: Seeds the noise.

    Returns:
        The accuracy, clipped to [0, 1]; the same arguments always give the same value.
    """
    ceiling = CHANCE_ACCURACY + (PEAK_ACCURACY - CHANCE_ACCURACY) * config_quality(config)
    learning_rate = float(config.get("learning_rate", OPTIMUM["learning_rate"][0]))
    time_constant = 1.0 + 2.0 * max(0.0, math.log10(OPTIMUM["learning_rate"][0] / learning_rate))
    value = ceiling - (ceiling - CHANCE_ACCURACY) * math.exp(-epoch / time_constant)
    return min(1.0, max(0.0, value + _noise(config, epoch, seed)))


def simulated_trainable(config: dict[str, Any], *, data: Any, fixed: Mapping[str, Any]) -> None:
    """Reports a simulated learning curve to Ray Tune, one result per epoch.

    Like the real trainable, it continues from its checkpoint's epoch and checkpoints every
    epoch (a one-line ``state.json``), so Ray's checkpoint bookkeeping and experiment
    snapshots see the same traffic as in a real search; the data is received and not used.

    Args:
        config: The searched settings Optuna drew.
        data: The dataset from the object store (unused).
        fixed: The spec's fixed settings (``epochs`` is ASHA's ``max_t``; ``seed``).
    """
    from ray import tune

    from search.trial.report import EpochReport

    params = {**fixed, **config}
    seed = int(params.get("seed", 0))
    epoch = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with (
            checkpoint.as_directory() as folder,
            open(os.path.join(folder, "state.json"), encoding="utf-8") as handle,
        ):
            epoch = int(json.load(handle)["epoch"])
    while epoch < int(params["epochs"]):
        epoch += 1
        accuracy = simulated_accuracy(config, epoch, seed)
        report = EpochReport(
            epoch=epoch,
            val_accuracy=accuracy,
            accuracy=accuracy,
            val_loss=1.0 - accuracy,
            loss=1.0 - accuracy,
        )
        with tempfile.TemporaryDirectory(prefix="sim-checkpoint-") as folder:
            with open(os.path.join(folder, "state.json"), "w", encoding="utf-8") as handle:
                json.dump({"epoch": epoch}, handle)
            tune.report(report.as_dict(), checkpoint=tune.Checkpoint.from_directory(folder))


def ship_by_value() -> None:
    """Pickles this module's functions by value, so Ray workers need not import it."""
    import sys

    import ray.cloudpickle as cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
