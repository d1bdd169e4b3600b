"""The trial's epoch reporter inside a real Keras ``fit``, Ray's ``tune.report`` replaced by a
recorder: checkpoints at the policy's epochs, their model written beside validation, what a
checkpoint holds, a write dropped when the epoch ends in a NaN, and the report made in a
thread of its own while the next epoch trains (Ray's stop and a report's error still end the
trial)."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
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
        keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    )
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


@pytest.fixture
def recorded(monkeypatch):
    """Every report as (metrics, the checkpoint's folder, its ``state.json``, the checkpoint's
    model variables); ``live["at_epoch"]`` gets the live model's variables at each epoch's
    end (the report itself runs while the next epoch trains)."""
    import keras

    sent: list[dict] = []
    live: dict = {"at_epoch": {}}

    def report(metrics, checkpoint=None):
        entry = {"metrics": metrics, "checkpoint": None, "thread": threading.current_thread().name}
        if checkpoint is not None:
            loaded = keras.saving.load_model(model_path(checkpoint.path))
            entry.update(
                checkpoint=checkpoint.path,
                state=read_state(checkpoint.path),
                saved=variables(loaded),
            )
        sent.append(entry)

    monkeypatch.setattr(trainable.tune, "report", report)
    monkeypatch.setattr(trainable, "_node_id", lambda: "node")
    return sent, live


@pytest.fixture
def writes_started(monkeypatch):
    """The optimizer step count each background model write began at, and where (the
    reporter's method that began it)."""
    started: list[tuple[int, str]] = []
    original = trainable.ModelWrite

    class RecordedWrite(original):
        def __init__(self, model, **kwargs):
            started.append(
                (int(np.asarray(model.optimizer.iterations)), sys._getframe(2).f_code.co_name)
            )
            super().__init__(model, **kwargs)

    monkeypatch.setattr(trainable, "ModelWrite", RecordedWrite)
    return started


def reporter_for(
    checkpoints, *, save_during_validation: bool, write_beside_training: bool = False
):
    import keras

    state = TrainingState(batch_size=8, learning_rate=0.1)
    attempt = trainable._Attempt(state, [], "float32", gpu_count=0.0, began=time.perf_counter())
    policy = CheckpointPolicy(last_epoch=3, rungs=frozenset({2}))
    return trainable._EpochReporter(
        keras,
        attempt,
        checkpoints,
        policy,
        train_images=32,
        save_during_validation=save_during_validation,
        write_beside_training=write_beside_training,
    )


def fit_three_epochs(reporter, live, *callbacks):
    """Three epochs through the reporter (and ``callbacks`` after it); the last report
    waited for, as the trial does after ``fit``."""
    import keras

    class EpochEndVariables(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            live["at_epoch"][epoch + 1] = variables(self.model)

    rng = np.random.default_rng(0)
    x, y = rng.random((32, 4)).astype("float32"), rng.integers(0, 3, 32)
    model = live["model"] = compiled_model()
    try:
        model.fit(
            x,
            y,
            batch_size=8,
            epochs=3,
            verbose=0,
            shuffle=False,
            validation_data=(x[:16], y[:16]),
            callbacks=[reporter.callback, EpochEndVariables(), *callbacks],
        )
        reporter.settle()
    finally:
        reporter.join()


@pytest.mark.parametrize("write_beside_training", [False, True], ids=["cpu", "gpu"])
@pytest.mark.parametrize("save_during_validation", [True, False])
def test_checkpoints_at_the_policys_epochs_hold_the_model_of_their_epoch(
    recorded, writes_started, save_during_validation, write_beside_training
):
    sent, live = recorded
    checkpoints = trainable._LocalCheckpoints(None)
    reporter = reporter_for(
        checkpoints,
        save_during_validation=save_during_validation,
        write_beside_training=write_beside_training,
    )
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
            ended_with = live["at_epoch"][entry["metrics"]["epoch"]]
            assert sorted(entry["saved"]) == sorted(ended_with)
            for key, value in ended_with.items():
                np.testing.assert_array_equal(entry["saved"][key], value, err_msg=key)
        # Begun after the epoch's last training step: as validation began, or (JAX) at the
        # epoch's end.
        began_in = "validation_began" if save_during_validation else "epoch_end"
        assert writes_started == [(2 * STEPS_PER_EPOCH, began_in), (3 * STEPS_PER_EPOCH, began_in)]
        # Only the latest checkpoint is kept locally.
        assert os.path.isdir(checkpoints.latest)
        assert not os.path.exists(sent[1]["checkpoint"])
    finally:
        checkpoints.remove_all()


def writing_the_rungs_model(live):
    """A reporter in the rung's epoch (2), its model write begun as validation began."""
    checkpoints = trainable._LocalCheckpoints(None)
    reporter = reporter_for(checkpoints, save_during_validation=True)
    model = live["model"] = compiled_model()
    reporter.attempt.state.epoch = 1  # the rung's epoch (2) is next
    reporter.validation_began(model)
    return checkpoints, reporter, model, reporter.model_write.folder


def test_an_epoch_ending_in_nan_drops_the_model_write_begun_for_it(recorded, writes_started):
    sent, live = recorded
    checkpoints, reporter, model, folder = writing_the_rungs_model(live)
    reporter.epoch_end(
        model, {"loss": float("nan"), "val_loss": 1.0, "accuracy": 0.1, "val_accuracy": 0.1}
    )
    assert reporter.failed and reporter.model_write is None
    assert not os.path.exists(folder)
    assert checkpoints.latest is None
    assert sent[-1]["metrics"]["trial_failed"] and sent[-1]["checkpoint"] is None
    assert sent[-1]["metrics"]["failure_reason"].startswith("nan_loss")


def test_the_report_runs_while_the_next_epoch_trains(recorded):
    """Epoch 2 begins while epoch 1's report is still in Ray's hands: the report holds until
    it sees epoch 2 begin, which a report made in fit's own thread would never see."""
    import keras

    sent, live = recorded
    recorder = trainable.tune.report
    epoch_began = {epoch: threading.Event() for epoch in range(3)}

    def slow_report(metrics, checkpoint=None):
        recorder(metrics, checkpoint=checkpoint)
        sent[-1]["next_epoch_began"] = epoch_began[min(metrics["epoch"], 2)].wait(10)

    class EpochBegins(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epoch_began[epoch].set()

    trainable.tune.report = slow_report  # the fixture's monkeypatch restores Ray's
    checkpoints = trainable._LocalCheckpoints(None)
    reporter = reporter_for(checkpoints, save_during_validation=True)
    try:
        fit_three_epochs(reporter, live, EpochBegins())
    finally:
        checkpoints.remove_all()
    assert [r["metrics"]["epoch"] for r in sent] == [1, 2, 3]
    assert [r["next_epoch_began"] for r in sent[:2]] == [True, True]
    assert {r["thread"] for r in sent} == {"trial-report"}
    # Still one report at a time: the checkpoints' folders were whole when Ray read them.
    assert [r["state"]["epoch"] for r in sent if r["checkpoint"]] == [2, 3]


@pytest.mark.parametrize("raised", [SystemExit(0), OSError("storage unreachable")])
def test_what_the_report_raises_ends_fit_at_its_next_step_in_the_trials_thread(
    recorded, monkeypatch, raised
):
    """Ray ends a stopped trial's report with SystemExit (and a failed upload raises): the
    attempt's local checkpoint copies go at once, fit stops at the next step of the epoch
    begun meanwhile, never validates or reports it, and the trial's thread raises what the
    report raised."""
    import keras

    sent, live = recorded
    recorder = trainable.tune.report
    second_epoch_stepped = threading.Event()

    def stopping_report(metrics, checkpoint=None):
        recorder(metrics, checkpoint=checkpoint)
        if metrics["epoch"] == 1:
            assert second_epoch_stepped.wait(10)
            raise raised

    class FirstStepOfEpochTwo(keras.callbacks.Callback):
        """Holds epoch 2 after its first step until the report has raised."""

        def on_train_batch_end(self, batch, logs=None):
            if self.model.optimizer.iterations == STEPS_PER_EPOCH + 1:
                second_epoch_stepped.set()
                deadline = time.monotonic() + 10
                while not self.model.stop_training and time.monotonic() < deadline:
                    time.sleep(0.01)
                live["restored_left_at_stop"] = os.path.exists(restored)

        def on_test_begin(self, logs=None):
            live.setdefault("validations", 0)
            live["validations"] += 1

    monkeypatch.setattr(trainable.tune, "report", stopping_report)
    # The copy of Ray's checkpoint this attempt started from.
    restored = tempfile.mkdtemp(prefix="trial-ckpt-")
    checkpoints = trainable._LocalCheckpoints(restored)
    reporter = reporter_for(checkpoints, save_during_validation=True)
    try:
        with pytest.raises(type(raised)):
            fit_three_epochs(reporter, live, FirstStepOfEpochTwo())
    finally:
        checkpoints.remove_all()
    assert [r["metrics"]["epoch"] for r in sent] == [1]
    # Gone as the report raised, before the epoch in progress ended: Ray may end the process
    # first.
    assert live["restored_left_at_stop"] is False
    assert int(np.asarray(live["model"].optimizer.iterations)) == STEPS_PER_EPOCH + 1
    # Epoch 1's validation only: the reporter raised before epoch 2's began.
    assert live["validations"] == 1
    assert reporter._in_flight is None


def test_a_trial_lets_ray_wait_for_its_step_in_progress_unless_the_user_set_the_wait(monkeypatch):
    monkeypatch.delenv(trainable.RAY_THREAD_TIMEOUT_ENV, raising=False)
    trainable.allow_the_step_in_progress_to_end()
    assert os.environ[trainable.RAY_THREAD_TIMEOUT_ENV] == str(trainable.THREAD_TIMEOUT_S)
    monkeypatch.setenv(trainable.RAY_THREAD_TIMEOUT_ENV, "30")
    trainable.allow_the_step_in_progress_to_end()
    assert os.environ[trainable.RAY_THREAD_TIMEOUT_ENV] == "30"


def test_a_checkpoint_write_that_fails_beside_the_next_epoch_ends_it_like_a_failed_report(
    recorded, monkeypatch
):
    """On a GPU the epoch's end waits only for the variables' copy; when writing that copy
    fails (a full disk) while the next epoch trains, that epoch ends at its next step,
    unreported, the folder is removed, and the trial's thread raises the error (Ray then
    retries from the last checkpoint in storage)."""
    import keras

    from search.trial.checkpoint import ModelSnapshot

    sent, live = recorded
    third_epoch_stepped = threading.Event()
    written_to = []

    def disk_full(self, model_dir):
        written_to.append(model_dir)
        assert third_epoch_stepped.wait(10)  # the next epoch trains beside the writing
        raise OSError(28, "No space left on device")

    class FirstStepOfEpochThree(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.model.optimizer.iterations == 2 * STEPS_PER_EPOCH + 1:
                third_epoch_stepped.set()
                deadline = time.monotonic() + 10
                while not self.model.stop_training and time.monotonic() < deadline:
                    time.sleep(0.01)

    monkeypatch.setattr(ModelSnapshot, "write", disk_full)
    checkpoints = trainable._LocalCheckpoints(None)
    reporter = reporter_for(checkpoints, save_during_validation=True, write_beside_training=True)
    try:
        with pytest.raises(OSError, match="No space left"):
            fit_three_epochs(reporter, live, FirstStepOfEpochThree())
    finally:
        checkpoints.remove_all()
    # Epoch 2 (the rung) had its checkpoint's write fail: never reported.
    assert [r["metrics"]["epoch"] for r in sent] == [1]
    assert int(np.asarray(live["model"].optimizer.iterations)) == 2 * STEPS_PER_EPOCH + 1
    assert len(written_to) == 1 and not os.path.exists(os.path.dirname(written_to[0]))
    assert checkpoints.latest is None


def test_a_stop_seen_at_an_epochs_end_drops_the_model_write_begun_for_it(recorded):
    """The report of epoch 1 ended in Ray's stop while epoch 2 validated and wrote its model:
    the write is dropped with the epoch, and SystemExit raised."""
    sent, live = recorded
    checkpoints, reporter, model, folder = writing_the_rungs_model(live)
    reporter._report_error = SystemExit(0)  # what the report thread kept
    with pytest.raises(SystemExit):
        reporter.epoch_end(
            model, {"loss": 1.0, "val_loss": 1.0, "accuracy": 0.1, "val_accuracy": 0.1}
        )
    assert reporter.model_write is None and not os.path.exists(folder)
    assert sent == [] and checkpoints.latest is None
