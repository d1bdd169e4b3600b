"""``finetune-search status``: where a search stands, read from its folder and nothing else.

Reads only: the spec, Ray's per-trial results and state file, and the driver's lock, all through
:mod:`search.storage` (so a cloud experiment reads the same). It never opens the Optuna
study (opening a journal study may append to it) and never writes, so it is safe to run while
another process drives the search, as often as wanted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from search.errors import SpecError
from search.outputs.experiment import load_experiment_spec
from search.outputs.lock import LockOwner, read_owner
from search.outputs.report_text import format_table
from search.outputs.results import RAY_ERROR, TrialRecord, best_trial, load_trials
from search.outputs.study import METRIC, TrialStatus

# Ray's status of a trial that has ended (stopped, complete or errored).
RAY_ENDED = ("TERMINATED", RAY_ERROR)
STATE_ORDER = (
    TrialStatus.RUNNING,
    TrialStatus.COMPLETE,
    TrialStatus.STOPPED,
    TrialStatus.FAILED,
    TrialStatus.UNFINISHED,
)


@dataclass
class TrialLine:
    """One row of the status table."""

    trial_id: str
    state: TrialStatus
    epoch: int
    best: float | None
    last: float | None
    stop_reason: str
    gpu_hours: float


@dataclass
class ExperimentStatus:
    """A search as its folder tells it right now.

    Attributes:
        experiment_dir: The folder (local path or URI).
        name, max_t: From its spec.
        trials: One line per trial, in the order they started.
        best: The best trial so far (failed ones excluded), or ``None``.
        driver: The lock of the live driver holding the folder (``pid``, ``host``,
            ``since``), or ``None``. Another host's driver counts as live (this machine cannot
            check it).
        gpu_hours: GPU-hours the trials have held, all together.
        budget_gpu_hours: The spec's ``search.budget_gpu_hours`` (``None``: no budget).
    """

    experiment_dir: str
    name: str
    max_t: int
    trials: list[TrialLine] = field(default_factory=list)
    best: TrialRecord | None = None
    driver: LockOwner | None = None  # the live driver holding the experiment
    gpu_hours: float = 0.0
    budget_gpu_hours: float | None = None

    @property
    def running(self) -> bool:
        return self.driver is not None

    def counts(self) -> dict[str, int]:
        """Trials per state, every state named (zeros included) except unfinished ones."""
        counts = {s.value: 0 for s in STATE_ORDER if s != TrialStatus.UNFINISHED}
        for line in self.trials:
            counts[line.state.value] = counts.get(line.state.value, 0) + 1
        return counts


def _state(trial: TrialRecord, max_t: int, driver_running: bool) -> TrialStatus:
    """The trial's state; with a live driver, a trial Ray has not ended yet is running."""
    status = trial.status(max_t)
    if (
        driver_running
        and status in (TrialStatus.STOPPED, TrialStatus.UNFINISHED)
        and (trial.ray_status not in RAY_ENDED)
    ):
        return TrialStatus.RUNNING
    return status


def experiment_status(experiment_dir: str) -> ExperimentStatus:
    """Reads where a search stands, without changing a byte of its folder.

    Args:
        experiment_dir: The experiment folder (local path or URI).

    Returns:
        The trials so far, counts, best, driver and GPU-hours.

    Raises:
        SpecError: When the folder is missing, empty or not one of ours.
    """
    spec = load_experiment_spec(experiment_dir)
    lock = read_owner(experiment_dir)
    owner = lock if lock is not None and lock.is_alive() else None
    records = load_trials(experiment_dir)
    lines = []
    for trial in records:
        state = _state(trial, spec.max_t, owner is not None)
        reason = (
            "-"
            if state in (TrialStatus.RUNNING, TrialStatus.UNFINISHED)
            else (trial.stop_reason(spec.max_t))
        )
        lines.append(
            TrialLine(
                trial_id=trial.trial_id,
                state=state,
                epoch=trial.epochs_run,
                best=trial.best_value,
                last=trial.final.get(METRIC),
                stop_reason=reason,
                gpu_hours=trial.gpu_seconds / 3600,
            )
        )
    return ExperimentStatus(
        experiment_dir=experiment_dir,
        name=spec.name,
        max_t=spec.max_t,
        trials=lines,
        best=best_trial(records),
        driver=owner,
        gpu_hours=sum(t.gpu_seconds for t in records) / 3600,
        budget_gpu_hours=spec.search.budget_gpu_hours,
    )


def _metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_status(status: ExperimentStatus) -> str:
    """The status as the terminal shows it: a header, the trials table, counts and totals."""
    if status.driver is not None:
        driver = f"running ({status.driver.describe()})"
    else:
        driver = "none (the search is not running)"
    out = [f"experiment {status.name}: {status.experiment_dir}", f"driver: {driver}"]
    if status.trials:
        rows = [
            ["trial", "state", "epoch", f"best {METRIC}", f"last {METRIC}", "stop reason", "GPU-h"]
        ]
        rows += [
            [
                t.trial_id,
                t.state.value,
                f"{t.epoch}/{status.max_t}",
                _metric(t.best),
                _metric(t.last),
                t.stop_reason,
                f"{t.gpu_hours:.3f}",
            ]
            for t in status.trials
        ]
        out += ["", *format_table(rows), ""]
    counts = ", ".join(f"{k} {v}" for k, v in status.counts().items())
    out.append(f"trials: {len(status.trials)} ({counts})")
    if status.best is None:
        out.append("best so far: none yet")
    else:
        out.append(
            f"best so far: trial {status.best.trial_id} {METRIC}="
            f"{status.best.best_value:.4f} (epoch {status.best.best.get('epoch')})"
        )
    budget = (
        "no budget"
        if status.budget_gpu_hours is None
        else f"of {status.budget_gpu_hours:g} budgeted"
    )
    out.append(f"GPU-hours: {status.gpu_hours:.3f} {budget}")
    return "\n".join(out)


def watch_status(
    experiment_dir: str,
    interval: float,
    show: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> ExperimentStatus:
    """Shows the status every ``interval`` seconds until no driver holds the experiment.

    Args:
        experiment_dir: The experiment folder.
        interval: Seconds between refreshes.
        show: Receives each refreshed status text.
        sleep: Waits between refreshes (tests pass their own).

    Returns:
        The last status read: no driver holds the search any more.
    """
    while True:
        try:
            status = experiment_status(experiment_dir)
        except SpecError:
            # A driver that has just taken the lock writes spec.yaml a moment later.
            owner = read_owner(experiment_dir)
            if owner is None or not owner.is_alive():
                raise
            show(
                f"experiment {experiment_dir}: starting (driver {owner.describe()}; "
                f"no spec.yaml yet)"
            )
            sleep(interval)
            continue
        show(format_status(status))
        if not status.running:
            return status
        sleep(interval)
