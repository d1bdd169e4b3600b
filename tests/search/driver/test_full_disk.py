"""A full disk (ENOSPC) or a failing one (EIO) on each write a search makes: the search stops
with one error naming what could not be written and where, nothing already written is
damaged, and once space is freed ``resume`` (or the command again) finishes with nothing lost.

Each fault is injected where the write happens (the journal's ``os.write``, Ray's result
logger, the snapshot's write, the trial's checkpoint, the export's table), through the real
code paths around it."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest

from search.driver import experiment_state
from search.driver import journal as journal_module
from search.driver.service import resume_search, run_search
from search.errors import WriteFailed
from search.outputs.results import load_trials
from tests.helpers import study_trials, tiny_spec, tree_digest
from tests.search.driver.test_resume_faults import assert_study_tells_what_ray_did

pytestmark = pytest.mark.slow

ERRNOS = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO}
MAX_T = 2


def refused(number: int, path: str) -> OSError:
    return OSError(number, os.strerror(number), path)


def checkpoint_on_a_full_disk(config: dict, *, data, fixed: dict) -> None:
    """The real trainable, whose checkpoint writes fail while ``fixed['full_disk']`` (a file)
    exists: the disk is full until the test removes it."""
    from search.trial import trainable

    real = trainable.write_checkpoint

    def write_checkpoint(model, state, *, started):
        if os.path.exists(fixed["full_disk"]):
            started.discard()
            raise refused(int(Path(fixed["full_disk"]).read_text()), started.folder)
        return real(model, state, started=started)

    trainable.write_checkpoint = write_checkpoint
    try:
        trainable.train_trial(
            config, data=data, fixed={k: v for k, v in fixed.items() if k != "full_disk"}
        )
    finally:
        trainable.write_checkpoint = real


def spec_for(tmp_path: Path, name: str):
    return tiny_spec(
        tmp_path,
        name,
        train__epochs=MAX_T,
        search={"num_samples": 2, "max_concurrent": 2, "seed": 0, "baseline": False},
    )


def assert_nothing_written_is_damaged(experiment: Path) -> None:
    """The journal, every result row and Ray's newest snapshot read back whole."""
    study_trials(experiment)
    for result in experiment.glob("trial_*/result.json"):
        for line in result.read_text().splitlines():
            json.loads(line)
    experiment_state.check_resumable_state(str(experiment))


def assert_finished_with_nothing_lost(experiment: Path) -> None:
    trials = load_trials(str(experiment))
    assert len(trials) == 2
    assert {t.status(MAX_T).value for t in trials} <= {"complete", "stopped"}, trials
    assert_study_tells_what_ray_did(experiment, MAX_T)


def inject(kind: str, number: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Arms the fault for ``kind``; returns the trainable to run (``None``: the real one)."""
    if kind == "journal":
        real_write = journal_module.os.write

        def write(fd: int, data: bytes) -> int:
            if b"intermediate_value" in data:  # the first epoch's report to the study
                real_write(fd, data[: len(data) // 2])
                raise refused(number, "")
            return real_write(fd, data)

        monkeypatch.setattr(journal_module.os, "write", write)
    elif kind == "result row":
        from ray.tune.logger.json import JsonLoggerCallback

        real_log = JsonLoggerCallback.log_trial_result
        rows = []

        def log_trial_result(callback, iteration, trial, result):
            rows.append(trial.trial_id)
            if len(rows) > 1:
                raise refused(number, os.path.join(trial.local_path, "result.json"))
            real_log(callback, iteration, trial, result)

        monkeypatch.setattr(JsonLoggerCallback, "log_trial_result", log_trial_result)
    elif kind == "snapshot":
        real_files = experiment_state.write_files_atomically
        calls = []

        def write_files_atomically(files: dict, target_dir: str) -> None:
            calls.append(target_dir)
            if len(calls) > 1:
                raise refused(number, target_dir)
            real_files(files, target_dir)

        monkeypatch.setattr(experiment_state, "write_files_atomically", write_files_atomically)
    elif kind == "checkpoint":
        import ray.cloudpickle as cloudpickle

        from tests.search.driver.fault_trainables import with_settings

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        marker = tmp_path / "disk-is-full"
        marker.write_text(str(number))
        return with_settings(checkpoint_on_a_full_disk, full_disk=str(marker))
    return None


WHAT = {
    "journal": "could not write the study journal",
    "result row": "could not write a result row of trial ",
    "snapshot": "could not write Ray's experiment snapshot",
    "checkpoint": "could not write a checkpoint of trial ",
}


# Each write with one of the two errors (the code paths do not depend on which: both are in
# DISK_ERRNOS; the journal's unit test takes both), so the tier stays short.
@pytest.mark.parametrize(
    ("kind", "error"),
    [("journal", "ENOSPC"), ("result row", "EIO"), ("snapshot", "EIO"), ("checkpoint", "ENOSPC")],
)
def test_a_write_refused_by_the_disk_stops_the_search_and_resume_finishes_it(
    tmp_path, monkeypatch, kind, error
):
    spec = spec_for(tmp_path, "full")
    experiment = tmp_path / "results" / "full"
    trainable = inject(kind, ERRNOS[error], monkeypatch, tmp_path)
    with pytest.raises(WriteFailed) as failed:
        run_search(spec, num_cpus=2, trainable=trainable)
    message = str(failed.value)
    assert WHAT[kind] in message and f"({os.strerror(ERRNOS[error])})" in message, message
    assert message.endswith(
        "free space (or mend the disk), then `finetune-search resume` the experiment"
    ), message
    assert "\n" not in message

    monkeypatch.undo()  # space freed
    (tmp_path / "disk-is-full").unlink(missing_ok=True)
    assert_nothing_written_is_damaged(experiment)
    summary = resume_search(str(experiment), num_cpus=2, trainable=trainable)
    assert not summary.interrupted
    assert_finished_with_nothing_lost(experiment)


def test_an_export_refused_by_the_disk_names_the_file_and_leaves_no_part_of_it(
    tmp_path, monkeypatch
):
    from search.outputs import export

    run_search(spec_for(tmp_path, "exported"), num_cpus=2)
    experiment = tmp_path / "results" / "exported"
    out = tmp_path / "out"
    before = tree_digest(experiment)
    for error, number in ERRNOS.items():

        def write_table(table, path, number=number, **kwargs):
            raise refused(number, "")

        monkeypatch.setattr(export.pq, "write_table", write_table)
        with pytest.raises(WriteFailed) as failed:
            export.export_experiment(str(experiment), str(out))
        assert str(failed.value).startswith(
            f"{out / 'trials.parquet'}: could not write trials.parquet ({os.strerror(number)})"
        ), (error, str(failed.value))
        assert str(failed.value).endswith("then run the command again")
        assert list(out.iterdir()) == []  # no temporary file left
        assert tree_digest(experiment) == before
        monkeypatch.undo()

    result = export.export_experiment(str(experiment), str(out))
    assert "trials.parquet" in result.files and "best_model.keras" in result.files
