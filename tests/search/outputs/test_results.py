"""Trial outcomes as values: one status per trial, one stop reason, one rule for the best."""

from __future__ import annotations

from search.outputs.results import TrialRecord, best_trial, rank_trials
from search.outputs.study import TrialStatus, asha_stop_reason


def record(
    trial_id: str, values: list[float], *, failed: bool = False, ray_status: str = "TERMINATED"
) -> TrialRecord:
    history = [{"epoch": i + 1, "val_accuracy": v} for i, v in enumerate(values)]
    if failed:
        history.append(
            {
                "epoch": len(values) + 1,
                "trial_failed": True,
                "failure_reason": "nan_loss: loss became nan",
            }
        )
    return TrialRecord(
        trial_id=trial_id,
        round="main",
        path="/x",
        config={},
        history=history,
        ray_status=ray_status,
    )


def test_status_and_stop_reason_follow_the_epochs_run():
    assert record("a", [0.1, 0.2, 0.3]).status(3) is TrialStatus.COMPLETE
    assert record("a", [0.1, 0.2, 0.3]).stop_reason(3) == "max_t"
    assert record("b", [0.1]).status(3) is TrialStatus.STOPPED
    assert record("b", [0.1]).stop_reason(3) == asha_stop_reason(1) == "asha@1"
    assert record("c", [0.1], ray_status="PAUSED").status(3) is TrialStatus.UNFINISHED
    failed = record("d", [0.5], failed=True)
    assert failed.status(3) is TrialStatus.FAILED
    assert failed.stop_reason(3).startswith("nan_loss")
    assert TrialStatus.FAILED == "failed" and str(TrialStatus.FAILED) == "failed"


def test_one_ranking_rule_best_epoch_first_failed_last():
    trials = [
        record("low", [0.2, 0.3]),
        record("failed", [0.99], failed=True),
        record("high", [0.9, 0.5]),
        record("empty", []),
        record("mid", [0.6]),
    ]
    assert [t.trial_id for t in rank_trials(trials)] == ["high", "mid", "low"]
    everything = [t.trial_id for t in rank_trials(trials, include_failed=True)]
    assert everything == ["high", "mid", "low", "failed", "empty"]
    assert best_trial(trials).trial_id == "high"
    assert best_trial(trials).best_value == 0.9
    assert best_trial([record("failed", [0.9], failed=True)]) is None
