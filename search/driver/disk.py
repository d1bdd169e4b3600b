"""A full disk stops the search with one line, instead of retries that cannot succeed.

Every write a search makes either lands whole or leaves what was there before: the journal
cuts a refused batch back (:mod:`search.driver.journal`), Ray's snapshot is written beside its
target and renamed (:mod:`search.driver.experiment_state`), checkpoints are new folders. What
this module adds is the stop: within :func:`refusing_full_disks`, a trial that failed because
its process could not write (its checkpoint, its copy to storage), or a result row the driver
could not write, ends the search with a :class:`~search.errors.WriteFailed` naming what and
where (the CLI prints it and exits 2). Ray would otherwise retry the trial from its
checkpoint ``max_failures`` times on the same full disk, then start the next one.
``resume``, once space is freed, restarts the interrupted trials from their last checkpoints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ray.tune.execution.tune_controller import TuneController
from ray.tune.logger.logger import LoggerCallback

from search.errors import WriteFailed, disk_error


def trial_disk_error(error: BaseException | None) -> BaseException | None:
    """The full disk behind a trial's error: from its chain, or read from its traceback
    (the exception's chain does not survive Ray's trip from the trial to the driver)."""
    found = disk_error(error)
    if found is not None or error is None:
        return found
    return disk_error(OSError(str(error)))


@contextlib.contextmanager
def refusing_full_disks() -> Iterator[None]:
    """Within the block, a trial's disk error or a result row's ends the search (see the
    module's docstring)."""
    ray_failure = TuneController._process_trial_failure
    ray_result = LoggerCallback.on_trial_result

    def process_trial_failure(
        controller: TuneController, trial: Any, exception: BaseException | None = None
    ) -> None:
        found = trial_disk_error(exception)
        if found is None:
            ray_failure(controller, trial, exception=exception)  # type: ignore[arg-type]
            return
        if isinstance(found, WriteFailed):
            raise found
        raise WriteFailed(
            f"a checkpoint of trial {trial.trial_id}",
            getattr(found, "filename", None) or trial.storage.trial_fs_path,
            found,
        )

    def on_trial_result(
        callback: LoggerCallback,
        iteration: int,
        trials: list,
        trial: Any,
        result: dict,
        **info: Any,
    ) -> None:
        try:
            ray_result(callback, iteration, trials, trial, result, **info)
        except OSError as err:
            if disk_error(err) is None:
                raise
            raise WriteFailed(
                f"a result row of trial {trial.trial_id}", err.filename or trial.local_path, err
            ) from None

    TuneController._process_trial_failure = process_trial_failure  # type: ignore[method-assign,assignment]
    LoggerCallback.on_trial_result = on_trial_result  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        TuneController._process_trial_failure = ray_failure  # type: ignore[method-assign]
        LoggerCallback.on_trial_result = ray_result  # type: ignore[method-assign]
