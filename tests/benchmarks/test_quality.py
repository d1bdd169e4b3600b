"""The search-quality benchmark: the table's plan and files, the surrogate, the simulator's
clock and figures, every method on a small table, and the replay of a real search."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.benchmarks.quality_table import write_synthetic_table

# --------------------------------------------------------------------------------------------
# the plan


def test_plan_holds_the_issue_s_runs_and_every_prefix_is_balanced():
    from task import BASELINE, HOLDOUT, PERTURBED, REPEAT, SOBOL, digits_task, plan

    task = digits_task()
    runs = plan(task)
    roles = Counter(p.role for p in runs)
    assert roles == {SOBOL: 405, REPEAT: 40, HOLDOUT: 40, PERTURBED: 20, BASELINE: 1}
    assert runs[0].role == BASELINE and runs[0].config == task.baseline
    assert len({(p.config_id, p.seed) for p in runs}) == len(runs)
    # Every upsample x input_convs cell gets the same share of any prefix (round-robin).
    for prefix in (45, 150, len(runs)):
        cells = Counter(
            (p.config["upsample"], p.config["input_convs"])
            for p in runs[:prefix]
            if p.role == SOBOL
        )
        assert len(cells) == 15 and max(cells.values()) - min(cells.values()) <= 1
    # A repeat is a Sobol config already trained, with the other seed.
    seen = {}
    for p in runs:
        if p.role == SOBOL:
            seen[p.config_id] = p.config
        if p.role == REPEAT:
            assert seen[p.config_id] == p.config and p.seed == 1
    # Held-out configs are not table configs.
    table = {tuple(sorted(p.config.items())) for p in runs if p.role == SOBOL}
    assert not any(tuple(sorted(p.config.items())) in table for p in runs if p.role == HOLDOUT)
    for p in runs:
        for d in task.dimensions:
            value = p.config[d.name]
            if d.kind in ("log", "linear", "int"):
                assert d.low <= value <= d.high, (p.config_id, d.name, value)
            else:
                assert value in d.values


@pytest.mark.parametrize(
    "kind,low,high,values",
    [
        ("log", 1e-4, 0.3, ()),
        ("linear", 0.0, 0.8, ()),
        ("int", 0, 2, ()),
        ("choice", 0, 1, (1, 2, 3, 4, 5)),
    ],
)
def test_dimension_unit_round_trip(kind, low, high, values):
    from task import Dimension

    d = Dimension("x", kind, low, high, values)
    for u in np.linspace(0, 0.999, 37):
        value = d.from_unit(u)
        assert d.from_unit(d.to_unit(value)) == pytest.approx(value)


# --------------------------------------------------------------------------------------------
# the table's files


def test_side_log_merges_into_parquet_and_a_cut_line_is_trained_again(tmp_path):
    from build_table import done_keys, merge, side_log, table_path
    from task import digits_task, plan

    task = digits_task(max_t=2)
    first, second = plan(task)[:2]
    run = {
        "config_id": first.config_id,
        "role": first.role,
        "seed": first.seed,
        "config": first.config,
        "epochs": [
            {
                "epoch": e,
                "val_accuracy": 0.5,
                "val_loss": 1.0,
                "loss": 1.0,
                "accuracy": 0.5,
                "test_accuracy": 0.4,
                "fit_s": 1.0,
                "test_s": 0.1,
                "load": 0.0,
            }
            for e in (1, 2)
        ],
    }
    log = side_log(task, tmp_path)
    log.write_text(
        json.dumps(run) + "\n" + json.dumps({**run, "config_id": second.config_id})[:40],
        encoding="utf-8",
    )  # the second line was cut by a kill
    assert done_keys(task, tmp_path) == {(first.config_id, 0)}
    assert merge(task, tmp_path) == 1
    assert not log.exists() and table_path(task, tmp_path).exists()
    assert done_keys(task, tmp_path) == {(first.config_id, 0)}
    # Merging again (a restart) keeps the table as it was.
    assert merge(task, tmp_path) == 1


@pytest.mark.slow
def test_build_table_trains_through_the_project_s_runtime_and_resumes(tmp_path):
    import pandas as pd
    from build_table import main

    assert main(["--max-t", "2", "--limit", "1", "--folder", str(tmp_path)]) == 0
    assert main(["--max-t", "2", "--limit", "1", "--folder", str(tmp_path)]) == 0
    table = pd.read_parquet(tmp_path / "digits-small_cnn.parquet")
    assert sorted(table["config_id"].unique()) == ["baseline", "sobol-0000"]
    assert len(table) == 4 and table["fit_s"].gt(0).all()
    assert table["val_accuracy"].between(0, 1).all() and table["test_accuracy"].between(0, 1).all()
    meta = json.loads((tmp_path / "digits-small_cnn.meta.json").read_text())
    assert len(meta["chunks"]) == 2 and meta["chunks"][0]["runs"] == 1


# --------------------------------------------------------------------------------------------
# surrogate and noise


def test_surrogate_returns_a_table_config_s_own_curve_and_measures_held_out_ones(tmp_path):
    from surrogate import Surrogate, check_surrogate, noise_by_epoch, read_curves, table_curves
    from task import digits_task

    task = digits_task()
    curves = read_curves(write_synthetic_table(tmp_path, runs=220), task)
    table = table_curves(curves)
    surrogate = Surrogate(task, table, k=3)
    for i in (0, 5, 17):
        val, test, cost = surrogate.predict(table.configs[i])
        assert val == pytest.approx(table.val[i]) and cost == pytest.approx(table.cost[i])
    check = check_surrogate(task, curves, k=3)
    assert check["holdout"] > 0 and -1 <= check["spearman"] <= 1
    noise = noise_by_epoch(curves)
    assert noise["pairs"] > 0 and all(sd >= 0 for sd in noise["val_sd"])


def test_forest_surrogate_keeps_table_curves_and_learns_which_settings_matter(tmp_path):
    from surrogate import check_surrogate, make_surrogate, read_curves, table_curves
    from task import digits_task

    task = digits_task()
    curves = read_curves(write_synthetic_table(tmp_path, runs=220), task)
    table = table_curves(curves)
    forest = make_surrogate(task, curves, "forest")
    for i in (0, 5, 17):
        val, test, cost = forest.predict(table.configs[i])
        assert val == pytest.approx(table.val[i]) and cost == pytest.approx(table.cost[i])
    # Between the table's points: a curve (val and test), and the cost the synthetic table
    # gives (0.2 upsample ** 2 + 0.1 input_convs seconds) within a factor of 2.
    config = {
        **table.configs[0],
        "upsample": 5,
        "input_convs": 0,
        "noise_std": table.configs[0]["noise_std"] * 1.01,
    }
    val, test, cost = forest.predict(config)
    assert val.shape == test.shape == cost.shape == (task.max_t,)
    assert 2.5 < float(np.median(cost)) < 10.0
    check = check_surrogate(task, curves, k=0, kind="forest")
    knn = check_surrogate(task, curves, k=3)
    assert check["kind"] == "forest" and check["holdout"] == knn["holdout"] > 0
    assert check["spearman"] > 0.5
    with pytest.raises(ValueError, match="must be knn or forest, got 'tree'"):
        make_surrogate(task, curves, "tree")


# --------------------------------------------------------------------------------------------
# the simulator's clock, on a method whose epochs arrive out of epoch order


class _Scripted:
    """A method that starts two given jobs; a fixture whose arrival order differs from the
    order of epochs (a slow first job) and whose values tie."""

    name = "scripted"

    def __init__(self, jobs):
        self.jobs = list(jobs)
        self.heard = []

    def suggest(self):
        return self.jobs.pop(0) if self.jobs else None

    def report(self, job, epoch, value):
        self.heard.append((job.key, epoch, value))
        return epoch < job.last

    def close(self):
        pass


class _Objective:
    """Curves given per config key ``k``; costs per epoch as given."""

    def __init__(self, curves):
        self.table = curves

    def curves(self, config):
        val, cost = self.table[config["k"]]
        return np.array(val), np.array(val) - 0.01, np.array(cost)

    def observed(self, config):
        return self.curves(config)[0]


def _simulate(monkeypatch, jobs, table, budget, unit="seconds", workers=2):
    import methods
    import simulate
    from task import digits_task

    scripted = _Scripted(jobs)
    monkeypatch.setitem(methods.METHODS, "scripted", lambda *a, **kw: scripted)
    monkeypatch.setattr(methods, "clamp_config", lambda task, config: config)
    run = simulate.simulate_one(
        "scripted", digits_task(3), _Objective(table), 0, workers, budget, unit
    )
    return run, scripted


def test_simulator_delivers_epochs_in_time_order_not_epoch_order(monkeypatch):
    from methods import Job

    # Job a: a slow start-up (10 s first epoch), then fast; job b: 1 s epochs.
    table = {"a": ([0.5, 0.9, 0.95], [10.0, 1.0, 1.0]), "b": ([0.6, 0.7, 0.7], [1.0, 1.0, 1.0])}
    jobs = [Job("a", {"k": "a"}, 1, 3), Job("b", {"k": "b"}, 1, 3)]
    run, scripted = _simulate(monkeypatch, jobs, table, budget=100)
    assert [(k, e) for k, e, _ in scripted.heard] == [
        ("b", 1),
        ("b", 2),
        ("b", 3),
        ("a", 1),
        ("a", 2),
        ("a", 3),
    ]
    spent = [p[0] for p in run["trace"]]
    assert spent == [1, 2, 3, 13, 14, 15]
    walls = [p[2] for p in run["trace"]]
    assert walls == sorted(walls) and walls[-1] == 12
    # b's epochs 2 and 3 tie (0.7): the incumbent stays b's epoch 2 (first seen), then a's.
    assert [p[3] for p in run["trace"]] == [0.6, 0.7, 0.7, 0.7, 0.9, 0.95]


def test_simulator_stops_at_the_budget_in_either_unit(monkeypatch):
    from methods import Job

    table = {"a": ([0.5, 0.9, 0.95], [2.0, 2.0, 2.0])}
    run, _ = _simulate(monkeypatch, [Job("a", {"k": "a"}, 1, 3)], table, budget=5, workers=1)
    assert [p[0] for p in run["trace"]] == [2, 4]  # the third epoch would pass 5 s
    run, _ = _simulate(
        monkeypatch, [Job("a", {"k": "a"}, 1, 3)], table, budget=1, unit="epochs", workers=1
    )
    assert [p[1] for p in run["trace"]] == [1]


def test_figures_regret_censoring_and_paired_tests():
    from simulate import censored_median, iqm, run_figures, wilcoxon_p

    trace = [(1.0, 1, 1.0, 0.5, 0.4), (5.0, 2, 2.0, 0.895, 0.88), (9.0, 3, 3.0, 0.9, 0.89)]
    figures = run_figures(
        {"trace": trace, "trials": 2}, best=0.9, median=0.5, budget=10, unit="seconds"
    )
    assert figures["regret"]["0.1"] == pytest.approx(1.0)
    assert figures["regret"]["0.5"] == pytest.approx(0.0125)
    assert figures["regret"]["1.0"] == pytest.approx(0.0)
    assert figures["seconds_to_within_1pt"] == 5.0 and figures["seconds_to_within_0_5pt"] == 5.0
    assert figures["test_acc"] == 0.89
    never = run_figures(
        {"trace": trace[:1], "trials": 1}, best=0.9, median=0.5, budget=10, unit="seconds"
    )
    assert never["seconds_to_within_1pt"] is None  # censored, not the budget
    assert censored_median([1.0, None, None], 10)["median_censored"] is True
    assert censored_median([1.0, 2.0, None], 10)["median"] == 2.0
    assert iqm([0, 1, 2, 3, 100, 4, 5, 6]) == pytest.approx(3.5)
    assert wilcoxon_p([0.1] * 5, [0.1] * 5) == 1.0
    assert wilcoxon_p(list(np.linspace(0, 0.1, 12)), list(np.linspace(0.5, 0.6, 12))) < 0.01


# --------------------------------------------------------------------------------------------
# every method, quick mode


@pytest.mark.slow
def test_quick_simulation_runs_every_method_and_writes_the_issue_s_keys(tmp_path):
    from methods import METHODS
    from simulate import main

    table = write_synthetic_table(tmp_path / "table", runs=200)
    out = tmp_path / "sim.json"
    assert (
        main(
            [
                "--table",
                str(table),
                "--quick",
                "--processes",
                "1",
                "--json",
                str(out),
                "--plot",
                str(tmp_path / "plot.png"),
                "--ablation",
                "tpe",
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["seeds"] == 3 and result["workers"] == [2]
    assert set(result["methods"]) == set(METHODS)
    for name, figures in result["methods"].items():
        assert set(figures["regret_iqm"]) == {"0.1", "0.25", "0.5", "1.0"}
        assert all(math.isfinite(v) for v in figures["regret_iqm"].values())
        assert len(figures["regret_ci"]["1.0"]) == 2
        assert "median" in figures["seconds_to_within_1pt"]
        assert figures["test_acc"]["mean"] is not None
        if name != "finetune_search":
            assert set(figures["wilcoxon_p_vs_ours"]) == {"0.1", "0.25", "0.5", "1.0"}
    assert result["table"]["rows"] > 0 and "spearman" in result["surrogate"]
    lever = result["ablation"]["tpe"]
    assert set(lever["regret_iqm"]) == {"0.1", "0.25", "0.5", "1.0"}
    assert set(lever["wilcoxon_p_vs_ours"]) == {"0.1", "0.25", "0.5", "1.0"}
    assert (tmp_path / "plot.png").stat().st_size > 0


# --------------------------------------------------------------------------------------------
# the replay of a real search


@pytest.mark.slow
def test_replayed_real_search_gets_the_same_suggestions_and_stops(tmp_path):
    from replay import replay

    from tests.helpers import cli, write_spec

    spec = write_spec(
        tmp_path, search={"num_samples": 8, "max_concurrent": 2, "seed": 3, "baseline": True}
    )
    done = cli("run", str(spec), "--num-cpus", "2", "--name", "replayed")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    experiment = tmp_path / "results" / "replayed"
    report = replay(experiment)
    assert report.trials == 8 and report.epochs >= 8
    assert report.stops, "ASHA stopped nothing: the replay would not check a stop"
    assert report.mismatches == []
    # Another seed suggests other configurations: the comparison can fail.
    assert any("simulated" in line for line in replay(experiment, seed=4).mismatches)


@pytest.mark.slow
def test_quick_simulation_on_the_committed_table_and_its_card(tmp_path):
    """The quick mode the README names, on the table in the repository (what CI runs)."""
    from build_table import table_path
    from card import card_figures
    from simulate import main
    from task import digits_task

    task = digits_task()
    table = table_path(task)
    assert table.exists(), "the digits table is committed with the benchmark"
    out = tmp_path / "sim.json"
    assert main(["--quick", "--processes", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["table"]["runs"] >= 40
    assert 0 < result["reference"]["median"] < result["reference"]["best"] <= 1
    figures = card_figures(task, table)
    assert figures["runs"] == result["table"]["runs"]
    assert set(figures["by_upsample"]) == {"1", "2", "3", "4", "5"}
    # The cost grows with upsample (about its square): the table's seconds say so.
    costs = [figures["by_upsample"][u]["epoch_s_median"] for u in "12345"]
    assert costs[0] < costs[2] < costs[4]


def test_the_cifar10_flag_plans_vgg16_runs_with_a_valid_spec():
    """``--task cifar10`` (a GPU machine) plans the same runs over VGG16's space and its spec
    validates here, where CIFAR-10 cannot be downloaded."""
    from task import cifar10_task, plan

    from search.spec import load_spec_dict

    task = cifar10_task()
    runs = plan(task)
    assert len(runs) == 506 and task.name == "cifar10-vgg16"
    spec = load_spec_dict({**task.raw, "name": "t", "storage": "/tmp/x"}, source="test")
    assert spec.model["backbone"] == "vgg16" and spec.max_t == 9
    assert {p.config["freeze"] for p in runs} <= {0, 4, 7, 11, 15}


def test_peer_report_renders_the_readme_tables_from_the_json():
    from benchmarks.peers.peer_report import markdown_tables, summarize

    run = {
        "best_val": 0.9,
        "test_acc": 0.88,
        "seconds_to_target": None,
        "overhead_s_per_epoch": 1.0,
    }
    result = summarize(
        {
            "finetune_search": [
                {**run, "epochs_to_target": 5},
                {**run, "best_val": 0.8, "epochs_to_target": None},
            ],
            "optuna": [{**run, "epochs_to_target": None}, {**run, "epochs_to_target": 9}],
        },
        budget=30,
    )
    text = markdown_tables({**result, "budget_trial_epochs": 30})
    assert "| `finetune_search` | 0.850 (0.900, 0.800) |" in text
    assert "5, never (1/2 reached)" in text and "never, 9 (1/2 reached)" in text
    assert "| `optuna` | best_val | -0.05 [" in text and "within noise" in text


# Where each rendered block lives: the docs page that cites the JSON it is rendered from.
RESULT_BLOCKS = {
    "quality-sim": "docs/compared.md",
    "quality-ablation": "docs/compared.md",
    "peers-real": "docs/compared.md",
}


@pytest.mark.parametrize("block", sorted(RESULT_BLOCKS))
def test_page_tables_are_the_ones_their_json_renders(block):
    """A number on the results pages cannot drift from the JSON it cites: the block between
    the markers is what render.py / peer_report.py make of that JSON."""
    import re

    from render import quality_tables

    from benchmarks.peers.peer_report import markdown_tables

    repo = Path(__file__).resolve().parents[2]
    page = (repo / RESULT_BLOCKS[block]).read_text(encoding="utf-8")
    inside = page.split(f"<!-- {block}: begin -->")[1].split(f"<!-- {block}: end -->")[0]
    cited = re.search(r"From `([^`]+\.json)`", inside)
    assert cited, f"the {block} block of {RESULT_BLOCKS[block]} names no JSON"
    result = json.loads((repo / cited.group(1)).read_text(encoding="utf-8"))
    tables = markdown_tables(result) if block == "peers-real" else quality_tables(result)
    assert tables.strip() in inside


def test_no_other_page_holds_a_result_block():
    """Each block lives in one place, the page the render scripts write (the README too)."""
    repo = Path(__file__).resolve().parents[2]
    for path in [repo / "README.md", *sorted((repo / "docs").rglob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for block, home in RESULT_BLOCKS.items():
            if str(path.relative_to(repo)) != home:
                assert f"<!-- {block}: begin -->" not in text, (path, block)
