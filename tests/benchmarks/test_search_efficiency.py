"""benchmarks/efficiency/search_efficiency.py: one search's figures from hand-made trial
records."""

from __future__ import annotations

import math

import pytest

from benchmarks.efficiency.search_efficiency import search_run_figures
from search.outputs.results import TrialRecord


def _row(trial, epoch, acc, timestamp, failed=False):
    return {
        "trial": trial,
        "epoch": epoch,
        "val_accuracy": acc,
        "timestamp": timestamp,
        "attempt_started_at": 0.0,
        "time_total_s": 0.0,
        "trial_failed": failed,
    }


def test_search_run_figures_on_hand_made_trial_records():
    trials = [
        TrialRecord(
            "t1",
            "main",
            "/x/t1",
            {},
            history=[
                _row("t1", 1, 0.40, timestamp=10),
                _row("t1", 2, 0.70, timestamp=20),
                _row("t1", 3, 0.905, timestamp=30),
            ],
        ),
        TrialRecord("t2", "main", "/x/t2", {}, history=[_row("t2", 1, 0.90, timestamp=15)]),
        TrialRecord(
            "t3", "main", "/x/t3", {}, history=[_row("t3", 1, 0.1, timestamp=12, failed=True)]
        ),
    ]
    figures = search_run_figures(trials)
    assert figures["trials"] == 3
    assert figures["trial_epochs"] == 5
    assert figures["failed"] == 1
    assert figures["best"] == pytest.approx(0.905)
    # Arrival: t1e1, t3e1 (failed), t2e1 = 0.90 (within 0.01 of 0.905) -> 3 trial-epochs.
    assert figures["to_own_best"] == 3


def test_liar_spread_measures_concurrent_suggestions_with_and_without_the_liar():
    from benchmarks.efficiency.liar_spread import (
        bench_liar_spread,
        concurrent_spread,
        print_liar_spread,
    )

    # The same seed gives the same suggestions: the figure is reproducible.
    assert concurrent_spread(True, seed=3) == concurrent_spread(True, seed=3)
    result = bench_liar_spread(seeds=2)
    assert len(result["rows"]) == 2
    assert all(
        0.0 < r["liar"] < math.sqrt(5) and 0.0 < r["plain"] < math.sqrt(5) for r in result["rows"]
    )
    assert result["ratio"] == result["liar_mean"] / result["plain_mean"]
    assert "constant liar" in print_liar_spread(result)
