"""TPE over a bounded history: what it sees, that it is plain TPE on small studies, and that
its densities stop growing with the study (the fix for suggest latency at 2,000 trials)."""

from __future__ import annotations

import datetime
import pickle
import random

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from search.driver.sampler import BoundedHistorySampler, TrialHistory, history_rank
from search.driver.study import open_study

X = FloatDistribution(0.0, 1.0)
NOW = datetime.datetime(2026, 1, 1)


def _trial(
    number: int,
    state: TrialState,
    value: float | None = None,
    steps: dict[int, float] | None = None,
) -> FrozenTrial:
    finished = state.is_finished()
    return FrozenTrial(
        number=number,
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        datetime_start=NOW,
        datetime_complete=NOW if finished else None,
        params={"x": (number % 10) / 10},
        distributions={"x": X},
        user_attrs={},
        system_attrs={},
        intermediate_values=dict(steps or {}),
        trial_id=number,
    )


def test_history_rank_puts_complete_first_then_pruned_by_last_epoch_then_value():
    complete_low = _trial(0, TrialState.COMPLETE, 0.2, {1: 0.1, 3: 0.2})
    pruned_late = _trial(1, TrialState.PRUNED, steps={1: 0.5, 3: 0.6})
    pruned_early_high = _trial(2, TrialState.PRUNED, steps={1: 0.9})
    pruned_early_nan = _trial(3, TrialState.PRUNED, steps={1: float("nan")})
    pruned_silent = _trial(4, TrialState.PRUNED)
    order = sorted(
        [pruned_silent, pruned_early_nan, pruned_early_high, complete_low, pruned_late],
        key=lambda t: history_rank(t, maximize=True),
        reverse=True,
    )
    assert [t.number for t in order] == [0, 1, 2, 3, 4]
    # Minimizing flips the values, never the tiers.
    assert (
        history_rank(_trial(5, TrialState.COMPLETE, 0.1), maximize=False)
        > history_rank(_trial(6, TrialState.COMPLETE, 0.3), maximize=False)
        > history_rank(pruned_late, maximize=False)
    )


def _reference(trials: list[FrozenTrial], window: int, keep_best: int) -> list[int]:
    """What the history must hold, computed from scratch."""
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if len(finished) < window or finished[-window].number == trials[0].number:
        return [t.number for t in trials]
    recent_from = finished[-window].number
    older = [t for t in finished if t.number < recent_from]
    best = sorted(older, key=lambda t: (history_rank(t, True), t.number), reverse=True)
    kept = {t.number for t in best[:keep_best]}
    kept |= {t.number for t in trials if t.number < recent_from and not t.state.is_finished()}
    return sorted(kept | {t.number for t in trials if t.number >= recent_from})


def test_history_keeps_recent_window_best_older_and_unfinished_trials_as_the_study_grows():
    rng = random.Random(0)
    history = TrialHistory(window=8, keep_best=3)
    trials: list[FrozenTrial] = []
    for step in range(200):
        trials.append(_trial(len(trials), TrialState.RUNNING))
        running = [t for t in trials if t.state == TrialState.RUNNING]
        # Finish a random running trial, old or new (a long trial ends after later ones).
        for done in rng.sample(running, k=min(len(running), rng.choice([0, 1, 1, 2]))):
            state = rng.choice(
                [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED, TrialState.FAIL]
            )
            epochs = {e: rng.random() for e in range(1, rng.choice([1, 3, 9]) + 1)}
            trials[done.number] = _trial(done.number, state, rng.random(), epochs)
        selected = [t.number for t in history.select(trials, maximize=True)]
        assert selected == _reference(trials, 8, 3), step
    assert len(trials) == 200 and len(selected) < 30  # bounded, the study is not


def test_bounded_sampler_is_plain_tpe_while_the_study_fits_the_window():
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -2, 2)
        kind = trial.suggest_categorical("kind", ["a", "b"])
        return (x - 0.5) ** 2 + (0.1 if kind == "a" else 0.0)

    plain = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3, n_startup_trials=5))
    bounded = optuna.create_study(
        sampler=BoundedHistorySampler(
            optuna.samplers.TPESampler(seed=3, n_startup_trials=5), window=25, keep_best=5
        )
    )
    plain.optimize(objective, n_trials=30)
    bounded.optimize(objective, n_trials=30)
    assert [t.params for t in bounded.trials] == [t.params for t in plain.trials]


def _recording_tpe(sizes: list[int]) -> optuna.samplers.TPESampler:
    # TPE builds one Parzen estimator per group ("good", "rest") from the trials it was
    # shown; Optuna documents `_parzen_estimator_cls` as the way to customise that step.
    from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator

    class Recording(_ParzenEstimator):
        def __init__(self, observations, *args, **kwargs):
            sizes.append(len(next(iter(observations.values()))))
            super().__init__(observations, *args, **kwargs)

    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=5)
    sampler._parzen_estimator_cls = Recording
    return sampler


