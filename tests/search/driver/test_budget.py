"""The device budget on a real local Ray: it counts each trial's whole time holding its
devices, stops running trials at their next epoch boundary, starts no new ones, and carries
over to ``extend``."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from optuna.trial import TrialState

from search.driver.service import extend_search, run_search
from search.errors import SpecError
from search.outputs.export import export_experiment
from search.outputs.report import write_report
from search.outputs.results import load_trials
from tests.helpers import study_trials, tiny_spec

pytestmark = pytest.mark.slow

CONCURRENT = 2


def increments(trial) -> list[float]:
    """Device-seconds each report added (the first one includes the trial's set-up)."""
    held = [0.0] + [r["wall_seconds"] for r in trial.history]
    return [after - before for before, after in zip(held, held[1:])]


def spent(trials) -> float:
    return sum(t.wall_seconds for t in trials)


def assert_within_budget(trials, budget_s: float) -> None:
    """spent <= budget + one epoch (report) per concurrent trial."""
    largest = sorted((max(increments(t)) for t in trials if t.history), reverse=True)
    assert spent(trials) <= budget_s + sum(largest[:CONCURRENT]), (spent(trials), budget_s)


def set_budget(experiment: str, hours: float) -> None:
    """What a user does to give a finished search more time: edit its spec.yaml."""
    path = os.path.join(experiment, "spec.yaml")
    with open(path) as handle:
        raw = yaml.safe_load(handle)
    raw["search"]["budget_device_hours"] = hours
    with open(path, "w") as handle:
        yaml.safe_dump(raw, handle)


def test_device_budget_spent_mid_search_and_mid_extend_stops_trials_at_epoch_end(
    tmp_path, ray_local
):
    budget_s = 1.0  # spent by the first report of the first trials
    spec = tiny_spec(
        tmp_path,
        name="budget",
        train__epochs=3,
        scheduler={"name": "fifo"},
        search={
            "num_samples": 4,
            "max_concurrent": CONCURRENT,
            "seed": 0,
            "baseline": False,
            "budget_device_hours": budget_s / 3600,
        },
    )
    summary = run_search(spec)
    first = load_trials(summary.experiment_dir)
    # Running trials stopped at their epoch boundary with their results; none started after.
    assert 1 <= len(first) <= CONCURRENT
    for trial in first:
        assert trial.epochs_run == 1 and trial.status(3).value == "stopped"
        assert trial.stop_reason(3) == "budget"
    assert_within_budget(first, budget_s)
    study = study_trials(tmp_path / "results" / "budget")
    assert {study[t.trial_id].state for t in first} == {TrialState.PRUNED}
    assert {study[t.trial_id].user_attrs["ended_by"] for t in first} == {"budget"}

    # The total is read back from the experiment: nothing left, so extend refuses.
    with pytest.raises(
        SpecError,
        match=r"search\.budget_device_hours: the experiment has "
        r"spent .* so no trial could start",
    ):
        extend_search(summary.experiment_dir, 2)

    # Room for about half a trial-epoch more: the extend's trials stop at their first epoch
    # boundary and the experiment's total stays within the budget plus one epoch per slot.
    room = min(increments(t)[0] for t in first) / 2
    total_s = spent(first) + room
    set_budget(summary.experiment_dir, total_s / 3600)
    extend_search(summary.experiment_dir, 3)
    trials = load_trials(summary.experiment_dir)
    added = [t for t in trials if t.round == "extend-1"]
    assert 1 <= len(added) <= CONCURRENT
    assert all(t.stop_reason(3) == "budget" and t.epochs_run == 1 for t in added)
    assert_within_budget(trials, total_s)

    # The reason reaches the export tables and the report.
    export = export_experiment(summary.experiment_dir, str(tmp_path / "out"), with_model=False)
    rows = pq.read_table(os.path.join(export.out_dir, "trials.parquet")).to_pylist()
    assert {r["stop_reason"] for r in rows} == {"budget"}
    page = Path(write_report(summary.experiment_dir, str(tmp_path / "report"))).read_text()
    assert f"Budget:</b> {total_s / 3600:g} device-hours; {len(trials)} trial(s)" in page
