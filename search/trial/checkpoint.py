"""A trial's checkpoint: the Keras model (weights and optimizer state) and the small state that
lets a restarted attempt continue where the last one stopped."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

# The model in Keras's unzipped format (config.json, metadata.json, model.weights.h5): half
# the time of a zipped .keras (0.22 s against 0.41 s for VGG16 with its optimizer state, 119
# MB, on the project's CPU machine), as the weights are written once, not built in memory and
# then copied into the archive. ``export`` zips the folder into a .keras file.
MODEL_DIR = "model"
# In every model Keras saves, zipped or not: what tells the unzipped folder is there (object
# stores have no folders to ask about).
KERAS_CONFIG_FILE = "config.json"
# What checkpoints written before 2026-11-30 hold instead: a zipped .keras file.
LEGACY_MODEL_FILE = "model.keras"
STATE_FILE = "state.json"


@dataclass
class TrainingState:
    """What carries from one attempt of a trial to the next (saved as ``state.json``).

    Attributes:
        epoch: Epochs completed.
        batch_size, learning_rate: What training uses now (an OOM retry halves both).
        oom_retried: Whether the half-batch retry was already used.
        gpu_seconds, wall_seconds: Time held so far (see ``EpochReport``), so budgets count
            every attempt.
        last_metrics: The last completed epoch's metrics (what a failure report repeats).
    """

    epoch: int = 0
    batch_size: int = 0
    learning_rate: float = 0.0
    oom_retried: bool = False
    gpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    last_metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any], **defaults: Any) -> TrainingState:
        """The state from ``state.json``; keys it lacks take ``defaults``."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**defaults, **known})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_state(checkpoint_dir: str) -> dict[str, Any]:
    """The raw ``state.json`` of a local checkpoint folder."""
    with open(os.path.join(checkpoint_dir, STATE_FILE), encoding="utf-8") as handle:
        return json.load(handle)


class ModelWrite:
    """A checkpoint's model being saved in a background thread.

    The trial starts one when an epoch's validation begins, where the policy wants a
    checkpoint: the weights and optimizer state no longer change in that epoch, so the writing
    overlaps validation (on a GPU, validation's device time) instead of following it.
    :func:`write_checkpoint` waits for it and adds the state.

    Attributes:
        folder: The new temporary checkpoint folder the model goes into (``model/``).
    """

    def __init__(self, model: Any) -> None:
        self.folder = tempfile.mkdtemp(prefix="trial-ckpt-")
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._save, args=(model,),
                                        name="checkpoint-model-write", daemon=True)
        self._thread.start()

    def _save(self, model: Any) -> None:
        try:
            _save_model(model, self.folder)
        except BaseException as err:  # noqa: BLE001 - re-raised in the trial's thread by wait()
            self._error = err

    def wait(self) -> str:
        """Waits for the write; returns the folder, or raises what the write raised (the
        folder removed)."""
        self._thread.join()
        if self._error is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise self._error
        return self.folder

    def discard(self) -> None:
        """Waits for the write and removes its folder (the epoch will not report it)."""
        self._thread.join()
        shutil.rmtree(self.folder, ignore_errors=True)


def _save_model(model: Any, checkpoint_dir: str) -> None:
    model.save(os.path.join(checkpoint_dir, MODEL_DIR), zipped=False)


def write_checkpoint(model: Any, state: TrainingState, started: ModelWrite | None = None) -> str:
    """Saves the model and the state into a new temporary folder; returns the folder.

    Args:
        model: The model to save (weights and optimizer state).
        state: What a restarted attempt needs (``state.json``).
        started: The model's write, begun earlier in the background: waited for instead of
            saving the model again.
    """
    if started is not None:
        checkpoint_dir = started.wait()
    else:
        checkpoint_dir = tempfile.mkdtemp(prefix="trial-ckpt-")
        _save_model(model, checkpoint_dir)
    with open(os.path.join(checkpoint_dir, STATE_FILE), "w", encoding="utf-8") as handle:
        json.dump(state.to_json(), handle)
    return checkpoint_dir


def model_path(checkpoint_dir: str) -> str:
    """The model inside a local checkpoint folder, for ``keras.saving.load_model``: the
    unzipped folder, or an older checkpoint's ``model.keras``."""
    folder = os.path.join(checkpoint_dir, MODEL_DIR)
    if os.path.exists(os.path.join(folder, KERAS_CONFIG_FILE)):
        return folder
    return os.path.join(checkpoint_dir, LEGACY_MODEL_FILE)


def restore_to_temp(checkpoint: Any) -> str | None:
    """Copies a ``tune.Checkpoint`` to a local temporary folder (``None`` without one).

    A checkpoint that is gone is ``None`` too, with a warning: the pruning of finished trials'
    checkpoints (:mod:`search.driver.pruning`) removed it, and only a trial that had already
    ended when Ray's last snapshot was taken gets it back (``resume`` reruns it from scratch,
    and ASHA stops it again where it was stopped).
    """
    if checkpoint is None:
        return None
    from search.outputs import storage

    # Its state file, not the folder: object stores (S3) have no folders to ask about.
    state = storage.join(checkpoint.path, STATE_FILE)
    if not storage.exists(checkpoint.filesystem, state):
        print(f"warning: checkpoint {checkpoint.path} was pruned after the trial ended; "
              f"training it again from epoch 0", flush=True)
        return None
    local = tempfile.mkdtemp(prefix="trial-restore-")
    checkpoint.to_directory(local)
    return local
