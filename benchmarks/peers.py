"""The same search by finetune-search and by its peers: Ray Tune + stock Optuna, Optuna alone,
Keras Tuner, Syne Tune, and random search without early stopping (the floor).

Every method searches the same space with the same fixed settings, data split, ``max_t``,
concurrency (where it has one) and budget in trial-epochs, and trains through the project's
own model building and data (see ``peer_methods.py``), so only the search differs. Printed,
one table per figure: the best validation accuracy within the budget (over seeds); the test
accuracy of each method's best config as the method trained it; trial-epochs and wall time
until each method first came within 1 point of the best any method found with that seed;
the framework's cost per trial-epoch (slot-seconds not spent in the trials' own training);
and, for each peer, ours / peer and ours - peer paired by seed with a 95% interval.

    pip install -e ".[bench]"
    python benchmarks/peers.py --reduced --json /tmp/peers-reduced.json   # ~15 min, 2 cores
    python benchmarks/peers.py --json /tmp/peers.json                     # ~2 h, 2 cores
    python benchmarks/peers.py --cifar --json /tmp/peers-cifar.json       # VGG16 on a GPU

Experiment folders and logs go to a temporary folder (``--workdir`` keeps them). Progress goes
to stderr, tables to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))  # run from a checkout, uninstalled
sys.path.insert(0, str(BENCHMARKS))

# common first: it sets TensorFlow's and Ray's environment before anything imports them.
from common import (  # noqa: E402
    FULL,
    REDUCED,
    TOLERANCE,
    Column,
    Context,
    finite,
    format_pairs,
    format_table,
    gpu_names,
    jsonable,
    load_average,
    machine_info,
    mean,
    progress,
    trial_epochs_to_within,
)
from peer_methods import METHODS, VARIANTS, MethodRun, Task  # noqa: E402

from search.driver.study import METRIC  # noqa: E402

OURS = "finetune_search"
PEER_PACKAGES = ("keras-tuner", "syne-tune")


def space(upsample: list[int], freeze: list[int], noise: tuple[float, float],
          learning_rate: tuple[float, float], dropout: tuple[float, float]) -> dict[str, Any]:
    """The searched settings, in the spec's vocabulary (every peer can express them)."""
    return {"noise_std": {"loguniform": list(noise)}, "upsample": {"choice": upsample},
            "input_convs": {"int": [0, 2]}, "freeze": {"choice": freeze},
            "learning_rate": {"loguniform": list(learning_rate)},
            "dropout": {"uniform": list(dropout)}}


def digits_task(max_t: int, budget: int, concurrency: int,
                train_images: int | None = None) -> Task:
    """small_cnn on scikit-learn's digits (CPU). ``freeze`` 3/5 freeze the first one/two
    conv blocks of small_cnn (random weights: a real, usually harmful, choice)."""
    dataset: dict[str, Any] = {"name": "digits", "val_fraction": 0.2, "seed": 0}
    if train_images is not None:
        dataset["subset"] = train_images
    return Task(raw={
        "dataset": dataset,
        "model": {"backbone": "small_cnn", "weights": "none", "dense_units": 64,
                  "pooling": "flatten"},
        "train": {"epochs": max_t, "batch_size": 32, "optimizer": "sgd", "momentum": 0.9},
        "space": space([1, 2], [0, 3, 5], (0.001, 0.3), (1e-4, 0.3), (0.0, 0.8)),
        "search": {"max_concurrent": concurrency, "algorithm": "tpe", "baseline": False},
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 3},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": "auto"},
    }, budget=budget, concurrency=concurrency)


def cifar_task(max_t: int, budget: int, concurrency: int) -> Task:
    """VGG16 (ImageNet weights where Keras has them, else random) on CIFAR-10, one GPU per
    trial: the README's method, on 10,000 training images so a comparison fits in hours."""
    return Task(raw={
        "dataset": {"name": "cifar10", "val_fraction": 0.1, "seed": 0, "subset": 10000},
        "model": {"backbone": "vgg16", "weights": "auto", "pooling": "flatten"},
        "train": {"epochs": max_t, "batch_size": 64, "optimizer": "sgd", "momentum": 0.9},
        "space": space([1, 2, 3, 4, 5], [0, 4, 7, 11, 15], (0.001, 0.1), (1e-4, 0.05),
                       (0.3, 0.8)),
        "search": {"max_concurrent": concurrency, "algorithm": "tpe", "baseline": False},
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 3},
        "resources": {"cpus_per_trial": 4, "gpus_per_trial": 1},
    }, budget=budget, concurrency=concurrency)


