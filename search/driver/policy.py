"""What decides a search: the searcher that suggests configurations and the scheduler that
stops trials, built from the spec in one place.

``run``, ``resume`` and ``extend`` get them here (:mod:`search.driver.service`), and so does
the search-quality simulator (``benchmarks/quality/simulate.py``), which feeds them tabulated
learning curves instead of training: what it measures is the product's decision code.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import TrialScheduler

from search.driver.scheduling import DeviceBudget, budget_for, checkpoint_rungs, make_scheduler
from search.driver.searcher import AshaAwareOptunaSearch
from search.spec import ExperimentSpec


def make_search_policy(
    spec: ExperimentSpec,
    *,
    journal_path: str,
    num_samples: int,
    seed: int,
    baseline: bool,
    budget: DeviceBudget | None = None,
    prior: dict[str, Any] | None = None,
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
        budget: The device budget the scheduler keeps and the searcher measures its progress
            by, or ``None`` (the scheduler keeps none; the searcher counts the spec's budget
            itself).
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
        # The driver's budget (it counts earlier rounds and runs); the simulator keeps none
        # in the scheduler, and the searcher still measures its progress by the spec's.
        budget=budget if budget is not None else budget_for(spec),
    )
    return search_alg, make_scheduler(spec, budget)
