"""End-to-end searches on CPU: the CLI as a user runs it, small data and a small backbone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from search.outputs.results import load_trials, ray_statuses
from search.storage import filesystem
from tests.helpers import REPO, cli, kill_when, study_trials, write_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def e2e_search(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The tiny search through the CLI (its folder, what the command printed): read by the
    end-to-end test, then extended by the extend test."""
    root = tmp_path_factory.mktemp("e2e")
    done = cli("run", str(write_spec(root)), "--num-cpus", "2", "--name", "e2e")
    return root / "results" / "e2e", done


def test_cli_search_end_to_end_asha_baseline_and_study(e2e_search):
    experiment, done = e2e_search
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = load_trials(str(experiment))
    assert len(trials) == 6
    statuses = [t.status(3) for t in trials]
    assert "stopped" in statuses, statuses  # ASHA stopped some before max_t
    assert "complete" in statuses
    assert "stopped by ASHA at epoch" in done.stdout

    # The baseline (original method) ran, first.
    baseline = [
        t
        for t in trials
        if t.config.get("noise_std") == 0.01
        and t.config.get("upsample") == 2
        and t.config.get("dropout") == 0.75
    ]
    assert len(baseline) == 1

    # The Optuna study holds every trial exactly as ASHA decided.
    study = study_trials(experiment)
    assert set(study) == {t.trial_id for t in trials}
    for trial in trials:
        frozen = study[trial.trial_id]
        epochs = {int(r["epoch"]): r["val_accuracy"] for r in trial.history}
        assert frozen.intermediate_values == pytest.approx(epochs)
        if trial.epochs_run >= 3:
            assert frozen.state == TrialState.COMPLETE
            assert frozen.value == pytest.approx(trial.final["val_accuracy"])
        else:
            assert frozen.state == TrialState.PRUNED
            assert frozen.value == pytest.approx(epochs[trial.epochs_run])

    # The best config printed is the results table's best.
    best = max((t for t in trials if not t.failed), key=lambda t: t.best["val_accuracy"])
    printed = next(line for line in done.stdout.splitlines() if line.startswith("best config:"))
    assert json.loads(printed.removeprefix("best config: ")) == best.config
    assert f"best trial: {best.trial_id}" in done.stdout
    assert str(experiment) in done.stdout


def finished_in_storage(experiment: Path, max_t: int) -> bool:
    """Whether the experiment folder's results hold a complete trial, and Ray's newest
    snapshot there knows every trial they hold as complete as TERMINATED (an upload writes
    the trials' results before Ray's state)."""
    if not experiment.is_dir():
        return False
    statuses = ray_statuses(*filesystem(str(experiment)))
    if not statuses:  # no snapshot yet
        return False
    complete = [t.trial_id for t in load_trials(str(experiment)) if t.status(max_t) == "complete"]
    return bool(complete) and all(statuses.get(k) == "TERMINATED" for k in complete)


def test_resume_after_driver_killed_finishes_without_rerunning(tmp_path):
    spec_path = write_spec(
        tmp_path,
        search__num_samples=4,
        train__epochs=4,
        scheduler={"grace_period": 4, "reduction_factor": 3},
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "driver.log", "w")  # noqa: SIM115 - the killed driver writes it
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
            "killed",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    experiment = tmp_path / "results" / "killed"
    # Kill the driver once the experiment folder holds a finished trial, in its results and in
    # Ray's snapshot (checked with the driver stopped), while others are mid-way.
    kill_when(
        lambda: finished_in_storage(experiment, 4),
        driver,
        tmp_path / "driver.log",
        "a finished trial in the experiment folder",
        timeout=300,
    )
    before = {t.trial_id: t for t in load_trials(str(experiment))}
    finished_before = {k: t.history for k, t in before.items() if t.status(4) == "complete"}
    assert finished_before

    done = cli("resume", str(experiment), "--num-cpus", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    after = {t.trial_id: t for t in load_trials(str(experiment))}
    assert len(after) == 4
    assert all(t.status(4) == "complete" for t in after.values())
    for trial_id, history in finished_before.items():
        # Not run twice: the same rows, same timestamps.
        assert [r["timestamp"] for r in after[trial_id].history] == [
            r["timestamp"] for r in history
        ]
    assert "started" not in " ".join(
        line
        for line in done.stdout.splitlines()
        if any(f"trial {k} started" in line for k in finished_before)
    )
    # Ray and Optuna agree on every trial Ray knows.
    study = study_trials(experiment)
    for trial_id, trial in after.items():
        assert study[trial_id].state == TrialState.COMPLETE
        assert study[trial_id].value == pytest.approx(trial.final["val_accuracy"])


def test_validate_and_bad_input_exit_2_without_traceback(tmp_path):
    spec_path = write_spec(tmp_path)
    ok = cli("validate", str(spec_path))
    assert ok.returncode == 0 and "valid" in ok.stdout
    bad = write_spec(tmp_path, space={"upsample": {"int": [5, 2]}})
    done = cli("validate", str(bad))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: space.upsample.int: `low <= high` must hold, got low=5, high=2"
    )
    missing = cli("resume", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "experiment folder not found" in missing.stderr


def test_extend_adds_trials_to_the_same_study(e2e_search):
    # The end-to-end test's search, extended (that test has read it: it runs first).
    experiment, first = e2e_search
    assert first.returncode == 0, first.stderr[-3000:]
    before = {t.trial_id for t in load_trials(str(experiment))}
    assert len(before) == 6
    done = cli("extend", str(experiment), "--more", "2", "--num-cpus", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = load_trials(str(experiment))
    assert len(trials) == 8 and before < {t.trial_id for t in trials}
    assert {t.round for t in trials} == {"main", "extend-1"}
    # One study holds them all, so TPE's second round started from the first round's trials.
    study = study_trials(experiment)
    assert set(study) == {t.trial_id for t in trials}
    assert [t.number for t in sorted(study.values(), key=lambda t: t.number)] == list(range(8))
    assert "trials: 8" in done.stdout


def test_describe_prints_summary_and_exact_counts():
    done = cli(
        "describe", '{"backbone": "vgg16", "weights": "none", "noise_std": 0.01, "upsample": 2}'
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "total parameters:         15,241,802" in done.stdout
    assert "upsample=2, upsample_interpolation=nearest," in done.stdout  # not in the layer table
    for name in ("input_noise", "input_upsample", "block5_pool", "head_dense", "predictions"):
        assert name in done.stdout
    frozen = cli(
        "describe",
        '{"backbone": "vgg16", "weights": "none", "freeze": "block4_pool"}',
        "--classes",
        "100",
    )
    assert frozen.returncode == 0, frozen.stderr[-2000:]
    # block1..block4 convs frozen: 1,792+36,928+73,856+147,584+295,168+2*590,080+1,180,160+
    # 2*2,359,808 = 7,635,264
    assert "non-trainable parameters: 7,635,264" in frozen.stdout
