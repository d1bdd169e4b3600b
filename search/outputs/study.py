"""The study's vocabulary, free of Ray: the metric, trial outcomes, and the Optuna journal read
back.

Everything that reads or writes a search's results (the driver, the searcher, export, report,
status, the progress lines) takes its names from here, so ``val_accuracy``, ``max``, a trial's
status and ASHA's stop reason are each spelled once. It sits with the outputs, the lowest layer
that reads them; the driver, which writes the study (:mod:`search.driver.study`), imports it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

METRIC = "val_accuracy"
MODE = "max"
TIME_ATTR = "epoch"
STUDY_FILE = "optuna_study.journal"

# Optuna user attributes that tie a study trial to Ray's trial and say why it ended.
ATTR_RAY_TRIAL = "ray_trial_id"
ATTR_END = "ended_by"
# Set on a study trial rebuilt from Ray's results (its journal record was lost).
ATTR_REBUILT = "rebuilt_from_results"

# Why a trial ended, as recorded in the study and the results tables.
REASON_MAX_T = "max_t"
REASON_ERROR = "error"
REASON_NO_METRIC = "no finite metric"
REASON_ORPHANED = "orphaned: driver stopped before Ray recorded the trial"
REASON_UNFINISHED = "unfinished: left running by an interrupted driver, never resumed"
# A trial that trained while Ray's results in storage never recorded it (its driver killed
# before Ray's snapshot reached storage): rebuilt from the study, its checkpoints lost.
REASON_LOST = "lost: its driver was killed before Ray's results recorded it"
# Marks the result rows of a Ray trial rebuilt from the study (Ray's results in storage never
# recorded the trial: its driver was killed before Ray's snapshot reached storage).
REBUILT_FROM_STUDY = "rebuilt_from_study"
REASON_BUDGET = "budget"  # stopped at an epoch boundary (or before it started): budget spent

# The result key in which the driver records why it stopped a trial (a trial's own reports
# never carry it), so the trial's result.json says it too.
STOP_REASON = "stop_reason"
# Optuna user attribute of a study trial that continues another one (its number): Ray resumed
# a trial after the study had already recorded it as finished.
ATTR_CONTINUES = "continues_trial"


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


# A finished trial's state, in Optuna's words (the study, and MLflow's tags, say these).
STATE_COMPLETE, STATE_PRUNED, STATE_FAIL = "COMPLETE", "PRUNED", "FAIL"


def trial_outcome(
    result: dict | None, error: bool, max_t: int, *, trained: bool = False
) -> tuple[str, str]:
    """How a finished trial ended, from its last result: ``(state, reason)``.

    COMPLETE when it reached ``max_t`` with a finite metric, PRUNED when it stopped before
    (ASHA's decision, the device budget or a time budget: the driver writes why into the
    result's ``stop_reason``), FAIL when it crashed, failed (NaN loss, OOM) or has no finite
    metric.

    Args:
        result: The trial's last result, ``None`` when Ray hands none.
        error: Whether Ray ended the trial as errored.
        max_t: The epochs a complete trial trains.
        trained: Whether the trial reported any epoch (asked only when ``result`` is ``None``).
    """
    if result is None and not error:
        # Ray hands no result only for a trial it removed before it ran again; our scheduler
        # does that only once the budget is spent.
        return (STATE_PRUNED if trained else STATE_FAIL), REASON_BUDGET
    if error or not result or result.get("trial_failed"):
        return STATE_FAIL, str((result or {}).get("failure_reason") or REASON_ERROR)
    value = result.get(METRIC)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return STATE_FAIL, REASON_NO_METRIC
    epoch = int(result.get(TIME_ATTR, 0))
    if epoch >= max_t:
        return STATE_COMPLETE, REASON_MAX_T
    return STATE_PRUNED, str(result.get(STOP_REASON) or asha_stop_reason(epoch))


def is_better(value: float, than: float | None) -> bool:
    """Whether ``value`` beats ``than`` in the study's direction (``None`` is beaten)."""
    if than is None:
        return True
    return value > than if MODE == "max" else value < than


def journal_path_for(experiment_dir: str) -> str:
    """The Optuna journal's path inside a local experiment folder."""
    return os.path.join(experiment_dir, STUDY_FILE)


def load_study_readonly(experiment_dir: str, study_name: str) -> optuna.Study | None:
    """The experiment's study as its journal says, without writing a byte anywhere.

    :func:`search.driver.study.open_study` is for the driver:
    ``create_study(load_if_exists=True)`` appends a line to the journal and Optuna's file
    backend creates files beside it. Export, report and the tests read through this instead:
    the journal's bytes (local or cloud, through :mod:`search.storage`) replayed in memory,
    with writing refused.

    Returns:
        The study, or ``None`` when the experiment has no journal or it holds no such study.
    """
    import optuna
    from optuna.storages import JournalStorage

    from search import storage

    fs, root = storage.filesystem(experiment_dir)
    path = storage.join(root, STUDY_FILE)
    if not storage.exists(fs, path):
        return None
    journal = JournalStorage(_ReadOnlyJournal(storage.read_bytes(fs, path)))  # type: ignore[arg-type]
    try:
        return optuna.load_study(
            study_name=study_name, storage=journal, sampler=optuna.samplers.RandomSampler(seed=0)
        )
    except KeyError:  # the journal holds no study of that name (yet)
        return None


class _ReadOnlyJournal:
    """An Optuna journal backend over bytes already read; appending is refused."""

    def __init__(self, data: bytes) -> None:
        # Only whole lines: a driver killed mid-append leaves a partial last line.
        self._lines = data.splitlines(keepends=True)

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        for line in self._lines[log_number_from:]:
            try:
                if not line.endswith(b"\n"):
                    return
                log = json.loads(line)
            except ValueError:
                return  # like a cut line: the usable journal ends here
            yield log

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        raise PermissionError("the study was opened read-only (load_study_readonly)")
