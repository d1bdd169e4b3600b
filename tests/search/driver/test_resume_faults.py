"""Resume after real faults, through the CLI as a user runs it: a trial's worker SIGKILLed (as
the kernel's OOM killer does), and a driver SIGKILLed after Ray's last experiment snapshot.
After ``resume`` the study must say what really happened to every Ray trial."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from search.outputs.results import experiment_state_files, load_trials, ray_statuses
from search.outputs.study import ATTR_CONTINUES, STUDY_FILE
from search.storage import filesystem
from tests.helpers import REPO, cli, study_trials, wait_for, write_spec

pytestmark = pytest.mark.slow

STATE_SUFFIXES = (".json", ".pkl")  # Ray's experiment snapshot: what `resume` reads


def start_driver(spec_path: Path, name: str, log_path: Path) -> subprocess.Popen:
    # Ray snapshots the experiment on a timer (and when a trial has written CHECKPOINTS_KEPT
    # checkpoints since the last one); a period of 0 snapshots at every step of its loop, so the
    # tests can catch the snapshot a real driver might die with.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNE_GLOBAL_CHECKPOINT_S": "0"}
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "search",
                "run",
                str(spec_path),
                "--num-cpus",
                "2",
                "--name",
                name,
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def rows(experiment: Path) -> list[dict]:
    found = []
    for path in experiment.glob("trial_*/result.json"):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line being written
                found.append(json.loads(line))
    return found


def snapshot_resumes_from_epoch(experiment: Path, epoch: int) -> bool:
    """Whether Ray's newest experiment state in storage holds an unfinished trial whose latest
    checkpoint is the one of ``epoch``: a resume from this state continues that trial from the
    checkpoint in a new attempt. (A result row alone does not say it: Ray registers a
    checkpoint one step of its loop after the result, and a snapshot can fall in between.)"""
    from ray.tune.experiment.trial import Trial

    states = experiment_state_files(filesystem(str(experiment))[0], str(experiment))
    if not states:
        return False
    for trial_state, run_metadata in json.loads(Path(states[-1]).read_text())["trial_data"]:
        trial = Trial.from_json_state(trial_state, stub=True)
        trial.restore_run_metadata(run_metadata)
        checkpointed = trial.latest_checkpoint_result
        if (
            trial.status not in (Trial.TERMINATED, Trial.ERROR)
            and checkpointed is not None
            and checkpointed.metrics.get("epoch") == epoch
        ):
            return True
    return False


def assert_study_tells_what_ray_did(experiment: Path, max_t: int) -> dict:
    """Every trial in Ray's final state is COMPLETE (reached max_t), PRUNED (stopped early) or
    FAIL in the study, with its values; no study trial is left RUNNING."""
    fs, root = filesystem(str(experiment))
    known = ray_statuses(fs, root)
    records = {t.trial_id: t for t in load_trials(str(experiment)) if t.trial_id in known}
    study = study_trials(experiment)  # the newest study trial of each Ray trial
    expected = {
        "complete": TrialState.COMPLETE,
        "stopped": TrialState.PRUNED,
        "failed": TrialState.FAIL,
    }
    for trial_id, record in records.items():
        frozen = study[trial_id]
        assert frozen.state == expected[record.status(max_t).value], (trial_id, frozen)
        epochs = {int(r["epoch"]): r["val_accuracy"] for r in record.good_rows}
        assert set(frozen.intermediate_values) == set(epochs), (trial_id, frozen)
    running = [t.number for t in study.values() if t.state == TrialState.RUNNING]
    assert not running, running
    return records


def test_worker_sigkilled_with_no_retries_then_resume_records_the_restarted_trial(tmp_path):
    # A checkpoint every epoch: the worker dies after epoch 1's, and resume continues from it.
    spec_path = write_spec(
        tmp_path,
        train__epochs=3,
        train__checkpoint="every_epoch",
        scheduler={"name": "fifo"},
        search={
            "num_samples": 2,
            "max_concurrent": 2,
            "seed": 0,
            "baseline": False,
            "max_failures": 0,
        },
    )
    experiment = tmp_path / "results" / "workerkill"
    log_path = tmp_path / "run.log"
    driver = start_driver(spec_path, "workerkill", log_path)
    # SIGKILL one trial's worker process once it has checkpointed epoch 1 (its pid is in
    # every result row): what the kernel's OOM killer does.
    victim = wait_for(
        lambda: next((r for r in rows(experiment) if r["epoch"] == 1), None),
        driver,
        log_path,
        "first epoch",
    )
    os.kill(victim["pid"], signal.SIGKILL)
    assert driver.wait(timeout=900) == 0, log_path.read_text()[-3000:]
    killed = {t.trial_id: t for t in load_trials(str(experiment))}[victim["trial_id"]]
    assert killed.status(3).value == "failed" and killed.epochs_run < 3
    assert study_trials(experiment)[victim["trial_id"]].state == TrialState.FAIL

    done = cli("resume", str(experiment), "--num-cpus", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = assert_study_tells_what_ray_did(experiment, 3)
    assert all(r.status(3).value == "complete" for r in records.values())
    # The restarted trial continued from its checkpoint and has a new study trial with the
    # same parameters and all its epochs; the failed one stays, as what happened first.
    continued = study_trials(experiment)[victim["trial_id"]]
    assert continued.state == TrialState.COMPLETE
    assert continued.value == pytest.approx(records[victim["trial_id"]].final["val_accuracy"])
    first = every_study_trial(experiment)[continued.user_attrs[ATTR_CONTINUES]]
    assert first.state == TrialState.FAIL and first.params == continued.params
    assert sorted(continued.intermediate_values) == [1, 2, 3]


def every_study_trial(experiment: Path) -> list:
    """All the study's trials by number (read only)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(experiment / STUDY_FILE)))
    return optuna.load_study(study_name=experiment.name, storage=storage).trials


