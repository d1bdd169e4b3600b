"""Trainables that wrap the real one and inject a fault; each name says which.

Ray ships these to its workers by value (see ``ship_by_value``), so they need not be
importable there.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

from search.trial.trainable import train_trial


def ship_by_value() -> None:
    """Pickles this module's functions by value so Ray workers need not import ``tests``."""
    import sys

    import ray.cloudpickle as cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


@contextlib.contextmanager
def after_each_report(hook: Callable[[dict], None]) -> Iterator[None]:
    """Runs ``hook(metrics)`` right after every ``tune.report`` of the trial inside."""
    from ray import tune

    original = tune.report

    def report(metrics: dict, *, checkpoint: Any = None) -> None:
        original(metrics, checkpoint=checkpoint)
        hook(metrics)

    tune.report = report
    try:
        yield
    finally:
        tune.report = original


def crash_at_random_epochs(config: dict, *, data: Any, fixed: dict) -> None:
    """Crashes right after reporting an epoch, in about a third of the epochs before the last,
    a fresh random draw each attempt (so retries eventually get through)."""
    rng = random.Random(os.getpid() * 1000 + int(time.time() * 1000) % 1000)
    share = float(fixed.get("crash_share", 0.35))

    def maybe_crash(metrics: dict) -> None:
        if metrics["epoch"] < fixed["epochs"] and rng.random() < share:
            raise RuntimeError(f"injected crash after epoch {metrics['epoch']}")

    with after_each_report(maybe_crash):
        train_trial(config, data=data, fixed=fixed)


def slow_epochs(config: dict, *, data: Any, fixed: dict) -> None:
    """Sleeps after each epoch so trials are still running when a node is taken away."""
    pause = float(fixed.get("epoch_sleep_s", 2.0))
    with after_each_report(lambda metrics: time.sleep(pause)):
        train_trial(config, data=data, fixed=fixed)


def out_of_memory_above(config: dict, *, data: Any, fixed: dict) -> None:
    """Raises TensorFlow's device OOM error in ``fit`` while the batch is above a limit."""
    import keras
    import tensorflow as tf

    import search.data as datasets

    limit = int(fixed.get("oom_above_batch", 16))
    seen: dict[str, int] = {}
    original_pipeline = datasets.make_input_pipeline
    original_fit = keras.Model.fit

    def pipeline(x: Any, y: Any, *, batch_size: int, training: bool, **kwargs: Any) -> Any:
        if training:
            seen["batch_size"] = batch_size
        return original_pipeline(x, y, batch_size=batch_size, training=training, **kwargs)

    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        if seen.get("batch_size", 0) > limit:
            raise tf.errors.ResourceExhaustedError(
                None, None, f"OOM when allocating tensor with batch {seen['batch_size']}")
        return original_fit(self, *args, **kwargs)

    datasets.make_input_pipeline = pipeline
    keras.Model.fit = fit
    try:
        train_trial(config, data=data, fixed=fixed)
    finally:
        datasets.make_input_pipeline = original_pipeline
        keras.Model.fit = original_fit
