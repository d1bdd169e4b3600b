"""The study's vocabulary, free of Ray: the metric, trial outcomes, and the Optuna journal.

Everything that reads or writes a search's results (the driver, the searcher, export, report,
the progress lines) takes its names from here, so ``val_accuracy``, ``max``, a trial's status
and ASHA's stop reason are each spelled once.
"""

from __future__ import annotations

import os
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

METRIC = "val_accuracy"
MODE = "max"
TIME_ATTR = "epoch"
STUDY_FILE = "optuna_study.journal"

# Optuna user attributes that tie a study trial to Ray's trial and say why it ended.
ATTR_RAY_TRIAL = "ray_trial_id"
ATTR_END = "ended_by"

# Why a trial ended, as recorded in the study and the results tables.
REASON_MAX_T = "max_t"
REASON_ERROR = "error"
REASON_NO_METRIC = "no finite metric"
REASON_ORPHANED = "orphaned: driver stopped before Ray recorded the trial"


class TrialStatus(str, Enum):
    """Where a trial stands, as the progress lines, tables and report show it."""

    RUNNING = "running"
    COMPLETE = "complete"  # reached max_t
    STOPPED = "stopped"  # stopped early by ASHA (PRUNED in the study)
    FAILED = "failed"
    UNFINISHED = "unfinished"  # left running, pending or paused by an interrupted driver

    def __str__(self) -> str:
        return self.value


def asha_stop_reason(epoch: int) -> str:
    """The stop reason of a trial ASHA stopped after ``epoch`` epochs."""
    return f"asha@{epoch}"


def is_better(value: float, than: float | None) -> bool:
    """Whether ``value`` beats ``than`` in the study's direction (``None`` is beaten)."""
    if than is None:
        return True
    return value > than if MODE == "max" else value < than


def startup_trials(num_samples: int | None) -> int:
    """TPE's random start-up trials: Optuna's 10, but never more than a quarter of a search
    (with 16 trials, 10 random ones would leave TPE almost nothing to decide)."""
    if num_samples is None:
        return 10
    return max(2, min(10, num_samples // 4))


def journal_path_for(experiment_dir: str) -> str:
    """The Optuna journal's path inside a local experiment folder."""
    return os.path.join(experiment_dir, STUDY_FILE)


def open_study(journal_path: str, study_name: str, seed: int,
               algorithm: str = "tpe", num_samples: int | None = None) -> optuna.Study:
    """Opens (or creates) the experiment's study in Optuna's journal file storage.

    The journal is an append-only log: a driver killed mid-write loses at most its last line,
    and ``optuna-dashboard <journal>`` opens it as it is.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from search.driver.sampler import BoundedHistorySampler

    storage = JournalStorage(JournalFileBackend(journal_path))
    sampler: optuna.samplers.BaseSampler
    if algorithm == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        # TPE over a bounded history: a suggestion's cost stops growing with the study.
        sampler = BoundedHistorySampler(optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=startup_trials(num_samples)))
    return optuna.create_study(
        storage=storage,
        study_name=study_name,
        sampler=sampler,
        # ASHA does all the stopping; Optuna's own pruner must never second-guess it.
        pruner=optuna.pruners.NopPruner(),
        direction="maximize" if MODE == "max" else "minimize",
        load_if_exists=True,
    )
