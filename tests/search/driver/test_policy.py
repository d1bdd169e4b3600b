"""The searcher and scheduler every search runs with, built from the spec's defaults."""

from __future__ import annotations

import optuna
import pytest

from search.driver.policy import make_search_policy
from search.driver.sampler import BoundedHistorySampler
from search.driver.scheduling import DeviceBudget
from search.spec import SearchSpec
from tests.helpers import tiny_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _policy(tmp_path, name, spec):
    folder = tmp_path / name
    folder.mkdir()
    searcher, scheduler = make_search_policy(
        spec, journal_path=str(folder / "study.journal"), num_samples=24, seed=0, baseline=True
    )
    searcher.set_max_concurrency(1)
    return searcher, scheduler


def _run_trials(searcher, first, count, max_t):
    """Trials ``first..first+count-1``, each reporting a value per epoch that depends on its
    config, stopped at epoch 1 when odd (as ASHA would stop about half)."""
    suggested = []
    for number in range(first, first + count):
        trial_id = f"t{number:03d}"
        config = searcher.suggest(trial_id)
        suggested.append(config)
        score = 0.5 + 0.4 * (config["upsample"] == 2) - config["noise_std"]
        last = 1 if number % 2 else max_t
        for epoch in range(1, last):
            searcher.on_trial_result(
                trial_id, {"val_accuracy": score + 0.01 * epoch, "epoch": epoch}
            )
        searcher.on_trial_complete(trial_id, {"val_accuracy": score + 0.01 * last, "epoch": last})
    return suggested


def test_the_default_search_models_asha_rungs_and_resumes_with_the_same_model(tmp_path):
    spec = tiny_spec(tmp_path, train__epochs=9)
    assert SearchSpec().algorithm == spec.search.algorithm == "tpe_rungs"
    searcher, _ = _policy(tmp_path, "a", spec)
    sampler = searcher._ot_study.sampler
    assert isinstance(sampler, BoundedHistorySampler)
    assert sampler._rung_epochs[-1] == spec.max_t and len(sampler._rung_epochs) > 1

    uninterrupted, _ = _policy(tmp_path, "b", spec)
    _run_trials(searcher, 0, 14, spec.max_t)
    _run_trials(uninterrupted, 0, 14, spec.max_t)

    # A resume: Ray saves the searcher with the experiment and restores it from the pickle;
    # the study is reopened from the journal.
    checkpoint = tmp_path / "searcher-state.pkl"
    searcher.save(str(checkpoint))
    restored, _ = _policy(tmp_path, "c", spec)
    restored.restore(str(checkpoint))
    assert restored._ot_study.sampler._rung_epochs == sampler._rung_epochs
    assert _run_trials(restored, 14, 4, spec.max_t) == _run_trials(
        uninterrupted, 14, 4, spec.max_t
    )


def test_the_searcher_measures_progress_by_the_drivers_budget_or_the_specs(tmp_path):
    spec = tiny_spec(tmp_path, search__budget_device_hours=2.0, search__budget_gpu_hours=1.0)
    driver_budget = DeviceBudget({"gpu_seconds": 3600.0, "wall_seconds": 7200.0}, spec.max_t)
    searcher, scheduler = make_search_policy(
        spec,
        journal_path=str(tmp_path / "a.journal"),
        num_samples=4,
        seed=0,
        baseline=False,
        budget=driver_budget,
    )
    # One object: what the driver counted before this run (earlier rounds) is progress too.
    assert searcher._budget is scheduler.budget is driver_budget
    driver_budget.record("earlier-round", {"gpu_seconds": 900.0, "wall_seconds": 5400.0})
    assert searcher.progress() == pytest.approx(0.75)  # the furthest of the two limits
    alone, scheduler = make_search_policy(
        spec, journal_path=str(tmp_path / "b.journal"), num_samples=4, seed=0, baseline=False
    )
    assert scheduler.budget is None
    assert alone._budget.limits == {"gpu_seconds": 3600.0, "wall_seconds": 7200.0}
    assert (
        make_search_policy(
            tiny_spec(tmp_path),
            journal_path=str(tmp_path / "c.journal"),
            num_samples=4,
            seed=0,
            baseline=False,
        )[0]._budget
        is None
    )
