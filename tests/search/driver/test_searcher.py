"""The searcher contract, fed fake metrics (no TensorFlow, no Ray cluster).

Optuna suggests, ASHA stops: these tests prove the study records what ASHA decided.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from search.driver.searcher import AshaAwareOptunaSearch, define_by_run
from search.driver.study import ATTR_END, ATTR_RAY_TRIAL, open_study
from search.space import parse_distribution

SPACE = {
    "noise_std": parse_distribution({"loguniform": [0.001, 0.1]}, "s"),
    "upsample": parse_distribution({"choice": [1, 2, 3]}, "s"),
    "input_convs": parse_distribution({"int": [0, 2]}, "s"),
    "input_conv_filters": parse_distribution({"choice": [8, 16]}, "s"),
    "dropout": parse_distribution(0.5, "s"),
}


def make_searcher(tmp_path, **kwargs):
    defaults = dict(journal_path=str(tmp_path / "study.journal"), study_name="s", max_t=3,
                    seed=0)
    return AshaAwareOptunaSearch(SPACE, **{**defaults, **kwargs})


def test_conditional_key_only_sampled_when_it_matters(tmp_path):
    study = open_study(str(tmp_path / "j"), "c", seed=1)
    sample = define_by_run(SPACE)
    for _ in range(12):
        trial = study.ask()
        fixed = sample(trial)
        assert fixed == {"dropout": 0.5}
        params = trial.params
        if params["input_convs"] <= 1:
            assert "input_conv_filters" not in params
        else:
            assert params["input_conv_filters"] in (8, 16)
        study.tell(trial, 0.5)


def test_condition_read_from_fixed_settings(tmp_path):
    study = open_study(str(tmp_path / "j"), "c", seed=1)
    space = {"input_conv_filters": SPACE["input_conv_filters"]}
    trial = study.ask()
    define_by_run(space, {"input_convs": 0})(trial)
    assert trial.params == {}
    trial = study.ask()
    define_by_run(space, {"input_convs": 2})(trial)
    assert "input_conv_filters" in trial.params


def test_study_states_follow_asha_decisions(tmp_path):
    searcher = make_searcher(tmp_path)
    scheduler = ASHAScheduler(time_attr="epoch", metric="val_accuracy", mode="max", max_t=3,
                              grace_period=1, reduction_factor=3)

    class FakeTrial:
        def __init__(self, trial_id):
            self.trial_id = trial_id
            self.config = {}
            self.status = "RUNNING"

    # Nine trials; at epoch 1 ASHA keeps only the top third of arrivals.
    values = [0.9, 0.1, 0.2, 0.95, 0.15, 0.05, 0.99, 0.3, 0.01]
    trials = [FakeTrial(f"t{i}") for i in range(len(values))]
    for trial in trials:
        config = searcher.suggest(trial.trial_id)
        assert "noise_std" in config and config["dropout"] == 0.5
        scheduler.on_trial_add(None, trial)
    decisions = {}
    for trial, value in zip(trials, values):
        for epoch in (1, 2, 3):
            result = {"epoch": epoch, "val_accuracy": value + 0.01 * epoch,
                      "training_iteration": epoch}
            searcher.on_trial_result(trial.trial_id, result)
            decision = scheduler.on_trial_result(None, trial, result)
            if decision == TrialScheduler.STOP or epoch == 3:
                searcher.on_trial_complete(trial.trial_id, result)
                decisions[trial.trial_id] = epoch
                break

    study = optuna.load_study(study_name="s", storage=searcher._ot_study._storage)
    by_ray_id = {t.user_attrs[ATTR_RAY_TRIAL]: t for t in study.trials}
    assert set(by_ray_id) == set(decisions)
    stopped = [t for t, e in decisions.items() if e < 3]
    assert stopped, "ASHA should have stopped some trials"
    for trial_id, epoch in decisions.items():
        frozen = by_ray_id[trial_id]
        assert sorted(frozen.intermediate_values) == list(range(1, epoch + 1))
        if epoch < 3:
            assert frozen.state == TrialState.PRUNED
            assert frozen.user_attrs[ATTR_END] == f"asha@{epoch}"
            # Optuna keeps the last intermediate value as the pruned trial's value.
            assert frozen.value == pytest.approx(frozen.intermediate_values[epoch])
        else:
            assert frozen.state == TrialState.COMPLETE
            assert frozen.value == pytest.approx(frozen.intermediate_values[3])


def test_failed_and_errored_trials_are_fail(tmp_path):
    searcher = make_searcher(tmp_path)
    searcher.suggest("a")
    searcher.suggest("b")
    searcher.on_trial_result("a", {"epoch": 1, "val_accuracy": 0.5})
    searcher.on_trial_complete("a", {"epoch": 2, "val_accuracy": float("nan"),
                                     "trial_failed": True, "failure_reason": "nan_loss: x"})
    searcher.on_trial_complete("b", None, error=True)
    states = {t.user_attrs[ATTR_RAY_TRIAL]: t for t in searcher._ot_study.trials}
    assert states["a"].state == TrialState.FAIL
    assert states["a"].user_attrs[ATTR_END] == "nan_loss: x"
    assert states["b"].state == TrialState.FAIL


def test_baseline_is_the_first_suggestion(tmp_path):
    searcher = make_searcher(tmp_path, points_to_evaluate=[
        {"noise_std": 0.01, "upsample": 2, "input_convs": 0}])
    config = searcher.suggest("first")
    assert config["noise_std"] == 0.01 and config["upsample"] == 2
    assert config["input_convs"] == 0 and "input_conv_filters" not in config


def test_gpu_budget_stops_new_suggestions(tmp_path):
    searcher = make_searcher(tmp_path, budget_gpu_seconds=100.0)
    searcher.suggest("a")
    searcher.on_trial_result("a", {"epoch": 1, "val_accuracy": 0.5, "gpu_seconds": 60.0})
    assert searcher.suggest("b") is not None and searcher.suggest("b") != "FINISHED"
    searcher.on_trial_result("b", {"epoch": 1, "val_accuracy": 0.5, "gpu_seconds": 50.0})
    assert searcher.suggest("c") == AshaAwareOptunaSearch.FINISHED


def test_study_survives_in_the_journal(tmp_path):
    searcher = make_searcher(tmp_path)
    searcher.suggest("a")
    searcher.on_trial_result("a", {"epoch": 3, "val_accuracy": 0.7})
    searcher.on_trial_complete("a", {"epoch": 3, "val_accuracy": 0.7})
    again = open_study(str(tmp_path / "study.journal"), "s", seed=0)
    assert [t.state for t in again.trials] == [TrialState.COMPLETE]
    assert again.best_value == pytest.approx(0.7)


def test_restore_fails_orphaned_running_trials(tmp_path):
    searcher = make_searcher(tmp_path)
    searcher.suggest("kept")
    checkpoint = tmp_path / "searcher.pkl"
    searcher.save(str(checkpoint))
    searcher.suggest("orphan")  # suggested after the last save: the killed driver's secret
    restored = make_searcher(tmp_path)
    restored.restore(str(checkpoint))
    trials = {t.user_attrs[ATTR_RAY_TRIAL]: t for t in restored._ot_study.trials}
    assert trials["orphan"].state == TrialState.FAIL
    assert trials["orphan"].user_attrs[ATTR_END].startswith("orphaned")
    assert trials["kept"].state == TrialState.RUNNING
    restored.on_trial_complete("kept", {"epoch": 3, "val_accuracy": 0.6})
    trials = {t.user_attrs[ATTR_RAY_TRIAL]: t for t in restored._ot_study.trials}
    assert trials["kept"].state == TrialState.COMPLETE


def test_tpe_random_startup_is_a_quarter_of_small_searches(tmp_path):
    from search.driver.study import startup_trials

    assert [startup_trials(n) for n in (4, 16, 32, 64, None)] == [2, 4, 8, 10, 10]
    study = open_study(str(tmp_path / "j"), "s", seed=0, num_samples=16)
    assert study.sampler._n_startup_trials == 4


def test_parallel_trials_give_tpe_the_constant_liar(tmp_path):
    from search.driver.study import make_sampler

    assert make_sampler(0, "tpe", 16, max_concurrent=4)._constant_liar is True
    assert make_sampler(0, "tpe", 16, max_concurrent=None)._constant_liar is True
    assert make_sampler(0, "tpe", 16, max_concurrent=1)._constant_liar is False
    assert isinstance(make_sampler(0, "random", 16, 4), optuna.samplers.RandomSampler)
    study = open_study(str(tmp_path / "j"), "s", seed=0, num_samples=16, max_concurrent=2)
    assert study.sampler._constant_liar is True
    assert study.sampler._n_startup_trials == 4


def test_ray_concurrency_limit_reaches_the_searchers_sampler(tmp_path):
    from ray.tune.search import ConcurrencyLimiter

    parallel = make_searcher(tmp_path, study_name="a", num_samples=16)
    ConcurrencyLimiter(parallel, max_concurrent=4)  # what Tuner does for max_concurrent_trials
    assert parallel._ot_study.sampler._constant_liar is True
    assert parallel._ot_study.sampler._n_startup_trials == 4
    serial = make_searcher(tmp_path, study_name="b", num_samples=16)
    ConcurrencyLimiter(serial, max_concurrent=1)
    assert serial._ot_study.sampler._constant_liar is False


def test_searcher_that_already_suggested_keeps_its_sampler(tmp_path):
    searcher = make_searcher(tmp_path, num_samples=16)
    searcher.suggest("t1")
    sampler = searcher._ot_study.sampler
    assert searcher.set_max_concurrency(4) is False
    assert searcher._ot_study.sampler is sampler
