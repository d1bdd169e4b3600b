"""Trainables that wrap the real one and inject a fault; each name says which.

Ray ships these to its workers by value (see ``ship_by_value``), so they need not be
importable there.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

from search.trial.trainable import train_trial


def ship_by_value() -> None:
    """Pickles this module's functions by value so Ray workers need not import ``tests``."""
    import sys

    import ray.cloudpickle as cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def with_settings(trainable: Callable[..., None], **settings: Any) -> Callable[..., None]:
    """``trainable`` with test-only settings (``probe_dir``, ``oom_from_epoch``...) added to
    ``fixed``, which a spec cannot carry (unknown keys are errors there)."""

    def configured(config: dict, *, data: Any, fixed: dict) -> None:
        trainable(config, data=data, fixed={**fixed, **settings})

    configured.__name__ = trainable.__name__
    return configured


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


@contextlib.contextmanager
def before_fit_callbacks(
    make: Callable[[], list[Any]], before_fit: Callable[[], None] = lambda: None
) -> Iterator[None]:
    """Runs ``before_fit()`` at the start of every ``keras.Model.fit`` of the trial inside and
    puts ``make()``'s callbacks before the trial's own."""
    import keras

    original_fit = keras.Model.fit

    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        before_fit()
        kwargs["callbacks"] = [*make(), *kwargs.get("callbacks", [])]
        return original_fit(self, *args, **kwargs)

    keras.Model.fit = fit
    try:
        yield
    finally:
        keras.Model.fit = original_fit


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