@dataclass(frozen=True)
class Size:
    """One comparison's sizes. ``budget`` is a whole number of Keras Tuner Hyperband
    iterations (11 trial-epochs at ``max_t`` 3, 75 at 9), so Keras Tuner spends exactly it.
    ``--json`` is written after every seed (``complete`` false until the last)."""

    name: str
    max_t: int
    budget: int
    seeds: tuple[int, ...]
    variants: bool
    train_images: int | None = None  # dataset.subset (None: all)


SIZES = {
    "full": Size("full", max_t=9, budget=150, seeds=(0, 1, 2), variants=True),
    # 500 of the digits' training images: the same task at about half the epoch time.
    "reduced": Size("reduced", max_t=3, budget=22, seeds=(0, 1), variants=False,
                    train_images=500),
}


# --------------------------------------------------------------------------------------------
# figures of one run, of one seed, of one method


def run_figures(run: MethodRun, budget: int) -> dict[str, Any]:
    """Best within the budget, its test accuracy, spend and framework cost of one run.

    Args:
        run: What the method did.
        budget: Trial-epochs counted (the first ``budget`` in arrival order).

    Returns:
        ``best_val``, ``test_acc``, ``trial_epochs`` (counted), ``trial_epochs_run``, ``trials``,
        ``wall_s``, ``wall_s_per_epoch``, ``trial_s_per_epoch``, ``overhead_s_per_epoch``.
    """
    counted = run.rows[:budget]
    good = [r for r in counted if not r.get("trial_failed") and finite(r.get(METRIC))]
    best_row = max(good, key=lambda r: r[METRIC]) if good else None  # the first of ties
    run_epochs = len(run.rows)
    trial_s = sum(float(r.get("fit_s", 0.0)) for r in run.rows)
    return {
        "best_val": best_row[METRIC] if best_row else float("nan"),
        "test_acc": run.test_of(best_row) if best_row else None,
        "trial_epochs": len(counted), "trial_epochs_run": run_epochs,
        "trials": len({r["trial"] for r in counted}),
        "wall_s": run.wall_s, "concurrency": run.concurrency,
        "wall_s_per_epoch": run.wall_s / run_epochs if run_epochs else float("nan"),
        "trial_s_per_epoch": trial_s / run_epochs if run_epochs else float("nan"),
        # Slot-seconds per trial-epoch not spent in the trials' own training: start-up,
        # scheduling, checkpoints, idle slots, process launches.
        "overhead_s_per_epoch": (run.concurrency * run.wall_s - trial_s) / run_epochs
        if run_epochs else float("nan"),
    }


def to_target(rows: Sequence[Mapping[str, Any]], budget: int,
              target: float) -> tuple[int | None, float | None]:
    """Trial-epochs and seconds until a counted row came within 1 point of ``target``."""
    counted = list(rows[:budget])
    # The rows are in arrival order already; arrival_key keeps that order for rows without
    # Ray's timestamps.
    spent = trial_epochs_to_within(counted, target, TOLERANCE)
    return spent, (None if spent is None else float(counted[spent - 1]["t"]))


# --------------------------------------------------------------------------------------------
# statistics


