"""Every search method on the tabulated task, at many seeds, with a simulated clock.

Each method's own decision code (``methods.py``) proposes configurations and decides after
every epoch; the simulator trains nothing: a configuration's epochs take the seconds the table
recorded for it (its surrogate's curve, ``surrogate.py``) on one of ``W`` workers, and each
epoch reports the table's validation accuracy plus the table's noise, drawn from the seed. A
method stops when the budget is spent: device-seconds (the recorded cost, summed over
workers) by default, or trial-epochs with ``--budget-unit epochs``. Figures per method, over
the seeds:

* the incumbent's normalized regret ``(table best - incumbent) / (table best - median random
  config)`` at 10, 25, 50 and 100 % of the budget (the incumbent is the configuration and epoch
  with the best observed value; its regret is taken on the noise-free curve), the
  interquartile mean (IQM) with a bootstrap 95 % interval;
* device-seconds (and trial-epochs) until the incumbent is within 1 and 0.5 point of the
  table's best; a run that never gets there is censored at the budget and counted apart;
* the final incumbent's test accuracy;
* paired Wilcoxon signed-rank tests, ours against each method, pairing by seed (one seed is
  one noise draw of the table, shared by every method; each method's own random state is
  drawn from the seed and its name).

    python benchmarks/quality/simulate.py --json benchmarks/measured/quality-sim.json \\
        --plot benchmarks/measured/quality-anytime.png        # 100 seeds, W = 2 and 8
    python benchmarks/quality/simulate.py --quick             # 3 seeds (the test suite)
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

QUALITY_DIR = Path(__file__).resolve().parent
for _path in (QUALITY_DIR.parents[1], QUALITY_DIR.parent, QUALITY_DIR):  # run from a checkout
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from task import QUALITY, TASKS, TableTask  # noqa: E402

from benchmarks.common import jsonable, machine_info, progress  # noqa: E402

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
FRACTIONS = (0.1, 0.25, 0.5, 1.0)
OURS = "finetune_search"
PLOT_POINTS = 40


def budget_for(curves: Any, unit: str, full_trials: float, max_t: int) -> float:
    """The budget: ``full_trials`` times an average configuration's full training, in
    device-seconds or trial-epochs."""
    if unit == "epochs":
        return float(full_trials * max_t)
    return float(full_trials * curves.cost.sum(axis=1).mean())


def simulate_one(
    method_name: str,
    task: TableTask,
    objective: Any,
    seed: int,
    workers: int,
    budget: float,
    unit: str,
    budget_seconds: float | None = None,
) -> dict[str, Any]:
    """One method, one seed: the trace of its incumbent against what it spent.

    ``budget_seconds`` is the budget in device-seconds, as a method that plans by its device
    budget is told it (ours: ``search.budget_device_hours``); by default ``budget`` when the
    unit is seconds.

    Returns:
        ``trace``: one ``(device_s, trial_epochs, wall_s, incumbent_val, incumbent_test)``
        per epoch that counted; ``trials``: configurations started.
    """
    from methods import clamp_config, method_class

    if budget_seconds is None and unit == "seconds":
        budget_seconds = budget
    method = method_class(method_name)(task, seed, workers, budget_seconds=budget_seconds)
    heap: list[tuple[float, int, Any, int, Any]] = []
    sequence, now, free = 0, 0.0, workers
    spent, spent_s, spent_epochs = 0.0, 0.0, 0
    best_observed = -math.inf
    incumbent = (float("nan"), float("nan"))
    trace: list[tuple[float, int, float, float, float]] = []
    trials = 0
    try:
        while True:
            while free > 0:
                job = method.suggest()
                if job is None:
                    break
                job.config = clamp_config(task, job.config)
                val, test, cost = objective.curves(job.config)
                job.state["curves"] = (objective.observed(job.config), val, test, cost)
                trials += 1 if job.first == 1 else 0
                sequence += 1
                heapq.heappush(heap, (now + cost[job.first - 1], sequence, job, job.first))
                free -= 1
            if not heap:
                break
            now, _, job, epoch = heapq.heappop(heap)
            observed, val, test, cost = job.state["curves"]
            add = cost[epoch - 1] if unit == "seconds" else 1.0
            if spent + add > budget * (1 + 1e-9):
                break  # the budget is spent: this epoch and those in flight do not count
            spent += add
            spent_s += cost[epoch - 1]
            spent_epochs += 1
            if observed[epoch - 1] > best_observed:
                best_observed = observed[epoch - 1]
                incumbent = (float(val[epoch - 1]), float(test[epoch - 1]))
            trace.append((spent_s, spent_epochs, now, *incumbent))
            job.state["seconds"] = job.state.get("seconds", 0.0) + cost[epoch - 1]
            method.spent_fraction = spent / budget
            if method.report(job, epoch, float(observed[epoch - 1])):
                sequence += 1
                heapq.heappush(heap, (now + cost[epoch], sequence, job, epoch + 1))
            else:
                free += 1
    finally:
        method.close()
    return {"trace": trace, "trials": trials, "spent": spent}


# --------------------------------------------------------------------------------------------
# figures


def regret(value: float, best: float, median: float) -> float:
    if not math.isfinite(value):
        return 1.0  # nothing observed yet: counted as a median random configuration
    return (best - value) / (best - median)


def at_fraction(trace: Sequence[tuple], budget: float, unit: str, fraction: float) -> tuple:
    """The trace's last point within ``fraction`` of the budget (``None`` before any)."""
    column = 0 if unit == "seconds" else 1
    limit = fraction * budget * (1 + 1e-9)
    last = None
    for point in trace:
        if point[column] > limit:
            break
        last = point
    return last


