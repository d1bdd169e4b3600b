"""benchmarks/overhead.py and checkpoint_storage.py: the ratios and tables on hand-made runs."""

from __future__ import annotations

import pytest
from checkpoint_storage import print_checkpoint_storage
from overhead import format_parts, one_fit_ratios


def test_one_fit_ratios_compare_the_trial_with_one_plain_fit_call_from_epoch_two():
    plain = {"images_per_s": [10.0, 100.0, 100.0], "epoch_seconds": [9.0, 2.0, 2.0]}
    per_epoch = {"images_per_s": [1.0, 1.0, 1.0], "epoch_seconds": [50.0, 50.0, 50.0]}
    trial = {"images_per_s": [5.0, 99.0, 99.0], "epoch_seconds": [30.0, 2.0, 2.2]}
    ratios = one_fit_ratios([("plain fit, one call (before)", plain),
                             ("plain fit, a call per epoch (before)", per_epoch),
                             ("trial (run_search)", trial),
                             ("plain fit, one call (after)", plain)])
    # Epoch 1 (tracing, model build) is left out; the per-epoch plain calls are not pooled.
    assert ratios["one_fit_ratio"] == pytest.approx(0.99)
    assert ratios["whole_epoch_ratio"] == pytest.approx(1.05)
    assert "parts" not in ratios
    assert format_parts("x", ratios) == "x: no breakdown (results without checkpoint_seconds)"


def test_the_trial_epoch_breaks_down_into_fit_checkpoint_wait_and_report():
    plain = {"images_per_s": [10.0, 100.0, 100.0], "epoch_seconds": [9.0, 2.0, 2.0]}
    trial = {"images_per_s": [5.0, 99.0, 99.0], "epoch_seconds": [30.0, 2.1, 2.5],
             "fit_seconds": [20.0, 2.0, 2.0], "checkpoint_seconds": [3.0, 0.0, 0.3]}
    ratios = one_fit_ratios([("plain fit, one call (before)", plain),
                             ("trial (run_search)", trial)])
    parts = ratios["parts"]
    assert parts["fit_s"] == pytest.approx(2.0)
    assert parts["checkpoint_wait_s"] == pytest.approx(0.15)
    assert parts["report_s"] == pytest.approx(0.15)
    assert (parts["checkpoints"], parts["epochs"]) == (1, 2)
    assert format_parts("short", ratios) == (
        "short: a trial epoch 2.300 s against plain's 2.000 s = fit (training, validation) "
        "2.000 + checkpoint wait 0.150 (1 checkpoints in 2 epochs) + report 0.150")


def test_storage_table_names_the_goal_and_whether_it_is_met():
    result = {"trials": 64, "keep": 3, "concurrent": 2, "trials_with_checkpoints": 6,
              "checkpoints_kept": 11, "checkpoint_bytes": 10, "storage_bytes": 20,
              "goal": "trials holding checkpoints <= keep_checkpoints + concurrent = 5",
              "goal_met": False}
    text = print_checkpoint_storage(result)
    assert "64 small_cnn trials, keep_checkpoints=3, 2 at once" in text
    assert text.endswith("= 5: NOT met")