def t_quantile(dof: int) -> float:
    """Student's t 0.975 quantile (a two-sided 95% interval) for ``dof`` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.975, dof))


def paired(ours: Sequence[float], peer: Sequence[float]) -> dict[str, Any]:
    """Ours - peer paired by seed: the mean, its 95% t interval, and whether that is noise.

    Args:
        ours: Our figure per seed.
        peer: The peer's figure for the same seeds.

    Returns:
        ``diff`` (mean), ``low``/``high`` (the interval; NaN below 2 seeds), ``ratio``
        (mean ours / mean peer), ``verdict`` (``ours higher``, ``peer higher`` or
        ``within noise``: the interval holds 0, or fewer than 2 seeds).
    """
    diffs = [a - b for a, b in zip(ours, peer) if finite(a) and finite(b)]
    n = len(diffs)
    average = mean(diffs)
    if n >= 2:
        sd = math.sqrt(sum((d - average) ** 2 for d in diffs) / (n - 1))
        half = t_quantile(n - 1) * sd / math.sqrt(n)
        low, high = average - half, average + half
    else:
        low = high = float("nan")
    peer_mean = mean([b for b in peer if finite(b)])
    ratio = mean([a for a in ours if finite(a)]) / peer_mean if peer_mean else float("nan")
    if n >= 2 and low > 0:
        verdict = "ours higher"
    elif n >= 2 and high < 0:
        verdict = "peer higher"
    else:
        verdict = "within noise"
    return {"diff": average, "low": low, "high": high, "ratio": ratio, "n": n,
            "verdict": verdict}


def summarize(runs: Mapping[str, list[dict[str, Any]]], budget: int) -> dict[str, Any]:
    """Per method: the lists over seeds and their means; per peer: the paired comparison."""
    methods: dict[str, Any] = {}
    for name, seeds in runs.items():
        reached = [s["epochs_to_target"] for s in seeds]
        # Never reached within the budget: counted as the whole budget, a lower bound.
        censored = [budget if e is None else e for e in reached]
        methods[name] = {
            "best_val": [s["best_val"] for s in seeds],
            "test_acc": [s["test_acc"] for s in seeds],
            "epochs_to_target": reached,
            "epochs_to_target_censored": censored,
            "seconds_to_target": [s["seconds_to_target"] for s in seeds],
            "overhead_s_per_epoch": mean([s["overhead_s_per_epoch"] for s in seeds]),
            "overhead_s_per_epoch_by_seed": [s["overhead_s_per_epoch"] for s in seeds],
            "runs": seeds,
        }
    comparisons = {}
    if OURS in methods:
        ours = methods[OURS]
        for name, peer in methods.items():
            if name == OURS:
                continue
            comparisons[name] = {
                "best_val": paired(ours["best_val"], peer["best_val"]),
                "test_acc": paired([v if v is not None else math.nan for v in ours["test_acc"]],
                                   [v if v is not None else math.nan for v in peer["test_acc"]]),
                "epochs_to_target": paired(ours["epochs_to_target_censored"],
                                           peer["epochs_to_target_censored"]),
                "overhead_s_per_epoch": paired(ours["overhead_s_per_epoch_by_seed"],
                                               peer["overhead_s_per_epoch_by_seed"]),
            }
    return {"methods": methods, "comparisons": comparisons}


# --------------------------------------------------------------------------------------------
# tables


def _spread(values: Sequence[Any]) -> dict[str, float]:
    vals = [v for v in values if finite(v)]
    if not vals:
        return {"mean": float("nan"), "sd": float("nan"), "min": float("nan"),
                "max": float("nan")}
    average = mean(vals)
    sd = math.sqrt(sum((v - average) ** 2 for v in vals) / (len(vals) - 1)) if len(
        vals) > 1 else float("nan")
    return {"mean": average, "sd": sd, "min": min(vals), "max": max(vals)}


def _per_seed(values: Sequence[Any], fmt: str) -> str:
    return " ".join("-" if v is None or not finite(v) else format(v, fmt) for v in values)


def print_tables(result: Mapping[str, Any]) -> str:
    """One table per figure, then the paired comparisons of ours with each peer."""
    methods, budget = result["methods"], result["budget_trial_epochs"]
    names = list(methods)
    best_rows, test_rows, target_rows, cost_rows = [], [], [], []
    for name in names:
        m = methods[name]
        runs = m["runs"]
        best_rows.append({"method": name, **_spread(m["best_val"]),
                          "seeds": _per_seed(m["best_val"], ".3f"),
                          "epochs": mean([r["trial_epochs"] for r in runs]),
                          "trials": mean([r["trials"] for r in runs])})
        test_rows.append({"method": name, **_spread(m["test_acc"]),
                          "seeds": _per_seed(m["test_acc"], ".3f")})
        reached = [e for e in m["epochs_to_target"] if e is not None]
        target_rows.append({
            "method": name, "censored": mean(m["epochs_to_target_censored"]),
            "reached": f"{len(reached)}/{len(runs)}",
            "seeds": _per_seed(m["epochs_to_target"], "d"),
            "seconds": mean([s for s in m["seconds_to_target"] if s is not None])})
        cost_rows.append({
            "method": name, "concurrency": runs[0]["concurrency"],
            "wall": mean([r["wall_s"] for r in runs]),
            "run": mean([r["trial_epochs_run"] for r in runs]),
            "wall_epoch": mean([r["wall_s_per_epoch"] for r in runs]),
            "trial_epoch": mean([r["trial_s_per_epoch"] for r in runs]),
            "overhead": m["overhead_s_per_epoch"]})
    lightest = min((r["overhead"] for r in cost_rows if finite(r["overhead"])),
                   default=float("nan"))
    for row in cost_rows:
        row["vs_lightest"] = row["overhead"] / lightest if lightest and lightest > 0 else None
    stats = [Column("mean", "mean", ".4f"), Column("sd", "sd", ".4f"),
             Column("min", "min", ".4f"), Column("max", "max", ".4f"),
             Column("seeds", "per seed")]
    out = [
        format_table(f"1. Best val_accuracy within the budget ({budget} trial-epochs)",
                     [Column("method", "method"), *stats,
                      Column("epochs", "trial-epochs counted", ".1f"),
                      Column("trials", "trials", ".1f")], best_rows),
        "",
        format_table("2. Test accuracy of each method's best config (the model as the method "
                     "trained it, at its best epoch)", [Column("method", "method"), *stats],
                     test_rows),
        "",
        format_table("3. Trial-epochs until within 1 point of the best any method found "
                     "(same seed)",
                     [Column("method", "method"),
                      Column("censored", "mean (never = budget)", ".1f"),
                      Column("reached", "reached"), Column("seeds", "per seed"),
                      Column("seconds", "wall s (reached)", ".1f")], target_rows),
        "",
        format_table("4. Framework cost per trial-epoch: concurrency x wall - the trials' own "
                     "training seconds, over all trial-epochs run",
                     [Column("method", "method"), Column("concurrency", "trials at once"),
                      Column("wall", "wall s", ".1f"), Column("run", "trial-epochs run", ".1f"),
                      Column("wall_epoch", "wall s/epoch", ".2f"),
                      Column("trial_epoch", "trial s/epoch", ".2f"),
                      Column("overhead", "cost slot-s/epoch", ".2f"),
                      Column("vs_lightest", "x lightest", ".2f")], cost_rows),
    ]
    compare_rows = []
    for name, figures in result["comparisons"].items():
        for figure, stat in figures.items():
            compare_rows.append({"peer": name, "figure": figure, **stat,
                                 "interval": "-" if not finite(stat["low"]) else
                                 f"[{stat['low']:+.3g}, {stat['high']:+.3g}]"})
    if compare_rows:
        out += ["", format_table(
            f"5. {OURS} against each peer, paired by seed: ours - peer (mean, 95% t interval), "
            "ours / peer (means)",
            [Column("peer", "peer"), Column("figure", "figure"),
             Column("diff", "ours - peer", "+.4g"), Column("interval", "95% interval"),
             Column("ratio", "ours / peer", ".3f"), Column("verdict", "verdict")],
            compare_rows),
            "best_val/test_acc: higher is better; epochs_to_target/overhead: lower is better. "
            "'within noise': the interval holds 0 (or fewer than 2 seeds)."]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# the run


def run_comparison(task: Task, seeds: Sequence[int], names: Sequence[str], workdir: Path,
                   ctx: Context,
                   after_seed: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Runs every method for every seed and computes the figures.

    Args:
        task: The search every method runs.
        seeds: The seeds (each seeds the search and the training).
        names: Keys of ``METHODS`` or ``VARIANTS``.
        workdir: Where experiment folders and logs go.
        ctx: The benchmark context (CPUs for each local Ray).
        after_seed: Called with the results so far after every seed (a long run keeps what
            it measured).

    Returns:
        ``methods``, ``comparisons``, ``budget_trial_epochs``, ``seeds``.
    """
    runners = {**METHODS, **VARIANTS}
    per_seed: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for seed in seeds:
        runs: dict[str, MethodRun] = {}
        figures: dict[str, dict[str, Any]] = {}
        for name in names:
            progress(f"peers: {name} seed {seed} (budget {task.budget} trial-epochs, max_t "
                     f"{task.max_t}, load {load_average()})")
            run = runners[name](task, seed, workdir / f"{name}-seed{seed}", ctx)
            if not run.rows:
                raise RuntimeError(f"{name} seed {seed}: no epoch was trained (see the logs in "
                                   f"{workdir / f'{name}-seed{seed}'})")
            runs[name], figures[name] = run, run_figures(run, task.budget)
            progress(f"peers: {name} seed {seed}: best {figures[name]['best_val']:.4f} in "
                     f"{figures[name]['trial_epochs']} trial-epochs, {run.wall_s:.0f} s")
        best_any = max((f["best_val"] for f in figures.values() if finite(f["best_val"])),
                       default=float("nan"))
        for name in names:
            epochs, seconds = to_target(runs[name].rows, task.budget, best_any)
            per_seed[name].append({"seed": seed, **figures[name], "best_any": best_any,
                                   "epochs_to_target": epochs, "seconds_to_target": seconds})
        if after_seed is not None:
            done = list(seeds[:seeds.index(seed) + 1])
            after_seed({**summarize(per_seed, task.budget), "budget_trial_epochs": task.budget,
                        "seeds": done})
    return {**summarize(per_seed, task.budget), "budget_trial_epochs": task.budget,
            "seeds": list(seeds)}


