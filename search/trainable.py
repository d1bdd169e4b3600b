"""One trial: build the model through ``model_zoo``, train it epoch by epoch, report each epoch.

Thin on purpose. TensorFlow is imported inside the trial (the driver never pays for it and the
GPU environment is settled first); the dataset arrives once through Ray's object store
(``tune.with_parameters``); every epoch ends in exactly one ``tune.report`` with a checkpoint
(weights and optimizer state) so ``training_iteration`` equals the epoch and a restarted trial
continues where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from ray import tune

from search.errors import TrialFailure

MODEL_FILE = "model.keras"
STATE_FILE = "state.json"


# --------------------------------------------------------------------------------------------
# devices


def assigned_gpu_ids() -> list[str]:
    """The GPU ids Ray gave this trial ([] for a trial that asked for none)."""
    import ray

    return [str(i) for i in ray.get_gpu_ids()]


def hide_unassigned_gpus(gpu_ids: list[str]) -> None:
    """Makes TensorFlow see only this trial's GPUs.

    Ray sets ``CUDA_VISIBLE_DEVICES`` for trials that ask for GPUs, but no longer blanks it for
    trials that ask for none: TensorFlow there would grab every GPU on the node. Must run before
    TensorFlow initialises CUDA.
    """
    if not gpu_ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def gpu_total_memory_mb(index: int = 0) -> int | None:
    """Total memory of the trial's ``index``-th visible GPU in MiB, from ``nvidia-smi``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    physical = visible.split(",")[index] if visible else str(index)
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits",
             "-i", physical], capture_output=True, text=True, timeout=10, check=True)
        return int(out.stdout.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def configure_gpus(tf: Any, gpu_fraction: float) -> list[Any]:
    """Memory growth on every visible GPU, or a hard limit when the trial holds a fraction.

    Trials packed on one GPU (``gpus_per_trial: 0.5``) must not take each other's memory:
    growth alone lets the first trial's cache squeeze the second one out.
    """
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        if 0 < gpu_fraction < 1:
            total = gpu_total_memory_mb()
            if total is not None:
                limit = int(total * gpu_fraction * 0.95)
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit)])
                continue
        tf.config.experimental.set_memory_growth(gpu, True)
    return gpus


def resolve_precision(tf: Any, requested: str, gpus: list[Any]) -> str:
    """``auto``: bfloat16 on GPUs from Ampere on, float16 on Volta/Turing, float32 otherwise."""
    if requested != "auto":
        return requested
    if not gpus:
        return "float32"
    details = tf.config.experimental.get_device_details(gpus[0])
    major, _ = details.get("compute_capability", (0, 0))
    if major >= 8:
        return "mixed_bfloat16"
    if major >= 7:
        return "mixed_float16"
    return "float32"


# --------------------------------------------------------------------------------------------
# the trial


def make_optimizer(keras: Any, params: Mapping[str, Any]) -> Any:
    if params["optimizer"] == "adam":
        return keras.optimizers.Adam(learning_rate=params["learning_rate"])
    return keras.optimizers.SGD(learning_rate=params["learning_rate"],
                                momentum=params.get("momentum", 0.9))


def build_compiled_model(params: Mapping[str, Any], data: Any, jit_compile: Any) -> Any:
    """Builds the trial's model through ``model_zoo`` and compiles it."""
    import keras

    from model_zoo import MODEL_KEYS, build_model

    model_config = {k: params[k] for k in MODEL_KEYS if k in params}
    model = build_model(model_config, input_shape=data.input_shape, num_classes=data.num_classes)
    model.compile(optimizer=make_optimizer(keras, params),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=jit_compile)
    return model


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


def _load_state(checkpoint: tune.Checkpoint | None) -> tuple[str | None, dict[str, Any]]:
    if checkpoint is None:
        return None, {}
    local = tempfile.mkdtemp(prefix="trial-restore-")
    checkpoint.to_directory(local)
    with open(os.path.join(local, STATE_FILE), encoding="utf-8") as handle:
        return local, json.load(handle)


def _is_oom(tf: Any, err: BaseException) -> bool:
    return isinstance(err, tf.errors.ResourceExhaustedError) or "out of memory" in str(err).lower()


