"""The one set-up sequence of a training run: devices, precision, seed, model, input pipelines.

A search trial (:mod:`search.trial.trainable`), ``retrain`` and the benchmark's plain ``fit``
all train through these functions, so what the benchmark compares against is exactly what a
trial does. TensorFlow and Keras are imported inside the functions, after the GPU environment
is settled.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The GPUs this process configured: TensorFlow lets a process configure its devices only once
# (before first use), and a trial process is reused for many trials.
_CONFIGURED_GPUS: list[Any] | None = None

# Set to 1 only where Ray's GPUs are declared but not real (tests on a CPU machine with
# `ray.init(num_gpus=...)` or `Cluster.add_node(num_gpus=...)`): a trial holding one then trains
# on the CPU instead of failing with `no_gpu`. Never set on a real cluster.
FAKE_GPUS_ENV = "FINETUNE_SEARCH_FAKE_GPUS"


@dataclass
class Runtime:
    """What the set-up decided for this process: the modules, devices and precision."""

    keras: Any
    tf: Any
    gpus: list[Any]
    precision: str


# --------------------------------------------------------------------------------------------
# devices


def hide_unassigned_gpus(gpu_ids: list[str]) -> None:
    """Makes TensorFlow see only this trial's GPUs.

    Ray sets ``CUDA_VISIBLE_DEVICES`` for trials that ask for GPUs, but no longer blanks it for
    trials that ask for none: TensorFlow there would grab every GPU on the node. Must run before
    TensorFlow initialises CUDA.
    """
    if not gpu_ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def gpu_total_memory_mb(index: int = 0) -> int | None:
    """Total memory of the process's ``index``-th visible GPU in MiB, from ``nvidia-smi``."""
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
    growth alone lets the first trial's cache squeeze the second one out. Runs once per
    process; later calls return the GPUs configured the first time.
    """
    global _CONFIGURED_GPUS
    if _CONFIGURED_GPUS is not None:
        return list(_CONFIGURED_GPUS)
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
    _CONFIGURED_GPUS = list(gpus)
    return list(gpus)


def missing_gpu_message(gpu_ids: list[str], visible_gpus: list[Any]) -> str | None:
    """Why a trial cannot use the GPUs it holds, or ``None`` when it can.

    Ray assigns GPUs by what a node declares; TensorFlow finds none when the driver, the
    container's ``--gpus all`` or the CUDA wheels are missing, and would then train on the CPU
    without a word (float32, hours). Such a trial must end instead, naming the cause.

    Args:
        gpu_ids: The GPUs Ray assigned to the trial.
        visible_gpus: The GPUs TensorFlow lists in the trial's process.
    """
    if not gpu_ids or visible_gpus or os.environ.get(FAKE_GPUS_ENV) == "1":
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    return (f"Ray assigned GPU {','.join(gpu_ids)} but TensorFlow sees no GPU "
            f"(CUDA_VISIBLE_DEVICES={visible}); check the NVIDIA driver, the container's "
            f"--gpus all and tensorflow[and-cuda]")


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


def is_out_of_memory(tf: Any, err: BaseException) -> bool:
    """Whether ``err`` is the device running out of memory."""
    return isinstance(err, tf.errors.ResourceExhaustedError) or "out of memory" in str(
        err).lower()


# --------------------------------------------------------------------------------------------
# the set-up sequence


def prepare(params: Mapping[str, Any], *, gpu_fraction: float, gpu_ids: list[str] | None = None,
            deterministic: bool = False) -> Runtime:
    """Settles devices, precision and seeds for one training run in this process.

    Args:
        params: The run's settings (``mixed_precision``, ``seed``).
        gpu_fraction: The share of one GPU the run holds (1 for a whole GPU, 0 for none).
        gpu_ids: The GPUs Ray assigned; ``[]`` hides every GPU, ``None`` leaves them as they
            are (a run outside Ray).
        deterministic: Turn on TensorFlow's op determinism (``retrain``).
    """
    if gpu_ids is not None:
        hide_unassigned_gpus(gpu_ids)
    import keras
    import tensorflow as tf

    # Trial processes are reused across trials: drop the previous run's graph and layers.
    keras.backend.clear_session()
    gpus = configure_gpus(tf, gpu_fraction)
    precision = resolve_precision(tf, params["mixed_precision"], gpus)
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(int(params["seed"]))
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    return Runtime(keras=keras, tf=tf, gpus=gpus, precision=precision)


def make_optimizer(keras: Any, params: Mapping[str, Any]) -> Any:
    """SGD (with momentum) or Adam at ``params["learning_rate"]``."""
    if params["optimizer"] == "adam":
        return keras.optimizers.Adam(learning_rate=params["learning_rate"])
    return keras.optimizers.SGD(learning_rate=params["learning_rate"],
                                momentum=params.get("momentum", 0.9))


def build_compiled_model(params: Mapping[str, Any], input_shape: tuple[int, ...],
                         num_classes: int) -> Any:
    """Builds the run's model through ``model_zoo`` and compiles it."""
    import keras

    from model_zoo import MODEL_KEYS, build_model

    model_config = {k: params[k] for k in MODEL_KEYS if k in params}
    model = build_model(model_config, input_shape=input_shape, num_classes=num_classes)
    model.compile(optimizer=make_optimizer(keras, params),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=params.get("jit_compile", "auto"))
    return model


def make_pipelines(params: Mapping[str, Any], x_train: Any, y_train: Any, x_eval: Any,
                   y_eval: Any, batch_size: int) -> tuple[Any, Any]:
    """The training pipeline (shuffled, augmented as ``params["augment"]`` says) and the
    evaluation pipeline (in order), both seeded from ``params["seed"]``."""
    from search.data import make_input_pipeline

    seed = int(params["seed"])
    train = make_input_pipeline(x_train, y_train, batch_size=batch_size, training=True,
                                seed=seed, augment=params.get("augment", "none"))
    evaluation = make_input_pipeline(x_eval, y_eval, batch_size=batch_size, training=False,
                                     seed=seed)
    return train, evaluation
