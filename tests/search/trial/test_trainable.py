"""The trial's epoch reporter inside a real Keras ``fit``, Ray's ``tune.report`` replaced by a
recorder: checkpoints at the policy's epochs, their model written beside validation, what a
checkpoint holds, and a write dropped when the epoch ends in a NaN."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from search.checkpoint_policy import CheckpointPolicy
from search.trial import trainable
from search.trial.checkpoint import TrainingState, model_path, read_state
from tests.search.trial.test_checkpoint import variables

STEPS_PER_EPOCH = 4  # 32 images, batch 8


def compiled_model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(
        keras.layers.Dense(8, activation="relu", name="hidden")(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture
def recorded(monkeypatch):
    """Every report as (metrics, the checkpoint's folder, the live model's variables then,
    the checkpoint's model variables)."""
    import keras

    sent: list[dict] = []
    live = {}

    def report(metrics, checkpoint=None):
        entry = {"metrics": metrics, "checkpoint": None}
        if checkpoint is not None:
            loaded = keras.saving.load_model(model_path(checkpoint.path))
            entry.update(checkpoint=checkpoint.path, state=read_state(checkpoint.path),
                         saved=variables(loaded), live=variables(live["model"]))
        sent.append(entry)

    monkeypatch.setattr(trainable.tune, "report", report)
    monkeypatch.setattr(trainable, "_node_id", lambda: "node")
    return sent, live


@pytest.fixture
def writes_started(monkeypatch):
    """The optimizer step count each background model write began at."""
    started: list[int] = []
    original = trainable.ModelWrite

    class RecordedWrite(original):
        def __init__(self, model):
            started.append(int(np.asarray(model.optimizer.iterations)))
            super().__init__(model)

    monkeypatch.setattr(trainable, "ModelWrite", RecordedWrite)
    return started


def reporter_for(checkpoints, *, save_during_validation: bool):
    import keras

    state = TrainingState(batch_size=8, learning_rate=0.1)
    attempt = trainable._Attempt(state, [], "float32", gpu_count=0.0,
                                 began=time.perf_counter())
    policy = CheckpointPolicy(last_epoch=3, rungs=frozenset({2}))
    return trainable._EpochReporter(keras, attempt, checkpoints, policy, train_images=32,
                                    save_during_validation=save_during_validation)


def fit_three_epochs(reporter, live):
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 4)).astype("float32"), rng.integers(0, 3, 32)
    model = live["model"] = compiled_model()
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False,
              validation_data=(x[:16], y[:16]), callbacks=[reporter.callback])


@pytest.mark.parametrize("save_during_validation", [True, False])
def test_checkpoints_at_the_policys_epochs_hold_the_model_of_their_epoch(
        recorded, writes_started, save_during_validation):
    sent, live = recorded
    checkpoints = trainable._LocalCheckpoints(None)
    reporter = reporter_for(checkpoints, save_during_validation=save_during_validation)
    try:
        fit_three_epochs(reporter, live)
        assert [r["metrics"]["epoch"] for r in sent] == [1, 2, 3]
        # The rung (2) and the last epoch (3).
        assert [r["checkpoint"] is not None for r in sent] == [False, True, True]
        assert sent[0]["metrics"]["checkpoint_seconds"] == 0.0
        for entry in sent[1:]:
            assert entry["metrics"]["checkpoint_seconds"] > 0
            assert entry["state"]["epoch"] == entry["metrics"]["epoch"]
            # What the checkpoint holds is the model the epoch ended with, optimizer included.
            assert sorted(entry["saved"]) == sorted(entry["live"])
            for key, value in entry["live"].items():
                np.testing.assert_array_equal(entry["saved"][key], value, err_msg=key)
        # Begun as validation began: after the epoch's last training step.
        expected = [2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH] if save_during_validation else []
        assert writes_started == expected
        # Only the latest checkpoint is kept locally.
        assert os.path.isdir(checkpoints.latest)
        assert not os.path.exists(sent[1]["checkpoint"])
    finally:
        checkpoints.remove_all()


def test_an_epoch_ending_in_nan_drops_the_model_write_begun_for_it(recorded, writes_started):
    sent, live = recorded
    checkpoints = trainable._LocalCheckpoints(None)
    reporter = reporter_for(checkpoints, save_during_validation=True)
    model = live["model"] = compiled_model()
    reporter.attempt.state.epoch = 1  # the rung's epoch (2) is next
    reporter.validation_began(model)
    folder = reporter.model_write.folder
    reporter.epoch_end(model, {"loss": float("nan"), "val_loss": 1.0, "accuracy": 0.1,
                               "val_accuracy": 0.1})
    assert reporter.failed and reporter.model_write is None
    assert not os.path.exists(folder)
    assert checkpoints.latest is None
    assert sent[-1]["metrics"]["trial_failed"] and sent[-1]["checkpoint"] is None
    assert sent[-1]["metrics"]["failure_reason"].startswith("nan_loss")
