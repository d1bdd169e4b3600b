"""The cost and prior levers on what TPE proposes (``search.cost_exponent``,
``search.prior_weight``), fed fake metrics."""

from __future__ import annotations

import collections
import math

import numpy as np
import optuna
import pytest

from search.driver.acquisition import (
    PRIOR_SPREAD,
    CostAwareTPESampler,
    cooled_exponent,
    prior_draw,
    prior_probability,
    relative_epoch_cost,
)
from search.driver.sampler import BoundedHistorySampler
from search.driver.scheduling import DeviceBudget
from search.errors import SpecError
from search.space import parse_distribution
from search.spec import SearchSpec
from tests.search.driver.test_searcher import make_searcher

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_an_epochs_cost_grows_with_upsample_squared():
    assert relative_epoch_cost({"upsample": 1}) == 1.0
    assert relative_epoch_cost({"upsample": 5, "dropout": 0.2}) == 25.0
    assert relative_epoch_cost({"dropout": 0.2}) == 1.0  # no upsampling searched


def test_the_cost_exponent_cools_to_zero_as_the_budget_is_spent():
    assert cooled_exponent(2.0, 0.0) == 2.0
    assert cooled_exponent(2.0, 0.25) == 1.5
    assert cooled_exponent(2.0, 1.0) == 0.0
    assert cooled_exponent(2.0, 3.0) == 0.0  # a budget overrun does not turn it negative
    assert cooled_exponent(2.0, -1.0) == 2.0


def _upsample_counts(sampler, trials=60):
    study = optuna.create_study(direction="maximize", sampler=sampler)

    def objective(trial):
        trial.suggest_categorical("upsample", [1, 2, 3, 4, 5])
        return -abs(trial.suggest_float("x", 0.0, 1.0) - 0.5)  # upsample does not matter

    study.optimize(objective, n_trials=trials)
    return collections.Counter(t.params["upsample"] for t in study.trials[10:])


def test_cost_aware_tpe_prefers_cheap_configurations_while_the_search_is_young():
    plain = _upsample_counts(optuna.samplers.TPESampler(seed=0, n_startup_trials=10))
    costly = _upsample_counts(CostAwareTPESampler(cost_exponent=1.0, seed=0, n_startup_trials=10))
    assert costly[1] > 2 * plain[1]
    assert costly[4] + costly[5] < plain[4] + plain[5]


def test_cost_aware_tpe_is_plain_tpe_once_the_budget_is_spent():
    spent = CostAwareTPESampler(cost_exponent=1.0, seed=3, n_startup_trials=10)
    spent.progress = 1.0
    assert _upsample_counts(spent) == _upsample_counts(
        optuna.samplers.TPESampler(seed=3, n_startup_trials=10)
    )


def test_the_priors_chance_decays_with_the_trials():
    assert prior_probability(0.0, 0) == 0.0
    assert prior_probability(3.0, 0) == 1.0
    assert prior_probability(3.0, 3) == 0.5
    assert prior_probability(3.0, 27) == pytest.approx(0.1)
    chances = [prior_probability(3.0, n) for n in range(50)]
    assert chances == sorted(chances, reverse=True)


SPACE = {
    "noise_std": parse_distribution({"loguniform": [0.001, 0.3]}, "s"),
    "upsample": parse_distribution({"choice": [1, 2, 3, 4, 5]}, "s"),
    "input_convs": parse_distribution({"int": [0, 2]}, "s"),
    "dropout": parse_distribution({"uniform": [0.0, 0.8]}, "s"),
    "freeze": parse_distribution(0, "s"),
}
PRIOR = {"noise_std": 0.01, "upsample": 2, "input_convs": 0, "dropout": 0.5}