def snapshot(experiment: Path, into: Path) -> dict[str, dict]:
    """Copies Ray's experiment snapshot (top-level .json/.pkl files) into ``into``, if it is
    whole; returns its trials (id -> last epoch), or {} when mid-write."""
    copies = {}
    for path in experiment.iterdir():
        if path.is_file() and path.suffix in STATE_SUFFIXES:
            copies[path.name] = path.read_bytes()
    states = sorted(n for n in copies if n.startswith("experiment_state-"))
    try:
        state = json.loads(copies[states[-1]]) if states else None
    except ValueError:
        return {}
    if not state or any(
        (experiment / n).read_bytes() != d for n, d in copies.items() if (experiment / n).exists()
    ):
        return {}  # changed while copied
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    for name, data in copies.items():
        (into / name).write_bytes(data)
    trials = {}
    for entry, metadata in state["trial_data"]:
        last = json.loads(metadata).get("last_result") or {}
        trials[json.loads(entry)["trial_id"]] = {"epoch": last.get("epoch", 0)}
    return trials


def test_driver_sigkilled_after_an_asha_stop_newer_than_the_snapshot_then_resume_finishes(
    tmp_path,
):
    # One trial at a time; the baseline (learning rate 0.003) sets rung 2, then a trial with
    # learning rate 1e-5 is stopped there (rf 2: below the median is stopped).
    # A checkpoint every epoch, so Ray snapshots each trial at epoch 1 (before ASHA's rung).
    spec_path = write_spec(
        tmp_path,
        train={
            "epochs": 3,
            "batch_size": 32,
            "optimizer": "adam",
            "learning_rate": 0.003,
            "checkpoint": "every_epoch",
        },
        dataset={"name": "digits", "subset": 800, "val_fraction": 0.25, "seed": 0},
        model={"backbone": "small_cnn", "weights": "none", "dense_units": 32, "upsample": 1},
        space={"learning_rate": {"choice": [0.003, 0.00001]}},
        search={"num_samples": 2, "max_concurrent": 1, "seed": 0},
        scheduler={"grace_period": 2, "reduction_factor": 2},
    )
    experiment = tmp_path / "results" / "stale"
    log_path = tmp_path / "run.log"
    driver = start_driver(spec_path, "stale", log_path)
    # Ray snapshots its experiment (here: at every step), milliseconds after the study records
    # a stop: killing the driver inside that window cannot be timed. So the test keeps
    # each trial's last snapshot at epoch 1 and, after the kill, puts back the one taken before
    # ASHA's stop: exactly what Ray leaves when the driver dies inside the window.
    saved: set[str] = set()
    stopped = None
    deadline = time.time() + 900
    while stopped is None:
        assert driver.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
        trials = snapshot(experiment, tmp_path / "candidate") if experiment.exists() else {}
        for trial_id, seen in trials.items():
            if seen["epoch"] == 1:
                shutil.rmtree(tmp_path / f"snap-{trial_id}", ignore_errors=True)
                shutil.copytree(tmp_path / "candidate", tmp_path / f"snap-{trial_id}")
                saved.add(trial_id)
        stopped = next(
            (
                line.split()[2]
                for line in log_path.read_text().splitlines()
                if "stopped by ASHA at epoch 2" in line
            ),
            None,
        )
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):  # the search may just have ended
        os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert stopped in saved, f"no snapshot of trial {stopped} at epoch 1 was caught"
    assert study_trials(experiment)[stopped].state == TrialState.PRUNED
    for path in experiment.iterdir():
        if path.is_file() and path.suffix in STATE_SUFFIXES and path.name != "tuner.pkl":
            path.unlink()
    for path in (tmp_path / f"snap-{stopped}").iterdir():
        shutil.copy2(path, experiment / path.name)

    done = cli("resume", str(experiment), "--num-cpus", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = assert_study_tells_what_ray_did(experiment, 3)
    # Ray ran the stopped trial again from its epoch-1 checkpoint; ASHA, rebuilt from the
    # recorded results, stopped it again at the same rung.
    assert f"trial {stopped} stopped by ASHA at epoch 2/3" in done.stdout
    assert records[stopped].epochs_run == 2
    assert records[stopped].status(3).value == "stopped"


def test_a_trial_asha_stopped_is_not_trained_on_when_rays_older_state_resumes_it(tmp_path):
    # The study says ASHA stopped a trial at epoch 1; Ray's state in storage is older and
    # still has it RUNNING at that epoch (on S3 the snapshot can lag the journal's upload).
    from search.driver.service import resume_search, run_search
    from search.outputs.results import experiment_state_files
    from tests.helpers import tiny_spec

    spec = tiny_spec(
        tmp_path,
        name="final",
        search={"num_samples": 3, "max_concurrent": 1, "seed": 0},
        train={"epochs": 2, "batch_size": 32, "optimizer": "adam"},
        scheduler={"grace_period": 1, "reduction_factor": 2},
    )
    experiment = Path(spec.experiment_path)
    run_search(spec, num_cpus=2)
    study = study_trials(experiment)
    stopped = next(k for k, t in study.items() if t.state == TrialState.PRUNED)
    assert study[stopped].user_attrs["ended_by"] == "asha@1"
    newest = Path(experiment_state_files(*filesystem(str(experiment)))[-1])
    state = json.loads(newest.read_text())
    for entry in state["trial_data"]:
        trial = json.loads(entry[0])
        if trial["trial_id"] == stopped:
            trial["status"] = "RUNNING"
            entry[0] = json.dumps(trial)
    newest.write_text(json.dumps(state))

    resume_search(str(experiment), num_cpus=2)
    records = {t.trial_id: t for t in load_trials(str(experiment))}
    assert records[stopped].epochs_run == 1 and records[stopped].status(2).value == "stopped"
    after = every_study_trial(experiment)
    assert len(after) == 3 and not [t for t in after if ATTR_CONTINUES in t.user_attrs]
    assert study_trials(experiment)[stopped].state == TrialState.PRUNED
