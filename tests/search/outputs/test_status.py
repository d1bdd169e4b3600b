"""`finetune-search status`: where a search stands, read while it runs and after, changing no
byte of the experiment folder."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest
import yaml

from search.cli import main
from search.outputs.results import best_trial, load_trials
from search.outputs.status import experiment_status, format_status, watch_status
from search.spec import dump_spec
from tests.helpers import cli, tiny_spec, tree_digest

REFRESH = re.compile(r"^\[\d\d:\d\d:\d\d\] experiment ", re.M)


def _experiment(tmp_path: Path, **changes) -> Path:
    """An experiment folder as a driver leaves it mid-search: one trial one epoch in, a live
    driver's lock, no Ray state file written yet."""
    spec = tiny_spec(tmp_path, **changes)
    root = Path(spec.experiment_path)
    (root / "trial_aaa").mkdir(parents=True)
    (root / "spec.yaml").write_text(dump_spec(spec))
    (root / "trial_aaa" / "params.json").write_text(json.dumps({"dropout": 0.5}))
    (root / "trial_aaa" / "result.json").write_text(
        json.dumps(
            {
                "trial_id": "aaa",
                "epoch": 1,
                "val_accuracy": 0.25,
                "gpu_seconds": 360.0,
                "timestamp": 1,
            }
        )
        + "\n"
    )
    (root / "trial_bbb").mkdir()
    (root / "trial_bbb" / "params.json").write_text('{"dropout": 0.')  # being written
    (root / "driver.lock").write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": 0})
    )
    return root


def test_status_of_a_folder_a_live_driver_holds_shows_its_running_trial(tmp_path):
    root = _experiment(tmp_path, search__budget_gpu_hours=2)
    text = format_status(experiment_status(str(root)))
    assert f"pid {os.getpid()}" in text and "driver: running" in text
    assert re.search(r"^aaa\s+running\s+1/3\s+0\.2500\s+0\.2500\s+-\s+0\.100$", text, re.M), text
    assert "trial_bbb" not in text and "bbb" not in text  # half-written: shown next refresh
    assert "trials: 1 (running 1, complete 0, stopped 0, failed 0)" in text
    assert "best so far: trial aaa val_accuracy=0.2500 (epoch 1)" in text
    assert "GPU-hours: 0.100 of 2 budgeted" in text


def test_status_watch_refreshes_until_the_driver_lets_go(tmp_path):
    root = _experiment(tmp_path)
    shown: list[str] = []

    def sleep(seconds: float) -> None:
        assert seconds == 5
        if len(shown) == 2:
            (root / "driver.lock").unlink()  # the driver ends

    last = watch_status(str(root), 5, shown.append, sleep=sleep)
    assert len(shown) == 3 and not last.running
    assert all("driver: running" in text for text in shown[:2])
    assert "driver: none" in shown[2] and "(running 0," in shown[2]


def test_status_watch_of_a_search_still_starting_waits_for_its_spec(tmp_path):
    # The driver takes the lock first and writes spec.yaml a moment later.
    root = _experiment(tmp_path)
    spec_text = (root / "spec.yaml").read_text()
    (root / "spec.yaml").unlink()
    shown: list[str] = []

    def sleep(seconds: float) -> None:
        if len(shown) == 1:
            (root / "spec.yaml").write_text(spec_text)
        elif len(shown) == 2:
            (root / "driver.lock").unlink()

    last = watch_status(str(root), 5, shown.append, sleep=sleep)
    assert "starting (driver pid" in shown[0] and "no spec.yaml yet" in shown[0]
    assert "driver: running" in shown[1] and not last.running


def test_status_watch_of_a_folder_without_spec_or_driver_is_an_error(tmp_path):
    from search.errors import SpecError

    root = _experiment(tmp_path)
    (root / "spec.yaml").unlink()
    (root / "driver.lock").unlink()
    with pytest.raises(SpecError, match="no spec.yaml"):
        watch_status(str(root), 5, print, sleep=lambda seconds: None)


def test_status_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    root = _experiment(tmp_path)
    for argv, message in (
        (["status", str(tmp_path / "missing")], "experiment folder not found"),
        (["status", str(tmp_path / "file.txt")], "must be an experiment folder"),
        (["status", str(root), "--watch", "0"], "--watch: must be a number of seconds"),
        (["status", str(root), "--watch", "soon"], "--watch: must be a number of seconds"),
        (["status"], "the following arguments are required"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err


@pytest.mark.slow
def test_status_watch_follows_a_search_another_process_runs(tracked_search):
    watch = tracked_search.watch
    assert watch.returncode == 0, watch.stderr[-3000:]
    refreshes = REFRESH.split(watch.stdout)[1:]
    assert len(refreshes) >= 2, watch.stdout[-3000:]
    assert "driver: running" in refreshes[0]
    assert any(re.search(r"^\w+\s+running\s+\d/3", r, re.M) for r in refreshes), watch.stdout
    assert "driver: none" in refreshes[-1] and "trials: 2 (" in refreshes[-1]


@pytest.mark.slow
def test_status_after_a_search_matches_its_results_and_changes_nothing(tracked_search):
    experiment = tracked_search.experiment
    before = tree_digest(experiment)
    done = cli("status", str(experiment))
    assert done.returncode == 0, done.stderr[-3000:]
    assert tree_digest(experiment) == before
    trials = load_trials(str(experiment))
    for trial in trials:
        status = trial.status(3).value
        assert re.search(
            rf"^{trial.trial_id}\s+{status}\s+{trial.epochs_run}/3\s", done.stdout, re.M
        ), done.stdout
    assert f"best so far: trial {best_trial(trials).trial_id} " in done.stdout
    assert "GPU-hours: 0.000 no budget" in done.stdout
    assert yaml.safe_load((experiment / "spec.yaml").read_text())["name"] == "tracked"
