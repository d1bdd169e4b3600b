"""benchmarks/peers/peers.py: the figures and statistics on hand-made rows, and every method run
for real on a tiny budget (1 seed, a few trials of 2 epochs, 150 digits) so the comparison
cannot silently rot when a peer changes its API."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.peers.peer_methods import METHODS, VARIANTS
from benchmarks.peers.peer_report import paired, run_figures, summarize, to_target
from benchmarks.peers.peer_task import MethodRun, asha_trials, hyperband_iteration_epochs
from benchmarks.peers.peers import digits_task


def _row(trial, epoch, value, t, fit_s=1.0, test=None):
    return {
        "trial": trial,
        "epoch": epoch,
        "val_accuracy": value,
        "t": t,
        "fit_s": fit_s,
        "test_accuracy": test,
    }


def test_figures_count_only_the_budget_in_arrival_order():
    rows = [
        _row("a", 1, 0.50, 1.0, test=0.45),
        _row("b", 1, 0.70, 2.0, test=0.66),
        _row("a", 2, 0.70, 3.0, test=0.71),
        _row("b", 2, 0.95, 4.0, test=0.9),
    ]
    run = MethodRun(rows, wall_s=10.0, began=0.0, concurrency=2)
    figures = run_figures(run, budget=3)
    assert figures["best_val"] == pytest.approx(0.70)
    assert figures["test_acc"] == pytest.approx(0.66)  # the first row that reached the best
    assert (figures["trial_epochs"], figures["trial_epochs_run"], figures["trials"]) == (3, 4, 2)
    # 2 slots x 10 s - 4 s the trials trained, over the 4 trial-epochs run.
    assert figures["overhead_s_per_epoch"] == pytest.approx(4.0)
    assert to_target(rows, 3, target=0.705) == (2, 2.0)
    assert to_target(rows, 3, target=0.95) == (None, None)


def test_paired_difference_has_a_t_interval_and_says_when_it_is_noise():
    clear = paired([0.9, 0.91, 0.92], [0.8, 0.8, 0.81])
    assert clear["diff"] == pytest.approx(0.1066667, abs=1e-6)
    # sd of (0.1, 0.11, 0.11) = 0.005774; t(0.975, 2) = 4.303.
    assert clear["high"] - clear["diff"] == pytest.approx(
        4.303 * 0.005774 / math.sqrt(3), rel=1e-3
    )
    assert clear["verdict"] == "ours better"
    assert clear["ratio"] == pytest.approx(0.91 / 0.80333, rel=1e-4)
    assert paired([0.9, 0.8], [0.85, 0.86])["verdict"] == "within noise"
    assert paired([10, 12], [20, 21])["verdict"] == "peer better"
    assert paired([0.9], [0.8])["verdict"] == "within noise"  # one seed says nothing
    # Epochs to the target, cost: lower is better, and the verdict says so.
    assert paired([10, 12], [20, 21], higher_is_better=False)["verdict"] == "ours better"
    assert paired([30, 31], [20, 21], higher_is_better=False)["verdict"] == "peer better"


def test_to_target_counts_in_arrival_order_when_it_differs_from_epoch_order():
    # Arrival: a1, a2 (the target), b1, c1 -- epoch order would put a2 last.
    rows = [
        _row("a", 1, 0.50, 1.0),
        _row("a", 2, 0.90, 2.0),
        _row("b", 1, 0.60, 3.0),
        _row("c", 1, 0.70, 4.0),
    ]
    assert to_target(rows, budget=4, target=0.9) == (2, 2.0)


def test_framework_cost_counts_a_slow_start_up_not_as_training_and_leaves_out_test_time():
    from benchmarks.peers.peer_methods import _ray_rows

    class Trial:
        trial_id, config = "t1", {"upsample": 1}
        # A 30 s start-up (import, build) before epoch 1's 2 s: Ray's wall_seconds counts
        # from the attempt's start, the trial's epoch_seconds from the epoch's.
        history = [
            {
                "epoch": 2,
                "val_accuracy": 0.8,
                "wall_seconds": 34.0,
                "epoch_seconds": 2.0,
                "timestamp": 134,
                "attempt_started_at": 100.0,
                "time_total_s": 34.0,
            },
            {
                "epoch": 1,
                "val_accuracy": 0.6,
                "wall_seconds": 32.0,
                "epoch_seconds": 2.0,
                "timestamp": 132,
                "attempt_started_at": 100.0,
                "time_total_s": 32.0,
            },
        ]

    rows = _ray_rows([Trial()], began=100.0)
    assert [(r["epoch"], r["fit_s"]) for r in rows] == [(1, 2.0), (2, 2.0)]
    assert rows[0]["config"] == {"upsample": 1} and "config" not in rows[1]
    ours = run_figures(MethodRun(rows, wall_s=34.0, began=100.0, concurrency=1), budget=2)
    assert ours["overhead_s_per_epoch"] == pytest.approx((34.0 - 4.0) / 2)
    # A peer that spends 5 s on the harness's test evaluations: not its cost.
    peer_rows = [
        {**_row("p", 1, 0.6, 1.0, fit_s=2.0), "test_s": 5.0},
        {**_row("p", 2, 0.8, 2.0, fit_s=2.0), "test_s": 0.0},
    ]
    peer = run_figures(MethodRun(peer_rows, wall_s=39.0, began=0.0, concurrency=1), budget=2)
    assert peer["overhead_s_per_epoch"] == pytest.approx((39.0 - 4.0 - 5.0) / 2)


def test_summary_censors_a_target_never_reached_at_the_budget():
    run = {
        "best_val": 0.9,
        "test_acc": 0.88,
        "seconds_to_target": None,
        "overhead_s_per_epoch": 1.0,
    }
    result = summarize(
        {
            "finetune_search": [{**run, "epochs_to_target": 5}, {**run, "epochs_to_target": 7}],
            "optuna": [{**run, "epochs_to_target": None}, {**run, "epochs_to_target": 9}],
        },
        budget=30,
    )
    assert result["methods"]["optuna"]["epochs_to_target"] == [None, 9]
    assert result["methods"]["optuna"]["epochs_to_target_censored"] == [30, 9]
    assert result["comparisons"]["optuna"]["epochs_to_target"]["diff"] == pytest.approx(-13.5)


def test_budget_arithmetic_of_hyperband_and_asha():
    # Keras Tuner's Hyperband at max_epochs 9, factor 3: brackets of 9x1+3x2+1x6, 5x3+2x6, 3x9.
    assert hyperband_iteration_epochs(9, 3) == 75
    assert hyperband_iteration_epochs(3, 3) == 11
    assert hyperband_iteration_epochs(2, 3) == 4
    # ASHA at rungs 1, 3, 9 trains 1 + 2/3 + 6/9 epochs per trial on average.
    task = digits_task(max_t=9, budget=150, concurrency=2)
    assert asha_trials(task, margin=1.0) == math.ceil(150 / (1 + 2 / 3 + 6 / 9))


TINY_BUDGET = 4

# One method on the tiny task, in a fresh process: each method starts (and stops) its own Ray,
# TensorFlow or worker processes, and nothing of that may leak into the next test.
RUN_ONE_METHOD = """
import json, sys
from benchmarks.common import REDUCED, Context
from benchmarks.peers.peer_methods import METHODS, VARIANTS
from benchmarks.peers.peer_report import run_figures
from benchmarks.peers.peer_task import Task
from benchmarks.peers.peers import digits_task
from pathlib import Path

