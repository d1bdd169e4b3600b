"""Reading an experiment folder: the spec, the Optuna study and every trial's per-epoch results.

Everything reads through pyarrow's filesystems, so an experiment on ``s3://`` or ``gs://`` reads
the same as a local one. Ray writes one folder per trial (``params.json``, ``result.json`` as
JSON lines, ``checkpoint_*``, ``error.txt``); this module turns that into plain records.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from search.errors import SpecError

SPEC_FILE = "spec.yaml"
ROUND_PREFIX = "extend-"  # `extend` runs live in sub-folders named extend-1, extend-2, ...
LOCK_FILE = "driver.lock"


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
        return max((int(r.get("epoch", 0)) for r in self.history), default=0)

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
        rows = [r for r in self.good_rows if _finite(r.get("val_accuracy"))]
        return max(rows, key=lambda r: r["val_accuracy"]) if rows else {}

    @property
    def gpu_seconds(self) -> float:
        return max((float(r.get("gpu_seconds", 0.0)) for r in self.history), default=0.0)

    @property
    def wall_seconds(self) -> float:
        return max((float(r.get("wall_seconds", 0.0)) for r in self.history), default=0.0)

    def status(self, max_t: int) -> str:
        """``complete`` (reached max_t), ``stopped`` (by ASHA), ``failed``, or ``unfinished``
        (running, or left pending/paused by an interrupted driver)."""
        if self.failed:
            return "failed"
        if self.epochs_run >= max_t:
            return "complete"
        if self.ray_status in ("RUNNING", "PENDING", "PAUSED"):
            return "unfinished"
        return "stopped"

    def stop_reason(self, max_t: int) -> str:
        if self.failed:
            return self.failure_reason or "error"
        if self.epochs_run >= max_t:
            return "max_t"
        return f"asha@{self.epochs_run}"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for a local path or a URI."""
    if "://" in path:
        try:
            return pafs.FileSystem.from_uri(path)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for bad URIs
            raise SpecError(f"{path}: cannot open storage ({err})") from None
    return pafs.LocalFileSystem(), path


def read_text(fs: pafs.FileSystem, path: str) -> str:
    with fs.open_input_stream(path) as stream:
        return stream.read().decode("utf-8")


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _children(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))


def check_experiment_dir(path: str) -> tuple[pafs.FileSystem, str]:
    """Checks that ``path`` is one of our experiment folders.

    Raises:
        SpecError: When it is missing, not a folder, empty, or made by another tool.
    """
    fs, root = filesystem(path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise SpecError(f"{path}: experiment folder not found")
    if info.type != pafs.FileType.Directory:
        raise SpecError(f"{path}: must be an experiment folder, got a file")
    if not _children(fs, root):
        raise SpecError(f"{path}: experiment folder is empty (did the search start?)")
    if not exists(fs, posixpath.join(root, SPEC_FILE)):
        raise SpecError(f"{path}: not a finetune-search experiment (no {SPEC_FILE}; "
                        f"expected the folder `finetune-search run` created)")
    return fs, root


def is_running(path: str) -> bool:
    """Whether a driver still holds the experiment (its lock file names a live process)."""
    fs, root = filesystem(path)
    lock = posixpath.join(root, LOCK_FILE)
    if not exists(fs, lock):
        return False
    try:
        owner = json.loads(read_text(fs, lock))
    except (ValueError, OSError):
        return False
    import os
    import socket

    if owner.get("host") != socket.gethostname():
        return True  # another machine's driver: trust the lock
    try:
        os.kill(int(owner.get("pid", -1)), 0)
    except (OSError, ValueError):
        return False
    return True


def round_dirs(fs: pafs.FileSystem, root: str) -> list[tuple[str, str]]:
    """The Ray experiments inside the folder: the first run, then each ``extend`` round."""
    rounds = [("main", root)]
    extra = sorted((i for i in _children(fs, root)
                    if i.type == pafs.FileType.Directory and i.base_name.startswith(ROUND_PREFIX)),
                   key=lambda i: int(i.base_name[len(ROUND_PREFIX):] or 0))
    rounds += [(i.base_name, i.path) for i in extra]
    return rounds


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


def ray_statuses(fs: pafs.FileSystem, round_path: str) -> dict[str, str]:
    """Trial id -> Ray's status (TERMINATED, ERROR, RUNNING, PENDING...) from the newest
    ``experiment_state-*.json`` of one Ray experiment."""
    states = sorted(i.path for i in _children(fs, round_path)
                    if i.base_name.startswith("experiment_state-")
                    and i.base_name.endswith(".json"))
    if not states:
        return {}
    try:
        state = json.loads(read_text(fs, states[-1]))
    except ValueError:
        return {}
    statuses = {}
    for entry in state.get("trial_data", []):
        trial = entry[0] if isinstance(entry, list) else entry
        if isinstance(trial, str):
            trial = json.loads(trial)
        statuses[str(trial.get("trial_id"))] = str(trial.get("status", ""))
    return statuses


def load_trials(path: str) -> list[TrialRecord]:
    """Every trial of an experiment folder, in the order the trials started.

    Args:
        path: The experiment folder (local path or URI).

    Returns:
        One record per trial with its config and per-epoch history.
    """
    fs, root = check_experiment_dir(path)
    records = []
    for round_name, round_path in round_dirs(fs, root):
        statuses = ray_statuses(fs, round_path)
        for info in _children(fs, round_path):
            if info.type != pafs.FileType.Directory:
                continue
            params_path = posixpath.join(info.path, "params.json")
            if not exists(fs, params_path):
                continue
            config = json.loads(read_text(fs, params_path))
            result_path = posixpath.join(info.path, "result.json")
            history = _parse_json_lines(read_text(fs, result_path)) if exists(
                fs, result_path) else []
            # A trial retried after a crash reports its epochs again from its checkpoint;
            # keep the last report of each epoch.
            by_epoch: dict[int, dict[str, Any]] = {}
            for row in history:
                by_epoch[int(row.get("epoch", 0))] = row
            history = [by_epoch[e] for e in sorted(by_epoch)]
            trial_id = (history[0].get("trial_id") if history else None) or info.base_name
            status = statuses.get(trial_id, "")
            # error.txt stays after a crash that a retry recovered from; Ray's status says
            # whether the trial finally errored.
            errored = status == "ERROR"
            error_path = posixpath.join(info.path, "error.txt")
            error = ""
            if errored and exists(fs, error_path):
                lines = read_text(fs, error_path).strip().splitlines()
                error = lines[-1][:300] if lines else "error"
            records.append(TrialRecord(trial_id=trial_id, round=round_name, path=info.path,
                                       config=config, history=history, errored=errored,
                                       error=error, ray_status=status))
    records.sort(key=lambda r: (r.history[0].get("timestamp", 0) if r.history else 0,
                                r.trial_id))
    return records


def best_trial(records: list[TrialRecord]) -> TrialRecord | None:
    """The trial with the highest validation accuracy at any epoch (failed trials excluded)."""
    candidates = [r for r in records if not r.failed and r.best]
    return max(candidates, key=lambda r: r.best["val_accuracy"]) if candidates else None
