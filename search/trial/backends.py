"""The Keras backend a run trains on: TensorFlow (the default), JAX or PyTorch.

Everything that differs between them lives here: choosing the backend before Keras is imported,
capping GPU memory for fractional ``gpus_per_trial``, recognising an out-of-memory error for the
half-batch retry, determinism for ``retrain``, and the GPUs' compute capability for
``mixed_precision: auto``. Each framework is imported inside the methods, so the driver, and a
trial on another backend, never import it.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from typing import Any

from search.errors import SpecError, TrialFailure
from search.spec import BACKENDS

DEFAULT_BACKEND = "tensorflow"
# What each backend needs installed, for the error when it is missing.
INSTALL_HINTS = {
    "tensorflow": "pip install tensorflow (tensorflow[and-cuda] on GPUs)",
    "jax": "pip install 'finetune-search[jax]' (jax[cuda12] of the same version on GPUs)",
    "torch": "pip install 'finetune-search[torch]' (a CUDA build of the same torch on GPUs)",
}
# A fractional trial's cap leaves this share of its part free for the framework's own use.
MEMORY_HEADROOM = 0.95
JAX_DETERMINISM_FLAG = "--xla_gpu_deterministic_ops=true"

# The GPUs TensorFlow configured in this process: TensorFlow lets a process configure its
# devices only once (before first use), and a trial process is reused for many trials.
_CONFIGURED_GPUS: list[Any] | None = None


def missing_backend_message(name: str) -> str | None:
    """Why ``name`` cannot run in this process, or ``None`` when its package is installed."""
    if importlib.util.find_spec(name) is not None:
        return None
    return (
        f"train.backend: {name} is not installed on {socket.gethostname()} "
        f"({sys.executable}); {INSTALL_HINTS[name]}"
    )


def check_installed(name: str) -> None:
    """Raises :class:`SpecError` when the backend's package is missing (the driver's check).

    Raises:
        SpecError: For an unknown backend or one whose package is not installed.
    """
    if name not in BACKENDS:
        raise SpecError(f"train.backend: must be one of {', '.join(BACKENDS)}, got {name!r}")
    missing = missing_backend_message(name)
    if missing is not None:
        raise SpecError(missing)


def active_backend() -> str:
    """The backend Keras runs on in this process (Keras's own answer once it is imported)."""
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        return str(keras.backend.backend())
    return os.environ.get("KERAS_BACKEND", DEFAULT_BACKEND)


def gpu_total_memory_mb(index: int = 0) -> int | None:
    """Total memory of the process's ``index``-th visible GPU in MiB, from ``nvidia-smi``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    physical = visible.split(",")[index] if visible else str(index)
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=memory.total",
                "--format=csv,noheader,nounits",
                "-i",
                physical,
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return int(out.stdout.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def is_fraction(gpu_fraction: float) -> bool:
    """Whether the run holds part of one GPU (packed with others), so its memory is capped."""
    return 0 < gpu_fraction < 1


def resolve_precision(requested: str, capability: tuple[int, int] | None) -> str:
    """``auto``: bfloat16 on GPUs from Ampere on, float16 on Volta/Turing, float32 otherwise.

    Args:
        requested: ``train.mixed_precision``.
        capability: The first GPU's compute capability, ``None`` without a GPU.
    """
    if requested != "auto":
        return requested
    major = capability[0] if capability else 0
    if major >= 8:
        return "mixed_bfloat16"
    if major >= 7:
        return "mixed_float16"
    return "float32"


class Backend:
    """One framework's device set-up. Subclasses fill in each step for their framework."""

    name = ""
    # Whether a checkpoint's model can be saved in a thread while the epoch's validation runs
    # (validation only reads the variables the save reads).
    saves_during_validation = True

    def set_environment(self, gpu_fraction: float, deterministic: bool) -> None:
        """Environment the framework reads once, at its import (before Keras is imported)."""

    def configure_gpus(self, gpu_fraction: float) -> list[Any]:
        """The visible GPUs, memory capped to ``gpu_fraction`` of one when that is below 1."""
        raise NotImplementedError

    def compute_capability(self, gpus: list[Any]) -> tuple[int, int] | None:
        """The first GPU's compute capability, ``None`` without a GPU."""
        raise NotImplementedError

    def is_out_of_memory(self, err: BaseException) -> bool:
        """Whether ``err`` is the device running out of memory."""
        return "out of memory" in str(err).lower()

    def enable_determinism(self) -> None:
        """Deterministic kernels where the framework offers them (``retrain``)."""


class TensorFlowBackend(Backend):
    """TensorFlow: logical memory limits or memory growth, ``tf.errors``, op determinism."""

    name = "tensorflow"

    def __init__(self, tf: Any = None) -> None:
        self._tf = tf  # a stand-in in tests; TensorFlow itself is imported on first use

    @property
    def tf(self) -> Any:
        if self._tf is None:
            import tensorflow as tf

            self._tf = tf
        return self._tf

    def configure_gpus(self, gpu_fraction: float) -> list[Any]:
        """Memory growth on every visible GPU, or a hard limit when the trial holds a fraction.

        Trials packed on one GPU (``gpus_per_trial: 0.5``) must not take each other's memory:
        growth alone lets the first trial's cache squeeze the second one out. Runs once per
        process; later calls return the GPUs configured the first time.
        """
        global _CONFIGURED_GPUS
        if _CONFIGURED_GPUS is not None:
            return list(_CONFIGURED_GPUS)
        tf = self.tf
        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:
            if is_fraction(gpu_fraction):
                total = gpu_total_memory_mb()
                if total is not None:
                    limit = int(total * gpu_fraction * MEMORY_HEADROOM)
                    tf.config.set_logical_device_configuration(
                        gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit)]
                    )
                    continue
            tf.config.experimental.set_memory_growth(gpu, True)
        _CONFIGURED_GPUS = list(gpus)
        return list(gpus)

    def compute_capability(self, gpus: list[Any]) -> tuple[int, int] | None:
        if not gpus:
            return None
        details = self.tf.config.experimental.get_device_details(gpus[0])
        return tuple(details.get("compute_capability", (0, 0)))  # type: ignore[return-value]

    def is_out_of_memory(self, err: BaseException) -> bool:
        return isinstance(err, self.tf.errors.ResourceExhaustedError) or super().is_out_of_memory(
            err
        )

    def enable_determinism(self) -> None:
        self.tf.config.experimental.enable_op_determinism()


