"""The searcher and scheduler every search runs with, built from the spec's defaults."""

from __future__ import annotations

import optuna

from search.driver.policy import make_search_policy, search_budget
from search.driver.sampler import BoundedHistorySampler
from search.spec import SearchSpec
from tests.helpers import tiny_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _policy(tmp_path, name, spec):
    folder = tmp_path / name
    folder.mkdir()
    searcher, scheduler = make_search_policy(spec, journal_path=str(folder / "study.journal"),
                                             num_samples=24, seed=0, baseline=True)
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
            searcher.on_trial_result(trial_id, {"val_accuracy": score + 0.01 * epoch,
                                                "epoch": epoch})
        searcher.on_trial_complete(trial_id, {"val_accuracy": score + 0.01 * last,
                                              "epoch": last})
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
    assert _run_trials(restored, 14, 4, spec.max_t) == _run_trials(uninterrupted, 14, 4,
                                                                    spec.max_t)


def test_the_budget_that_measures_progress_is_the_gpu_one_first(tmp_path):
    assert search_budget(tiny_spec(tmp_path)) is None
    spec = tiny_spec(tmp_path, search__budget_device_hours=2.0, search__budget_gpu_hours=1.0)
    assert search_budget(spec) == ("gpu_seconds", 3600.0)
    spec = tiny_spec(tmp_path, search__budget_device_hours=0.5)
    assert search_budget(spec) == ("wall_seconds", 1800.0)