def check_peers_installed() -> None:
    """The peers come with the ``bench`` extra; say how to get them, not a traceback."""
    from importlib import metadata

    missing = []
    for package in PEER_PACKAGES:
        try:
            metadata.version(package)
        except metadata.PackageNotFoundError:
            missing.append(package)
    if missing:
        raise SystemExit(f"peers.py: {', '.join(missing)} not installed; run "
                         f"pip install -e \".[bench]\"")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reduced", action="store_true",
                        help="2 seeds, max_t 3, 22 trial-epochs, 500 training images: "
                             "~15 min on 2 idle CPU cores")
    parser.add_argument("--cifar", action="store_true",
                        help="VGG16 on CIFAR-10, one GPU per trial (a GPU machine)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--seeds", type=int, default=None, metavar="N",
                        help="seeds 0..N-1 instead of the size's")
    parser.add_argument("--methods", default=None,
                        help="comma-separated subset of " + ",".join([*METHODS, *VARIANTS]))
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1,
                        help="CPUs for each local Ray (default: all)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep experiment folders and logs here (default: a temp folder)")
    return parser


def choose_methods(text: str | None, size: Size) -> list[str]:
    """The methods to run, ours first (``--methods``, or the six plus the size's variants)."""
    known = [*METHODS, *VARIANTS]
    if text is None:
        return [*METHODS, *(VARIANTS if size.variants else [])]
    chosen = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in known]
    if unknown or not chosen:
        raise SystemExit(f"--methods: must be a comma-separated subset of {','.join(known)}, "
                         f"got {text!r}")
    return [m for m in known if m in chosen]


