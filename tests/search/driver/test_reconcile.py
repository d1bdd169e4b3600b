"""A study rebuilt from Ray's results: a lost journal never crashes the restored searcher."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from search.driver.reconcile import reconcile_study
from search.driver.searcher import AshaAwareOptunaSearch, relocated_journal
from search.driver.study import open_study
from search.outputs.results import TrialRecord
from search.outputs.study import ATTR_END, ATTR_REBUILT, STUDY_FILE, load_study_readonly
from search.space import parse_distribution

SPACE = {
    "noise_std": parse_distribution({"loguniform": [0.001, 0.1]}, "s"),
    "upsample": parse_distribution({"choice": [1, 2, 3]}, "s"),
    "dropout": parse_distribution(0.5, "s"),
}


def epochs(*values: float) -> list[dict]:
    return [{"epoch": i, "val_accuracy": v} for i, v in enumerate(values, start=1)]


def test_searcher_restored_on_a_fresh_machine_with_no_journal_continues_in_the_rebuilt_study(
    tmp_path,
):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    first_machine = tmp_path / "a"
    first_machine.mkdir()
    searcher = AshaAwareOptunaSearch(
        SPACE, journal_path=str(first_machine / STUDY_FILE), study_name="s", max_t=3, seed=0
    )
    configs = {tid: searcher.suggest(tid) for tid in ("t1", "t2", "t3")}
    searcher.save(str(tmp_path / "searcher.pkl"))  # Ray's snapshot, taken with its own state

    # A fresh machine: the journal never reached the bucket. Ray's results say t1 reached
    # max_t, ASHA stopped t2 after epoch 1, t3 was interrupted after epoch 1 (resume continues
    # it). Trials started out of suggestion order, so the rebuilt study numbers them anew.
    fresh = tmp_path / "b"
    fresh.mkdir()
    journal = str(fresh / STUDY_FILE)
    records = [
        TrialRecord("t3", "main", "", configs["t3"], epochs(0.2), ray_status="RUNNING"),
        TrialRecord("t2", "main", "", configs["t2"], epochs(0.1), ray_status="TERMINATED"),
        TrialRecord(
            "t1", "main", "", configs["t1"], epochs(0.3, 0.4, 0.5), ray_status="TERMINATED"
        ),
    ]
    changed = reconcile_study(
        open_study(journal, "s", 0), records, max_t=3, space=SPACE, continued_round="main"
    )
    assert changed == ["t3", "t2", "t1"]

    restored = AshaAwareOptunaSearch(SPACE, journal_path=journal, study_name="s", max_t=3, seed=0)
    with relocated_journal(journal):
        restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_result("t3", {"epoch": 2, "val_accuracy": 0.6})
    restored.on_trial_complete("t3", {"epoch": 3, "val_accuracy": 0.7})

    study = {t.user_attrs["ray_trial_id"]: t for t in load_study_readonly(str(fresh), "s").trials}
    assert set(study) == {"t1", "t2", "t3"}
    assert all(t.user_attrs[ATTR_REBUILT] for t in study.values())
    assert study["t1"].state == TrialState.COMPLETE and study["t1"].value == 0.5
    assert study["t2"].state == TrialState.PRUNED and study["t2"].value == 0.1
    assert study["t3"].state == TrialState.COMPLETE and study["t3"].value == 0.7
    assert study["t3"].intermediate_values == {1: 0.2, 2: 0.6, 3: 0.7}
    for ray_id, frozen in study.items():
        searched = {k: v for k, v in configs[ray_id].items() if k != "dropout"}
        assert frozen.params == searched


def test_rebuilt_trials_end_for_the_reason_their_results_give(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = {"noise_std": 0.01, "upsample": 2, "dropout": 0.5}
    budget_stop = epochs(0.2, 0.3)
    budget_stop[-1]["stop_reason"] = "budget"  # what DeviceBudget writes into the last result
    records = [
        TrialRecord("asha", "main", "", config, epochs(0.1), ray_status="TERMINATED"),
        TrialRecord("budget", "main", "", config, budget_stop, ray_status="TERMINATED"),
        TrialRecord("done", "main", "", config, epochs(0.3, 0.4, 0.5), ray_status="TERMINATED"),
    ]
    journal = str(tmp_path / STUDY_FILE)
    reconcile_study(open_study(journal, "s", 0), records, max_t=3, space=SPACE)
    study = {
        t.user_attrs["ray_trial_id"]: t for t in load_study_readonly(str(tmp_path), "s").trials
    }
    ended = {ray_id: (t.state, t.user_attrs[ATTR_END]) for ray_id, t in study.items()}
    assert ended == {
        "asha": (TrialState.PRUNED, "asha@1"),
        "budget": (TrialState.PRUNED, "budget"),
        "done": (TrialState.COMPLETE, "max_t"),
    }
    assert all(trial.stop_reason(3) == ended[trial.trial_id][1] for trial in records)
