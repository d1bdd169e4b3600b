"""Reading an experiment's trials: every trial's config and per-epoch results as plain records.

Everything reads through :mod:`search.storage`, so an experiment on ``s3://`` or
``gs://`` reads the same as a local one. Ray writes one folder per trial (``params.json``,
``result.json`` as JSON lines, ``checkpoint_*``, ``error.txt``); this module turns that into
:class:`TrialRecord` values, and :func:`rank_trials` is the one rule for which trial is best.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any, cast

from search import storage
from search.outputs.experiment import check_experiment_dir, round_dirs
from search.outputs.study import (
    METRIC,
    MODE,
    REASON_ERROR,
    REASON_MAX_T,
    STOP_REASON,
    TIME_ATTR,
    TrialStatus,
    asha_stop_reason,
)

# Ray's statuses of a trial that an interrupted driver left behind.
RAY_UNFINISHED = ("RUNNING", "PENDING", "PAUSED")
RAY_ERROR = "ERROR"
# Ray's TuneController.CKPT_FILE_TMPL, as a pattern (this module reads results without Ray)
STATE_FILE_PATTERN = "experiment_state-*.json"
TRIAL_DIR_PREFIX = "trial_"  # Ray's trial folders are trial_<id> (the driver names them)


@dataclass
class TrialRecord:
    """One trial as the experiment folder tells it."""

    trial_id: str
    round: str
    path: str
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    errored: bool = False
    error: str = ""
    ray_status: str = ""

    @property
    def epochs_run(self) -> int:
        return max((int(r.get(TIME_ATTR, 0)) for r in self.history), default=0)

    @property
    def failed(self) -> bool:
        return self.errored or any(r.get("trial_failed") for r in self.history)

    @property
    def failure_reason(self) -> str:
        for row in self.history:
            if row.get("trial_failed"):
                return str(row.get("failure_reason", ""))
        return self.error

    @property
    def good_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.history if not r.get("trial_failed")]

    @property
    def final(self) -> dict[str, Any]:
        rows = self.good_rows
        return rows[-1] if rows else {}

    @property
    def best(self) -> dict[str, Any]:
        """The epoch with the best metric ({} when none has a finite one)."""
        rows = [r for r in self.good_rows if _finite(r.get(METRIC))]
        if not rows:
            return {}
        pick = max if MODE == "max" else min
        return pick(rows, key=lambda r: r[METRIC])

    @property
    def best_value(self) -> float | None:
        """The best epoch's metric, or ``None``."""
        return self.best.get(METRIC)

    @property
    def gpu_seconds(self) -> float:
        return max((float(r.get("gpu_seconds", 0.0)) for r in self.history), default=0.0)

    @property
    def wall_seconds(self) -> float:
        return max((float(r.get("wall_seconds", 0.0)) for r in self.history), default=0.0)

    def status(self, max_t: int) -> TrialStatus:
        """COMPLETE (reached max_t), STOPPED (by ASHA), FAILED, or UNFINISHED (running, or
        left pending/paused by an interrupted driver)."""
        if self.failed:
            return TrialStatus.FAILED
        if self.epochs_run >= max_t:
            return TrialStatus.COMPLETE
        if self.ray_status in RAY_UNFINISHED:
            return TrialStatus.UNFINISHED
        return TrialStatus.STOPPED

    def stop_reason(self, max_t: int) -> str:
        """Why the trial ended: its failure, ``max_t``, the reason the driver recorded when it
        stopped the trial (``budget``), or ASHA's rung (``asha@<epoch>``)."""
        if self.failed:
            return self.failure_reason or REASON_ERROR
        if self.epochs_run >= max_t:
            return REASON_MAX_T
        recorded = self.final.get(STOP_REASON)
        return str(recorded) if recorded else asha_stop_reason(self.epochs_run)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")


def rank_trials(records: list[TrialRecord], *, include_failed: bool = False) -> list[TrialRecord]:
    """Trials best first by their best epoch's metric: the one rule every view uses.

    Args:
        records: The trials.
        include_failed: Keep failed trials and trials without a result (last, in their
            original order); by default they are left out.
    """
    scored = [r for r in records if not r.failed and r.best]
    ranked = sorted(scored, key=lambda r: cast(float, r.best_value), reverse=MODE == "max")
    if include_failed:
        ranked += [r for r in records if r not in scored]
    return ranked


def best_trial(records: list[TrialRecord]) -> TrialRecord | None:
    """The trial with the best metric at any epoch (failed trials excluded)."""
    ranked = rank_trials(records)
    return ranked[0] if ranked else None


