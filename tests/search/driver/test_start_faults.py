"""A driver SIGKILLed while it starts (its lock just taken, the data loading, Ray started, the
tuner being built, ``fit`` called): the folder it leaves is no trap. ``resume`` starts the
search from its ``spec.yaml``, and ``run`` under the same name takes the folder over."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from search.outputs.lock import LOCK_FILE
from search.outputs.results import load_trials
from tests.helpers import REPO, cli, study_trials, write_spec

pytestmark = pytest.mark.slow

# Runs the CLI with one start step replaced by a SIGKILL of the whole process group (the
# driver and any Ray it started), as a preempted node or the OOM killer would end it there.
KILL_AT_STEP = """
import os, signal, sys

from ray import tune

import search.data
import search.driver.service as service
from search.cli import main


def die(*args, **kwargs):
    os.killpg(0, signal.SIGKILL)


step = sys.argv[1]
if step == "lock":
    service._start_fresh = die
elif step == "data":
    search.data.load_dataset = die
elif step == "ray":
    connect = service.connect
    service.connect = lambda *args, **kwargs: (connect(*args, **kwargs), die())
elif step == "tuner":
    service._build_tuner = die
elif step == "fit":
    tune.Tuner.fit = die
sys.exit(main(sys.argv[2:]))
"""


def killed_while_starting(step: str, args: list[str], log: Path) -> str:
    """Runs the CLI with ``args``, SIGKILLed at ``step``; what it printed."""
    with open(log, "w") as out:
        driver = subprocess.run(
            [sys.executable, "-c", KILL_AT_STEP, step, *args],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
            timeout=600,
            check=False,
        )
    assert driver.returncode == -9, log.read_text()[-3000:]
    return log.read_text()


def test_driver_killed_at_each_start_step_leaves_a_folder_that_run_or_resume_continues(tmp_path):
    # One folder through every step: each command takes over the folder the previous one left
    # (killed at its step) and is itself killed at the next step; the last one finishes the
    # search. Each kill is continued by the command a user would run: after the lock, the data
    # and the tuner `run` (as the first run's name), after Ray's start and `fit` `resume`.
    spec_path = write_spec(
        tmp_path,
        search={"num_samples": 2, "max_concurrent": 2, "seed": 0},
        train={"epochs": 1, "batch_size": 32, "optimizer": "adam"},
        scheduler={"name": "fifo"},
    )
    name = "starts"
    experiment = tmp_path / "results" / name
    run = ["run", str(spec_path), "--num-cpus", "2", "--name", name]
    resume = ["resume", str(experiment), "--num-cpus", "2"]
    killed_while_starting("lock", run, tmp_path / "killed-lock.log")
    assert (experiment / LOCK_FILE).exists()  # the dead driver's
    # Killed between its lock and spec.yaml: resume says to run it.
    refused = cli("resume", str(experiment), timeout=120)
    assert refused.returncode == 2 and "the search never started" in refused.stderr
    for step, then in (("data", run), ("ray", run), ("tuner", resume), ("fit", run)):
        printed = killed_while_starting(step, then, tmp_path / f"killed-{step}.log")
        assert (experiment / LOCK_FILE).exists()  # the dead driver's
        assert (experiment / "spec.yaml").exists()  # written right after the lock
        # The folder the previous kill left was taken over (a lock alone needs no note).
        assert "never started" in printed or step == "data", printed[-3000:]

    done = cli(*resume)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "never started" in done.stdout, done.stdout[-3000:]
    trials = load_trials(str(experiment))
    assert len(trials) == 2 and all(t.status(1).value == "complete" for t in trials)
    study = study_trials(experiment)
    assert sorted(study) == sorted(t.trial_id for t in trials)
    assert all(t.state == TrialState.COMPLETE for t in study.values())
    assert not (experiment / LOCK_FILE).exists()


def test_run_refuses_a_folder_whose_search_started(tmp_path):
    # A trial folder means the search started: `run` must not take it over.
    spec_path = write_spec(tmp_path)
    experiment = tmp_path / "results" / "started"
    (experiment / "trial_0001").mkdir(parents=True)
    (experiment / "spec.yaml").write_text(spec_path.read_text())
    done = cli("run", str(spec_path), "--name", "started", timeout=120)
    assert done.returncode == 2
    assert "already exists" in done.stderr