class JaxBackend(Backend):
    """JAX: XLA's allocator settings (read at import), ``RESOURCE_EXHAUSTED``, deterministic
    GPU ops."""

    name = "jax"
    # Keras's JAX evaluate() takes the variables' values out of the model while it runs
    # (``purge_model_variables``): a save beside it would find them gone.
    saves_during_validation = False

    def set_environment(self, gpu_fraction: float, deterministic: bool) -> None:
        # JAX preallocates 75% of each GPU by default: packed trials would not fit, and a
        # whole-GPU trial would leave nothing to the data pipeline's own CUDA use.
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        if is_fraction(gpu_fraction):
            os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{gpu_fraction * MEMORY_HEADROOM:.3f}"
        if deterministic:
            flags = os.environ.get("XLA_FLAGS", "")
            if JAX_DETERMINISM_FLAG not in flags.split():
                os.environ["XLA_FLAGS"] = f"{flags} {JAX_DETERMINISM_FLAG}".strip()

    def configure_gpus(self, gpu_fraction: float) -> list[Any]:
        import jax

        # The cap is the environment set before the import; here only the devices are listed.
        return [d for d in jax.devices() if d.platform in ("gpu", "cuda", "rocm")]

    def compute_capability(self, gpus: list[Any]) -> tuple[int, int] | None:
        if not gpus:
            return None
        text = str(getattr(gpus[0], "compute_capability", "0.0"))
        major, _, minor = text.partition(".")
        return int(major or 0), int(minor or 0)

    def is_out_of_memory(self, err: BaseException) -> bool:
        import jax

        return (
            isinstance(err, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(err)
        ) or super().is_out_of_memory(err)


class TorchBackend(Backend):
    """PyTorch: a per-process memory fraction, ``torch.OutOfMemoryError``, deterministic
    algorithms."""

    name = "torch"

    def set_environment(self, gpu_fraction: float, deterministic: bool) -> None:
        if deterministic:
            # cuBLAS is deterministic only with a fixed workspace (PyTorch's reproducibility
            # notes); it is read when CUDA starts.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    def configure_gpus(self, gpu_fraction: float) -> list[Any]:
        import torch

        gpus = list(range(torch.cuda.device_count()))
        if is_fraction(gpu_fraction):
            for index in gpus:
                torch.cuda.set_per_process_memory_fraction(gpu_fraction * MEMORY_HEADROOM, index)
        return gpus

    def compute_capability(self, gpus: list[Any]) -> tuple[int, int] | None:
        import torch

        if not gpus:
            return None
        major, minor = torch.cuda.get_device_capability(gpus[0])
        return major, minor

    def is_out_of_memory(self, err: BaseException) -> bool:
        import torch

        return isinstance(err, torch.OutOfMemoryError) or super().is_out_of_memory(err)

    def enable_determinism(self) -> None:
        import torch

        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


_BACKEND_CLASSES: dict[str, type[Backend]] = {
    "tensorflow": TensorFlowBackend,
    "jax": JaxBackend,
    "torch": TorchBackend,
}


def get_backend(name: str) -> Backend:
    """The set-up of backend ``name`` (one of ``BACKENDS``), without activating it."""
    if name not in _BACKEND_CLASSES:
        raise SpecError(f"train.backend: must be one of {', '.join(BACKENDS)}, got {name!r}")
    return _BACKEND_CLASSES[name]()


def activate(name: str, *, gpu_fraction: float, deterministic: bool = False) -> Backend:
    """Makes ``name`` this process's Keras backend; call before Keras is imported.

    Keras reads ``KERAS_BACKEND`` once, at its import. A trial process is reused for the
    trials of one search, which all use one backend, so a second call with the same backend
    is a no-op; a different one cannot take effect and fails instead of training silently on
    the wrong framework.

    Args:
        name: One of ``BACKENDS``.
        gpu_fraction: The share of one GPU the run holds (for JAX's allocator settings).
        deterministic: Set up the framework's deterministic kernels (``retrain``).

    Raises:
        TrialFailure: ``backend_missing`` when the package is not installed here,
            ``backend_mismatch`` when Keras already runs on another backend in this process.
    """
    backend = get_backend(name)
    missing = missing_backend_message(name)
    if missing is not None:
        raise TrialFailure("backend_missing", missing)
    if "keras" in sys.modules and active_backend() != name:
        raise TrialFailure(
            "backend_mismatch",
            f"train.backend: this process already runs Keras on {active_backend()} and Keras "
            f"cannot switch to {name} once imported; start a fresh process (a new search)",
        )
    os.environ["KERAS_BACKEND"] = name
    backend.set_environment(gpu_fraction, deterministic)
    return backend
