"""Two levers on what TPE proposes: the cost of a configuration, and the expert prior.

**Cost** (``search.cost_exponent``, after CArBO, Lee et al. 2020). An epoch at ``upsample: 5``
costs about 25 times one at ``upsample: 1`` on a GPU (the backbone sees 25 times the pixels),
and TPE's acquisition ignores it. :class:`CostAwareTPESampler` ranks TPE's candidates by
``log l(x) - log g(x) - alpha * log cost(x)``: expected improvement per ``cost ** alpha``, with
``alpha`` cooled from ``cost_exponent`` to 0 as the search spends its budget, so cheap
configurations are tried first and the end of the search goes by value alone. The cost is
known in closed form: :func:`relative_epoch_cost`.

**Prior** (``search.prior_weight``, after piBO, Hvarfner et al. 2022, and PriorBand, Mallik et
al. 2023). The seed article's configuration is an expert's guess. The search runs it first;
with a prior weight ``w`` each later suggestion is, with probability ``w / (w + n)`` (``n``
the trials suggested so far), a perturbation of it (:func:`prior_draw`) instead of TPE's. The
probability decays with the trials, so a bad prior costs a few early trials and no more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution

from search.space import Distribution

PRIOR_SPREAD = 0.15  # a perturbation's standard deviation, as a share of each setting's range
PRIOR_KEEP_CHOICE = 0.5  # chance a perturbation keeps the prior's value of a choice


def relative_epoch_cost(params: Mapping[str, Any]) -> float:
    """An epoch's cost relative to the same model without upsampling: the backbone's input
    has ``upsample ** 2`` times the pixels, and the backbone dominates the cost (measured on
    the search-quality table: cost grows about with ``upsample`` squared). Settings the params
    do not hold count as 1."""
    upsample = params.get("upsample", 1)
    try:
        return max(float(upsample), 1.0) ** 2
    except (TypeError, ValueError):
        return 1.0


def cooled_exponent(cost_exponent: float, progress: float) -> float:
    """CArBO's cooling: ``cost_exponent`` at the start of the search, 0 once ``progress``
    (the share of the budget spent, or of the trials suggested) reaches 1."""
    return cost_exponent * max(0.0, 1.0 - min(max(progress, 0.0), 1.0))


class CostAwareTPESampler(optuna.samplers.TPESampler):
    """TPE whose acquisition divides expected improvement by ``cost ** alpha``.

    Args:
        cost_exponent: ``alpha`` at the start; 0 is plain TPE.
        **kwargs: ``TPESampler``'s arguments.

    Attributes:
        progress: The share of the search spent, in [0, 1]; the searcher sets it before each
            suggestion (see :class:`~search.driver.searcher.AshaAwareOptunaSearch`).
    """

    def __init__(self, *, cost_exponent: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cost_exponent = float(cost_exponent)
        self.progress = 0.0
        self._space: dict[str, BaseDistribution] = {}

    def _sample(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        search_space: dict[str, BaseDistribution],
    ) -> dict[str, Any]:
        # The acquisition sees the candidates in Optuna's internal form; it needs the
        # distributions to read them back.
        self._space = search_space
        return super()._sample(study, trial, search_space)

    def _compute_acquisition_func(
        self, samples: dict[str, np.ndarray], mpe_below: Any, mpe_above: Any
    ) -> np.ndarray:
        values = super()._compute_acquisition_func(samples, mpe_below, mpe_above)
        alpha = cooled_exponent(self.cost_exponent, self.progress)
        costly = [name for name in samples if name == "upsample" and name in self._space]
        if alpha == 0.0 or not costly:
            return values
        size = len(values)
        log_cost = np.array(
            [
                math.log(
                    relative_epoch_cost(
                        {
                            name: self._space[name].to_external_repr(samples[name][i])
                            for name in costly
                        }
                    )
                )
                for i in range(size)
            ]
        )
        return values - alpha * log_cost


def prior_probability(prior_weight: float, suggested: int) -> float:
    """The chance the next suggestion is drawn around the prior: ``w / (w + n)``, with ``n``
    the trials suggested so far (the baseline included); 0 when the weight is 0."""
    if prior_weight <= 0:
        return 0.0
    return prior_weight / (prior_weight + max(suggested, 0))


def prior_draw(
    prior: Mapping[str, Any], space: Mapping[str, Distribution], rng: np.random.Generator
) -> dict[str, Any]:
    """A perturbation of the prior point: each searched setting it holds moved by a normal
    step of ``PRIOR_SPREAD`` of its range (on the log scale for ``loguniform``), clipped to the
    range; a choice keeps its value with probability ``PRIOR_KEEP_CHOICE``, else takes a
    uniform one. Settings the prior does not hold are left to TPE."""
    point: dict[str, Any] = {}
    for key, dist in space.items():
        if key not in prior or dist.kind == "fixed":
            continue
        value = prior[key]
        if dist.kind == "choice":
            keep = rng.random() < PRIOR_KEEP_CHOICE
            point[key] = value if keep else dist.values[int(rng.integers(len(dist.values)))]
            continue
        log = dist.kind == "loguniform"
        bottom, top = float(dist.low or 0), float(dist.high or 0)  # ranges have both
        low, high = (math.log(bottom), math.log(top)) if log else (bottom, top)
        centre = math.log(value) if log else float(value)
        moved = min(max(centre + rng.normal(0.0, PRIOR_SPREAD * (high - low)), low), high)
        if dist.kind == "int":
            point[key] = int(min(max(round(moved), bottom), top))
        else:
            point[key] = float(min(max(math.exp(moved) if log else moved, bottom), top))
    return point