def _parse_json_lines(text: str) -> list[dict[str, Any]]:
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            break  # a line cut short by a killed writer ends the usable history
    return rows


def experiment_state_files(fs: storage.pafs.FileSystem, round_path: str) -> list[str]:
    """The paths of one Ray experiment's snapshots, oldest first: Ray names them
    ``experiment_state-<session start>.json`` and resumes from the last."""
    return sorted(
        info.path
        for info in storage.list_dir(fs, round_path)
        if fnmatch.fnmatch(info.base_name, STATE_FILE_PATTERN)
    )


def ray_trial_states(fs: storage.pafs.FileSystem, round_path: str) -> dict[str, dict[str, Any]]:
    """Trial id -> Ray's record of the trial (``status``: TERMINATED, ERROR, RUNNING,
    PENDING...; ``config``) from the newest ``experiment_state-*.json`` of one Ray experiment.
    It also lists trials that never started (no folder yet)."""
    states = experiment_state_files(fs, round_path)
    if not states:
        return {}
    try:
        state = json.loads(storage.read_text(fs, states[-1]))
    except ValueError:
        return {}
    trials = {}
    for entry in state.get("trial_data", []):
        trial = entry[0] if isinstance(entry, list) else entry
        if isinstance(trial, str):
            trial = json.loads(trial)
        config = trial.get("config")
        trials[str(trial.get("trial_id"))] = {
            "status": str(trial.get("status", "")),
            "config": config if isinstance(config, dict) else {},
        }
    return trials


def ray_statuses(fs: storage.pafs.FileSystem, round_path: str) -> dict[str, str]:
    """Trial id -> Ray's status (TERMINATED, ERROR, RUNNING, PENDING...) of one Ray
    experiment."""
    return {k: v["status"] for k, v in ray_trial_states(fs, round_path).items()}


def load_trials(path: str) -> list[TrialRecord]:
    """Every trial of an experiment folder, in the order the trials started.

    Args:
        path: The experiment folder (local path or URI).

    Returns:
        One record per trial with its config and per-epoch history.
    """
    fs, root = check_experiment_dir(path)
    return read_trials(fs, root)


def read_result_rows(fs: storage.pafs.FileSystem, trial_path: str) -> list[dict[str, Any]]:
    """A trial folder's ``result.json`` rows as written ([] without one)."""
    result_path = storage.join(trial_path, "result.json")
    return (
        _parse_json_lines(storage.read_text(fs, result_path))
        if storage.exists(fs, result_path)
        else []
    )


def read_trials(fs: storage.pafs.FileSystem, root: str) -> list[TrialRecord]:
    """Every trial of the experiment folder at ``root`` on ``fs``, in the order they started
    (:func:`load_trials` for a folder already checked)."""
    records = []
    for round_name, round_path in round_dirs(fs, root):
        statuses = ray_statuses(fs, round_path)
        for info in storage.list_dir(fs, round_path):
            if info.type != storage.FileType.Directory:
                continue
            params_path = storage.join(info.path, "params.json")
            if not storage.exists(fs, params_path):
                continue
            try:
                config = json.loads(storage.read_text(fs, params_path))
            except ValueError:
                # Half-written by a driver that is starting this trial right now (`status`
                # reads while the search runs); the next read finds it whole.
                continue
            history = read_result_rows(fs, info.path)
            # A trial retried after a crash reports its epochs again from its checkpoint;
            # keep the last report of each epoch.
            by_epoch: dict[int, dict[str, Any]] = {}
            for row in history:
                by_epoch[int(row.get(TIME_ATTR, 0))] = row
            history = [by_epoch[e] for e in sorted(by_epoch)]
            trial_id = (history[0].get("trial_id") if history else None) or (
                info.base_name.removeprefix(TRIAL_DIR_PREFIX)
            )
            status = statuses.get(trial_id, "")
            # error.txt stays after a crash that a retry recovered from; Ray's status says
            # whether the trial finally errored.
            errored = status == RAY_ERROR
            error_path = storage.join(info.path, "error.txt")
            error = ""
            if errored and storage.exists(fs, error_path):
                lines = storage.read_text(fs, error_path).strip().splitlines()
                error = lines[-1][:300] if lines else "error"
            records.append(
                TrialRecord(
                    trial_id=trial_id,
                    round=round_name,
                    path=info.path,
                    config=config,
                    history=history,
                    errored=errored,
                    error=error,
                    ray_status=status,
                )
            )
    records.sort(key=lambda r: (r.history[0].get("timestamp", 0) if r.history else 0, r.trial_id))
    return records