def run_figures(
    run: Mapping[str, Any], best: float, median: float, budget: float, unit: str
) -> dict[str, Any]:
    """A run's regret at each fraction, its cost to within 1 and 0.5 point, its final test."""
    trace = run["trace"]
    out: dict[str, Any] = {"regret": {}, "trials": run["trials"]}
    for fraction in FRACTIONS:
        point = at_fraction(trace, budget, unit, fraction)
        out["regret"][str(fraction)] = regret(point[3] if point else float("nan"), best, median)
    for name, points in (("to_within_1pt", 0.01), ("to_within_0_5pt", 0.005)):
        reached = next((p for p in trace if p[3] >= best - points - 1e-12), None)
        out[f"seconds_{name}"] = reached[0] if reached else None  # None: censored
        out[f"epochs_{name}"] = reached[1] if reached else None
    out["test_acc"] = trace[-1][4] if trace else None
    out["curve"] = [
        regret(p[3] if p else float("nan"), best, median)
        for p in (
            at_fraction(trace, budget, unit, (i + 1) / PLOT_POINTS) for i in range(PLOT_POINTS)
        )
    ]
    return out


def iqm(values: Sequence[float]) -> float:
    from scipy.stats import trim_mean

    return float(trim_mean(np.asarray(values, float), 0.25))


def bootstrap_ci(
    values: Sequence[float], stat: Any = iqm, reps: int = 1000, seed: int = 0
) -> list[float]:
    values = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    draws = [stat(values[rng.integers(0, len(values), len(values))]) for _ in range(reps)]
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


