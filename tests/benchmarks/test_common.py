"""benchmarks/common.py: tables and small statistics on hand-made data."""

from __future__ import annotations

import math

import pytest

from benchmarks.common import (
    Column,
    arrival_key,
    format_cell,
    format_pairs,
    format_table,
    harmonic_rate,
    spread,
    trial_epochs_to_within,
)

# --------------------------------------------------------------------------------------------
# tables


def test_format_table_is_fixed_width_numbers_right_text_left():
    columns = [
        Column("path", "path"),
        Column("epochs", "epochs"),
        Column("img_s", "img/s", ".1f"),
        Column("ok", "ok"),
    ]
    rows = [
        {"path": "plain model.fit", "epochs": 3, "img_s": 110.25, "ok": True},
        {"path": "trial", "epochs": 12, "img_s": float("nan"), "ok": False},
        {"path": "cli", "epochs": None},
    ]
    assert format_table("a. Title", columns, rows) == "\n".join(
        [
            "a. Title",
            "path             epochs  img/s  ok",
            "---------------  ------  -----  ---",
            "plain model.fit       3  110.2  yes",
            "trial                12      -  no",
            "cli                   -      -  -",
        ]
    )


def test_format_cell_writes_missing_values_as_dash_and_booleans_as_words():
    assert format_cell(None) == "-"
    assert format_cell(float("nan"), ".2f") == "-"
    assert format_cell(True) == "yes"
    assert format_cell(0.12345, ".1%") == "12.3%"
    assert format_cell("mixed_bfloat16") == "mixed_bfloat16"


def test_format_pairs_pads_keys_to_one_width():
    assert format_pairs("machine", [("cpu", "AMD EPYC"), ("cores", 2)]) == (
        "machine\n  cpu    AMD EPYC\n  cores  2"
    )


# --------------------------------------------------------------------------------------------
# trial-epochs to within one point


def _row(trial, epoch, acc, timestamp, started=0.0, total=0.0, failed=False):
    return {
        "trial": trial,
        "epoch": epoch,
        "val_accuracy": acc,
        "timestamp": timestamp,
        "attempt_started_at": started,
        "time_total_s": total,
        "trial_failed": failed,
    }


def test_trial_epochs_to_within_counts_rows_in_the_order_they_arrived_not_epoch_order():
    # Rows without Ray's timestamps (every peer's, and Ray's once read) in arrival order:
    # a1, a2 (the target), b1, c1. Sorting them by epoch would count a2 fourth.
    rows = [
        {"trial": "a", "epoch": 1, "val_accuracy": 0.5},
        {"trial": "a", "epoch": 2, "val_accuracy": 0.9},
        {"trial": "b", "epoch": 1, "val_accuracy": 0.6},
        {"trial": "c", "epoch": 1, "val_accuracy": 0.7},
    ]
    assert trial_epochs_to_within(rows, target=0.9) == 2
    assert trial_epochs_to_within(rows, target=0.97) is None


def test_arrival_key_sorts_ray_rows_by_timestamp_not_by_list_order():
    rows = [
        _row("b", 2, 0.95, timestamp=105),
        _row("a", 1, 0.50, timestamp=100),
        _row("b", 1, 0.80, timestamp=103),
        _row("a", 2, 0.70, timestamp=104),
    ]
    ordered = sorted(rows, key=arrival_key)
    assert [(r["trial"], r["epoch"]) for r in ordered] == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert trial_epochs_to_within(ordered, target=0.95) == 4
    assert trial_epochs_to_within(ordered, target=0.81) == 2  # 0.80 is within 0.01


def test_trial_epochs_to_within_counts_exactly_one_point_below_as_within():
    rows = [_row("a", 1, 0.89, timestamp=1), _row("a", 2, 0.90, timestamp=2)]
    assert trial_epochs_to_within(rows, target=0.90) == 1
    assert trial_epochs_to_within(rows, target=0.90, tolerance=0.005) == 2


def test_arrival_key_breaks_same_second_ties_by_start_plus_running_time():
    rows = [
        _row("late", 1, 0.9, timestamp=50, started=40.0, total=9.8),
        _row("early", 1, 0.6, timestamp=50, started=45.0, total=4.1),
    ]
    # Both reported in second 50; "early" arrived at 49.1, "late" at 49.8.
    assert [r["trial"] for r in sorted(rows, key=arrival_key)] == ["early", "late"]


def test_trial_epochs_to_within_counts_failed_epochs_as_spent_but_never_reached():
    rows = [
        _row("nan", 1, 0.99, timestamp=1, failed=True),
        _row("ok", 1, float("nan"), timestamp=2),
        _row("ok", 2, 0.98, timestamp=3),
    ]
    assert trial_epochs_to_within(rows, target=0.99) == 3


def test_harmonic_rate_and_spread():
    # 100 images at 100/s and 100 at 50/s: 200 images in 3 s.
    assert harmonic_rate([100.0, 50.0]) == pytest.approx(200 / 3)
    assert math.isnan(harmonic_rate([]))
    assert spread([10.0, 10.0, 10.0]) == 0.0
    assert spread([9.0, 11.0]) == pytest.approx(0.1)
    assert math.isnan(spread([5.0]))


def test_replace_block_puts_rendered_text_between_the_markers_only():
    from benchmarks.common import replace_block

    text = "intro\n<!-- t: begin -->\nold\n<!-- t: end -->\nafter\n"
    assert replace_block(text, "t", "new\n") == (
        "intro\n<!-- t: begin -->\nnew\n<!-- t: end -->\nafter\n"
    )
    with pytest.raises(ValueError, match="no <!-- u: begin -->"):
        replace_block(text, "u", "x")
