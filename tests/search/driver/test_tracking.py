"""MLflow tracking: a parent run per search, a nested run per trial with its params, per-epoch
metrics and final state; the best model logged on export. Checked through MLflow's own client,
against a real tracking server and against the default local store."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from search.driver.tracking import MlflowTracker
from search.outputs.results import load_trials
from search.outputs.tracking import LOCAL_ARTIFACTS, LOCAL_STORE, TAG_PARENT, TAG_STATE, TAG_TRIAL
from tests.helpers import cli, free_port, tiny_spec, write_spec

OPTUNA_STATE = {"complete": "COMPLETE", "stopped": "PRUNED", "failed": "FAIL"}


def _runs(uri: str, experiment_name: str) -> tuple[object, list, list]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if TAG_PARENT not in r.data.tags]
    children = [r for r in runs if TAG_PARENT in r.data.tags]
    return client, parents, children


@pytest.mark.slow
def test_a_two_trial_search_is_tracked_in_a_real_mlflow_server(tracked_search):
    assert tracked_search.returncode == 0, (
        tracked_search.stdout[-3000:] + (tracked_search.stderr[-3000:])
    )
    client, parents, children = _runs(tracked_search.tracking_uri, "tracked")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.params["max_t"] == "3" and parent.data.params["dense_units"] == "32"
    assert {r.data.tags[TAG_PARENT] for r in children} == {parent.info.run_id}

    trials = {t.trial_id: t for t in load_trials(str(tracked_search.experiment))}
    assert len(trials) == 2
    assert sorted(r.data.tags[TAG_TRIAL] for r in children) == sorted(trials)
    for run in children:
        trial = trials[run.data.tags[TAG_TRIAL]]
        state = OPTUNA_STATE[trial.status(3).value]
        assert run.data.tags[TAG_STATE] == state
        assert run.info.status == ("FAILED" if state == "FAIL" else "FINISHED")
        assert run.data.params == {k: str(v) for k, v in trial.config.items()}
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert sorted((m.step, m.value) for m in history) == [
            (r["epoch"], pytest.approx(r["val_accuracy"])) for r in trial.history
        ]
        assert {m.step for m in client.get_metric_history(run.info.run_id, "loss")} == {
            r["epoch"] for r in trial.history
        }


@pytest.mark.slow
def test_export_logs_the_best_model_to_the_searchs_parent_run(tracked_search, tmp_path):
    import mlflow

    out = tmp_path / "export"
    done = cli("export", str(tracked_search.experiment), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MLflow: logged" in done.stdout
    client, parents, _ = _runs(tracked_search.tracking_uri, "tracked")
    run_id = parents[0].info.run_id
    logged = {a.path for a in client.list_artifacts(run_id, "export")}
    assert {
        "export/best_model.keras",
        "export/best_config.yaml",
        "export/class_names.json",
    } <= logged
    copy = mlflow.artifacts.download_artifacts(
        run_id=run_id,
        artifact_path="export/best_model.keras",
        dst_path=str(tmp_path / "dl"),
        tracking_uri=tracked_search.tracking_uri,
    )
    assert Path(copy).read_bytes() == (out / "best_model.keras").read_bytes()
    best = max(load_trials(str(tracked_search.experiment)), key=lambda t: t.best_value or -1)
    assert client.get_run(run_id).data.tags["finetune_search.best_trial_id"] == best.trial_id


@pytest.mark.slow
def test_an_unreachable_tracking_server_is_refused_before_anything_starts(tmp_path):
    spec = write_spec(tmp_path, tracking={"uri": f"http://127.0.0.1:{free_port()}"})
    done = cli("run", str(spec), "--name", "unreached")
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: tracking.uri: cannot reach")
    assert not (tmp_path / "results" / "unreached").exists()


def test_default_store_is_local_in_the_experiment_folder_and_resumed_trials_keep_their_run(
    tmp_path,
):
    spec = tiny_spec(tmp_path, tracking={})
    experiment = tmp_path / "results" / "tiny"
    tracker = MlflowTracker(spec, str(experiment))
    tracker.setup()
    trials = {
        name: SimpleNamespace(trial_id=name, config={"dropout": 0.5, "upsample": 2})
        for name in ("full", "cut", "nan")
    }
    for trial in trials.values():
        tracker.on_trial_start(0, [], trial)
    for epoch in (1, 2, 3):
        tracker.on_trial_result(
            0, [], trials["full"], {"epoch": epoch, "val_accuracy": 0.1 * epoch, "loss": 2 / epoch}
        )
    tracker.on_trial_complete(0, [], trials["full"])
    tracker.on_trial_result(0, [], trials["cut"], {"epoch": 1, "val_accuracy": 0.05})
    tracker.on_trial_complete(0, [], trials["cut"])
    tracker.on_trial_result(
        0,
        [],
        trials["nan"],
        {"epoch": 1, "trial_failed": True, "failure_reason": "nan_loss: loss became nan"},
    )
    tracker.on_trial_complete(0, [], trials["nan"])
    # A resumed driver (a new tracker, as unpickled) finds the trial's run again.
    again = MlflowTracker(spec, str(experiment))
    again.setup()
    again.on_trial_start(0, [], trials["full"])
    assert again.runs["full"] == tracker.runs["full"]
    again.on_experiment_end([])
    assert not tracker.broken and not again.broken

    assert (experiment / LOCAL_STORE).is_file()
    client, parents, children = _runs(f"sqlite:///{experiment / LOCAL_STORE}", "tiny")
    assert len(parents) == 1 and len(children) == 3
    states = {r.data.tags[TAG_TRIAL]: (r.data.tags[TAG_STATE], r.info.status) for r in children}
    assert states == {
        "full": ("COMPLETE", "RUNNING"),
        "cut": ("PRUNED", "FINISHED"),
        "nan": ("FAIL", "FAILED"),
    }  # "full" runs again after its resume
    full = next(r for r in children if r.data.tags[TAG_TRIAL] == "full")
    assert [m.value for m in client.get_metric_history(full.info.run_id, "val_accuracy")] == [
        pytest.approx(0.1),
        pytest.approx(0.2),
        pytest.approx(0.3),
    ]
    location = client.get_experiment_by_name("tiny").artifact_location
    assert location == f"file://{experiment / LOCAL_ARTIFACTS}"
