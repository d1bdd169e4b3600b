"""One trial: build the model through ``model_zoo``, train it epoch by epoch, report each epoch.

Thin on purpose. TensorFlow is imported inside the trial (the driver never pays for it and the
GPU environment is settled first, by :func:`search.trial.runtime.prepare`); the dataset arrives
once through Ray's object store (``tune.with_parameters``); every epoch ends in exactly one
``tune.report`` with a checkpoint (weights and optimizer state) so ``training_iteration`` equals
the epoch and a restarted trial continues where it stopped.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

from ray import tune

from search.errors import TrialFailure
from search.trial import runtime
from search.trial.checkpoint import (
    MODEL_FILE,
    TrainingState,
    read_state,
    restore_to_temp,
    write_checkpoint,
)
from search.trial.report import METRICS, EpochReport


def assigned_gpu_ids() -> list[str]:
    """The GPU ids Ray gave this trial ([] for a trial that asked for none)."""
    import ray

    return [str(i) for i in ray.get_gpu_ids()]


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


class _EpochTimer:
    """Measures the training part of an epoch (validation excluded) for ``images_per_s``."""

    def __init__(self, keras: Any) -> None:
        timer = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                timer.start = time.perf_counter()
                timer.train_seconds = None

            def on_test_begin(self, logs: Any = None) -> None:
                if timer.train_seconds is None:
                    timer.train_seconds = time.perf_counter() - timer.start

        self.start = 0.0
        self.train_seconds: float | None = None
        self.callback = Callback()


class _Attempt:
    """Where this attempt runs and what it has done: the fields every report repeats."""

    def __init__(self, state: TrainingState, gpu_ids: list[str], precision: str) -> None:
        self.state = state
        self.gpu_ids = gpu_ids
        self.precision = precision
        self.started_at = time.time()

    def report(self, **fields: Any) -> EpochReport:
        state = self.state
        return EpochReport(
            gpu_seconds=state.gpu_seconds, wall_seconds=state.wall_seconds,
            batch_size=state.batch_size, learning_rate_used=state.learning_rate,
            oom_retried=state.oom_retried, gpu_ids=",".join(self.gpu_ids),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
            node_id=_node_id(), precision=self.precision,
            attempt_started_at=self.started_at, **fields)

    def fail(self, reason: str, message: str) -> None:
        """Ends the trial as failed, without a retry: Ray's retries cannot fix a NaN or an
        OOM."""
        last = self.state.last_metrics
        tune.report(self.report(epoch=max(self.state.epoch, 1), trial_failed=True,
                                failure_reason=str(TrialFailure(reason, message)),
                                **{m: last.get(m, float("nan")) for m in METRICS}).as_dict())


def train_trial(config: dict[str, Any], *, data: Any, fixed: Mapping[str, Any]) -> None:
    """Trains one configuration and reports every epoch to Ray Tune.

    Args:
        config: The searched settings Optuna drew for this trial.
        data: A :class:`search.data.Dataset` (from the object store).
        fixed: The settings every trial shares (``ExperimentSpec.fixed_config()``), including
            ``epochs``, ``batch_size``, ``seed`` and, from the driver, ``gpus_per_trial``.
    """
    params = {**fixed, **config}
    gpu_count = float(params.get("gpus_per_trial", 0) or 0)
    gpu_ids = assigned_gpu_ids()
    run = runtime.prepare(params, gpu_fraction=gpu_count, gpu_ids=gpu_ids)
    keras, tf = run.keras, run.tf

    restore_dir = restore_to_temp(tune.get_checkpoint())
    state = TrainingState.from_json(
        read_state(restore_dir) if restore_dir else {},
        batch_size=int(params["batch_size"]), learning_rate=float(params["learning_rate"]))
    attempt = _Attempt(state, gpu_ids, run.precision)
    missing = runtime.missing_gpu_message(gpu_ids, run.gpus)
    if missing is not None:
        attempt.fail("no_gpu", missing)
        if restore_dir is not None:
            shutil.rmtree(restore_dir, ignore_errors=True)
        return

    def build() -> tuple[Any, Any, Any]:
        if restore_dir is not None:
            model = keras.saving.load_model(os.path.join(restore_dir, MODEL_FILE))
        else:
            run_params = {**params, "batch_size": state.batch_size,
                          "learning_rate": state.learning_rate}
            model = runtime.build_compiled_model(run_params, data.input_shape, data.num_classes)
        train_ds, val_ds = runtime.make_pipelines(params, data.x_train, data.y_train,
                                                  data.x_val, data.y_val, state.batch_size)
        return model, train_ds, val_ds

    timer = _EpochTimer(keras)
    model, train_ds, val_ds = build()
    epochs = int(params["epochs"])
    while state.epoch < epochs:
        began = time.perf_counter()
        try:
            history = model.fit(train_ds, validation_data=val_ds, initial_epoch=state.epoch,
                                epochs=state.epoch + 1, verbose=0, shuffle=False,
                                callbacks=[timer.callback, keras.callbacks.TerminateOnNaN()])
        except Exception as err:  # noqa: BLE001 - only device OOM is handled, the rest re-raised
            if not runtime.is_out_of_memory(tf, err):
                raise
            if state.oom_retried or state.batch_size < 2:
                attempt.fail("oom", f"out of device memory at batch_size={state.batch_size}: "
                             f"{str(err).splitlines()[0][:200]}")
                return
            # Retry once with half the batch; the learning rate follows linearly so the
            # update size per example stays the same.
            state.oom_retried = True
            state.batch_size //= 2
            state.learning_rate /= 2
            keras.backend.clear_session()
            model, train_ds, val_ds = build()
            model.optimizer.learning_rate.assign(state.learning_rate)
            continue
        elapsed = time.perf_counter() - began
        state.wall_seconds += elapsed
        state.gpu_seconds += elapsed * gpu_count
        state.epoch += 1
        logs = {k: float(v[-1]) for k, v in history.history.items()}
        train_seconds = timer.train_seconds or elapsed
        metrics = {m: logs.get(m, float("nan")) for m in METRICS}
        if not all(math.isfinite(metrics[k]) for k in ("loss", "val_loss")):
            attempt.fail("nan_loss", f"loss became {metrics['loss']} at epoch {state.epoch}")
            return
        state.last_metrics = metrics
        report = attempt.report(epoch=state.epoch, **metrics,
                                images_per_s=len(data.x_train) / max(train_seconds, 1e-9))
        checkpoint_dir = write_checkpoint(model, state)
        tune.report(report.as_dict(), checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    if restore_dir is not None:
        shutil.rmtree(restore_dir, ignore_errors=True)