def train_trial(config: dict[str, Any], *, data: Any, fixed: Mapping[str, Any]) -> None:
    """Trains one configuration and reports every epoch to Ray Tune.

    Args:
        config: The searched settings Optuna drew for this trial.
        data: A :class:`search.datasets.Dataset` (from the object store).
        fixed: The settings every trial shares (``ExperimentSpec.fixed_config()``), including
            ``epochs``, ``batch_size``, ``seed`` and, from the driver, ``gpus_per_trial``.
    """
    params = {**fixed, **config}
    started_at = time.time()
    gpu_ids = assigned_gpu_ids()
    hide_unassigned_gpus(gpu_ids)

    import keras
    import tensorflow as tf

    from search.datasets import make_input_pipeline

    # Trial processes are reused across trials: drop the previous trial's graph and layers.
    keras.backend.clear_session()
    gpus = configure_gpus(tf, float(params.get("gpus_per_trial", 0) or 0))
    precision = resolve_precision(tf, params["mixed_precision"], gpus)
    keras.mixed_precision.set_global_policy(precision)
    jit = params.get("jit_compile", "auto")
    keras.utils.set_random_seed(int(params["seed"]))

    restore_dir, state = _load_state(tune.get_checkpoint())
    batch_size = int(state.get("batch_size", params["batch_size"]))
    learning_rate = float(state.get("learning_rate", params["learning_rate"]))
    oom_retried = bool(state.get("oom_retried", False))
    gpu_count = float(params.get("gpus_per_trial", 0) or 0)
    # GPU-seconds and wall time carry across restarts so budgets count every attempt.
    gpu_seconds = float(state.get("gpu_seconds", 0.0))
    wall_seconds = float(state.get("wall_seconds", 0.0))
    start_epoch = int(state.get("epoch", 0))
    last: dict[str, float] = dict(state.get("last_metrics", {}))

    def build(bs: int, lr: float) -> Any:
        run_params = {**params, "batch_size": bs, "learning_rate": lr}
        if restore_dir is not None:
            return keras.saving.load_model(os.path.join(restore_dir, MODEL_FILE))
        return build_compiled_model(run_params, data, jit)

    timer = _EpochTimer(keras)
    model = build(batch_size, learning_rate)
    val_ds = make_input_pipeline(data.x_val, data.y_val, batch_size=batch_size, training=False,
                                 seed=int(params["seed"]))
    train_ds = make_input_pipeline(data.x_train, data.y_train, batch_size=batch_size,
                                   training=True, seed=int(params["seed"]),
                                   augment=params.get("augment", "none"))
    epochs = int(params["epochs"])
    epoch = start_epoch
    while epoch < epochs:
        began = time.perf_counter()
        try:
            history = model.fit(train_ds, validation_data=val_ds, initial_epoch=epoch,
                                epochs=epoch + 1, verbose=0, shuffle=False,
                                callbacks=[timer.callback, keras.callbacks.TerminateOnNaN()])
        except Exception as err:  # noqa: BLE001 - only device OOM is handled, the rest re-raised
            if not _is_oom(tf, err):
                raise
            if oom_retried or batch_size < 2:
                _report_failure(last, epoch, "oom", f"out of device memory at batch_size="
                                f"{batch_size}: {str(err).splitlines()[0][:200]}",
                                gpu_seconds, wall_seconds, batch_size, oom_retried, gpu_ids)
                return
            # Retry once with half the batch; the learning rate follows linearly so the
            # update size per example stays the same.
            oom_retried = True
            batch_size //= 2
            learning_rate /= 2
            keras.backend.clear_session()
            model = build(batch_size, learning_rate)
            model.optimizer.learning_rate.assign(learning_rate)
            train_ds = make_input_pipeline(data.x_train, data.y_train, batch_size=batch_size,
                                           training=True, seed=int(params["seed"]),
                                           augment=params.get("augment", "none"))
            val_ds = make_input_pipeline(data.x_val, data.y_val, batch_size=batch_size,
                                         training=False, seed=int(params["seed"]))
            continue
        elapsed = time.perf_counter() - began
        wall_seconds += elapsed
        gpu_seconds += elapsed * gpu_count
        epoch += 1
        logs = {k: float(v[-1]) for k, v in history.history.items()}
        train_seconds = timer.train_seconds or elapsed
        metrics = {
            "epoch": epoch,
            "val_accuracy": logs.get("val_accuracy", float("nan")),
            "val_loss": logs.get("val_loss", float("nan")),
            "accuracy": logs.get("accuracy", float("nan")),
            "loss": logs.get("loss", float("nan")),
            "images_per_s": len(data.x_train) / max(train_seconds, 1e-9),
        }
        if not all(math.isfinite(metrics[k]) for k in ("loss", "val_loss")):
            _report_failure(last, epoch, "nan_loss",
                            f"loss became {metrics['loss']} at epoch {epoch}", gpu_seconds,
                            wall_seconds, batch_size, oom_retried, gpu_ids)
            return
        last = {k: metrics[k] for k in ("val_accuracy", "val_loss", "accuracy", "loss")}
        extra = {"gpu_seconds": gpu_seconds, "wall_seconds": wall_seconds,
                 "batch_size": batch_size, "learning_rate_used": learning_rate,
                 "oom_retried": oom_retried, "trial_failed": False, "failure_reason": "",
                 "gpu_ids": ",".join(gpu_ids), "precision": precision,
                 "node_id": _node_id(), "attempt_started_at": started_at,
                 "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")}
        checkpoint_dir = tempfile.mkdtemp(prefix="trial-ckpt-")
        model.save(os.path.join(checkpoint_dir, MODEL_FILE))
        with open(os.path.join(checkpoint_dir, STATE_FILE), "w", encoding="utf-8") as handle:
            json.dump({"epoch": epoch, "batch_size": batch_size, "learning_rate": learning_rate,
                       "oom_retried": oom_retried, "gpu_seconds": gpu_seconds,
                       "wall_seconds": wall_seconds, "last_metrics": last}, handle)
        tune.report({**metrics, **extra},
                    checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    if restore_dir is not None:
        shutil.rmtree(restore_dir, ignore_errors=True)


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _report_failure(last: Mapping[str, float], epoch: int, reason: str, message: str,
                    gpu_seconds: float, wall_seconds: float, batch_size: int,
                    oom_retried: bool, gpu_ids: list[str]) -> None:
    """Ends the trial as failed, without a retry: Ray's retries cannot fix a NaN or an OOM."""
    failure = TrialFailure(reason, message)
    tune.report({
        "epoch": max(epoch, 1),
        "val_accuracy": last.get("val_accuracy", float("nan")),
        "val_loss": last.get("val_loss", float("nan")),
        "accuracy": last.get("accuracy", float("nan")),
        "loss": last.get("loss", float("nan")),
        "images_per_s": 0.0,
        "gpu_seconds": gpu_seconds, "wall_seconds": wall_seconds, "batch_size": batch_size,
        "oom_retried": oom_retried, "trial_failed": True, "failure_reason": str(failure),
        "gpu_ids": ",".join(gpu_ids), "node_id": _node_id(),
    })