def test_prior_draws_stay_in_range_near_the_prior():
    rng = np.random.default_rng(0)
    draws = [prior_draw(PRIOR, SPACE, rng) for _ in range(400)]
    for draw in draws:
        assert set(draw) == set(PRIOR)  # the fixed setting is not drawn
        assert all(SPACE[key].contains(value) for key, value in draw.items())
        assert isinstance(draw["input_convs"], int)
    kept = sum(d["upsample"] == 2 for d in draws) / len(draws)
    assert 0.5 < kept < 0.75  # kept half the time, and a uniform draw may give it back
    log_steps = [math.log(d["noise_std"] / 0.01) for d in draws]
    spread = PRIOR_SPREAD * math.log(0.3 / 0.001)
    assert abs(np.mean(log_steps)) < 0.3 * spread
    assert 0.7 * spread < np.std(log_steps) < 1.1 * spread


def _suggest_and_finish(searcher, count):
    configs = []
    for number in range(count):
        trial_id = f"t{number}"
        configs.append(searcher.suggest(trial_id))
        searcher.on_trial_complete(
            trial_id, {"val_accuracy": 0.5, "epoch": 3, "wall_seconds": 10.0}
        )
    return configs


def _searcher(folder, **kwargs):
    folder.mkdir()
    return make_searcher(folder, **kwargs)


def _distance_to_prior(configs):
    return np.mean([abs(math.log(c["noise_std"] / 0.01)) for c in configs])


def test_with_a_prior_weight_early_suggestions_are_drawn_around_the_prior(tmp_path):
    points = [{"noise_std": 0.01, "upsample": 2, "input_convs": 0}]
    with_prior = _searcher(
        tmp_path / "a",
        prior_weight=5.0,
        prior_point=PRIOR,
        points_to_evaluate=points,
        num_samples=40,
    )
    without = _searcher(tmp_path / "b", points_to_evaluate=points, num_samples=40)
    drawn, plain = _suggest_and_finish(with_prior, 12), _suggest_and_finish(without, 12)
    assert drawn[0] == plain[0] == {**points[0], "dropout": 0.5}  # the baseline first
    # Drawn ones are queued in the study (Optuna's fixed params): about sum 5 / (5 + n).
    queued = [bool(t.system_attrs.get("fixed_params")) for t in with_prior._ot_study.trials]
    assert 3 <= sum(queued[1:]) <= 9
    assert not any(bool(t.system_attrs.get("fixed_params")) for t in without._ot_study.trials[1:])
    around = [config for config, was_queued in zip(drawn, queued) if was_queued][1:]
    assert _distance_to_prior(around) < 0.6 * _distance_to_prior(plain[1:])
    # The draws are a function of the seed and the trial's number: a searcher rebuilt on
    # the same seed (a resumed search) draws the same ones.
    again = _searcher(
        tmp_path / "c",
        prior_weight=5.0,
        prior_point=PRIOR,
        points_to_evaluate=points,
        num_samples=40,
    )
    assert _suggest_and_finish(again, 12) == drawn


def test_the_searcher_measures_progress_by_the_budget_and_tells_the_sampler(tmp_path):
    budget = DeviceBudget({"wall_seconds": 100.0}, 9)
    searcher = make_searcher(tmp_path, cost_exponent=1.0, budget=budget, num_samples=1000)
    searcher.set_max_concurrency(2)
    sampler = searcher._ot_study.sampler
    assert isinstance(sampler, BoundedHistorySampler)
    assert isinstance(sampler.sampler, CostAwareTPESampler)
    _suggest_and_finish(searcher, 3)  # 3 trials of 10 device-seconds each
    assert searcher.progress() == pytest.approx(0.3)
    searcher.suggest("t3")
    assert sampler.sampler.progress == pytest.approx(0.3)
    # Without a budget, the share of num_samples suggested.
    counted = _searcher(tmp_path / "n", num_samples=8)
    _suggest_and_finish(counted, 2)
    assert counted.progress() == pytest.approx(0.25)


@pytest.mark.parametrize("key", ["cost_exponent", "prior_weight"])
def test_the_levers_refuse_a_negative_value(key):
    with pytest.raises(SpecError, match=rf"search\.{key}: must be a float >= 0, got -1"):
        SearchSpec.from_mapping({key: -1})
    assert getattr(SearchSpec.from_mapping({key: 2}), key) == 2
