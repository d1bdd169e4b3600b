"""Optuna suggests, ASHA stops: the searcher that keeps the Optuna study honest about both.

Ray's stock ``OptunaSearch`` tells the study COMPLETE for every trial that ends without an
error, with its last value, so a trial that ASHA stopped after one epoch is ranked by TPE
against trials that trained fully. :class:`AshaAwareOptunaSearch` tells PRUNED for trials that
ended before ``max_t`` (Optuna then takes their last intermediate value, as its own pruners
do), COMPLETE only for those that reached it, and FAIL for crashed or failed trials.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from search.driver.acquisition import CostAwareTPESampler, prior_draw, prior_probability
from search.driver.scheduling import DeviceBudget
from search.driver.study import make_sampler, open_study
from search.outputs.study import (
    ATTR_CONTINUES,
    ATTR_END,
    ATTR_RAY_TRIAL,
    METRIC,
    MODE,
    REASON_ORPHANED,
    TIME_ATTR,
    trial_outcome,
)
from search.space import CONDITIONS, Distribution, condition_holds
from search.spec import setting_defaults

logger = logging.getLogger(__name__)

# While a driver restores a search: the journal's path on this machine now, which may differ
# from the one pickled with the searcher (an experiment folder moved, or a cloud experiment's
# local mirror). Set only through `relocated_journal`.
_journal_override: str | None = None


@contextlib.contextmanager
def relocated_journal(journal_path: str) -> Iterator[None]:
    """Searchers restored inside this block reopen their study at ``journal_path``.

    Ray restores a searcher from its pickle deep inside ``Tuner.restore``, so the driver cannot
    hand it the path as an argument; this block is the one way to say where the journal is now.
    """
    global _journal_override
    previous, _journal_override = _journal_override, journal_path
    try:
        yield
    finally:
        _journal_override = previous


def _suggest(trial: Any, key: str, dist: Distribution) -> Any:
    if dist.kind == "uniform":
        return trial.suggest_float(key, dist.low, dist.high)
    if dist.kind == "loguniform":
        return trial.suggest_float(key, dist.low, dist.high, log=True)
    if dist.kind == "int":
        return trial.suggest_int(key, dist.low, dist.high)
    if dist.kind == "choice":
        return trial.suggest_categorical(key, list(dist.values))
    return dist.values[0]


class define_by_run:  # noqa: N801 - used like a function; a class so the searcher pickles
    """Optuna's define-by-run function for ``space``.

    A conditional key (``input_conv_filters`` needs ``input_convs > 1``) is suggested only when
    its condition holds for the value the trial will really use (drawn, fixed, or the default),
    so TPE never learns from values that had no effect. Fixed values in the space are returned
    (merged into the config without being Optuna parameters).

    Args:
        space: The searched settings.
        fixed_config: The settings every trial shares; a condition may read them.
    """

    def __init__(
        self, space: Mapping[str, Distribution], fixed_config: Mapping[str, Any] | None = None
    ) -> None:
        self.space = dict(space)
        # A key nobody set takes model_zoo's or the train section's default.
        self.base = {**setting_defaults(), **dict(fixed_config or {})}
        # Parents first so a condition can read the value already drawn.
        self.order = sorted(self.space, key=lambda k: k in CONDITIONS)

    def __call__(self, trial: Any) -> dict[str, Any]:
        drawn: dict[str, Any] = {}
        fixed: dict[str, Any] = {}
        for key in self.order:
            dist = self.space[key]
            if key in CONDITIONS and not condition_holds(key, {**self.base, **fixed, **drawn}):
                continue
            if dist.kind == "fixed":
                fixed[key] = dist.values[0]
            else:
                drawn[key] = _suggest(trial, key, dist)
        return fixed


class AshaAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose study states follow ASHA's decisions.

    A Ray trial that goes on after the study recorded it as finished (``resume`` restarts an
    errored trial, or one that a stale snapshot still shows running) gets a new study trial
    with the same parameters, the epochs already recorded and the new ones, linked by the Ray
    trial id; the finished one stays as it was, so the study tells what really happened.

    Args:
        space: The searched settings.
        journal_path: The Optuna journal file in the experiment folder.
        study_name: The study's name (the experiment's name).
        max_t: ASHA's ``max_t``; a trial that reported this epoch is COMPLETE.
        seed: The sampler's seed.
        algorithm: ``tpe`` or ``random``.
        points_to_evaluate: Configurations to try first (the baseline).
        fixed_config: The settings every trial shares (they decide conditional keys).
        num_samples: Trials in this run; sizes TPE's random start-up.
        rung_epochs: ASHA's rungs and ``max_t``: the epochs ``tpe_rungs`` may model at.
        cost_exponent: TPE's acquisition is divided by the configuration's cost to this
            power, cooled to 0 as the search goes on (:mod:`search.driver.acquisition`).
        prior_weight: Draw a suggestion around the prior point (the baseline) with chance
            ``prior_weight / (prior_weight + trials so far)``; 0: never.
        prior_point: The prior: the baseline's searched values.
        budget: The device budget (:class:`~search.driver.scheduling.DeviceBudget`), which
            measures how far the search has gone (else the share of ``num_samples``
            suggested); the searcher records each result's seconds in it.
    """

    # Ray annotates it None (its value before the study opens); here it is the open study.
    _ot_study: optuna.Study  # type: ignore[assignment]

    def __init__(
        self,
        space: Mapping[str, Distribution],
        *,
        journal_path: str,
        study_name: str,
        max_t: int,
        seed: int = 0,
        algorithm: str = "tpe",
        points_to_evaluate: list[dict[str, Any]] | None = None,
        fixed_config: Mapping[str, Any] | None = None,
        num_samples: int | None = None,
        rung_epochs: tuple[int, ...] = (),
        cost_exponent: float = 0.0,
        prior_weight: float = 0.0,
        prior_point: Mapping[str, Any] | None = None,
        budget: DeviceBudget | None = None,
    ) -> None:
        self._space_spec = dict(space)
        self._cost_exponent = cost_exponent
        self._prior_weight = prior_weight
        self._prior_point = dict(prior_point or {})
        self._budget = budget
        self._journal_path = journal_path
        self._max_t = max_t
        self._algorithm = algorithm
        self._sampler_seed = seed
        self._num_samples = num_samples
        self._rung_epochs = tuple(rung_epochs)
        self._max_concurrent: int | None = None
        study = open_study(
            journal_path, study_name, seed, algorithm, num_samples, rung_epochs=self._rung_epochs
        )
        super().__init__(
            space=define_by_run(space, fixed_config),
            metric=METRIC,
            mode=MODE,
            points_to_evaluate=points_to_evaluate or None,
            sampler=study.sampler,
            study_name=study_name,
            storage=study._storage,
        )

    # -- suggestions ----------------------------------------------------------------------

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Ray says how many trials run at once (``max_concurrent_trials``), before the first
        suggestion: TPE then takes the constant liar when that is more than one.

        Returns:
            True: the searcher keeps the limit itself, so Ray's ``ConcurrencyLimiter`` passes
            every call through (the limiter forgets a trial once it completed, and when resume
            restarts an errored trial its completion would never reach the study).
        """
        self._max_concurrent = max_concurrent
        if not self._ot_trials:
            # A restored search keeps the sampler (and random state) it was pickled with; a
            # fresh one would draw the start-up configs it already tried.
            sampler = make_sampler(
                self._sampler_seed,
                self._algorithm,
                self._num_samples,
                max_concurrent,
                getattr(self, "_rung_epochs", ()),
                getattr(self, "_cost_exponent", 0.0),
            )
            self._sampler = sampler
            self._ot_study.sampler = sampler
        return True

    def suggest(self, trial_id: str) -> dict | None:
        limit = getattr(self, "_max_concurrent", None)  # None in searchers pickled before it
        live = sum(1 for known in self._ot_trials if known not in self._completed_trials)
        if limit and trial_id not in self._ot_trials and live >= limit:
            return None  # Ray asks again when a trial ends
        if trial_id not in self._ot_trials:
            self._prepare_suggestion()
        config = super().suggest(trial_id)
        self._ot_study._storage.set_trial_user_attr(
            self._ot_trials[trial_id]._trial_id, ATTR_RAY_TRIAL, trial_id
        )
        return config

    def progress(self) -> float:
        """How far the search has gone, in [0, 1]: the share of the device budget spent, or
        of ``num_samples`` suggested, whichever is further."""
        shares = [0.0]
        budget = getattr(self, "_budget", None)
        if isinstance(budget, DeviceBudget):  # not in searchers pickled before it
            shares.append(budget.progress())
        if self._num_samples:
            shares.append(len(self._ot_trials) / self._num_samples)
        return min(max(shares), 1.0)

    def _prepare_suggestion(self) -> None:
        """Tells the cost-aware sampler how far the search has gone, and, with a prior
        weight, queues a draw around the prior for the next trial when the dice say so."""
        sampler = getattr(self._ot_study.sampler, "sampler", self._ot_study.sampler)
        if isinstance(sampler, CostAwareTPESampler):
            sampler.progress = self.progress()
        weight = getattr(self, "_prior_weight", 0.0)
        if not weight or not self._prior_point:
            return
        storage = self._ot_study._storage
        if storage.get_all_trials(
            self._ot_study._study_id, deepcopy=False, states=(TrialState.WAITING,)
        ):
            return  # the baseline (or a draw) is queued already
        suggested = storage.get_n_trials(self._ot_study._study_id)
        # One generator per trial number: a resumed search draws what it would have drawn.
        rng = np.random.default_rng([self._sampler_seed, suggested])
        if rng.random() < prior_probability(weight, suggested):
            self._ot_study.enqueue_trial(
                prior_draw(self._prior_point, self._space_spec, rng), skip_if_exists=False
            )

    # -- results --------------------------------------------------------------------------

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get("trial_failed") or trial_id not in self._ot_trials:
            return
        budget = getattr(self, "_budget", None)
        if isinstance(budget, DeviceBudget):  # the stopper records it too: the max is kept
            budget.record(trial_id, result)
        value = result.get(METRIC)
        if value is None or not math.isfinite(value):
            return
        step = int(result[TIME_ATTR])
        storage = self._ot_study._storage
        frozen = storage.get_trial(self._ot_trials[trial_id]._trial_id)
        # A trial resumed from a checkpoint reports its epochs again only from where it left;
        # Optuna refuses a second value for a step, so keep the first.
        if step in frozen.intermediate_values:
            return
        if frozen.state.is_finished():
            frozen = self._continue(trial_id, frozen)
        storage.set_trial_intermediate_value(frozen._trial_id, step, value)

    def _continue(
        self, trial_id: str, finished: optuna.trial.FrozenTrial
    ) -> optuna.trial.FrozenTrial:
        """A new study trial for a Ray trial that goes on after its study trial finished."""
        storage = self._ot_study._storage
        template = optuna.trial.create_trial(
            state=TrialState.RUNNING,
            params=finished.params,
            distributions=finished.distributions,
            intermediate_values=finished.intermediate_values,
            user_attrs={ATTR_RAY_TRIAL: trial_id, ATTR_CONTINUES: finished.number},
        )
        study_id = storage.get_study_id_from_name(self._ot_study.study_name)
        new_id = storage.create_new_trial(study_id, template_trial=template)
        self._ot_trials[trial_id] = optuna.Trial(self._ot_study, new_id)
        self._completed_trials.discard(trial_id)
        logger.info(
            "Ray trial %s goes on after study trial %d finished (%s): recorded as study trial %d",
            trial_id,
            finished.number,
            finished.state.name,
            storage.get_trial_number_from_id(new_id),
        )
        return storage.get_trial(new_id)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id not in self._ot_trials:
            return
        if result and not result.get("trial_failed"):
            # Ray hands a trial's last result to on_trial_complete only, never to
            # on_trial_result: record it as that epoch's intermediate value first (this may
            # continue a study trial that had finished).
            self.on_trial_result(trial_id, result)
        ot_trial = self._ot_trials[trial_id]
        storage = self._ot_study._storage
        frozen = storage.get_trial(ot_trial._trial_id)
        if frozen.state.is_finished():
            # Told already (this run, or before a resume), and nothing new since.
            self._completed_trials.add(trial_id)
            return
        state_name, reason = trial_outcome(
            result, error, self._max_t, trained=bool(frozen.intermediate_values)
        )
        state = TrialState[state_name]
        # A pruned trial's value is its last intermediate value (Optuna takes it, as its own
        # pruners do); a failed trial has none.
        value = result.get(METRIC) if result and state == TrialState.COMPLETE else None
        storage.set_trial_user_attr(ot_trial._trial_id, ATTR_END, reason)
        try:
            self._ot_study.tell(ot_trial, value, state=state)
        except (ValueError, RuntimeError) as err:
            logger.warning("Optuna refused the result of %s: %s", trial_id, err)
        self._completed_trials.add(trial_id)

    # -- persistence ----------------------------------------------------------------------

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        # The journal, not the pickle, is the truth: reopen it at the experiment's current
        # location (it may have moved) and settle trials the killed driver never recorded.
        self.reattach(_journal_override or self._journal_path)

    def reattach(self, journal_path: str) -> None:
        """Points the study at ``journal_path`` and fails trials no Ray trial owns any more."""
        self._journal_path = journal_path
        study_name = self._ot_study.study_name
        study = open_study(
            journal_path,
            study_name,
            self._sampler_seed,
            self._algorithm,
            getattr(self, "_num_samples", None),
        )
        study.sampler = self._ot_study.sampler
        # Find each Ray trial's record by its link, not by the pickled Optuna id: a journal
        # rebuilt from Ray's results (search.driver.reconcile) numbers its trials anew. A
        # trial with no record was suggested but never reached Ray's results: drop it.
        records = {
            str(t.user_attrs[ATTR_RAY_TRIAL]): t
            for t in study.get_trials(deepcopy=False)
            if ATTR_RAY_TRIAL in t.user_attrs
        }
        self._ot_trials = {
            trial_id: optuna.Trial(study, records[trial_id]._trial_id)
            for trial_id in self._ot_trials
            if trial_id in records
        }
        # A trial the driver found orphaned (Ray's results lack it) never runs again: it
        # must not hold a slot of max_concurrent.
        self._completed_trials.update(
            trial_id
            for trial_id in self._ot_trials
            if records[trial_id].user_attrs.get(ATTR_END) == REASON_ORPHANED
        )
        owned = {t._trial_id for t in self._ot_trials.values()}
        self._ot_study = study
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen._trial_id not in owned:
                study._storage.set_trial_user_attr(frozen._trial_id, ATTR_END, REASON_ORPHANED)
                study.tell(frozen.number, state=TrialState.FAIL)
