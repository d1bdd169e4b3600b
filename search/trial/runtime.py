"""The one set-up sequence of a training run: devices, precision, seed, model, input pipelines.

A search trial (:mod:`search.trial.trainable`), ``retrain`` and the benchmark's plain ``fit``
all train through these functions, so what the benchmark compares against is exactly what a
trial does. Keras and its backend (:mod:`search.trial.backends`: TensorFlow, JAX or PyTorch) are
imported inside the functions, after the backend and the GPU environment are settled.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from search.trial import backends

# Set to 1 only where Ray's GPUs are declared but not real (tests on a CPU machine with
# `ray.init(num_gpus=...)` or `Cluster.add_node(num_gpus=...)`): a trial holding one then trains
# on the CPU instead of failing with `no_gpu`. Never set on a real cluster.
FAKE_GPUS_ENV = "FINETUNE_SEARCH_FAKE_GPUS"
# Each backend's name in messages and the CUDA build it needs.
BACKEND_GPU_BUILDS = {
    "tensorflow": ("TensorFlow", "tensorflow[and-cuda]"),
    "jax": ("JAX", "jax[cuda12]"),
    "torch": ("PyTorch", "a CUDA build of torch"),
}


@dataclass
class Runtime:
    """What the set-up decided for this process: Keras, its backend, devices and precision."""

    keras: Any
    backend: backends.Backend
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


def missing_gpu_message(
    gpu_ids: list[str], visible_gpus: list[Any], backend: str = backends.DEFAULT_BACKEND
) -> str | None:
    """Why a trial cannot use the GPUs it holds, or ``None`` when it can.

    Ray assigns GPUs by what a node declares; the framework finds none when the driver, the
    container's ``--gpus all`` or the CUDA wheels are missing, and would then train on the CPU
    without a word (float32, hours). Such a trial must end instead, naming the cause.

    Args:
        gpu_ids: The GPUs Ray assigned to the trial.
        visible_gpus: The GPUs the framework lists in the trial's process.
        backend: The Keras backend (which framework's CUDA build to check).
    """
    if not gpu_ids or visible_gpus or os.environ.get(FAKE_GPUS_ENV) == "1":
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    name, wheels = BACKEND_GPU_BUILDS[backend]
    return (
        f"Ray assigned GPU {','.join(gpu_ids)} but {name} sees no GPU "
        f"(CUDA_VISIBLE_DEVICES={visible}); check the NVIDIA driver, the container's "
        f"--gpus all and {wheels}"
    )


# --------------------------------------------------------------------------------------------
# the set-up sequence


def prepare(
    params: Mapping[str, Any],
    *,
    gpu_fraction: float,
    gpu_ids: list[str] | None = None,
    deterministic: bool = False,
) -> Runtime:
    """Settles backend, devices, precision and seeds for one training run in this process.

    Args:
        params: The run's settings (``backend``, ``mixed_precision``, ``seed``).
        gpu_fraction: The share of one GPU the run holds (1 for a whole GPU, 0 for none).
        gpu_ids: The GPUs Ray assigned; ``[]`` hides every GPU, ``None`` leaves them as they
            are (a run outside Ray).
        deterministic: Turn on the backend's deterministic kernels (``retrain``).

    Raises:
        TrialFailure: When the backend is not installed, or Keras already runs on another
            backend in this process.
    """
    if gpu_ids is not None:
        hide_unassigned_gpus(gpu_ids)
    backend = backends.activate(
        params.get("backend", backends.DEFAULT_BACKEND),
        gpu_fraction=gpu_fraction,
        deterministic=deterministic,
    )
    import keras

    # Trial processes are reused across trials: drop the previous run's graph and layers.
    keras.backend.clear_session()
    gpus = backend.configure_gpus(gpu_fraction)
    precision = backends.resolve_precision(
        params["mixed_precision"], backend.compute_capability(gpus)
    )
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(int(params["seed"]))
    if deterministic:
        backend.enable_determinism()
    return Runtime(keras=keras, backend=backend, gpus=gpus, precision=precision)


def make_optimizer(keras: Any, params: Mapping[str, Any]) -> Any:
    """SGD (with momentum) or Adam at ``params["learning_rate"]``."""
    if params["optimizer"] == "adam":
        return keras.optimizers.Adam(learning_rate=params["learning_rate"])
    return keras.optimizers.SGD(
        learning_rate=params["learning_rate"], momentum=params.get("momentum", 0.9)
    )


def build_compiled_model(
    params: Mapping[str, Any], input_shape: tuple[int, int, int], num_classes: int
) -> Any:
    """Builds the run's model through ``model_zoo`` and compiles it."""
    import keras

    from model_zoo import MODEL_KEYS, build_model

    model_config = {k: params[k] for k in MODEL_KEYS if k in params}
    model = build_model(model_config, input_shape=input_shape, num_classes=num_classes)
    model.compile(
        optimizer=make_optimizer(keras, params),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=params.get("jit_compile", "auto"),
    )
    return model


def make_pipelines(
    params: Mapping[str, Any],
    x_train: Any,
    y_train: Any,
    x_eval: Any,
    y_eval: Any,
    batch_size: int,
) -> tuple[Any, Any]:
    """The training pipeline (shuffled, augmented as ``params["augment"]`` says) and the
    evaluation pipeline (in order), both seeded from ``params["seed"]``.

    TensorFlow trains from ``tf.data`` (:func:`search.data.make_input_pipeline`); JAX and
    PyTorch from NumPy batches (:func:`search.data.batches.make_batches`), with no TensorFlow.
    """
    if params.get("backend", backends.DEFAULT_BACKEND) == "tensorflow":
        from search.data import make_input_pipeline as make
    else:
        from search.data.batches import make_batches as make

    seed = int(params["seed"])
    train = make(
        x_train,
        y_train,
        batch_size=batch_size,
        training=True,
        seed=seed,
        augment=params.get("augment", "none"),
    )
    evaluation = make(x_eval, y_eval, batch_size=batch_size, training=False, seed=seed)
    return train, evaluation
