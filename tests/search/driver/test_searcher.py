"""The searcher contract, fed fake metrics (no TensorFlow, no Ray cluster).

Optuna suggests, ASHA stops: these tests prove the study records what ASHA decided.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from search.driver.searcher import AshaAwareOptunaSearch, define_by_run
from search.driver.study import open_study
from search.outputs.study import ATTR_END, ATTR_RAY_TRIAL
from search.space import parse_distribution
from tests.helpers import tiny_spec

SPACE = {
    "noise_std": parse_distribution({"loguniform": [0.001, 0.1]}, "s"),
    "upsample": parse_distribution({"choice": [1, 2, 3]}, "s"),
    "input_convs": parse_distribution({"int": [0, 2]}, "s"),
    "input_conv_filters": parse_distribution({"choice": [8, 16]}, "s"),
    "dropout": parse_distribution(0.5, "s"),
}


def make_searcher(tmp_path, **kwargs):
    defaults = dict(journal_path=str(tmp_path / "study.journal"), study_name="s", max_t=3, seed=0)
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


def test_conditional_key_whose_parent_is_left_at_its_default_is_not_drawn(tmp_path):
    # input_convs is neither searched nor written: its default (0) decides, so
    # input_conv_kernel (needs input_convs > 0) is never drawn. momentum needs optimizer sgd,
    # which is the train section's default: drawn unless adam is written.
    study = open_study(str(tmp_path / "j"), "c", seed=1)
    space = {
        "input_conv_kernel": parse_distribution({"choice": [3, 5]}, "s"),
        "momentum": parse_distribution({"uniform": [0.5, 0.95]}, "s"),
    }
    for _ in range(3):
        trial = study.ask()
        define_by_run(space)(trial)
        assert set(trial.params) == {"momentum"}
    trial = study.ask()
    define_by_run(space, {"optimizer": "adam"})(trial)
    assert trial.params == {}


def test_spec_refuses_a_conditional_key_no_trial_would_use(tmp_path):
    from search.errors import SpecError
    from search.spec import load_spec_dict

    base = {"name": "c", "dataset": {"name": "digits"}, "model": {"weights": "none"}}
    with pytest.raises(
        SpecError,
        match=r"space\.input_conv_filters: only drawn when "
        r"`input_convs > 1`, but input_convs is 0 \(the "
        r"default\); search or set input_convs",
    ):
        load_spec_dict({**base, "space": {"input_conv_filters": {"choice": [8, 16]}}})
    with pytest.raises(
        SpecError,
        match=r"space\.input_conv_filters: .* but space\.input_convs "
        r"allows only 0, 1;",
    ):
        load_spec_dict(
            {
                **base,
                "space": {
                    "input_conv_filters": {"choice": [8, 16]},
                    "input_convs": {"int": [0, 1]},
                },
            }
        )
    with pytest.raises(SpecError, match=r"space\.momentum: .* but optimizer is 'adam';"):
        load_spec_dict(
            {
                **base,
                "train": {"optimizer": "adam"},
                "space": {"momentum": {"uniform": [0.5, 0.9]}},
            }
        )
    written = load_spec_dict(
        {
            **base,
            "model": {"weights": "none", "input_convs": 2},
            "space": {"input_conv_filters": {"choice": [8, 16]}},
        }
    )
    study = open_study(str(tmp_path / "j"), "c", seed=0)
    trial = study.ask()
    define_by_run(written.space, written.fixed_config())(trial)
    assert "input_conv_filters" in trial.params


def test_condition_read_from_fixed_settings(tmp_path):
    study = open_study(str(tmp_path / "j"), "c", seed=1)
    space = {"input_conv_filters": SPACE["input_conv_filters"]}
    trial = study.ask()
    define_by_run(space, {"input_convs": 0})(trial)
    assert trial.params == {}
    trial = study.ask()
    define_by_run(space, {"input_convs": 2})(trial)
    assert "input_conv_filters" in trial.params


def test_searched_spec_draws_upsample_interpolation_only_when_upsample_is_above_1(tmp_path):
    # `upsample` set explicitly in the space: the condition reads the value drawn for it.
    spec = tiny_spec(
        tmp_path,
        space={
            "upsample": {"choice": [1, 2, 3]},
            "upsample_interpolation": {"choice": ["nearest", "bilinear", "bicubic"]},
        },
    )
    sample = define_by_run(spec.space, spec.fixed_config())
    study = open_study(str(tmp_path / "j"), "interp", seed=3)
    seen = set()
    for _ in range(15):
        trial = study.ask()
        sample(trial)
        params = trial.params
        seen.add(params["upsample"])
        if params["upsample"] == 1:
            assert "upsample_interpolation" not in params
        else:
            assert params["upsample_interpolation"] in ("nearest", "bilinear", "bicubic")
        study.tell(trial, 0.5)
    assert seen == {1, 2, 3}


def test_study_states_follow_asha_decisions(tmp_path):
    searcher = make_searcher(tmp_path)
    scheduler = ASHAScheduler(
        time_attr="epoch",
        metric="val_accuracy",
        mode="max",
        max_t=3,
        grace_period=1,
        reduction_factor=3,
    )

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
            result = {
                "epoch": epoch,
                "val_accuracy": value + 0.01 * epoch,
                "training_iteration": epoch,
            }
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
    searcher.on_trial_complete(
        "a",
        {
            "epoch": 2,
            "val_accuracy": float("nan"),
            "trial_failed": True,
            "failure_reason": "nan_loss: x",
        },
    )
    searcher.on_trial_complete("b", None, error=True)
    states = {t.user_attrs[ATTR_RAY_TRIAL]: t for t in searcher._ot_study.trials}
    assert states["a"].state == TrialState.FAIL
    assert states["a"].user_attrs[ATTR_END] == "nan_loss: x"
    assert states["b"].state == TrialState.FAIL


def test_baseline_is_the_first_suggestion(tmp_path):
    searcher = make_searcher(
        tmp_path, points_to_evaluate=[{"noise_std": 0.01, "upsample": 2, "input_convs": 0}]
    )
    config = searcher.suggest("first")
    assert config["noise_std"] == 0.01 and config["upsample"] == 2
    assert config["input_convs"] == 0 and "input_conv_filters" not in config


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


def _restored(tmp_path, searcher):
    """The searcher as Ray restores it on resume: from its saved state, study reattached."""
    checkpoint = tmp_path / "searcher-state.pkl"
    searcher.save(str(checkpoint))
    restored = make_searcher(tmp_path)
    restored.restore(str(checkpoint))
    return restored


def _by_number(searcher):
    return sorted(searcher._ot_study.trials, key=lambda t: t.number)


def test_errored_trial_restarted_by_resume_gets_a_new_study_trial(tmp_path):
    # Case (a): the trial's worker died after epoch 1 (FAIL in the study); resume restarts it
    # from its checkpoint and it trains on. Optuna refuses values for a finished trial, so the
    # searcher records the continuation as a new study trial with the same parameters.
    searcher = make_searcher(tmp_path)
    searcher.suggest("a")
    searcher.on_trial_result("a", {"epoch": 1, "val_accuracy": 0.4})
    searcher.on_trial_complete("a", None, error=True)
    restored = _restored(tmp_path, searcher)
    restored.on_trial_result("a", {"epoch": 1, "val_accuracy": 0.41})  # re-run, known epoch
    assert len(restored._ot_study.trials) == 1
    restored.on_trial_result("a", {"epoch": 2, "val_accuracy": 0.5})
    restored.on_trial_complete("a", {"epoch": 3, "val_accuracy": 0.6})
    failed, continued = _by_number(restored)
    assert failed.state == TrialState.FAIL
    assert continued.state == TrialState.COMPLETE and continued.value == pytest.approx(0.6)
    assert continued.params == failed.params
    assert continued.user_attrs[ATTR_RAY_TRIAL] == "a"
    assert continued.user_attrs["continues_trial"] == failed.number
    assert continued.intermediate_values == {1: 0.4, 2: 0.5, 3: 0.6}


def test_finished_trial_rerun_from_a_stale_snapshot_keeps_its_study_record(tmp_path):
    # Case (b): the study recorded the trial (PRUNED at epoch 1, COMPLETE at 3) after Ray's
    # last snapshot; resume runs its epochs again. Known epochs change nothing; a pruned trial
    # that the scheduler lets go on is recorded as what really happened.
    searcher = make_searcher(tmp_path)
    searcher.suggest("done")
    searcher.suggest("pruned")
    state = tmp_path / "snapshot.pkl"
    searcher.save(str(state))  # Ray's last snapshot: both trials still running
    for epoch in (1, 2, 3):
        searcher.on_trial_result("done", {"epoch": epoch, "val_accuracy": 0.5 + epoch / 10})
    searcher.on_trial_complete("done", {"epoch": 3, "val_accuracy": 0.8})
    searcher.on_trial_complete("pruned", {"epoch": 1, "val_accuracy": 0.2})
    restored = make_searcher(tmp_path)
    restored.restore(str(state))
    for epoch in (2, 3):
        restored.on_trial_result("done", {"epoch": epoch, "val_accuracy": 0.1})
    restored.on_trial_complete("done", {"epoch": 3, "val_accuracy": 0.1})
    restored.on_trial_result("pruned", {"epoch": 1, "val_accuracy": 0.2})
    restored.on_trial_complete("pruned", {"epoch": 2, "val_accuracy": 0.3})
    done, pruned, continued = _by_number(restored)
    assert done.state == TrialState.COMPLETE and done.value == pytest.approx(0.8)
    assert pruned.state == TrialState.PRUNED and pruned.intermediate_values == {1: 0.2}
    assert continued.state == TrialState.PRUNED
    assert continued.user_attrs[ATTR_END] == "asha@2"
    assert continued.intermediate_values == {1: 0.2, 2: 0.3}
    assert not [t for t in restored._ot_study.trials if t.state == TrialState.RUNNING]


def test_trial_stopped_by_the_budget_is_pruned_with_reason_budget(tmp_path):
    searcher = make_searcher(tmp_path)
    for trial_id in ("stopped", "never_ran", "interrupted"):
        searcher.suggest(trial_id)
    searcher.on_trial_complete(
        "stopped", {"epoch": 1, "val_accuracy": 0.3, "stop_reason": "budget"}
    )
    searcher.on_trial_result("interrupted", {"epoch": 1, "val_accuracy": 0.2})
    # Ray passes no result for a trial it removed before it ran (again).
    searcher.on_trial_complete("never_ran")
    searcher.on_trial_complete("interrupted")
    trials = {t.user_attrs[ATTR_RAY_TRIAL]: t for t in searcher._ot_study.trials}
    assert trials["stopped"].state == TrialState.PRUNED
    assert trials["stopped"].value == pytest.approx(0.3)
    assert trials["interrupted"].state == TrialState.PRUNED
    assert trials["never_ran"].state == TrialState.FAIL
    assert {t.user_attrs[ATTR_END] for t in trials.values()} == {"budget"}


def test_searcher_keeps_the_concurrency_limit_and_hears_every_completion(tmp_path):
    from ray.tune.search import ConcurrencyLimiter

    searcher = make_searcher(tmp_path)
    limited = ConcurrencyLimiter(searcher, max_concurrent=2)
    assert limited.suggest("a") and limited.suggest("b")
    assert limited.suggest("c") is None
    limited.on_trial_complete("a", {"epoch": 3, "val_accuracy": 0.5})
    assert limited.suggest("c")
    # Ray's limiter drops completions of trials it no longer counts as live (a trial that
    # errored, then was restarted by resume); ours reach the study.
    limited.on_trial_complete("b", None, error=True)
    limited.on_trial_result("b", {"epoch": 1, "val_accuracy": 0.3})
    limited.on_trial_complete("b", {"epoch": 3, "val_accuracy": 0.6})
    states = [t.state for t in _by_number(searcher)]
    assert states == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.RUNNING,
        TrialState.COMPLETE,
    ]


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
    assert searcher.set_max_concurrency(4) is True
    assert searcher._ot_study.sampler is sampler
