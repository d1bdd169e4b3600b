"""A cloud experiment's journal reaches its storage while the search runs, not only at the end.

Optuna's journal needs a local file (it appends under file locks, which object stores lack),
so the driver keeps it on its own disk (:func:`search.outputs.experiment.local_mirror_dir`)
and :class:`JournalMirror` uploads it after every finished trial and at least every
:data:`JOURNAL_SYNC_S` seconds. A driver killed mid-search then leaves a journal in the bucket
that lacks at most the trials finished since; ``resume`` rebuilds those from Ray's results
(:mod:`search.driver.reconcile`).

Ray pickles the callback with the tuner and restores it on ``resume``, maybe on another
machine, so the callback carries no paths: it uploads for the driver that runs it now, which
:func:`mirroring` names.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

from ray import tune

from search import storage
from search.outputs import experiment as folder
from search.outputs.lock import DriverLock, read_owner

JOURNAL_SYNC_S = 60.0


class _Upload:
    """What the running driver uploads, where, and whether it still may (it holds the lock)."""

    def __init__(
        self, experiment_dir: str, local_dir: str, lock: DriverLock, interval_s: float
    ) -> None:
        self.experiment_dir = experiment_dir
        self.local_dir = local_dir
        self.lock = lock
        self.interval_s = interval_s
        self.last = time.monotonic()
        self.lost = False

    def __call__(self, *, due_only: bool = False) -> bool:
        """Uploads the journal (``due_only``: only if the interval has passed); returns whether
        it did."""
        if self.lost or not storage.is_remote(self.experiment_dir):
            return False
        if due_only and time.monotonic() - self.last < self.interval_s:
            return False
        self.last = time.monotonic()
        if not self.lock.still_held():
            # Another driver took the experiment (--force): never overwrite its journal.
            self.lost = True
            holder = read_owner(self.experiment_dir)
            print(
                f"warning: {self.experiment_dir}: driver.lock now belongs to "
                f"{holder.describe() if holder else 'nobody'}; this driver no longer "
                f"uploads the study journal (stop it)",
                file=sys.stderr,
                flush=True,
            )
            return False
        return folder.sync_journal(self.experiment_dir, self.local_dir)


_active: _Upload | None = None


@contextlib.contextmanager
def mirroring(
    experiment_dir: str, local_dir: str, lock: DriverLock, interval_s: float = JOURNAL_SYNC_S
) -> Iterator[_Upload]:
    """While the block runs, :class:`JournalMirror` callbacks upload ``local_dir``'s journal
    to ``experiment_dir`` (a cloud experiment; a local one needs no copy)."""
    global _active
    previous, _active = _active, _Upload(experiment_dir, local_dir, lock, interval_s)
    try:
        yield _active
    finally:
        _active = previous


def _upload(due_only: bool = False) -> None:
    if _active is not None:
        _active(due_only=due_only)


class JournalMirror(tune.Callback):
    """Uploads the study journal after every finished trial (Ray calls the searcher's
    ``on_trial_complete`` first, so the upload holds its final state) and at least every
    :data:`JOURNAL_SYNC_S` seconds."""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _upload()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _upload()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        _upload(due_only=True)
