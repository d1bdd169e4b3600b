"""Keeping only the checkpoints that can still be used.

Every checkpoint is a whole model with its optimizer state (119 MB for VGG16 at 32x32); a
64-trial search that kept them all would leave ~11 GB in its bucket. Once a trial has ended
(ASHA stopped it, it reached ``max_t``, or it failed with a reason a retry cannot fix) its
checkpoints serve only ``export``, which takes the best trial's model; so a finished trial
keeps them only while it is among the experiment's best ``search.keep_checkpoints`` trials by
the metric, and loses them as soon as it is not (when it ends, or when a better one ends).

A folder is deleted once Ray's next experiment snapshot is uploaded (a resume from the one
before may still restart the trial from it: :mod:`search.driver.experiment_state`).

Never touched: a running, paused or pending trial's checkpoints, and an errored one's (Ray
retries and ``resume`` restart those from their last checkpoint).
"""

from __future__ import annotations

import math
from typing import Any

from ray import tune

from search import storage
from search.driver.experiment_state import delete_when_snapshotted
from search.driver.scheduling import recorded_trials
from search.outputs.results import RAY_UNFINISHED, TrialRecord, read_result_rows
from search.outputs.study import METRIC, MODE
from search.outputs.study import TrialStatus as Status

CHECKPOINT_PREFIX = "checkpoint_"  # Ray's checkpoint folders inside a trial's folder


def checkpoint_dirs(fs: storage.pafs.FileSystem, trial_path: str) -> list[str]:
    """The checkpoint folders in one trial's folder."""
    return [
        info.path
        for info in storage.list_dir(fs, trial_path)
        if info.base_name.startswith(CHECKPOINT_PREFIX) and info.type == storage.FileType.Directory
    ]


class CheckpointPruner(tune.Callback):
    """Deletes the checkpoints of finished trials outside the best ``keep`` (local folders and
    cloud storage alike, through the trials' own storage).

    Args:
        keep: How many finished trials keep their checkpoints (``search.keep_checkpoints``).
        max_t: ASHA's ``max_t`` (what makes a recorded trial complete).
    """

    def __init__(self, keep: int, max_t: int) -> None:
        self.keep = keep
        self.max_t = max_t
        self._values: dict[str, float | None] = {}  # finished trial -> best metric
        self._holding: dict[str, str] = {}  # finished trial -> its folder, checkpoints kept
        self._fs: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # Pickled with the tuner before the run; a restored one reads the records again.
        return {"keep": self.keep, "max_t": self.max_t, "_values": {}, "_holding": {}, "_fs": None}

    def remember(self, records: list[TrialRecord]) -> None:
        """Takes in the trials that earlier runs and rounds finished (tests call it too)."""
        for record in records:
            if record.ray_status in RAY_UNFINISHED or record.errored:
                continue  # resume may continue it from its checkpoint
            status = record.status(self.max_t)
            finished = status in (Status.COMPLETE, Status.STOPPED, Status.FAILED)
            if finished:
                self._values[record.trial_id] = (
                    None if status == Status.FAILED else record.best_value
                )
                self._holding[record.trial_id] = record.path

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self._fs is None:
            self._fs = trial.storage.storage_filesystem
            self.remember([r for r in recorded_trials(trial) if r.trial_id != trial.trial_id])
        last = trial.last_result or {}
        failed = bool(last.get("trial_failed"))
        # What this run saw (a trial resumed at its last epoch reports nothing: then only the
        # result Ray restored with it) and what the trial's results hold (what export ranks
        # by; a resumed trial's earlier epochs may be only there): its best of all.
        seen = [
            trial.metric_analysis.get(METRIC, {}).get(MODE),
            last.get(METRIC),
            *(
                row.get(METRIC)
                for row in read_result_rows(self._fs, trial.path)
                if not row.get("trial_failed")
            ),
        ]
        values = [float(v) for v in seen if isinstance(v, (int, float)) and math.isfinite(v)]
        if not failed and not values:
            return  # no value to rank it by: its checkpoints stay
        pick = max if MODE == "max" else min
        self._values[trial.trial_id] = None if failed else pick(values)
        self._holding[trial.trial_id] = trial.path
        self.prune()

    def kept(self) -> list[str]:
        """The finished trials that keep their checkpoints: the best ``keep`` by the metric."""
        scored = [(v, t) for t, v in self._values.items() if v is not None and math.isfinite(v)]
        scored.sort(key=lambda item: item[0], reverse=MODE == "max")
        return [trial_id for _, trial_id in scored[: self.keep]]

    def prune(self) -> None:
        """Deletes the checkpoints of every finished trial outside :meth:`kept`."""
        kept = set(self.kept())
        for trial_id, path in list(self._holding.items()):
            if trial_id in kept:
                continue
            for folder in checkpoint_dirs(self._fs, path):
                delete_when_snapshotted(self._fs, folder)
            del self._holding[trial_id]
