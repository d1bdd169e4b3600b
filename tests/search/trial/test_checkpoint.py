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
        keras.layers.Dense(8, activation="relu", name="hidden")(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
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
            os.listdir(os.path.join(folder, MODEL_DIR)))
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


def test_export_writes_one_keras_file_of_the_same_model_from_either_format(trained_model,
                                                                           tmp_path):
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


def test_a_model_written_in_the_background_makes_the_same_checkpoint(trained_model):
    import keras

    started = ModelWrite(trained_model)
    folder = write_checkpoint(trained_model, TrainingState(epoch=2), started=started)
    try:
        assert folder == started.folder
        assert sorted(os.listdir(folder)) == [MODEL_DIR, "state.json"]
        assert read_state(folder)["epoch"] == 2
        assert_same_model(keras.saving.load_model(model_path(folder)), trained_model)
    finally:
        shutil.rmtree(folder)


class UnsavableModel:
    def save(self, path, zipped=True):
        raise OSError(28, "No space left on device")


def test_a_background_write_that_fails_raises_in_the_trial_and_leaves_no_folder():
    started = ModelWrite(UnsavableModel())
    with pytest.raises(OSError, match="No space left"):
        write_checkpoint(UnsavableModel(), TrainingState(epoch=1), started=started)
    assert not os.path.exists(started.folder)


def test_a_discarded_background_write_leaves_no_folder(trained_model):
    started = ModelWrite(trained_model)
    started.discard()
    assert not os.path.exists(started.folder)
