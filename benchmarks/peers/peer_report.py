"""The figures of ``peers.py``: each run's within the budget, the paired comparison of ours
with each peer over seeds, and the tables that print them."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script from a checkout

from benchmarks.common import (  # noqa: E402
    TOLERANCE,
    Column,
    finite,
    format_table,
    mean,
    trial_epochs_to_within,
)
from benchmarks.peers.peer_task import MethodRun  # noqa: E402
from search.outputs.study import METRIC  # noqa: E402

OURS = "finetune_search"


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
    # The harness's own test evaluations (peers evaluate inside their run) are no one's cost.
    test_s = sum(float(r.get("test_s", 0.0) or 0.0) for r in run.rows)
    return {
        "best_val": best_row[METRIC] if best_row else float("nan"),
        "best_trial": best_row["trial"] if best_row else None,
        "best_epoch": best_row["epoch"] if best_row else None,
        "test_acc": run.test_of(best_row) if best_row else None,
        "trial_epochs": len(counted),
        "trial_epochs_run": run_epochs,
        "trials": len({r["trial"] for r in counted}),
        "wall_s": run.wall_s,
        "concurrency": run.concurrency,
        "wall_s_per_epoch": run.wall_s / run_epochs if run_epochs else float("nan"),
        "trial_s_per_epoch": trial_s / run_epochs if run_epochs else float("nan"),
        # Slot-seconds per trial-epoch not spent in the trials' own training (every method's
        # epochs timed alike, from a Keras callback's epoch begin to its end): imports,
        # builds, start-up, scheduling, checkpoints, idle slots, process launches.
        "overhead_s_per_epoch": (run.concurrency * run.wall_s - trial_s - test_s) / run_epochs
        if run_epochs
        else float("nan"),
    }


def to_target(
    rows: Sequence[Mapping[str, Any]], budget: int, target: float
) -> tuple[int | None, float | None]:
    """Trial-epochs and seconds until a counted row came within 1 point of ``target``."""
    counted = list(rows[:budget])  # in arrival order, as a MethodRun keeps them
    spent = trial_epochs_to_within(counted, target, TOLERANCE)
    return spent, (None if spent is None else float(counted[spent - 1]["t"]))


# --------------------------------------------------------------------------------------------
# statistics


def t_quantile(dof: int) -> float:
    """Student's t 0.975 quantile (a two-sided 95% interval) for ``dof`` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.975, dof))


