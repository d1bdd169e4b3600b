"""A search on S3 (moto's S3-compatible server, pyarrow's real S3 client): the journal reaches
the bucket while the search runs, one driver at a time, a resume from a fresh machine with an
older journal rebuilds a consistent study, and export reads it all back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from optuna.trial import TrialState

from search.driver.study import STUDY_FILE
from search.outputs import storage
from search.outputs.lock import LOCK_FILE
from search.outputs.results import load_trials, ray_statuses
from tests.helpers import REPO, cli, kill_when, study_trials, wait_for, write_spec

pytestmark = pytest.mark.slow


def finished_in_bucket(experiment: str) -> dict[str, TrialState]:
    """Ray trial id -> state of the finished trials in the bucket's journal."""
    try:
        trials = study_trials(experiment)
    except AssertionError:  # no journal (or no study in it) yet
        return {}
    return {k: t.state for k, t in trials.items() if t.state.is_finished()}


def ray_knows_what_the_journal_finished(experiment: str) -> bool:
    finished = finished_in_bucket(experiment)
    statuses = ray_statuses(*storage.filesystem(experiment))
    return bool(finished) and all(statuses.get(k) == "TERMINATED" for k in finished)


def test_driver_sigkilled_on_s3_then_resumed_on_a_fresh_machine_with_an_older_journal(
        s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "machine-a"))  # where the journal's mirror lives
    spec_path = write_spec(tmp_path, search__num_samples=4, train__epochs=2,
                           scheduler={"grace_period": 1, "reduction_factor": 2})
    experiment = f"{s3_bucket}/results/cloud"
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "search", "run", str(spec_path), "--num-cpus", "2",
             "--name", "cloud", "--storage", f"{s3_bucket}/results"], cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        # Every finished trial reaches the bucket's journal while the driver still runs.
        wait_for(lambda: " complete at epoch" in log.read_text() or " stopped by ASHA" in
                 log.read_text(), driver, log, "a trial finishing", timeout=300)
        wait_for(lambda: finished_in_bucket(experiment), driver, log, "the journal upload",
                 timeout=30)
        # A second driver cannot take the experiment while the first holds it.
        second = cli("resume", experiment, "--num-cpus", "2", timeout=120)
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
        assert "another driver is running this experiment" in second.stderr
        # Killed once Ray's snapshot in the bucket knows every trial the bucket's journal has
        # finished (checked with the driver stopped, so neither moves on before the kill): the
        # journal cut below is then behind Ray's results.
        kill_when(lambda: ray_knows_what_the_journal_finished(experiment), driver, log,
                  "Ray's snapshot in the bucket of the journal's finished trials")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()

    # The bucket's journal as an earlier upload left it: cut before its last finished trial
    # was told (an append-only journal that is older is a prefix of the newer one).
    fs, root = storage.filesystem(experiment)
    journal_path = storage.join(root, STUDY_FILE)
    lines = storage.read_bytes(fs, journal_path).splitlines(keepends=True)
    tells = [i for i, line in enumerate(lines) if json.loads(line).get("state") is not None]
    older = b"".join(lines[:tells[-1]] if tells else lines)
    storage.write_atomic(storage.join(experiment, STUDY_FILE), older)

    # A fresh machine: no local mirror of the journal; the dead driver's lock still there.
    monkeypatch.setenv("HOME", str(tmp_path / "machine-b"))
    done = cli("resume", experiment, "--num-cpus", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "is stale (no such process: that driver died); taking it over" in done.stderr
    assert "rebuilt from Ray's results" in done.stdout, done.stdout + "\n----\n" + done.stderr
    assert not storage.exists(fs, storage.join(root, LOCK_FILE))

    trials = load_trials(experiment)
    assert len(trials) == 4
    study = study_trials(experiment)
    assert not [k for k, t in study.items() if t.state == TrialState.RUNNING]
    for trial in trials:
        frozen = study[trial.trial_id]
        status = trial.status(2)
        assert status in ("complete", "stopped"), (trial.trial_id, status)
        expected = TrialState.COMPLETE if status == "complete" else TrialState.PRUNED
        assert frozen.state == expected, (trial.trial_id, status, frozen.state)
        epochs = {int(r["epoch"]): r["val_accuracy"] for r in trial.good_rows}
        assert frozen.intermediate_values == pytest.approx(epochs)
        assert frozen.value == pytest.approx(epochs[max(epochs)])

    # Export reads the bucket through the same layer, best model included.
    from search.outputs.export import export_experiment

    result = export_experiment(experiment, str(tmp_path / "out"), with_model=True)
    assert "best_model.keras" in result.files
