"""A trial's checkpoint: the Keras model (weights and optimizer state) and the small state that
lets a restarted attempt continue where the last one stopped."""

from __future__ import annotations

import functools
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
# A trial's local copies of checkpoints: a whole model each, named after the process that made
# them, so that the next trial on the node removes those of a process that was SIGKILLed (the
# OOM killer, a dead driver's group) and could not remove its own.
TEMP_PREFIXES = ("trial-ckpt-", "trial-restore-")


def temp_folder(kind: str) -> str:
    """A new local temporary folder of this process (``kind``: one of
    :data:`TEMP_PREFIXES`)."""
    return tempfile.mkdtemp(prefix=f"{kind}{os.getpid()}-")


def remove_temp_folders_of_dead_processes() -> list[str]:
    """Removes the local checkpoint copies left by trial processes that no longer run; returns
    their paths."""
    removed = []
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        kind = next((k for k in TEMP_PREFIXES if name.startswith(k)), None)
        pid = name[len(kind) :].split("-", 1)[0] if kind else ""
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            removed.append(os.path.join(root, name))
        except PermissionError:
            pass  # alive, another user's
    return removed


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
    checkpoint: the variables (weights and optimizer state) no longer change in that epoch,
    so the saving overlaps validation. The epoch's end waits until the write no longer reads
    the model (:meth:`wait_until_copied`); the report waits for the rest
    (:func:`write_checkpoint`). Two ways:

    - ``beside_training=False``: Keras's ``model.save`` (unzipped), whole before the next
      epoch trains. For trials on the CPU: there the next epoch needs every core, and
      writing beside it made a 2-core trial slower than waiting (see README, Performance).
    - ``beside_training=True``: the variables copied to host memory first (a
      :class:`ModelSnapshot`), then written from that copy while the next epoch trains, as
      asynchronous checkpointing does elsewhere (Orbax, ``torch.distributed.checkpoint``'s
      ``async_save``). For trials on a GPU: the device waits only for the copy, and the
      host's cores, idle while the device trains, do the writing. It holds host memory for
      the copy until written (two copies at most: one report, with its write, is in flight
      at a time).

    Attributes:
        folder: The new temporary checkpoint folder the model goes into (``model/``).
        beside_training: Which of the two.
    """

    def __init__(self, model: Any, *, beside_training: bool = False) -> None:
        self.folder = temp_folder("trial-ckpt-")
        self.beside_training = beside_training
        self._error: BaseException | None = None
        self._copy_error: BaseException | None = None
        self._copied = threading.Event()
        self._thread = threading.Thread(
            target=self._save, args=(model,), name="checkpoint-model-write", daemon=True
        )
        self._thread.start()

    def _save(self, model: Any) -> None:
        model_dir = os.path.join(self.folder, MODEL_DIR)
        try:  # what reads the model: the copy, or (the CPU way) the whole save
            if self.beside_training:
                snapshot = ModelSnapshot.take(model, model_dir)
            else:
                model.save(model_dir, zipped=False)
        except BaseException as err:  # noqa: BLE001 - re-raised by wait_until_copied()
            self._error = self._copy_error = err
            return
        finally:
            self._copied.set()
        if self.beside_training:
            try:
                snapshot.write(model_dir)
            except BaseException as err:  # noqa: BLE001 - re-raised in the trial's thread by wait()
                self._error = err

    def wait_until_copied(self) -> None:
        """Waits until the write no longer reads the model (the model may train again after
        it): the snapshot taken, or the whole model saved; raises what failed until then
        (the folder removed). What the writing from a snapshot raises comes from
        :meth:`wait`."""
        self._copied.wait()
        if self._copy_error is not None:
            self.wait()

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


@dataclass(frozen=True, eq=False)
class ModelSnapshot:
    """A Keras model as ``model.save(path, zipped=False)`` would write it, held in host memory.

    Taken by running Keras's own saving walk (``saving_lib._save_state``) into a store that
    keeps copies of the arrays instead of writing them; :meth:`write` replays the same calls
    into Keras's HDF5 store, so the folder is the one ``model.save`` writes. Keras's saving
    internals are not a public API: ``tests/search/trial/test_checkpoint.py`` compares the
    two folders, so a Keras release that changes them fails there rather than writing a
    different checkpoint.

    Attributes:
        config_json, metadata_json: The model's ``config.json`` and ``metadata.json``.
        entries: Keras's store calls in order: (inner path, metadata given to ``make`` or
            ``None``, the (key, array) pairs set on that entry).
    """

    config_json: str
    metadata_json: str
    entries: tuple[tuple[str, dict[str, Any] | None, tuple[tuple[str, Any], ...]], ...]

    @classmethod
    def take(cls, model: Any, model_dir: str) -> ModelSnapshot:
        """Copies the model's variables and configuration to host memory.

        Args:
            model: The Keras model.
            model_dir: Where :meth:`write` will write the model: Keras's walk writes the
                model's assets (small fixed files such as a lookup layer's vocabulary; an
                empty ``assets`` folder for most models) there at once.
        """
        from keras.src.saving import saving_lib

        config_json, metadata_json = saving_lib._serialize_model_as_json(model)
        store = _recording_store_class(saving_lib.H5IOStore)()
        assets = saving_lib.DiskIOStore(
            os.path.join(model_dir, saving_lib._ASSETS_DIRNAME), mode="w"
        )
        try:
            saving_lib._save_state(
                model,
                weights_store=store,
                assets_store=assets,
                inner_path="",
                visited_saveables=set(),
            )
        finally:
            assets.close()
        return cls(
            config_json,
            metadata_json,
            tuple((path, metadata, tuple(items)) for path, metadata, items in store.entries),
        )

    @property
    def nbytes(self) -> int:
        """Bytes of the copied arrays."""
        return sum(value.nbytes for _, _, items in self.entries for _, value in items)

    def write(self, model_dir: str) -> None:
        """Writes the model folder (``config.json``, ``metadata.json``, ``model.weights.h5``)."""
        from keras.src.saving import saving_lib

        os.makedirs(model_dir, exist_ok=True)
        for name, text in (
            (saving_lib._METADATA_FILENAME, self.metadata_json),
            (saving_lib._CONFIG_FILENAME, self.config_json),
        ):
            with open(os.path.join(model_dir, name), "w", encoding="utf-8") as handle:
                handle.write(text)
        store = saving_lib.H5IOStore(os.path.join(model_dir, saving_lib._VARS_FNAME_H5), mode="w")
        try:
            for path, metadata, items in self.entries:
                # As Keras called it: older releases' ``make`` takes no metadata.
                entry = (
                    store.make(path) if metadata is None else store.make(path, metadata=metadata)
                )
                for key, value in items:
                    entry[key] = value
        finally:
            store.close()


@functools.cache
def _recording_store_class(h5_store: type) -> type:
    """A Keras weights store that records what Keras's saving walk sets, copied to host
    memory, instead of writing it (a subclass: the walk accepts only Keras's store types)."""
    import numpy as np
    from keras import ops

    class RecordingStore(h5_store):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:  # no file: nothing of the parent's state is used
            self.entries: list[tuple[str, dict[str, Any] | None, list[tuple[str, Any]]]] = []

        def __bool__(self) -> bool:
            return True

        def make(self, path: str, metadata: dict[str, Any] | None = None) -> RecordingStore:
            self.entries.append((path, metadata, []))
            return self

        def __setitem__(self, key: str, value: Any) -> None:
            array = ops.convert_to_numpy(value)
            # An array that does not own its memory may be a view of the live variable
            # (PyTorch's CPU tensors): the next training step would change the snapshot.
            if not array.flags.owndata:
                array = np.array(array, copy=True)
            self.entries[-1][2].append((key, array))

        def __len__(self) -> int:
            return len(self.entries[-1][2]) if self.entries else 0

        def keys(self) -> list[str]:
            return [key for key, _ in self.entries[-1][2]] if self.entries else []

        def close(self) -> None:
            pass

    return RecordingStore


def write_checkpoint(model: Any, state: TrainingState, started: ModelWrite | None = None) -> str:
    """Saves the model and the state into a new temporary folder; returns the folder.

    Args:
        model: The model to save (weights and optimizer state).
        state: What a restarted attempt needs (``state.json``).
        started: The model's write, begun earlier in the background: waited for instead of
            saving the model again (``model`` is not read then).
    """
    if started is not None:
        checkpoint_dir = started.wait()
    else:
        checkpoint_dir = temp_folder("trial-ckpt-")
        model.save(os.path.join(checkpoint_dir, MODEL_DIR), zipped=False)
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
    from search import storage

    # Its state file, not the folder: object stores (S3) have no folders to ask about.
    state = storage.join(checkpoint.path, STATE_FILE)
    if not storage.exists(checkpoint.filesystem, state):
        print(
            f"warning: checkpoint {checkpoint.path} was pruned after the trial ended; "
            f"training it again from epoch 0",
            flush=True,
        )
        return None
    local = temp_folder("trial-restore-")
    checkpoint.to_directory(local)
    return local
