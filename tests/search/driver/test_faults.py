"""Fault injection: each test's name says which fault it injects, and proves nothing is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from search.driver.service import resume_search, run_search
from search.outputs.export import export_experiment
from search.outputs.results import load_trials
from search.outputs.study import STUDY_FILE
from search.spec import load_spec_dict
from search.trial.checkpoint import model_path
from tests.helpers import REPO, cli, study_trials, tiny_raw, tree_digest, write_spec

from . import fault_trainables

pytestmark = pytest.mark.slow


def spec_for(tmp_path, name, **changes):
    return load_spec_dict({**tiny_raw(tmp_path, **changes), "name": name})


def raw_epochs(trial_path: str) -> list[int]:
    """Every epoch a trial reported, in order, duplicates included (result.json as written)."""
    with open(os.path.join(trial_path, "result.json"), encoding="utf-8") as handle:
        return [json.loads(line)["epoch"] for line in handle if line.strip()]


def assert_continues_from_checkpoints(epochs: list[int], last: int) -> None:
    """Epochs run 1..last; after an interruption a trial resumes from its last checkpoint, so
    with a checkpoint every epoch (or, as here, at every other one) it may repeat the one
    epoch in flight (Ray's checkpoints are at-least-once), but never goes back further."""
    assert epochs[0] == 1 and epochs[-1] == last, epochs
    for before, after in zip(epochs, epochs[1:]):
        assert after in (before, before + 1), epochs
    assert sorted(set(epochs)) == list(range(1, last + 1)), epochs


def test_injected_trial_crashes_resume_from_last_checkpoint(tmp_path):
    fault_trainables.ship_by_value()
    spec = spec_for(
        tmp_path,
        "crashes",
        train__epochs=4,
        search={"num_samples": 4, "max_concurrent": 2, "seed": 0, "max_failures": 20},
        scheduler={"grace_period": 2, "reduction_factor": 3},
    )
    summary = run_search(spec, num_cpus=2, trainable=fault_trainables.crash_at_random_epochs)
    trials = load_trials(summary.experiment_dir)
    assert len(trials) == 4
    crashed = [t for t in trials if os.path.exists(os.path.join(t.path, "error.txt"))]
    assert crashed, "the fault was never injected"
    for trial in trials:
        # Every trial reached the epoch ASHA allowed it: complete, or stopped at a rung.
        assert trial.status(4) in ("complete", "stopped")
        assert trial.epochs_run in (2, 4)
        # After a crash the epochs continue from the checkpoint, never from 0.
        assert_continues_from_checkpoints(raw_epochs(trial.path), trial.epochs_run)


def test_sigint_prints_resume_and_resume_finishes_with_study_agreeing(tmp_path):
    spec_path = write_spec(
        tmp_path,
        search__num_samples=4,
        train__epochs=4,
        scheduler={"grace_period": 4, "reduction_factor": 3},
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "driver.log"
    with open(log_path, "w") as log:
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
                "ctrlc",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 300
        while " epoch 1/4" not in log_path.read_text():
            assert time.time() < deadline and driver.poll() is None, log_path.read_text()
            time.sleep(0.5)
        os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        code = driver.wait(timeout=120)
    text = log_path.read_text()
    experiment = tmp_path / "results" / "ctrlc"
    assert code == 130, text[-2000:]
    assert f"finetune-search resume {experiment}" in text

    summary = resume_search(str(experiment), num_cpus=2)
    assert not summary.interrupted
    trials = load_trials(str(experiment))
    assert len(trials) == 4 and all(t.status(4) == "complete" for t in trials)
    for trial in trials:
        assert_continues_from_checkpoints(raw_epochs(trial.path), 4)
    study = study_trials(experiment)
    ray_ids = {t.trial_id for t in trials}
    # Same trials, same values: every Ray trial is COMPLETE in the study with its final value;
    # anything else the study holds was suggested but never run, and is marked so.
    for trial in trials:
        assert study[trial.trial_id].state == TrialState.COMPLETE
        assert study[trial.trial_id].value == pytest.approx(trial.final["val_accuracy"])
    for key, frozen in study.items():
        if key not in ray_ids:
            assert frozen.state == TrialState.FAIL
            assert frozen.user_attrs["ended_by"].startswith("orphaned")


def test_worker_node_removed_mid_search_trials_move_to_remaining_nodes(tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    fault_trainables.ship_by_value()
    monkeypatch.setenv("FINETUNE_SEARCH_SHARED_FS", "1")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    doomed = cluster.add_node(num_cpus=1)
    survivor = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        spec = spec_for(
            tmp_path,
            "nodelost",
            train__epochs=4,
            search={
                "num_samples": 2,
                "max_concurrent": 2,
                "seed": 0,
                "baseline": False,
                "max_failures": 3,
            },
            scheduler={"name": "fifo"},
            train__checkpoint="every_epoch",
            resources={"cpus_per_trial": 1, "gpus_per_trial": 0},
        )
        outcome: dict = {}
        worker = threading.Thread(
            target=lambda: outcome.update(
                summary=run_search(
                    spec, address=cluster.address, trainable=fault_trainables.slow_epochs
                )
            )
        )
        worker.start()
        experiment = tmp_path / "results" / "nodelost"
        deadline = time.time() + 240
        # Wait until a trial on the doomed node has checkpointed an epoch, then remove it.
        while True:
            assert time.time() < deadline, "no trial reported on the doomed node"
            rows = [
                json.loads(line)
                for path in experiment.glob("trial_*/result.json")
                for line in path.read_text().splitlines()
                if line.strip()
            ]
            if any(r.get("node_id") == doomed.node_id for r in rows):
                break
            time.sleep(0.5)
        cluster.remove_node(doomed)
        worker.join(timeout=400)
        assert not worker.is_alive()
    finally:
        ray.shutdown()
        cluster.shutdown()
    trials = load_trials(str(experiment))
    assert len(trials) == 2 and all(t.status(4) == "complete" for t in trials)
    moved = [
        t
        for t in trials
        if {r["node_id"] for r in t.history} == {doomed.node_id, survivor.node_id}
    ]
    assert moved, "no trial moved from the lost node"
    for trial in moved:
        # Resumed from its checkpoint on the survivor: epochs continue.
        assert_continues_from_checkpoints(raw_epochs(trial.path), 4)
        assert trial.history[-1]["node_id"] == survivor.node_id


def test_nan_loss_fails_the_trial_with_its_reason_and_the_search_goes_on(tmp_path):
    # The written learning rate (0.01) is the baseline trial's: at least one healthy trial.
    spec = spec_for(
        tmp_path,
        "nan",
        train__epochs=2,
        train__optimizer="sgd",
        train__learning_rate=0.01,
        space={"learning_rate": {"choice": [0.01, 1.0e12]}},
        search={"num_samples": 4, "max_concurrent": 2, "seed": 3, "baseline": True},
        scheduler={"name": "fifo"},
    )
    summary = run_search(spec, num_cpus=2)
    trials = load_trials(summary.experiment_dir)
    assert len(trials) == 4
    failed = [t for t in trials if t.config["learning_rate"] > 1]
    healthy = [t for t in trials if t.config["learning_rate"] < 1]
    assert failed and healthy
    for trial in failed:
        assert trial.status(2) == "failed"
        assert trial.failure_reason.startswith("nan_loss")
        assert raw_epochs(trial.path)[-1] == 1  # ended at once, not retried
    assert all(t.status(2) == "complete" for t in healthy)
    export = export_experiment(summary.experiment_dir, str(tmp_path / "out"), with_model=False)
    import pyarrow.parquet as pq

    rows = pq.read_table(os.path.join(export.out_dir, "trials.parquet")).to_pylist()
    reasons = {r["trial_id"]: r["stop_reason"] for r in rows if r["status"] == "failed"}
    assert set(reasons) == {t.trial_id for t in failed}
    assert all(reason.startswith("nan_loss") for reason in reasons.values())


def test_a_trial_stopped_inside_a_slow_step_of_its_next_epoch_leaves_its_process_reusable(
    tmp_path, monkeypatch
):
    """Each epoch's report runs beside the next epoch, so a trial ASHA stops at epoch 1 is
    inside epoch 2's first step (3 s here) when Ray reuses its process for the next trial;
    with Ray's own 2 s wait for it that reuse failed and the next trial was lost."""
    fault_trainables.ship_by_value()
    monkeypatch.delenv("TUNE_FUNCTION_THREAD_TIMEOUT_S", raising=False)
    spec = spec_for(
        tmp_path,
        "slowstep",
        train__epochs=2,
        dataset={"name": "digits", "subset": 96, "val_fraction": 0.5, "seed": 0},
        space={"learning_rate": {"loguniform": [0.0003, 0.01]}},
        search={"num_samples": 3, "max_concurrent": 1, "seed": 0, "baseline": False},
        scheduler={"grace_period": 1, "reduction_factor": 2},
        resources={"cpus_per_trial": 2, "gpus_per_trial": 0},
    )
    trainable = fault_trainables.with_settings(
        fault_trainables.slow_steps_after_the_first_epoch, step_sleep_s=3.0
    )
    summary = run_search(spec, num_cpus=2, trainable=trainable)
    trials = load_trials(summary.experiment_dir)
    assert len(trials) == 3
    statuses = sorted(t.status(2) for t in trials)
    assert "stopped" in statuses and "failed" not in statuses, statuses
    assert not any(t.errored for t in summary.trials)
    # One process served the trials one after another: each reuse succeeded.
    assert len({t.history[0]["pid"] for t in trials}) == 1


def test_injected_out_of_memory_at_a_later_epoch_retries_from_the_last_checkpoint(tmp_path):
    import keras
    import numpy as np

    fault_trainables.ship_by_value()
    probe = tmp_path / "probe"
    probe.mkdir()
    spec = spec_for(
        tmp_path,
        "oom",
        train__epochs=3,
        train__batch_size=32,
        search={"num_samples": 1, "seed": 0, "baseline": False},
        scheduler={"grace_period": 1, "reduction_factor": 3},
    )
    # Epoch 1 trains at batch 32 and is checkpointed (ASHA's rung at 1: the default policy);
    # epoch 2 runs out of memory part-way (weights in memory already moved on), and the
    # half-batch retry must continue from epoch 1's checkpoint.
    trainable = fault_trainables.with_settings(
        fault_trainables.out_of_memory_above, oom_from_epoch=1, probe_dir=str(probe)
    )
    summary = run_search(spec, num_cpus=2, trainable=trainable)
    (trial,) = load_trials(summary.experiment_dir)
    assert trial.status(3) == "complete"
    assert raw_epochs(trial.path) == [1, 2, 3]  # the epochs ran on, none trained twice
    # The default train.checkpoint: ASHA's rung (epoch 1) and the last epoch, not epoch 2.
    assert sorted(p.name for p in probe.glob("epoch-*")) == ["epoch-1", "epoch-3"]
    first, last = trial.history[0], trial.history[-1]
    assert first["batch_size"] == 32 and first["oom_retried"] is False
    assert last["oom_retried"] is True and last["batch_size"] == 16
    assert last["learning_rate_used"] == pytest.approx(trial.config["learning_rate"] / 2)

    retry_start = np.load(probe / "retry_start.npz")
    checkpoint = keras.saving.load_model(model_path(str(probe / "epoch-1")))
    expected = fault_trainables.variables_by_name(checkpoint)
    assert sorted(retry_start.files) == sorted(expected)
    assert any(k.startswith("optimizer_") for k in expected)  # the optimizer state is compared
    for name, value in expected.items():
        np.testing.assert_array_equal(retry_start[name], value, err_msg=name)


def test_injected_out_of_memory_twice_is_recorded_not_retried_forever(tmp_path):
    fault_trainables.ship_by_value()
    spec = spec_for(
        tmp_path,
        "oom2",
        train__epochs=2,
        train__batch_size=64,
        train__learning_rate=0.001,
        space={},
        search={"num_samples": 1, "seed": 0, "baseline": False},
        scheduler={"name": "fifo"},
    )
    summary = run_search(spec, num_cpus=2, trainable=fault_trainables.out_of_memory_above)
    (trial,) = load_trials(summary.experiment_dir)
    assert trial.status(2) == "failed"
    assert trial.failure_reason.startswith("oom")
    assert "batch_size=32" in trial.failure_reason
    assert trial.history[-1]["oom_retried"] is True
    assert not os.path.exists(os.path.join(trial.path, "error.txt"))  # no Ray retry spent


def test_local_ray_started_by_the_cli_has_no_dashboard_and_requires_a_token(monkeypatch):
    import ray
    from ray._raylet import AuthenticationMode, get_authentication_mode

    from search.driver.cluster import connect

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert connect(None, num_cpus=1)
    try:
        assert get_authentication_mode() == AuthenticationMode.TOKEN
        # This Ray's own dashboard (HTTP job API) is not started: no URL (port 8265 may be
        # another Ray's on a shared machine).
        assert ray._private.worker.get_dashboard_url() == ""
    finally:
        ray.shutdown()


# --------------------------------------------------------------------------------------------
# one faulty search (crashes, a NaN and an OOM, each after a restart from a checkpoint), then
# what it must leave behind


@pytest.fixture(scope="module")
def faulty_search(tmp_path_factory):
    """Runs the search with its processes' TMPDIR in a folder of its own, so every temp folder
    the trials leave behind can be counted."""
    root = tmp_path_factory.mktemp("faulty")
    trial_tmp = root / "trial-tmp"
    fault_dir = root / "faults"
    trial_tmp.mkdir()
    fault_dir.mkdir()
    fault_trainables.ship_by_value()
    spec = spec_for(
        root,
        "faulty",
        train__epochs=2,
        search={
            "num_samples": 2,
            "max_concurrent": 2,
            "seed": 0,
            "baseline": False,
            "max_failures": 3,
        },
        scheduler={"name": "fifo"},
        train__checkpoint="every_epoch",
    )
    trainable = fault_trainables.with_settings(
        fault_trainables.fault_per_trial,
        fault_dir=str(fault_dir),
        fault_kinds=["crash_then_nan", "oom"],
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(trial_tmp))  # Ray's workers inherit it from this driver
        summary = run_search(spec, num_cpus=2, trainable=trainable)
    kinds = {
        (fault_dir / f"{t.trial_id}.kind").read_text(): t
        for t in load_trials(summary.experiment_dir)
    }
    return summary, kinds, trial_tmp


def test_crash_nan_and_oom_after_a_restore_leave_no_temp_folders(faulty_search):
    summary, kinds, trial_tmp = faulty_search
    # The faults really happened, each in an attempt restarted from a checkpoint copy.
    assert set(kinds) == {"crash_then_nan", "oom"}
    assert kinds["crash_then_nan"].failure_reason.startswith("nan_loss")
    assert kinds["oom"].failure_reason.startswith("oom")
    for trial in kinds.values():
        assert raw_epochs(trial.path)[0] == 1 and trial.history[-1]["trial_failed"]
        assert os.path.exists(os.path.join(trial.path, "error.txt"))  # the crash happened
    left = sorted(p.name for p in trial_tmp.iterdir())
    # TensorFlow's autograph writes the Python it generates as single temp files (removed
    # when the process exits): not ours, and not folders.
    assert [name for name in left if not name.startswith("__autograph_generated_file")] == [], left


def test_export_report_validate_and_study_reads_leave_the_experiment_byte_identical(
    faulty_search, tmp_path
):
    summary, _, _ = faulty_search
    experiment = Path(summary.experiment_dir)
    before = tree_digest(experiment)
    assert any(name.endswith(STUDY_FILE) for name in before)
    for args in (
        ["export", str(experiment), "--out", str(tmp_path / "export")],
        ["report", str(experiment), "--out", str(tmp_path / "report")],
        ["validate", str(experiment / "spec.yaml")],
    ):
        done = cli(*args)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert study_trials(experiment)  # the tests' own reads too
    assert tree_digest(experiment) == before
