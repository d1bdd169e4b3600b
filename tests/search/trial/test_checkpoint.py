"""A trial checkpoint's model: Keras's unzipped format (written once, no in-memory archive),
loaded back whole, zipped into a ``.keras`` by export; older checkpoints' ``model.keras`` still
read."""

from __future__ import annotations

import os
import shutil
import zipfile

import numpy as np
import pyarrow.fs as pafs
import pytest

from search.outputs.export import write_keras_file
from search.trial.checkpoint import (
    LEGACY_MODEL_FILE,
    MODEL_DIR,
    ModelSnapshot,
    ModelWrite,
    TrainingState,
    model_path,
    read_state,
    write_checkpoint,
)


@pytest.fixture(scope="module")
def trained_model():
    import keras

    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(
        keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    )
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy"
    )
    rng = np.random.default_rng(0)
    model.fit(rng.random((32, 4)), rng.integers(0, 3, 32), epochs=1, verbose=0)
    return model


def variables(model) -> dict[str, np.ndarray]:
    found = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    found.update({f"opt_{v.path}": np.asarray(v) for v in model.optimizer.variables})
    return found


def assert_same_model(loaded, model) -> None:
    expected, got = variables(model), variables(loaded)
    assert sorted(got) == sorted(expected)
    assert any(key.startswith("opt_") and "momentum" in key for key in expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_a_checkpoint_holds_the_unzipped_model_with_its_optimizer_state(trained_model):
    import keras

    folder = write_checkpoint(trained_model, TrainingState(epoch=3, batch_size=32))
    try:
        assert sorted(os.listdir(folder)) == [MODEL_DIR, "state.json"]
        assert {"config.json", "metadata.json", "model.weights.h5"} <= set(
            os.listdir(os.path.join(folder, MODEL_DIR))
        )
        assert model_path(folder) == os.path.join(folder, MODEL_DIR)
        assert read_state(folder)["epoch"] == 3
        assert_same_model(keras.saving.load_model(model_path(folder)), trained_model)
    finally:
        shutil.rmtree(folder)


def test_an_older_checkpoints_keras_file_is_still_read(trained_model, tmp_path):
    import keras

    trained_model.save(tmp_path / LEGACY_MODEL_FILE)
    assert model_path(str(tmp_path)) == str(tmp_path / LEGACY_MODEL_FILE)
    assert_same_model(keras.saving.load_model(model_path(str(tmp_path))), trained_model)


def test_export_writes_one_keras_file_of_the_same_model_from_either_format(
    trained_model, tmp_path
):
    import keras

    folder = write_checkpoint(trained_model, TrainingState(epoch=1))
    legacy = tmp_path / "legacy_checkpoint"
    legacy.mkdir()
    trained_model.save(legacy / LEGACY_MODEL_FILE)
    try:
        zipped, copied = tmp_path / "zipped.keras", tmp_path / "copied.keras"
        write_keras_file(pafs.LocalFileSystem(), folder, str(zipped))
        write_keras_file(pafs.LocalFileSystem(), str(legacy), str(copied))
    finally:
        shutil.rmtree(folder)
    with zipfile.ZipFile(zipped) as archive:
        # Keras's own layout: the files at the archive's root, stored.
        assert {"config.json", "metadata.json", "model.weights.h5"} <= set(archive.namelist())
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_STORED}
    assert copied.read_bytes() == (legacy / LEGACY_MODEL_FILE).read_bytes()
    for path in (zipped, copied):
        assert_same_model(keras.saving.load_model(path), trained_model)


def h5_contents(path) -> dict[str, tuple[dict, object]]:
    """Every group and dataset of an HDF5 file: its attributes and, for datasets, the array."""
    import h5py

    found = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(
            lambda name, item: found.__setitem__(
                name, (dict(item.attrs), item[()] if isinstance(item, h5py.Dataset) else None)
            )
        )
    return found


def test_a_snapshot_writes_the_folder_model_save_writes(trained_model, tmp_path):
    import json

    trained_model.save(tmp_path / "saved", zipped=False)
    snapshot = ModelSnapshot.take(trained_model, str(tmp_path / "replayed"))
    snapshot.write(str(tmp_path / "replayed"))
    assert sorted(os.listdir(tmp_path / "replayed")) == sorted(os.listdir(tmp_path / "saved"))
    assert (tmp_path / "replayed" / "config.json").read_text() == (
        tmp_path / "saved" / "config.json"
    ).read_text()
    saved_metadata, replayed_metadata = (
        json.loads((tmp_path / folder / "metadata.json").read_text())
        for folder in ("saved", "replayed")
    )
    saved_metadata.pop("date_saved")
    replayed_metadata.pop("date_saved")
    assert replayed_metadata == saved_metadata
    saved, replayed = (
        h5_contents(tmp_path / folder / "model.weights.h5") for folder in ("saved", "replayed")
    )
    assert sorted(replayed) == sorted(saved)
    assert any(name.startswith("optimizer/") for name in saved)
    for name, (attributes, value) in saved.items():
        assert replayed[name][0] == attributes, name
        if value is not None:
            np.testing.assert_array_equal(replayed[name][1], value, err_msg=name)
    # Weights and optimizer state, all of it copied.
    assert snapshot.nbytes == sum(
        np.asarray(value).nbytes for _, value in saved.values() if value is not None
    )


