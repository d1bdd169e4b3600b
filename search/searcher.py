"""Optuna suggests, ASHA stops: the searcher that keeps the Optuna study honest about both.

Ray's stock ``OptunaSearch`` tells the study COMPLETE for every trial that ends without an
error, with its last value, so a trial that ASHA stopped after one epoch is ranked by TPE
against trials that trained fully. :class:`AshaAwareOptunaSearch` tells PRUNED for trials that
ended before ``max_t`` (Optuna then takes their last intermediate value, as its own pruners
do), COMPLETE only for those that reached it, and FAIL for crashed or failed trials.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search.spec import CONDITIONS, Distribution

logger = logging.getLogger(__name__)

STUDY_FILE = "optuna_study.journal"
METRIC = "val_accuracy"
MODE = "max"
TIME_ATTR = "epoch"

# Optuna user attributes that tie a study trial to Ray's trial and say why it ended.
ATTR_RAY_TRIAL = "ray_trial_id"
ATTR_END = "ended_by"

# Set by the driver while it restores a search: the journal's path on this machine now, which
# may differ from the one pickled with the searcher (an experiment folder moved or synced).
JOURNAL_OVERRIDE: str | None = None


def startup_trials(num_samples: int | None) -> int:
    """TPE's random start-up trials: Optuna's 10, but never more than a quarter of a search
    (with 16 trials, 10 random ones would leave TPE almost nothing to decide)."""
    if num_samples is None:
        return 10
    return max(2, min(10, num_samples // 4))


def open_study(journal_path: str, study_name: str, seed: int,
               algorithm: str = "tpe", num_samples: int | None = None) -> optuna.Study:
    """Opens (or creates) the experiment's study in Optuna's journal file storage.

    The journal is an append-only log: a driver killed mid-write loses at most its last line,
    and ``optuna-dashboard <journal>`` opens it as it is.
    """
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(journal_path))
    sampler: optuna.samplers.BaseSampler
    if algorithm == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed,
                                             n_startup_trials=startup_trials(num_samples))
    return optuna.create_study(
        storage=storage,
        study_name=study_name,
        sampler=sampler,
        # ASHA does all the stopping; Optuna's own pruner must never second-guess it.
        pruner=optuna.pruners.NopPruner(),
        direction="maximize" if MODE == "max" else "minimize",
        load_if_exists=True,
    )


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
    its condition holds, so TPE never learns from values that had no effect. Fixed values in
    the space are returned (merged into the config without being Optuna parameters).

    Args:
        space: The searched settings.
        fixed_config: The settings every trial shares; a condition may read them.
    """

    def __init__(self, space: Mapping[str, Distribution],
                 fixed_config: Mapping[str, Any] | None = None) -> None:
        self.space = dict(space)
        self.base = dict(fixed_config or {})
        # Parents first so a condition can read the value already drawn.
        self.order = sorted(self.space, key=lambda k: k in CONDITIONS)

    def __call__(self, trial: Any) -> dict[str, Any]:
        drawn: dict[str, Any] = {}
        fixed: dict[str, Any] = {}
        for key in self.order:
            dist = self.space[key]
            if key in CONDITIONS and not self._condition_holds(key, {**self.base, **fixed,
                                                                     **drawn}):
                continue
            if dist.kind == "fixed":
                fixed[key] = dist.values[0]
            else:
                drawn[key] = _suggest(trial, key, dist)
        return fixed

    @staticmethod
    def _condition_holds(key: str, values: Mapping[str, Any]) -> bool:
        parent, _, test = CONDITIONS[key]
        return parent not in values or test(values[parent])


class AshaAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose study states follow ASHA's decisions, with a GPU-hour budget.

    Args:
        space: The searched settings.
        journal_path: The Optuna journal file in the experiment folder.
        study_name: The study's name (the experiment's name).
        max_t: ASHA's ``max_t``; a trial that reported this epoch is COMPLETE.
        seed: The sampler's seed.
        algorithm: ``tpe`` or ``random``.
        points_to_evaluate: Configurations to try first (the baseline).
        budget_gpu_seconds: Stop suggesting new trials once the trials' GPU-seconds sum to
            this; ``None`` for no budget.
        fixed_config: The settings every trial shares (they decide conditional keys).
        num_samples: Trials in this run; sizes TPE's random start-up.
    """

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
        budget_gpu_seconds: float | None = None,
        fixed_config: Mapping[str, Any] | None = None,
        num_samples: int | None = None,
    ) -> None:
        self._journal_path = journal_path
        self._max_t = max_t
        self._budget_gpu_seconds = budget_gpu_seconds
        self._gpu_seconds: dict[str, float] = {}
        self._algorithm = algorithm
        self._sampler_seed = seed
        self._num_samples = num_samples
        study = open_study(journal_path, study_name, seed, algorithm, num_samples)
        super().__init__(
            space=define_by_run(space, fixed_config),
            metric=METRIC,
            mode=MODE,
            points_to_evaluate=points_to_evaluate or None,
            sampler=study.sampler,
            study_name=study_name,
            storage=study._storage,
        )

    # -- budget ---------------------------------------------------------------------------

    @property
    def gpu_seconds_used(self) -> float:
        """GPU-seconds that the trials of this search have held so far."""
        return sum(self._gpu_seconds.values())

    def suggest(self, trial_id: str) -> dict | None:
        if self._budget_gpu_seconds is not None and (
            self.gpu_seconds_used >= self._budget_gpu_seconds
        ):
            logger.info("GPU-hour budget reached: no new trials")
            return Searcher.FINISHED
        config = super().suggest(trial_id)
        self._ot_study._storage.set_trial_user_attr(
            self._ot_trials[trial_id]._trial_id, ATTR_RAY_TRIAL, trial_id
        )
        return config

    # -- results --------------------------------------------------------------------------

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._gpu_seconds[trial_id] = float(result.get("gpu_seconds", 0.0))
        if result.get("trial_failed") or trial_id not in self._ot_trials:
            return
        value = result.get(METRIC)
        if value is None or not math.isfinite(value):
            return
        ot_trial = self._ot_trials[trial_id]
        step = int(result[TIME_ATTR])
        # A trial resumed from a checkpoint reports its epochs again only from where it left;
        # Optuna refuses a second value for a step, so keep the first.
        if step not in ot_trial.study._storage.get_trial(ot_trial._trial_id).intermediate_values:
            ot_trial.report(value, step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if result:
            self._gpu_seconds[trial_id] = float(result.get("gpu_seconds", 0.0))
        ot_trial = self._ot_trials[trial_id]
        storage = self._ot_study._storage
        frozen = storage.get_trial(ot_trial._trial_id)
        if frozen.state.is_finished():
            self._completed_trials.add(trial_id)
            return
        value = None if not result else result.get(METRIC)
        epoch = 0 if not result else int(result.get(TIME_ATTR, 0))
        if result and not result.get("trial_failed"):
            # Ray hands a trial's last result to on_trial_complete only, never to
            # on_trial_result: record it as that epoch's intermediate value first.
            self.on_trial_result(trial_id, result)
        if error or not result or result.get("trial_failed"):
            state, reason = TrialState.FAIL, (result or {}).get("failure_reason") or "error"
            value = None
        elif value is None or not math.isfinite(value):
            state, reason, value = TrialState.FAIL, "no finite metric", None
        elif epoch >= self._max_t:
            state, reason = TrialState.COMPLETE, "max_t"
        else:
            # Stopped before max_t: ASHA's decision (or a time budget). Optuna records the
            # last intermediate value as a pruned trial's value.
            state, reason, value = TrialState.PRUNED, f"asha@{epoch}", None
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
        self.reattach(JOURNAL_OVERRIDE or self._journal_path)

    def reattach(self, journal_path: str) -> None:
        """Points the study at ``journal_path`` and fails trials no Ray trial owns any more."""
        self._journal_path = journal_path
        study_name = self._ot_study.study_name
        study = open_study(journal_path, study_name, self._sampler_seed, self._algorithm,
                           getattr(self, "_num_samples", None))
        study.sampler = self._ot_study.sampler
        owned = {t._trial_id for t in self._ot_trials.values()}
        self._ot_study = study
        for trial_id, ot_trial in list(self._ot_trials.items()):
            self._ot_trials[trial_id] = optuna.Trial(study, ot_trial._trial_id)
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen._trial_id not in owned:
                study._storage.set_trial_user_attr(frozen._trial_id, ATTR_END,
                                                   "orphaned: driver stopped before Ray "
                                                   "recorded the trial")
                study.tell(frozen.number, state=TrialState.FAIL)


def journal_path_for(experiment_dir: str) -> str:
    """The Optuna journal's path inside a local experiment folder."""
    return os.path.join(experiment_dir, STUDY_FILE)