def censored_median(values: Sequence[float | None], budget: float) -> dict[str, Any]:
    """The median of values censored at the budget (``None``): a number only when fewer than
    half are censored, else ``"> budget"``."""
    reached = sorted(v for v in values if v is not None)
    censored = len(values) - len(reached)
    ordered = reached + [math.inf] * censored
    median = ordered[(len(ordered) - 1) // 2] if ordered else math.inf
    return {
        "median": median if math.isfinite(median) else None,
        "median_censored": not math.isfinite(median),
        "censored": censored,
        "runs": len(values),
        "budget": budget,
    }


def wilcoxon_p(ours: Sequence[float], other: Sequence[float]) -> float | None:
    from scipy.stats import wilcoxon

    diff = np.asarray(ours, float) - np.asarray(other, float)
    if len(diff) < 2 or np.allclose(diff, 0):
        return 1.0
    return float(wilcoxon(diff, zero_method="zsplit").pvalue)


def summarize(
    per_method: Mapping[str, list[dict[str, Any]]], budget: float, unit: str
) -> dict[str, Any]:
    """Per method: IQM regret and interval per fraction, censored medians, test accuracy,
    Wilcoxon p against ours (on regret at each fraction, paired by seed), the anytime curve."""
    out: dict[str, Any] = {}
    ours = per_method.get(OURS)
    for name, runs in per_method.items():
        figures: dict[str, Any] = {
            "regret_iqm": {},
            "regret_ci": {},
            "regret_median": {},
            "wilcoxon_p_vs_ours": {},
            "ours_minus_method_iqm": {},
        }
        for fraction in map(str, FRACTIONS):
            values = [r["regret"][fraction] for r in runs]
            figures["regret_iqm"][fraction] = iqm(values)
            figures["regret_ci"][fraction] = bootstrap_ci(values)
            figures["regret_median"][fraction] = float(np.median(values))
            if ours is not None and name != OURS:
                mine = [r["regret"][fraction] for r in ours]
                figures["wilcoxon_p_vs_ours"][fraction] = wilcoxon_p(mine, values)
                figures["ours_minus_method_iqm"][fraction] = iqm(np.subtract(mine, values))
        for key in (
            "seconds_to_within_1pt",
            "seconds_to_within_0_5pt",
            "epochs_to_within_1pt",
            "epochs_to_within_0_5pt",
        ):
            figures[key] = censored_median([r[key] for r in runs], budget)
        tests = [r["test_acc"] for r in runs if r["test_acc"] is not None]
        figures["test_acc"] = {
            "mean": float(np.mean(tests)) if tests else None,
            "iqm": iqm(tests) if tests else None,
        }
        figures["trials_mean"] = float(np.mean([r["trials"] for r in runs]))
        curves = np.array([r["curve"] for r in runs])
        figures["anytime_iqm"] = [iqm(curves[:, i]) for i in range(curves.shape[1])]
        figures["anytime_ci"] = [
            bootstrap_ci(curves[:, i], reps=200) for i in range(curves.shape[1])
        ]
        out[name] = figures
    return out


# --------------------------------------------------------------------------------------------
# the run


_WORKER: dict[str, Any] = {}


def _init_worker(table: str, task_name: str, k: int, kind: str = "knn") -> None:
    from surrogate import make_surrogate, noise_by_epoch, read_curves

    task = TASKS[task_name]()
    curves = read_curves(Path(table), task)
    _WORKER.update(
        task=task,
        surrogate=make_surrogate(task, curves, kind, k),
        noise=noise_by_epoch(curves)["val_sd_robust"],
    )


def _job(args: tuple[str, int, int, float, str, float]) -> tuple[str, int, int, dict[str, Any]]:
    from surrogate import NoisyObjective

    name, seed, workers, budget, unit, budget_seconds = args
    objective = NoisyObjective(_WORKER["surrogate"], _WORKER["noise"], seed)
    began = time.process_time()
    run = simulate_one(
        name, _WORKER["task"], objective, seed, workers, budget, unit, budget_seconds
    )
    run["cpu_s"] = time.process_time() - began
    return name, seed, workers, run


def reference_values(task: TableTask, curves: Any) -> dict[str, float]:
    """The table's best (the best epoch of any table configuration) and the median random
    configuration's best epoch (over the Sobol configurations)."""
    from surrogate import table_curves

    table = table_curves(curves)
    best_epoch = table.val.max(axis=1)
    sobol = np.array([v for v, r in zip(best_epoch, table.roles) if r == "sobol"])
    return {
        "best": float(best_epoch.max()),
        "median": float(np.median(sobol)),
        "best_config": table.configs[int(best_epoch.argmax())],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="digits")
    parser.add_argument(
        "--table",
        type=Path,
        default=None,
        help="the Parquet table (default: the task's in benchmarks/quality/data)",
    )
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--workers", default="2,8", help="comma-separated W values")
    parser.add_argument("--methods", default=None, help="comma-separated subset")
    parser.add_argument(
        "--ablation",
        default=None,
        metavar="LEVERS",
        help="also ours with each of these levers (comma-separated, of "
        "methods.LEVERS), written under ablation.<lever>",
    )
    parser.add_argument(
        "--budget-trials",
        type=float,
        default=30.0,
        help="the budget, in full trainings of an average configuration",
    )
    parser.add_argument("--budget-unit", choices=("seconds", "epochs"), default="seconds")
    parser.add_argument("--k", type=int, default=None, help="surrogate neighbours")
    parser.add_argument(
        "--surrogate",
        choices=("knn", "forest"),
        default="forest",
        help="the surrogate between the table's points: a random forest over "
        "whole curves (the default: the better held-out check, see the "
        "data card), or k nearest neighbours",
    )
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="3 seeds, W = 2 only")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="the anytime plot (PNG)")
    args = parser.parse_args(argv)

    from build_table import table_path
    from methods import LEVERS, METHODS
    from surrogate import check_surrogate, noise_by_epoch, read_curves

    task = TASKS[args.task]()
    table = args.table or table_path(task)
    if not table.exists():
        parser.error(
            f"--table: no table at {table}; make it with benchmarks/quality/build_table.py"
        )
    names = list(METHODS) if args.methods is None else [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        parser.error(f"--methods: must be among {','.join(METHODS)}, got {','.join(unknown)}")
    levers = [] if args.ablation is None else [x.strip() for x in args.ablation.split(",")]
    unknown = [x for x in levers if x not in LEVERS]
    if unknown:
        parser.error(f"--ablation: must be among {','.join(LEVERS)}, got {','.join(unknown)}")
    names += [f"{OURS}+{lever}" for lever in levers]
    seeds = 3 if args.quick else args.seeds
    workers = [2] if args.quick else [int(w) for w in args.workers.split(",")]
    curves = read_curves(table, task)
    checks = {k: check_surrogate(task, curves, k) for k in (1, 2, 3, 5, 8)}
    k = args.k or max(checks, key=lambda kk: np.nan_to_num(checks[kk]["spearman"], nan=-1))
    used = checks[k] if args.surrogate == "knn" else check_surrogate(task, curves, k, "forest")
    ref = reference_values(task, curves)
    budget = budget_for(curves, args.budget_unit, args.budget_trials, task.max_t)
    progress(
        f"simulate: {len(curves)} runs in {table}; best {ref['best']:.4f}, median random "
        f"{ref['median']:.4f}; surrogate {args.surrogate} k={k} (holdout spearman "
        f"{used['spearman']:.3f}); budget {budget:.0f} {args.budget_unit}"
    )
    budget_seconds = budget_for(curves, "seconds", args.budget_trials, task.max_t)
    jobs = [
        (name, seed, w, budget, args.budget_unit, budget_seconds)
        for w in workers
        for seed in range(seeds)
        for name in names
    ]
    began = time.perf_counter()
    results: dict[int, dict[str, list]] = {w: {n: [None] * seeds for n in names} for w in workers}
    cpu: dict[str, float] = {n: 0.0 for n in names}
    initargs = (str(table), args.task, k, args.surrogate)
    if args.processes > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(
            args.processes, _init_worker, initargs
        ) as pool:
            for done, (name, seed, w, run) in enumerate(pool.imap_unordered(_job, jobs), 1):
                results[w][name][seed] = run
                cpu[name] += run["cpu_s"]
                if done % 50 == 0 or done == len(jobs):
                    progress(f"  {done}/{len(jobs)} runs, {time.perf_counter() - began:.0f} s")
    else:
        _init_worker(*initargs)
        for job in jobs:
            name, seed, w, run = _job(job)
            results[w][name][seed] = run
            cpu[name] += run["cpu_s"]
    elapsed = time.perf_counter() - began
    by_workers = {}
    for w in workers:
        per_method = {
            n: [
                run_figures(r, ref["best"], ref["median"], budget, args.budget_unit)
                for r in results[w][n]
            ]
            for n in names
        }
        by_workers[str(w)] = {
            "methods": summarize(per_method, budget, args.budget_unit),
            "runs": {
                n: [{k2: v for k2, v in f.items() if k2 != "curve"} for f in per_method[n]]
                for n in names
            },
        }
    for block in by_workers.values():
        block["ablation"] = {
            name.split("+", 1)[1]: block["methods"].pop(name)
            for name in list(block["methods"])
            if "+" in name
        }
    out = {
        "seeds": seeds,
        "workers": workers,
        "budget": budget,
        "budget_unit": args.budget_unit,
        "budget_trials": args.budget_trials,
        "fractions": list(FRACTIONS),
        "table": {
            "path": str(
                table.relative_to(QUALITY.parents[1])
                if table.is_relative_to(QUALITY.parents[1])
                else table
            ),
            "runs": len(curves),
            "rows": int(len(curves) * task.max_t),
        },
        "reference": ref,
        "noise": noise_by_epoch(curves),
        "surrogate": {
            "kind": args.surrogate,
            "k": k,
            "spearman": used["spearman"],
            "mae": used["mae"],
            "checks": checks,
            "used": used,
        },
        "methods": by_workers[str(workers[0])]["methods"],
        "ablation": by_workers[str(workers[0])]["ablation"],
        "by_workers": by_workers,
        "cpu_seconds_by_method": cpu,
        "elapsed_s": elapsed,
        "command": " ".join(["simulate.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(format_report(out))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(jsonable(out), indent=1) + "\n", encoding="utf-8")
        print(f"JSON: {args.json}")
    if args.plot:
        plot_anytime(out, args.plot)
        print(f"plot: {args.plot}")
    return 0


def format_report(result: Mapping[str, Any]) -> str:
    """The tables, one per W: IQM regret [95 % interval] per fraction, Wilcoxon p vs ours,
    median device-seconds to within 1 point (censored runs counted), test accuracy."""
    from render import quality_tables

    return quality_tables(result)


def plot_anytime(result: Mapping[str, Any], path: Path) -> None:
    from render import anytime_plot

    anytime_plot(result, path)


if __name__ == "__main__":
    sys.exit(main())