name, workdir, budget = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
task = digits_task(max_t=2, budget=budget, concurrency=2)
raw = json.loads(json.dumps(task.raw))
raw["dataset"].update(subset=150, val_fraction=0.25)
task = Task(raw=raw, budget=budget, concurrency=2)
run = {**METHODS, **VARIANTS}[name](task, 0, workdir / name, Context(REDUCED, workdir, 2))
figures = run_figures(run, budget)
rows = [{k: r[k] for k in ("epoch", "val_accuracy", "fit_s", "t")} for r in run.rows]
print("RESULT " + json.dumps({"figures": figures, "rows": rows}, default=float))
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", [*METHODS, *VARIANTS])
def test_every_method_searches_the_tiny_task(name, tmp_path):
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", RUN_ONE_METHOD, name, str(tmp_path), str(TINY_BUDGET)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, (done.stdout + done.stderr)[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    figures, rows = result["figures"], result["rows"]
    max_t = 2
    assert all(1 <= r["epoch"] <= max_t for r in rows)
    assert all(0.0 <= r["val_accuracy"] <= 1.0 and r["fit_s"] > 0 for r in rows)
    assert [r["t"] for r in rows] == sorted(r["t"] for r in rows)
    assert figures["trial_epochs"] == TINY_BUDGET  # every method spends at least the budget
    assert 0.0 <= figures["test_acc"] <= 1.0
    assert figures["overhead_s_per_epoch"] > 0
    if name == "keras_tuner":  # one whole Hyperband iteration, as Keras Tuner counts it
        assert figures["trial_epochs_run"] == hyperband_iteration_epochs(2, 3)
    if name in ("random_fifo", "keras_tuner_bayesian"):  # no early stopping
        assert figures["trial_epochs_run"] == 2 * math.ceil(TINY_BUDGET / 2)


def test_resume_runs_only_the_seeds_the_report_lacks_and_refuses_another_comparison(
    tmp_path, monkeypatch
):
    from benchmarks.common import REDUCED, Context
    from benchmarks.peers import peers

    ran = []

    def fake(task, seed, workdir, ctx):
        ran.append(seed)
        value = 0.5 + seed / 10
        return MethodRun(
            [_row("a", 1, value, 1.0, test=value), _row("a", 2, value, 2.0)],
            wall_s=3.0,
            began=0.0,
            concurrency=1,
        )

    monkeypatch.setattr(peers, "METHODS", {"finetune_search": fake, "optuna": fake})
    task = digits_task(2, budget=2, concurrency=1, train_images=50)
    ctx = Context(REDUCED, tmp_path, 1)
    names = ["finetune_search", "optuna"]
    first = peers.run_comparison(task, (0, 1), names, tmp_path, ctx)
    report = tmp_path / "peers.json"
    report.write_text(json.dumps({**first, "size": "reduced", "task": dict(task.raw)}))
    ran.clear()
    done = peers.resumed_runs(report, "reduced", task, names)
    again = peers.run_comparison(task, (0, 1, 2), names, tmp_path, ctx, done=done)
    assert ran == [2, 2]  # seeds 0 and 1 kept from the report, seed 2 run by both methods
    assert again["seeds"] == [0, 1, 2]
    assert again["methods"]["optuna"]["best_val"] == pytest.approx([0.5, 0.6, 0.7])
    assert peers.resumed_runs(tmp_path / "new.json", "reduced", task, names) == {}
    with pytest.raises(SystemExit, match="another comparison"):
        peers.resumed_runs(report, "full", task, names)
    with pytest.raises(SystemExit, match="holds the methods finetune_search,optuna"):
        peers.resumed_runs(report, "reduced", task, ["finetune_search"])
    with pytest.raises(SystemExit, match="needs --json"):
        peers.resumed_runs(None, "reduced", task, names)
