"""A search on S3 (moto's S3-compatible server, pyarrow's real S3 client): the journal reaches
the bucket while the search runs, one driver at a time, a resume from a fresh machine with an
older journal rebuilds a consistent study, and export reads it all back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from optuna.trial import TrialState

from search import storage
from search.outputs.experiment import read_run_id
from search.outputs.lock import LOCK_FILE
from search.outputs.results import load_trials, ray_statuses
from search.outputs.study import STUDY_FILE
from tests.helpers import (
    REPO,
    cli,
    kill_when,
    moto_s3_bucket,
    study_trials,
    wait_for,
    write_spec,
)

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
    s3_bucket, tmp_path, monkeypatch
):
    monkeypatch.setenv("HOME", str(tmp_path / "machine-a"))  # where the journal's mirror lives
    spec_path = write_spec(
        tmp_path,
        search__num_samples=4,
        train__epochs=2,
        scheduler={"grace_period": 1, "reduction_factor": 2},
    )
    experiment = f"{s3_bucket}/results/cloud"
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "search",
                "run",
                str(spec_path),
                "--num-cpus",
                "2",
                "--name",
                "cloud",
                "--storage",
                f"{s3_bucket}/results",
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # Every finished trial reaches the bucket's journal while the driver still runs.
        wait_for(
            lambda: (
                " complete at epoch" in log.read_text() or " stopped by ASHA" in log.read_text()
            ),
            driver,
            log,
            "a trial finishing",
            timeout=300,
        )
        wait_for(
            lambda: finished_in_bucket(experiment), driver, log, "the journal upload", timeout=30
        )
        # A second driver cannot take the experiment while the first holds it.
        second = cli("resume", experiment, "--num-cpus", "2", timeout=120)
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
        assert "another driver is running this experiment" in second.stderr
        # Killed once Ray's snapshot in the bucket knows every trial the bucket's journal has
        # finished (checked with the driver stopped, so neither moves on before the kill): the
        # journal cut below is then behind Ray's results.
        kill_when(
            lambda: ray_knows_what_the_journal_finished(experiment),
            driver,
            log,
            "Ray's snapshot in the bucket of the journal's finished trials",
        )
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
    older = b"".join(lines[: tells[-1]] if tells else lines)
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


def journal_lines(experiment: str) -> list[bytes]:
    fs, root = storage.filesystem(experiment)
    return storage.read_bytes(fs, storage.join(root, STUDY_FILE)).splitlines(keepends=True)


@dataclass
class BehindSearch:
    """A finished S3 search whose bucket was put behind its journal, then resumed."""

    experiment: str
    spec_path: Path
    home: Path  # the machine that resumed it (its journal mirror is there)
    lost: str
    stray: str
    resume: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def behind_search(tmp_path_factory) -> Iterator[BehindSearch]:
    # On S3 a trial's results reach the bucket with Ray's snapshot, which can come later than
    # the journal's upload, and a driver killed while uploading the snapshot can leave Ray's
    # search-generator state newer than the trials its experiment state lists. The bucket is
    # put in that state after a search: one trial ("lost") finished in the journal but absent
    # from Ray's results, and one ("stray") that had just started: its folder holds only
    # params.json, Ray's state does not list it, and the journal has no epoch of it.
    # (One search for this module's two tests: the second deletes it and runs it again.)
    from search.outputs.results import experiment_state_files

    tmp_path = tmp_path_factory.mktemp("behind")
    with moto_s3_bucket() as (s3_bucket, settings), pytest.MonkeyPatch.context() as patch:
        for key, value in settings.items():
            patch.setenv(key, value)
        # Each driver is its own process: Ray keeps a process's first HOME (its token's place).
        patch.setenv("HOME", str(tmp_path / "machine-a"))
        spec_path = write_spec(
            tmp_path,
            storage=f"{s3_bucket}/exp",
            search={"num_samples": 4, "max_concurrent": 2, "seed": 0},
            train={"epochs": 2, "batch_size": 32, "optimizer": "adam"},
            scheduler={"grace_period": 1, "reduction_factor": 2},
        )
        experiment = f"{s3_bucket}/exp/behind"
        done = cli("run", str(spec_path), "--num-cpus", "2", "--name", "behind")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

        lines = journal_lines(experiment)
        ray_of, first_value, finished = {}, {}, {}
        for index, line in enumerate(lines):
            log = json.loads(line)
            if log["op_code"] == 8 and "ray_trial_id" in log.get("user_attr", {}):
                ray_of[log["trial_id"]] = log["user_attr"]["ray_trial_id"]
            elif log["op_code"] == 7:
                first_value.setdefault(ray_of[log["trial_id"]], index)
            elif log["op_code"] == 6 and log.get("state") in (1, 2):  # COMPLETE, PRUNED
                finished.setdefault(ray_of[log["trial_id"]], index)
        lost = min(finished, key=finished.get)
        stray = max(first_value, key=first_value.get)
        assert finished[lost] < first_value[stray], (finished, first_value)
        fs, root = storage.filesystem(experiment)
        storage.write_atomic(
            storage.join(experiment, STUDY_FILE), b"".join(lines[: first_value[stray]])
        )
        newest = experiment_state_files(fs, root)[-1]
        state = json.loads(storage.read_text(fs, newest))
        state["trial_data"] = [
            entry
            for entry in state["trial_data"]
            if json.loads(entry[0])["trial_id"] not in (lost, stray)
        ]
        with fs.open_output_stream(newest) as out:
            out.write(json.dumps(state).encode())
        fs.delete_dir(storage.join(root, f"trial_{lost}"))
        for info in storage.list_dir(fs, storage.join(root, f"trial_{stray}")):
            if info.base_name != "params.json":
                (fs.delete_dir if info.type == storage.FileType.Directory else fs.delete_file)(
                    info.path
                )

        # A fresh machine.
        home = tmp_path / "machine-b"
        patch.setenv("HOME", str(home))
        done = cli("resume", experiment, "--num-cpus", "2")
        yield BehindSearch(
            experiment=experiment,
            spec_path=spec_path,
            home=home,
            lost=lost,
            stray=stray,
            resume=done,
        )


def test_resume_where_rays_results_in_the_bucket_fell_behind_the_journal_loses_no_trial(
    behind_search,
):
    experiment, lost, stray = behind_search.experiment, behind_search.lost, behind_search.stray
    done = behind_search.resume
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 trial(s) rebuilt from the study" in done.stdout, done.stdout[-3000:]
    trials = {t.trial_id: t for t in load_trials(experiment)}
    assert len(trials) == 4, sorted(trials)
    # The lost trial is back, from the journal, not run again; the stray one is gone and a
    # new trial took its place: every Ray trial trained.
    assert lost in trials and stray not in trials
    assert all(row.get("rebuilt_from_study") for row in trials[lost].history)
    assert all(t.epochs_run >= 1 for t in trials.values())
    study = study_trials(experiment)
    assert study[stray].state == TrialState.FAIL and not study[stray].intermediate_values
    assert not [k for k, t in study.items() if t.state == TrialState.RUNNING]
    for ray_id, frozen in study.items():
        if frozen.intermediate_values:
            assert trials[ray_id].epochs_run >= max(frozen.intermediate_values), ray_id
    assert trials[lost].best_value == pytest.approx(max(study[lost].intermediate_values.values()))


def test_a_new_run_where_a_deleted_cloud_search_was_starts_a_new_study(behind_search, monkeypatch):
    # The journal's local mirror (~/.cache/finetune-search/<name>-<hash of the URI>) outlives
    # the experiment: a search deleted from the bucket and run again under the same URI must
    # not start from the old search's study. The old search: the module's, last driven from
    # the machine whose mirror holds its study (it ran after the test above read it).
    experiment = behind_search.experiment
    monkeypatch.setenv("HOME", str(behind_search.home))
    old_run = read_run_id(experiment)
    old_trials = set(study_trials(experiment))
    assert len(load_trials(experiment)) == 4 and len(old_trials) >= 4
    fs, root = storage.filesystem(experiment)
    fs.delete_dir(root)

    again = cli(
        "run",
        str(behind_search.spec_path),
        "--num-cpus",
        "2",
        "--name",
        "behind",
        "--set",
        "search.num_samples=2",
        "--set",
        "train.epochs=1",
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert read_run_id(experiment) != old_run
    study = study_trials(experiment)
    assert sorted(study) == sorted(t.trial_id for t in load_trials(experiment)), sorted(study)
    assert len(study) == 2 and not set(study) & old_trials
    assert all(t.state == TrialState.COMPLETE for t in study.values())