def slow_steps_after_the_first_epoch(config: dict, *, data: Any, fixed: dict) -> None:
    """Every training step after the first epoch takes ``step_sleep_s`` more (default 3 s),
    as a large batch on a slow device does: a trial ASHA stops at epoch 1 is then inside a
    step of epoch 2 when Ray comes to reuse its process."""
    import keras

    pause = float(fixed.get("step_sleep_s", 3.0))

    class SlowSteps(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch = epoch

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if self.epoch >= 1:
                time.sleep(pause)

    with before_fit_callbacks(lambda: [SlowSteps()]):
        train_trial(config, data=data, fixed=fixed)


def out_of_memory_above(config: dict, *, data: Any, fixed: dict) -> None:
    """Raises TensorFlow's device OOM error inside ``fit`` while the batch is above a limit,
    in epoch ``oom_from_epoch + 1`` or later (default: from the first epoch); in a later epoch
    after training its first batch (so the weights in memory are no longer the last
    checkpoint's), as a real OOM mid-epoch would.

    With ``probe_dir`` set, it keeps what the test compares: a copy of every checkpoint the
    trial writes (``epoch-N/``) and, at the first ``fit`` after an OOM, the weights and
    optimizer variables the retry starts from (``retry_start.npz``).
    """
    import keras
    import numpy as np
    import tensorflow as tf

    import search.data as datasets
    from search.trial import trainable

    limit = int(fixed.get("oom_above_batch", 16))
    from_epoch = int(fixed.get("oom_from_epoch", 0))
    probe_dir = fixed.get("probe_dir")
    seen: dict[str, Any] = {}
    original_pipeline = datasets.make_input_pipeline
    original_fit = keras.Model.fit
    original_write = trainable.write_checkpoint

    def pipeline(x: Any, y: Any, *, batch_size: int, training: bool, **kwargs: Any) -> Any:
        if training:
            seen["batch_size"] = batch_size
        return original_pipeline(x, y, batch_size=batch_size, training=training, **kwargs)

    class RunOutOfMemory(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch = epoch

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            if (
                seen.get("batch_size", 0) > limit
                and self.epoch >= from_epoch
                and (batch == (1 if self.epoch > 0 else 0))
            ):
                seen["after_oom"] = True
                raise tf.errors.ResourceExhaustedError(
                    None, None, f"OOM when allocating tensor with batch {seen['batch_size']}"
                )

    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        if seen.pop("after_oom", False) and probe_dir:
            np.savez(os.path.join(probe_dir, "retry_start.npz"), **variables_by_name(self))
        kwargs["callbacks"] = [RunOutOfMemory(), *kwargs.get("callbacks", [])]
        return original_fit(self, *args, **kwargs)

    def write_checkpoint(model: Any, state: Any, **kwargs: Any) -> str:
        folder = original_write(model, state, **kwargs)
        if probe_dir:
            shutil.copytree(folder, os.path.join(probe_dir, f"epoch-{state.epoch}"))
        return folder

    datasets.make_input_pipeline = pipeline
    keras.Model.fit = fit
    trainable.write_checkpoint = write_checkpoint
    try:
        train_trial(config, data=data, fixed=fixed)
    finally:
        datasets.make_input_pipeline = original_pipeline
        keras.Model.fit = original_fit
        trainable.write_checkpoint = original_write


def variables_by_name(model: Any) -> dict[str, Any]:
    """The model's weights and its optimizer's variables as arrays, by unique name (the
    learning rate excluded: an OOM retry halves it on purpose)."""
    found = {f"weight_{i}": v.numpy() for i, v in enumerate(model.weights)}
    for i, variable in enumerate(model.optimizer.variables):
        if "learning_rate" not in variable.path:
            found[f"optimizer_{i}"] = variable.numpy()
    return found


def fault_per_trial(config: dict, *, data: Any, fixed: dict) -> None:
    """Each trial claims the next fault of ``fault_kinds`` (files in ``fault_dir``) and meets
    it after a restart, so every fault hits an attempt that restored a checkpoint copy:

    - every trial's first attempt crashes right after reporting epoch 1 (Ray restarts it from
      that checkpoint);
    - ``crash_then_nan``: the second attempt crashes in ``fit``; in the third the loss becomes
      NaN (the trial fails, no retry);
    - ``oom``: the second attempt runs out of device memory at every batch size (fails).
    """
    import keras
    from ray import tune

    fault_dir = fixed["fault_dir"]
    trial_id = tune.get_context().get_trial_id()
    kind = _claimed_fault(fault_dir, trial_id, fixed["fault_kinds"])
    with open(os.path.join(fault_dir, f"{trial_id}.attempts"), "a+") as attempts:
        attempts.write("x")
        attempts.seek(0)
        attempt = len(attempts.read())

    if attempt == 1:

        def crash_after_epoch_1(metrics: dict) -> None:
            if metrics["epoch"] == 1:
                raise RuntimeError("injected crash after epoch 1")

        with after_each_report(crash_after_epoch_1):
            train_trial(config, data=data, fixed=fixed)
        return
    if kind == "oom":
        out_of_memory_above(config, data=data, fixed={**fixed, "oom_above_batch": 0})
        return

    class NanLoss(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs["loss"] = float("nan")  # the same dict the trial's reporter reads next

    def crash_in_the_second_attempt() -> None:
        if attempt == 2:
            raise RuntimeError("injected crash in fit")

    with before_fit_callbacks(lambda: [NanLoss()], crash_in_the_second_attempt):
        train_trial(config, data=data, fixed=fixed)


def _claimed_fault(fault_dir: str, trial_id: str, kinds: list[str]) -> str:
    """The fault this trial claimed on its first attempt (claims are atomic files)."""
    mine = os.path.join(fault_dir, f"{trial_id}.kind")
    if not os.path.exists(mine):
        for index, kind in enumerate(kinds):
            try:
                os.close(
                    os.open(
                        os.path.join(fault_dir, f"slot-{index}"),
                        os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                    )
                )
            except FileExistsError:
                continue
            with open(mine, "w") as handle:
                handle.write(kind)
            break
        else:
            raise RuntimeError("more trials than fault kinds")
    with open(mine) as handle:
        return handle.read()