def paired(
    ours: Sequence[float], peer: Sequence[float], higher_is_better: bool = True
) -> dict[str, Any]:
    """Ours - peer paired by seed: the mean, its 95% t interval, and whether that is noise.

    Args:
        ours: Our figure per seed.
        peer: The peer's figure for the same seeds.
        higher_is_better: Whether a higher figure is the better one (accuracy) or a lower
            one (epochs to the target, cost).

    Returns:
        ``diff`` (mean), ``low``/``high`` (the interval; NaN below 2 seeds), ``ratio``
        (mean ours / mean peer), ``verdict`` (``ours better``, ``peer better`` or
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
    if n >= 2 and (low > 0 or high < 0):
        verdict = "ours better" if (low > 0) == higher_is_better else "peer better"
    else:
        verdict = "within noise"
    return {"diff": average, "low": low, "high": high, "ratio": ratio, "n": n, "verdict": verdict}


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
                "test_acc": paired(
                    [v if v is not None else math.nan for v in ours["test_acc"]],
                    [v if v is not None else math.nan for v in peer["test_acc"]],
                ),
                "epochs_to_target": paired(
                    ours["epochs_to_target_censored"],
                    peer["epochs_to_target_censored"],
                    higher_is_better=False,
                ),
                "overhead_s_per_epoch": paired(
                    ours["overhead_s_per_epoch_by_seed"],
                    peer["overhead_s_per_epoch_by_seed"],
                    higher_is_better=False,
                ),
            }
    return {"methods": methods, "comparisons": comparisons}


# --------------------------------------------------------------------------------------------
# tables


def _spread(values: Sequence[Any]) -> dict[str, float]:
    vals = [v for v in values if finite(v)]
    if not vals:
        return {"mean": float("nan"), "sd": float("nan"), "min": float("nan"), "max": float("nan")}
    average = mean(vals)
    sd = (
        math.sqrt(sum((v - average) ** 2 for v in vals) / (len(vals) - 1))
        if len(vals) > 1
        else float("nan")
    )
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
        best_rows.append(
            {
                "method": name,
                **_spread(m["best_val"]),
                "seeds": _per_seed(m["best_val"], ".3f"),
                "epochs": mean([r["trial_epochs"] for r in runs]),
                "trials": mean([r["trials"] for r in runs]),
            }
        )
        test_rows.append(
            {"method": name, **_spread(m["test_acc"]), "seeds": _per_seed(m["test_acc"], ".3f")}
        )
        reached = [e for e in m["epochs_to_target"] if e is not None]
        target_rows.append(
            {
                "method": name,
                "censored": mean(m["epochs_to_target_censored"]),
                "reached": f"{len(reached)}/{len(runs)}",
                "seeds": _per_seed(m["epochs_to_target"], "d"),
                "seconds": mean([s for s in m["seconds_to_target"] if s is not None]),
            }
        )
        cost_rows.append(
            {
                "method": name,
                "concurrency": runs[0]["concurrency"],
                "wall": mean([r["wall_s"] for r in runs]),
                "run": mean([r["trial_epochs_run"] for r in runs]),
                "wall_epoch": mean([r["wall_s_per_epoch"] for r in runs]),
                "trial_epoch": mean([r["trial_s_per_epoch"] for r in runs]),
                "overhead": m["overhead_s_per_epoch"],
            }
        )
    lightest = min(
        (r["overhead"] for r in cost_rows if finite(r["overhead"])), default=float("nan")
    )
    for row in cost_rows:
        row["vs_lightest"] = row["overhead"] / lightest if lightest and lightest > 0 else None
    stats = [
        Column("mean", "mean", ".4f"),
        Column("sd", "sd", ".4f"),
        Column("min", "min", ".4f"),
        Column("max", "max", ".4f"),
        Column("seeds", "per seed"),
    ]
    out = [
        format_table(
            f"1. Best val_accuracy within the budget ({budget} trial-epochs)",
            [
                Column("method", "method"),
                *stats,
                Column("epochs", "trial-epochs counted", ".1f"),
                Column("trials", "trials", ".1f"),
            ],
            best_rows,
        ),
        "",
        format_table(
            "2. Test accuracy of each method's best config (the model as the method "
            "trained it, at its best epoch)",
            [Column("method", "method"), *stats],
            test_rows,
        ),
        "",
        format_table(
            "3. Trial-epochs until within 1 point of the best any method found (same seed)",
            [
                Column("method", "method"),
                Column("censored", "mean (never = budget)", ".1f"),
                Column("reached", "reached"),
                Column("seeds", "per seed"),
                Column("seconds", "wall s (reached)", ".1f"),
            ],
            target_rows,
        ),
        "",
        format_table(
            "4. Framework cost per trial-epoch: concurrency x wall - the trials' own "
            "training seconds, over all trial-epochs run",
            [
                Column("method", "method"),
                Column("concurrency", "trials at once"),
                Column("wall", "wall s", ".1f"),
                Column("run", "trial-epochs run", ".1f"),
                Column("wall_epoch", "wall s/epoch", ".2f"),
                Column("trial_epoch", "trial s/epoch", ".2f"),
                Column("overhead", "cost slot-s/epoch", ".2f"),
                Column("vs_lightest", "x lightest", ".2f"),
            ],
            cost_rows,
        ),
    ]
    compare_rows = []
    for name, figures in result["comparisons"].items():
        for figure, stat in figures.items():
            compare_rows.append(
                {
                    "peer": name,
                    "figure": figure,
                    **stat,
                    "interval": "-"
                    if not finite(stat["low"])
                    else f"[{stat['low']:+.3g}, {stat['high']:+.3g}]",
                }
            )
    if compare_rows:
        out += [
            "",
            format_table(
                f"5. {OURS} against each peer, paired by seed: "
                "ours - peer (mean, 95% t interval), "
                "ours / peer (means)",
                [
                    Column("peer", "peer"),
                    Column("figure", "figure"),
                    Column("diff", "ours - peer", "+.4g"),
                    Column("interval", "95% interval"),
                    Column("ratio", "ours / peer", ".3f"),
                    Column("verdict", "verdict"),
                ],
                compare_rows,
            ),
            "best_val/test_acc: higher is better; epochs_to_target/overhead: lower is better "
            "(the verdict names the better side). "
            "'within noise': the interval holds 0 (or fewer than 2 seeds).",
        ]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# the README's tables, rendered from a run's JSON


def _cell(values: Sequence[Any], fmt: str) -> str:
    shown = ", ".join("-" if v is None or not finite(v) else format(v, fmt) for v in values)
    good = [v for v in values if finite(v)]
    return f"{mean(good):{fmt}} ({shown})" if good else "-"


def markdown_tables(result: Mapping[str, Any]) -> str:
    """The README's two tables of a ``peers.py`` JSON: per method, and ours against each
    peer paired by seed. ``python benchmarks/peers/peer_report.py RESULT.json`` prints them."""
    budget = result["budget_trial_epochs"]
    lines = [
        "| method | best val_accuracy, mean (per seed) | test accuracy at that epoch, mean "
        f"(per seed) | trial-epochs to within 1 point of the seed's best (never: censored "
        f"at {budget}) | framework cost, slot-s per trial-epoch |",
        "|---|---|---|---|---|",
    ]
    for name, m in result["methods"].items():
        reached = [e for e in m["epochs_to_target"] if e is not None]
        to_target = (
            ", ".join("never" if e is None else str(e) for e in m["epochs_to_target"])
            + f" ({len(reached)}/{len(m['epochs_to_target'])} reached)"
        )
        lines.append(
            f"| `{name}` | {_cell(m['best_val'], '.3f')} | "
            f"{_cell(m['test_acc'], '.3f')} | {to_target} | "
            f"{_cell(m['overhead_s_per_epoch_by_seed'], '.2f')} |"
        )
    lines += [
        "",
        "| ours against | figure | ours - peer, mean [95% t interval] | verdict |",
        "|---|---|---|---|",
    ]
    for name, figures in result.get("comparisons", {}).items():
        for figure, stat in figures.items():
            interval = (
                "-" if not finite(stat["low"]) else f"[{stat['low']:+.3g}, {stat['high']:+.3g}]"
            )
            lines.append(
                f"| `{name}` | {figure} | {stat['diff']:+.3g} {interval} | {stat['verdict']} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import json
    from pathlib import Path

    from benchmarks.common import replace_block

    parser = argparse.ArgumentParser(description="The result tables of a peers.py JSON.")
    parser.add_argument("json", type=Path)
    parser.add_argument(
        "--page",
        "--readme",
        dest="readme",
        type=Path,
        default=None,
        help="put the tables between this markdown page's peers-real markers, "
        "e.g. docs/compared.md",
    )
    args = parser.parse_args(argv)
    result = json.loads(args.json.read_text(encoding="utf-8"))
    tables = markdown_tables(result)
    print(tables)
    if args.readme:
        seeds = ", ".join(str(s) for s in result["seeds"])
        block = (
            f"From `{args.json}` ({result['date'][:10]}, size {result['size']}: `max_t` "
            f"{result['max_t']}, {result['budget_trial_epochs']} trial-epochs, seeds "
            f"{seeds}, {result['concurrency']} trials at once, "
            f"{result['total_seconds'] / 60:.0f} min):\n\n{tables}"
        )
        text = args.readme.read_text(encoding="utf-8")
        args.readme.write_text(replace_block(text, "peers-real", block), encoding="utf-8")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
