"""benchmarks/overhead/overhead.py and checkpoint_storage.py: the ratios and tables on hand-made
runs."""

from __future__ import annotations

import os

import pytest

from benchmarks.overhead.checkpoint_storage import print_checkpoint_storage
from benchmarks.overhead.overhead import (
    _trial_run,
    checkpointer,
    format_overlap,
    format_parts,
    one_fit_ratios,
)


def test_one_fit_ratios_compare_the_trial_with_one_plain_fit_call_from_epoch_two():
    plain = {"images_per_s": [10.0, 100.0, 100.0], "epoch_seconds": [9.0, 2.0, 2.0]}
    per_epoch = {"images_per_s": [1.0, 1.0, 1.0], "epoch_seconds": [50.0, 50.0, 50.0]}
    trial = {"images_per_s": [5.0, 99.0, 99.0], "epoch_seconds": [30.0, 2.0, 2.2]}
    ratios = one_fit_ratios(
        [
            ("plain fit, one call (before)", plain),
            ("plain fit, a call per epoch (before)", per_epoch),
            ("trial (run_search)", trial),
            ("plain fit, one call (after)", plain),
        ]
    )
    # Epoch 1 (tracing, model build) is left out; the per-epoch plain calls are not pooled.
    assert ratios["one_fit_ratio"] == pytest.approx(0.99)
    assert ratios["whole_epoch_ratio"] == pytest.approx(1.05)
    assert "parts" not in ratios
    assert format_parts("x", ratios) == "x: no breakdown (results without checkpoint_seconds)"


def test_the_trial_epoch_breaks_down_into_fit_checkpoint_wait_and_report():
    plain = {"images_per_s": [10.0, 100.0, 100.0], "epoch_seconds": [9.0, 2.0, 2.0]}
    trial = {
        "images_per_s": [5.0, 99.0, 99.0],
        "epoch_seconds": [30.0, 2.1, 2.5],
        "fit_seconds": [20.0, 2.0, 2.0],
        "checkpoint_seconds": [3.0, 0.0, 0.3],
    }
    ratios = one_fit_ratios(
        [("plain fit, one call (before)", plain), ("trial (run_search)", trial)]
    )
    parts = ratios["parts"]
    assert parts["fit_s"] == pytest.approx(2.0)
    assert parts["checkpoint_wait_s"] == pytest.approx(0.15)
    assert parts["report_s"] == pytest.approx(0.15)
    assert (parts["checkpoints"], parts["epochs"]) == (1, 2)
    assert format_parts("short", ratios) == (
        "short: a trial epoch 2.300 s against plain's 2.000 s = fit (training, validation) "
        "2.000 + checkpoint wait 0.150 (1 checkpoints in 2 epochs) + waiting for the last "
        "report 0.150"
    )


def test_a_trial_epoch_runs_from_one_report_to_the_next_in_the_trials_own_time():
    # Ray's time_this_iter_s starts at the driver's next train() call, made while the trial
    # already trains on: the epoch is the step of the time the trial held, report to report.
    history = [
        {
            "images_per_s": 50.0,
            "wall_seconds": 12.0,
            "time_this_iter_s": 11.0,
            "epoch_seconds": 4.0,
        },
        {
            "images_per_s": 100.0,
            "wall_seconds": 14.5,
            "time_this_iter_s": 2.1,
            "epoch_seconds": 2.2,
            "checkpoint_seconds": 0.1,
            "precision": "float32",
        },
    ]
    run = _trial_run(history, images=200)
    assert run["epoch_seconds"] == pytest.approx([12.0, 2.5])
    assert run["ray_time_this_iter_s"] == [11.0, 2.1]
    assert run["checkpoint_seconds"] == [0.0, 0.1]
    assert (run["images_per_epoch"], run["precision"]) == (200, "float32")


def test_storage_table_names_the_goal_and_whether_it_is_met():
    result = {
        "trials": 64,
        "keep": 3,
        "concurrent": 2,
        "trials_with_checkpoints": 6,
        "checkpoints_kept": 11,
        "checkpoint_bytes": 10,
        "storage_bytes": 20,
        "goal": "trials holding checkpoints <= keep_checkpoints + concurrent = 5",
        "goal_met": False,
    }
    text = print_checkpoint_storage(result)
    assert "64 small_cnn trials, keep_checkpoints=3, 2 at once" in text
    assert text.endswith("= 5: NOT met")


def test_the_overlap_line_says_each_ways_epoch_time_and_its_ratio_to_after():
    runs = [
        {"where": where, "epoch_s": seconds}
        for where, seconds in (("after", 1.2), ("beside", 1.1), ("snapshot", 1.5))
    ] * 2
    result = {
        "runs": runs,
        "after_epoch_s": 1.2,
        "beside_epoch_s": 1.1,
        "snapshot_epoch_s": 1.5,
        "ratio": 1.1 / 1.2,
        "snapshot_ratio": 1.5 / 1.2,
        "images": 80,
    }
    assert format_overlap(result) == (
        "checkpoint every epoch, plain fit, short epochs (80 images): 1.200 s/epoch written "
        "after validation, 1.100 beside it (beside / after = 0.917), 1.500 from a snapshot "
        "beside the next epoch (/ after = 1.250); 2 interleaved rounds"
    )
    # A run from before the snapshot way: two ways.
    older = {key: value for key, value in result.items() if "snapshot" not in key}
    older["runs"] = [run for run in runs if run["where"] != "snapshot"]
    assert format_overlap(older).endswith("(beside / after = 0.917); 2 interleaved rounds")


@pytest.mark.parametrize("where", ["after", "beside", "snapshot"])
def test_the_benchmarks_checkpointer_writes_every_epoch_and_leaves_nothing(where, monkeypatch):
    import keras
    import numpy as np

    from search.trial import checkpoint

    written = []
    original = checkpoint.write_checkpoint

    def recorded(model, state, started=None):
        written.append((state.epoch, started is not None))
        folder = original(model, state, started=started)
        written.append(folder)
        return folder

    monkeypatch.setattr(checkpoint, "write_checkpoint", recorded)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = np.zeros((8, 4), "float32"), np.zeros(8, "int64")
    model.fit(
        x, y, validation_data=(x, y), epochs=2, verbose=0, callbacks=[checkpointer(keras, where)]
    )
    assert written[0::2] == [(1, where != "after"), (2, where != "after")]
    assert not any(os.path.exists(folder) for folder in written[1::2])


def test_the_benchmarks_checkpointer_names_what_it_accepts():
    import keras

    with pytest.raises(
        ValueError, match="checkpoint: one of after, beside, snapshot; got 'never'"
    ):
        checkpointer(keras, "never")