def main(argv: list[str] | None = None) -> int:
    """Runs the comparison, prints its tables and writes the JSON report."""
    args = build_parser().parse_args(argv)
    check_peers_installed()
    size = SIZES["reduced" if args.reduced else "full"]
    names = choose_methods(args.methods, size)
    seeds = tuple(range(args.seeds)) if args.seeds else size.seeds
    if args.cifar:
        concurrency = max(1, len(gpu_names()))
        task = cifar_task(size.max_t, size.budget, concurrency)
    else:
        task = digits_task(size.max_t, size.budget, concurrency=min(2, args.num_cpus),
                           train_images=size.train_images)
    keep = args.workdir is not None
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="peers-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(mode=REDUCED if args.reduced else FULL, workdir=workdir,
                  num_cpus=args.num_cpus)
    machine = machine_info(*PEER_PACKAGES)
    print(format_pairs(f"finetune-search vs peers ({size.name}, "
                       f"{'cifar10/vgg16' if args.cifar else 'digits/small_cnn'})",
                       [*machine.items(), ("date", time.strftime("%Y-%m-%d")),
                        ("seeds", list(seeds)), ("budget trial-epochs", task.budget),
                        ("max_t", task.max_t), ("concurrency", task.concurrency)]), flush=True)
    began = time.perf_counter()

    def finish(result: dict[str, Any], complete: bool) -> dict[str, Any]:
        result.update({"size": size.name, "task": dict(task.raw), "max_t": task.max_t,
                       "concurrency": task.concurrency, "machine": machine,
                       "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "complete": complete,
                       "total_seconds": time.perf_counter() - began})
        variants = {n: result["methods"].pop(n) for n in list(result["methods"])
                    if n in VARIANTS}
        if variants:
            result["variants"] = variants
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(jsonable(result), indent=2) + "\n",
                                 encoding="utf-8")
        return {**result, "methods": {**result["methods"], **variants}}

    def after_seed(partial: dict[str, Any]) -> None:
        if len(partial["seeds"]) < len(seeds):  # the last seed's tables come below
            shown = finish(partial, complete=False)
            print(f"\n(after seeds {shown['seeds']})\n{print_tables(shown)}", flush=True)

    try:
        result = finish(run_comparison(task, seeds, names, workdir, ctx, after_seed),
                        complete=True)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n(all seeds {result['seeds']})\n{print_tables(result)}")
    print(f"\ntotal {result['total_seconds'] / 60:.1f} min")
    if args.json:
        print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
