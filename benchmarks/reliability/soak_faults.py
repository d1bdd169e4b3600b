"""The soak's driver: ``python -m search`` with one seeded fault armed inside the search.

``python benchmarks/reliability/soak_faults.py ARGS...`` runs the CLI exactly as
``python -m search ARGS`` does, after arming the fault that ``SOAK_FAULT`` names (``KIND:N``;
markers under ``SOAK_DIR``). The faults that must strike at a precise point are armed here,
on the real code paths; the ones that strike at a random moment (SIGKILL of the driver or of
a trial's worker) are the harness's (:mod:`benchmarks.reliability.soak`):

- ``trial_exception:E``: the first trial to end epoch ``E`` raises ``RuntimeError`` there
  (once per search: a marker file), in the trial's own thread; Ray retries it.
- ``kill_in_journal_write:N``: the driver's ``N``-th write to the Optuna journal writes half
  its bytes (a line cut short) and the driver's process group is SIGKILLed.
- ``kill_in_snapshot:N``: the group is SIGKILLed while Ray's ``N``-th experiment snapshot is
  being written to storage.
- ``kill_in_checkpoint_upload:N``: the group (driver and trials) is SIGKILLed while the
  search's ``N``-th checkpoint is being copied into storage (from the trial's process).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FAULT_ENV = "SOAK_FAULT"
DIR_ENV = "SOAK_DIR"
PGID_ENV = "SOAK_PGID"


def _fault() -> tuple[str, int]:
    kind, _, number = os.environ.get(FAULT_ENV, "none:0").partition(":")
    return kind, int(number or 0)


def _count(name: str) -> int:
    """How many times ``name`` happened in this search so far, this one included (a file per
    event under ``SOAK_DIR``, so every process of the search counts together)."""
    folder = Path(os.environ[DIR_ENV]) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{os.getpid()}-{time.monotonic_ns()}").touch()
    return len(list(folder.iterdir()))


def _kill_group(during: str) -> None:
    """SIGKILLs the driver's process group (the driver, its Ray, the trials)."""
    (Path(os.environ[DIR_ENV]) / "killed").write_text(during)
    os.killpg(int(os.environ[PGID_ENV]), signal.SIGKILL)


def _kill_while(call: Any, during: str) -> None:
    """Starts ``call`` in a thread and kills the group while it runs (or just after, when it
    is quicker than the moment picked)."""
    threading.Thread(target=call, daemon=True).start()
    time.sleep(0.02)
    _kill_group(during)


def faulty_train_trial(config: dict, *, data: Any, fixed: dict) -> None:
    """The real trainable, with the worker-side faults armed in the trial's process."""
    from search.trial import trainable

    kind, number = _fault()
    if kind == "trial_exception" and not getattr(trainable, "_soak_armed", False):
        trainable._soak_armed = True
        real_end = trainable._EpochReporter.epoch_end

        def epoch_end(reporter: Any, model: Any, logs: dict) -> None:
            if reporter.attempt.state.epoch + 1 == number:
                marker = Path(os.environ[DIR_ENV]) / "raised"
                try:
                    marker.touch(exist_ok=False)
                except FileExistsError:
                    pass
                else:
                    raise RuntimeError(f"injected trial exception at epoch {number}")
            real_end(reporter, model, logs)

        trainable._EpochReporter.epoch_end = epoch_end
    if kind == "kill_in_checkpoint_upload" and not getattr(trainable, "_soak_armed", False):
        from ray.train._internal.storage import StorageContext

        trainable._soak_armed = True
        real_persist = StorageContext.persist_current_checkpoint

        def persist(context: Any, checkpoint: Any) -> Any:
            if _count("checkpoint_uploads") == number:
                _kill_while(lambda: real_persist(context, checkpoint), "checkpoint upload")
            return real_persist(context, checkpoint)

        StorageContext.persist_current_checkpoint = persist
    trainable.train_trial(config, data=data, fixed=fixed)


def arm_driver() -> None:
    """Arms the driver-side faults and the trainable that arms the trials' ones."""
    import ray.cloudpickle as cloudpickle

    from search.driver import experiment_state, journal, service

    os.environ[PGID_ENV] = str(os.getpgid(0))
    kind, number = _fault()
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    service.train_trial = faulty_train_trial
    if kind == "kill_in_journal_write":
        real_append = journal.GroupCommitJournal.append_logs

        def append_logs(backend: Any, logs: list) -> None:
            if _count("journal_writes") == number:
                import json

                data = "".join(
                    json.dumps(log, separators=(",", ":")) + "\n" for log in logs
                ).encode()
                fd = os.open(backend._file_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                os.write(fd, data[: max(1, len(data) // 2)])
                os.close(fd)
                _kill_group("journal write")
            real_append(backend, logs)

        journal.GroupCommitJournal.append_logs = append_logs
    if kind == "kill_in_snapshot":
        real_run = experiment_state.SnapshotUpload.run

        def run(job: Any) -> None:
            if job.upload is not None and _count("snapshots") == number:
                _kill_while(lambda: real_run(job), "experiment snapshot")
            real_run(job)

        experiment_state.SnapshotUpload.run = run


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    arm_driver()
    from search.cli import main

    sys.exit(main(sys.argv[1:]))
