"""Export, retrain and report after a tiny real search."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from search.errors import SpecError
from search.outputs.export import export_experiment, read_metadata
from search.outputs.results import load_trials
from search.storage import confined
from tests.helpers import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def experiment(tracked_search) -> Path:
    # The session's one real tracked search (tests/search/conftest.py): 2 trials, baseline
    # first; exporting it also logs to its MLflow server.
    assert tracked_search.returncode == 0, tracked_search.stderr[-3000:]
    return tracked_search.experiment


def test_export_writes_every_file_and_tables_agree_with_the_search(experiment, tmp_path):
    out = tmp_path / "out"
    done = cli("export", str(experiment), "--out", str(out), "--top", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    for name in (
        "best_config.yaml",
        "top_configs.yaml",
        "trials.parquet",
        "trials.csv",
        "history.parquet",
        "history.csv",
        "best_model.keras",
        "class_names.json",
    ):
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left

    trials = {t.trial_id: t for t in load_trials(str(experiment))}
    table = pq.read_table(out / "trials.parquet").to_pylist()
    assert {row["trial_id"] for row in table} == set(trials)
    for row in table:
        trial = trials[row["trial_id"]]
        assert row["epochs_run"] == trial.epochs_run
        assert row["status"] == trial.status(3)
        assert row["best_val_accuracy"] == pytest.approx(trial.best["val_accuracy"])
        assert row["config.upsample"] == trial.config["upsample"]
    history = pq.read_table(out / "history.parquet").to_pylist()
    assert len(history) == sum(len(t.history) for t in trials.values())

    best = max(trials.values(), key=lambda t: t.best["val_accuracy"])
    text = (out / "best_config.yaml").read_text()
    meta = read_metadata(text)
    assert meta["trial_id"] == best.trial_id and meta["metric"] == "val_accuracy"
    assert set(meta["versions"]) >= {"finetune-search", "tensorflow", "ray"}
    assert meta["class_names"] == [str(i) for i in range(10)]  # digits, in label order
    config = yaml.safe_load(text)
    assert config["space"] == {}
    assert config["model"]["upsample"] == best.config["upsample"]
    assert config["train"]["learning_rate"] == best.config["learning_rate"]
    tops = list(yaml.safe_load_all((out / "top_configs.yaml").read_text()))
    assert len(tops) == 2 and tops[0] == config

    valid = cli("validate", str(out / "best_config.yaml"))
    assert valid.returncode == 0, valid.stderr


def test_best_model_loads_without_our_packages(experiment, tmp_path):
    out = tmp_path / "out"
    export_experiment(str(experiment), str(out))
    # A meta-path hook makes `search` and `model_zoo` unimportable, as on a machine without
    # finetune-search installed.
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("search", "model_zoo"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        for name in ("search", "model_zoo"):
            try:
                __import__(name)
            except ImportError:
                pass
            else:
                raise SystemExit("could import " + name)
        import numpy as np, keras
        model = keras.saving.load_model({str(out / "best_model.keras")!r})
        images = np.random.default_rng(0).random((3, 32, 32, 3)).astype("float32")
        probs = model.predict(images, verbose=0)
        print(probs.shape, float(probs.sum(axis=1).mean()))
    """)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    shape, total = done.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert shape == "(3, 10)" and float(total) == pytest.approx(1.0, abs=1e-4)


def test_retrain_runs_the_exported_config_and_is_deterministic(experiment, tmp_path):
    out = tmp_path / "out"
    export_experiment(str(experiment), str(out), with_model=False)
    first = cli(
        "retrain", str(out / "best_config.yaml"), "--epochs", "1", "--out", str(tmp_path / "r1")
    )
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = json.loads((tmp_path / "r1" / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["epochs"] == 1
    assert metrics["test_examples"] > 0
    assert (tmp_path / "r1" / "model.keras").is_file()
    assert (tmp_path / "r1" / "history.csv").read_text().startswith("epoch,")
    # predict names a retrained model's classes from the file beside it
    assert json.loads((tmp_path / "r1" / "class_names.json").read_text()) == [
        str(i) for i in range(10)
    ]
    second = cli(
        "retrain", str(out / "best_config.yaml"), "--epochs", "1", "--out", str(tmp_path / "r2")
    )
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((tmp_path / "r2" / "metrics.json").read_text())
    assert again["test_accuracy"] == metrics["test_accuracy"]
    assert again["test_loss"] == metrics["test_loss"]


def test_report_names_every_trial(experiment, tmp_path):
    done = cli("report", str(experiment), "--out", str(tmp_path / "rep"))
    assert done.returncode == 0, done.stderr[-3000:]
    page = (tmp_path / "rep" / "report.html").read_text()
    for trial in load_trials(str(experiment)):
        assert trial.trial_id in page
    assert "(baseline)" in page
    baseline_line = next(p for p in page.split("<p") if "<b>Baseline</b>" in p)
    assert "dense_units=32" in baseline_line  # the tiny spec's fixed value, not the method's 256
    assert (tmp_path / "rep" / "learning_curves.png").stat().st_size > 1000


def test_export_refuses_missing_empty_foreign_and_running_folders(tmp_path, experiment):
    with pytest.raises(SpecError, match="experiment folder not found"):
        export_experiment(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="experiment folder is empty"):
        export_experiment(str(tmp_path / "empty"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("not ours")
    with pytest.raises(SpecError, match="not a finetune-search experiment"):
        export_experiment(str(tmp_path / "other"))
    lock = experiment / "driver.lock"
    import os
    import socket

    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    try:
        with pytest.raises(SpecError, match="still running"):
            export_experiment(str(experiment))
        done = cli("export", str(experiment))
        assert done.returncode == 2 and "Traceback" not in done.stderr
    finally:
        lock.unlink()


def test_export_never_writes_outside_its_folder(tmp_path):
    with pytest.raises(SpecError, match="outside"):
        confined(str(tmp_path), "../escape.txt")


def test_export_of_a_best_trial_rebuilt_from_the_study_names_its_lost_model(tmp_path):
    # A trial whose results `resume` rebuilt from the study (its driver was killed before
    # Ray's results reached storage) has no checkpoint: export says so, and which trial.
    from search.spec import dump_spec
    from tests.helpers import tiny_spec

    spec = tiny_spec(tmp_path, name="lost")
    folder = tmp_path / "results" / "lost"
    (folder / "trial_abc").mkdir(parents=True)
    (folder / "spec.yaml").write_text(dump_spec(spec))
    (folder / "trial_abc" / "params.json").write_text(json.dumps({"dropout": 0.5}))
    (folder / "trial_abc" / "result.json").write_text(
        "".join(
            json.dumps(
                {
                    "epoch": e,
                    "val_accuracy": 0.5 + e / 10,
                    "trial_id": "abc",
                    "rebuilt_from_study": True,
                }
            )
            + "\n"
            for e in (1, 2, 3)
        )
    )
    with pytest.raises(
        SpecError,
        match=r"trial abc has no checkpoint to export \(its results "
        r"were rebuilt from the study",
    ):
        export_experiment(str(folder), str(tmp_path / "out"))