@pytest.mark.parametrize("bounded", [True, False])
def test_tpe_densities_come_from_the_bounded_history_not_the_whole_study(bounded):
    sizes: list[int] = []
    tpe = _recording_tpe(sizes)
    sampler = BoundedHistorySampler(tpe, window=10, keep_best=3) if bounded else tpe
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for number in range(60):
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": number / 60}, distributions={"x": X}, value=number / 60
            )
        )
    trial = study.ask()
    assert 0.0 <= trial.suggest_float("x", 0.0, 1.0) <= 1.0
    # The good and the rest group together: 13 trials through the bound, 60 without it.
    assert sum(sizes) == (13 if bounded else 60)


def test_open_study_bounds_tpe_keeps_its_settings_and_pickles_with_the_searcher(tmp_path):
    study = open_study(str(tmp_path / "j"), "s", seed=0, num_samples=16)
    assert isinstance(study.sampler, BoundedHistorySampler)
    assert study.sampler._n_startup_trials == 4  # TPE's settings read through the wrapper
    for _ in range(3):
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", 0.0, 1.0))
    copy = pickle.loads(pickle.dumps(study.sampler))  # Ray pickles the searcher's state
    assert isinstance(copy.sampler, optuna.samplers.TPESampler)
    assert (
        open_study(str(tmp_path / "r"), "r", seed=0, algorithm="random").sampler.__class__
        is optuna.samplers.RandomSampler
    )


# --------------------------------------------------------------------------------------------
# algorithm: tpe_rungs (BOHB's rule: model the highest rung enough trials reached)


def test_rung_model_reads_the_highest_rung_that_d_plus_2_trials_reached():
    from search.driver.sampler import model_epoch

    # One searched setting (d = 1): a rung needs 3 finished trials.
    trials = [
        _trial(0, TrialState.COMPLETE, 0.6, {1: 0.3, 3: 0.5, 9: 0.6}),
        _trial(1, TrialState.PRUNED, steps={1: 0.4, 3: 0.45}),
        _trial(2, TrialState.PRUNED, steps={1: 0.2}),
        _trial(3, TrialState.PRUNED, steps={1: 0.1}),
        _trial(4, TrialState.RUNNING, steps={1: 0.9, 3: 0.9}),
    ]  # running: not counted
    assert model_epoch(trials, (1, 3, 9)) == 1
    trials.append(_trial(5, TrialState.PRUNED, steps={1: 0.5, 3: 0.7}))
    assert model_epoch(trials, (1, 3, 9)) == 3
    assert model_epoch(trials[:2], (1, 3, 9)) is None  # too few anywhere
    assert model_epoch(trials, ()) is None


def test_rung_model_shows_trials_complete_at_that_rung_and_leaves_the_study_alone():
    from search.driver.sampler import at_epoch

    complete = _trial(0, TrialState.COMPLETE, 0.6, {1: 0.3, 3: 0.5, 9: 0.6})
    reached = _trial(1, TrialState.PRUNED, steps={1: 0.4, 3: 0.8})
    stopped_below = _trial(2, TrialState.PRUNED, steps={1: 0.9})
    running = _trial(3, TrialState.RUNNING, steps={1: 0.9, 3: 0.95})
    seen = at_epoch([complete, reached, stopped_below, running], 3)
    assert [(t.state, t.value) for t in seen] == [
        (TrialState.COMPLETE, 0.5),
        (TrialState.COMPLETE, 0.8),
        (TrialState.PRUNED, None),
        (TrialState.RUNNING, None),
    ]
    # The study's own trials are unchanged.
    assert complete.value == 0.6 and reached.state == TrialState.PRUNED


def test_tpe_rungs_ranks_a_pruned_trial_that_beat_a_complete_one_at_the_rung_as_good():
    """Plain TPE puts every complete trial above every pruned one; at the rung, a pruned trial
    with the best epoch-3 value is TPE's good group."""
    study = optuna.create_study(direction="maximize")
    # Two trials reached epoch 9 (one setting: a rung needs 3), nine reached epoch 3.
    trials = [_trial(i, TrialState.COMPLETE, 0.5, {1: 0.2, 3: 0.3, 9: 0.5}) for i in range(2)]
    trials += [_trial(i, TrialState.PRUNED, steps={1: 0.2, 3: 0.3}) for i in range(2, 9)]
    trials.append(_trial(9, TrialState.PRUNED, steps={1: 0.8, 3: 0.9}))
    for trial in trials:
        study.add_trial(trial)
    plain = BoundedHistorySampler(optuna.samplers.TPESampler(seed=0))
    rungs = BoundedHistorySampler(optuna.samplers.TPESampler(seed=0), rung_epochs=(1, 3, 9))
    best = {
        s: max(
            s._view(study)._get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.value
        ).number
        for s in (plain, rungs)
    }
    assert best[plain] in (0, 1) and best[rungs] == 9
