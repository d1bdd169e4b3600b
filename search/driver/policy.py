"""What decides a search: the searcher that suggests configurations and the scheduler that
stops trials, built from the spec in one place.

``run``, ``resume`` and ``extend`` get them here (:mod:`search.driver.service`), and so does
the search-quality simulator (``benchmarks/quality/simulate.py``), which feeds them tabulated
learning curves instead of training: what it measures is the product's decision code.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import TrialScheduler

from search.driver.scheduling import (
    BUDGET_FIELDS,
    DeviceBudget,
    checkpoint_rungs,
    make_scheduler,
)
from search.driver.searcher import AshaAwareOptunaSearch
from search.spec import ExperimentSpec


def make_search_policy(spec: ExperimentSpec, *, journal_path: str, num_samples: int, seed: int,
                       baseline: bool, budget: DeviceBudget | None = None,
                       prior: dict[str, Any] | None = None
                       ) -> tuple[AshaAwareOptunaSearch, TrialScheduler]:
    """The searcher and the scheduler a search runs with: what decides which configurations
    are tried and which trials stop.

    The one place they are built: ``run``, ``resume`` and ``extend`` get them here, and so does
    the search-quality simulator (``benchmarks/quality/simulate.py``), which feeds them
    tabulated learning curves instead of training, so what it measures is the product's
    decision code.

    Args:
        spec: The experiment spec (space, ``max_t``, search and scheduler settings).
        journal_path: The Optuna journal file the study lives in.
        num_samples: Trials in this run (sizes TPE's random start-up).
        seed: The sampler's seed.
        baseline: Try the spec's baseline point first.
        budget: The device budget the scheduler keeps, or ``None``.
        prior: The expert's configuration (tried first with ``baseline``, and drawn around
            with ``search.prior_weight``); the spec's baseline point by default.

    Returns:
        ``(search_alg, scheduler)``.
    """
    prior = spec.baseline_point() if prior is None else dict(prior)
    points = [prior] if baseline and prior else None
    search_alg = AshaAwareOptunaSearch(
        spec.space,
        journal_path=journal_path,
        study_name=spec.name,
        max_t=spec.max_t,
        seed=seed,
        algorithm=spec.search.algorithm,
        points_to_evaluate=points,
        fixed_config=spec.fixed_config(),
        num_samples=num_samples,
        rung_epochs=(*checkpoint_rungs(spec), spec.max_t),
        cost_exponent=spec.search.cost_exponent,
        prior_weight=spec.search.prior_weight,
        prior_point=prior,
        budget=search_budget(spec),
    )
    return search_alg, make_scheduler(spec, budget)


def search_budget(spec: ExperimentSpec) -> tuple[str, float] | None:
    """The device budget that measures how far a search has gone: ``(result field,
    seconds)``, the GPU budget first; ``None`` without one."""
    for key, field in BUDGET_FIELDS.items():
        hours = getattr(spec.search, key)
        if hours is not None:
            return field, hours * 3600.0
    return None