def test_a_checkpoint_holds_the_variables_at_its_snapshot_not_the_training_after_it():
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy"
    )
    rng = np.random.default_rng(1)
    x, y = rng.random((32, 4)), rng.integers(0, 3, 32)
    model.fit(x, y, epochs=1, verbose=0)

    def values(model):  # in order: a loaded model's optimizer has a name of its own
        return [np.asarray(v) for v in [*model.weights, *model.optimizer.variables]]

    at_snapshot = values(model)
    started = ModelWrite(model, beside_training=True)
    started.wait_until_copied()
    model.fit(x, y, epochs=2, verbose=0)  # the next epochs, beside the writing
    assert not np.array_equal(values(model)[0], at_snapshot[0])
    folder = write_checkpoint(model, TrainingState(epoch=1), started=started)
    try:
        got = values(keras.saving.load_model(model_path(folder)))
        assert len(got) == len(at_snapshot) == 6  # kernel, bias; iterations, lr, 2 momenta
        for index, value in enumerate(at_snapshot):
            np.testing.assert_array_equal(got[index], value, err_msg=str(index))
    finally:
        shutil.rmtree(folder)


def test_a_write_from_a_snapshot_that_fails_raises_in_the_trial_and_leaves_no_folder(
    trained_model, monkeypatch
):
    def disk_full(self, model_dir):
        os.makedirs(model_dir, exist_ok=True)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ModelSnapshot, "write", disk_full)
    started = ModelWrite(trained_model, beside_training=True)
    started.wait_until_copied()  # the copy itself was taken: the model may train on
    with pytest.raises(OSError, match="No space left"):
        write_checkpoint(trained_model, TrainingState(epoch=1), started=started)
    assert not os.path.exists(started.folder)


class UnsavableModel:
    """Not a Keras model: neither ``save`` nor Keras's saving walk can write it."""

    def save(self, path, zipped=True):
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("beside_training", [False, True])
def test_a_write_that_fails_while_it_reads_the_model_raises_at_the_epochs_end(beside_training):
    started = ModelWrite(UnsavableModel(), beside_training=beside_training)
    with pytest.raises(Exception) as raised:
        started.wait_until_copied()
    if not beside_training:
        assert isinstance(raised.value, OSError) and "No space left" in str(raised.value)
    assert not isinstance(raised.value, AssertionError)
    assert not os.path.exists(started.folder)


@pytest.mark.parametrize("beside_training", [False, True])
def test_a_model_written_either_way_makes_the_same_checkpoint(trained_model, beside_training):
    import keras

    started = ModelWrite(trained_model, beside_training=beside_training)
    started.wait_until_copied()
    folder = write_checkpoint(trained_model, TrainingState(epoch=2), started=started)
    try:
        assert folder == started.folder
        assert sorted(os.listdir(folder)) == [MODEL_DIR, "state.json"]
        assert read_state(folder)["epoch"] == 2
        assert_same_model(keras.saving.load_model(model_path(folder)), trained_model)
    finally:
        shutil.rmtree(folder)


def test_a_discarded_background_write_leaves_no_folder(trained_model):
    started = ModelWrite(trained_model)
    started.discard()
    assert not os.path.exists(started.folder)


def test_a_sigkilled_trials_local_copies_are_removed_by_the_next_trial_on_the_node(
    tmp_path, monkeypatch
):
    # Fault: a trial's process is SIGKILLed (the OOM killer, a dead driver's group) and cannot
    # remove its local checkpoint copies; a live trial's copies must stay.
    import signal
    import subprocess
    import sys
    import tempfile

    from search.trial.checkpoint import remove_temp_folders_of_dead_processes, temp_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    script = (
        "import sys, tempfile, time; tempfile.tempdir = sys.argv[1]\n"
        "from search.trial.checkpoint import temp_folder\n"
        "temp_folder('trial-ckpt-'); temp_folder('trial-restore-')\n"
        "print('ok', flush=True)\n"
        "time.sleep(600)\n"
    )
    killed = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    live = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert killed.stdout.readline() == live.stdout.readline() == "ok\n"  # copies made
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        mine = temp_folder("trial-ckpt-")
        removed = remove_temp_folders_of_dead_processes()
        assert sorted(os.path.basename(p).split("-")[2] for p in removed) == [str(killed.pid)] * 2
        left = sorted(p.name for p in tmp_path.iterdir())
        assert len(left) == 3 and os.path.basename(mine) in left
        assert all(f"-{live.pid}-" in name for name in left if name != os.path.basename(mine))
    finally:
        live.kill()
        live.wait()
