"""What a trial reports to Ray Tune once per epoch: one small value type, free of Ray and
TensorFlow so the driver, the results reader and the tests share it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# The per-epoch metrics Keras gives, in the order the tables show them.
METRICS = ("val_accuracy", "val_loss", "accuracy", "loss")
NAN = float("nan")


@dataclass(frozen=True)
class EpochReport:
    """One epoch of one trial, as ``tune.report`` receives it (``training_iteration`` = epoch).

    Attributes:
        epoch: Epochs trained so far (Ray's time attribute for ASHA).
        val_accuracy, val_loss, accuracy, loss: Keras's metrics of the epoch.
        images_per_s: Training images per second (validation excluded).
        epoch_seconds: The epoch inside the trial's ``fit`` (training and validation, beside
            which a checkpoint's model may be written; the wait for the checkpoint and the
            report not included).
        checkpoint_seconds: What the report waited for its checkpoint after validation (the
            model's write begins with validation where the backend allows; 0: no
            checkpoint this epoch). Ray's copy of it to storage is inside the report.
        wall_seconds: Seconds the trial has held its resources so far, all attempts together:
            from the start of each attempt (device set-up, model build or restore) through
            training, validation and checkpoints, to this report.
        gpu_seconds: ``wall_seconds`` times the GPUs the trial holds (GPU-seconds).
        batch_size, learning_rate_used: What the epoch trained with (an OOM retry halves both).
        oom_retried: Whether the trial was retried at half batch after running out of memory.
        trial_failed, failure_reason: A failure that a retry cannot fix (``nan_loss: ...``).
        gpu_ids, cuda_visible_devices, node_id, precision, backend, attempt_started_at: Where
            and how the attempt ran (``backend``: the Keras backend, ``train.backend``).
    """

    epoch: int
    val_accuracy: float = NAN
    val_loss: float = NAN
    accuracy: float = NAN
    loss: float = NAN
    images_per_s: float = 0.0
    epoch_seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    gpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    batch_size: int = 0
    learning_rate_used: float = NAN
    oom_retried: bool = False
    trial_failed: bool = False
    failure_reason: str = ""
    gpu_ids: str = ""
    cuda_visible_devices: str = ""
    node_id: str = ""
    precision: str = ""
    backend: str = ""
    attempt_started_at: float = 0.0

    def metrics(self) -> dict[str, float]:
        """Just the Keras metrics, by name."""
        return {name: getattr(self, name) for name in METRICS}

    def as_dict(self) -> dict[str, Any]:
        """The report as the flat dict ``tune.report`` takes."""
        return asdict(self)
