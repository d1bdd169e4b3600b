"""Which experiment folders a search never started in (its driver killed while it started):
``run`` takes those over and ``resume`` starts them; any other folder is left alone."""

from __future__ import annotations

import json

from search.outputs.experiment import clear_for_start, never_started


def test_a_folder_with_only_a_drivers_start_files_never_started(tmp_path):
    (tmp_path / "driver.lock").write_text("{}")
    assert never_started(str(tmp_path))
    for name in ("spec.yaml", "run_id", "class_names.json", "tuner.pkl"):
        (tmp_path / name).write_text("x")
    journal = tmp_path / "optuna_study.journal"
    journal.write_text(json.dumps({"op_code": 4, "trial_id": 0}) + "\n")  # suggested only
    assert never_started(str(tmp_path))
    assert sorted(clear_for_start(str(tmp_path), keep=("driver.lock",))) == [
        "class_names.json",
        "optuna_study.journal",
        "run_id",
        "spec.yaml",
        "tuner.pkl",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["driver.lock"]


def test_a_folder_whose_search_started_or_that_is_not_ours_is_not_taken(tmp_path):
    started = tmp_path / "state"
    started.mkdir()
    (started / "spec.yaml").write_text("x")
    (started / "experiment_state-2026.json").write_text("{}")
    assert not never_started(str(started))
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "spec.yaml").write_text("x")
    (trained / "optuna_study.journal").write_text(
        json.dumps({"op_code": 7, "trial_id": 0, "step": 1, "intermediate_value": 0.5}) + "\n"
    )
    assert not never_started(str(trained))
    trial = tmp_path / "trial"
    (trial / "trial_abc").mkdir(parents=True)
    (trial / "spec.yaml").write_text("x")
    assert not never_started(str(trial))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert not never_started(str(foreign))
    (foreign / "driver.lock").write_text("{}")
    assert not never_started(str(foreign))
