"""Tables and the anytime plot of a simulation, rendered from its JSON (nothing is copied by
hand: ``python benchmarks/quality/render.py RESULT.json`` prints the Markdown the README
carries, and ``--plot`` draws the figure again)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

QUALITY_DIR = Path(__file__).resolve().parent
for _path in (QUALITY_DIR.parents[1], QUALITY_DIR.parent, QUALITY_DIR):  # run from a checkout
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

OURS = "finetune_search"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def _p(value: Any) -> str:
    if value is None:
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _to_target(cell: Mapping[str, Any]) -> str:
    if cell["median"] is None:
        return f"> budget ({cell['censored']}/{cell['runs']} censored)"
    return f"{cell['median']:.0f} ({cell['censored']}/{cell['runs']} censored)"


def methods_table(methods: Mapping[str, Any], fractions: list[float]) -> str:
    """One Markdown table: a row per method, ours first."""
    names = sorted(methods, key=lambda n: (n != OURS, n))
    head = [
        "method",
        *[f"regret IQM @{int(f * 100)}% [95% CI]" for f in fractions],
        *[f"p vs ours @{int(f * 100)}%" for f in fractions],
        "device-s to 1 pt (median)",
        "test acc",
        "trials",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        m = methods[name]
        cells = [f"`{name}`"]
        for f in map(str, fractions):
            low, high = m["regret_ci"][f]
            cells.append(f"{_fmt(m['regret_iqm'][f])} [{_fmt(low)}, {_fmt(high)}]")
        for f in map(str, fractions):
            cells.append("(ours)" if name == OURS else _p(m["wilcoxon_p_vs_ours"].get(f)))
        cells += [
            _to_target(m["seconds_to_within_1pt"]),
            _fmt(m["test_acc"]["mean"]),
            _fmt(m["trials_mean"], 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _surrogate_name(result: Mapping[str, Any]) -> str:
    # Runs made before the forest existed have no kind: they used k nearest neighbours.
    surrogate = result["surrogate"]
    return "random forest" if surrogate.get("kind") == "forest" else f"k={surrogate['k']}"


def quality_tables(result: Mapping[str, Any]) -> str:
    """Every W's table, with the run's set-up above them."""
    parts = [
        f"Simulated search quality: {result['seeds']} seeds, budget "
        f"{result['budget']:.0f} {result['budget_unit']} ({result['budget_trials']:g} "
        f"average full trainings), table {result['table']['path']} "
        f"({result['table']['runs']} runs), surrogate {_surrogate_name(result)} "
        f"(held-out Spearman {_fmt(result['surrogate']['spearman'])}, MAE "
        f"{_fmt(result['surrogate']['mae'])})"
    ]
    for workers, block in result["by_workers"].items():
        parts.append(f"\nW = {workers}\n\n" + methods_table(block["methods"], result["fractions"]))
        if block.get("ablation"):
            ablation = {
                OURS: block["methods"][OURS],
                **{f"{OURS}+{lever}": figures for lever, figures in block["ablation"].items()},
            }
            parts.append(
                f"\nW = {workers}, ablation (ours with one lever changed)\n\n"
                + methods_table(ablation, result["fractions"])
            )
    return "\n".join(parts)


def anytime_plot(result: Mapping[str, Any], path: Path) -> None:
    """Regret IQM against the budget spent, one line per method, one panel per W."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = result["by_workers"]
    fig, axes = plt.subplots(1, len(blocks), figsize=(6 * len(blocks), 4.2), squeeze=False)
    for ax, (workers, block) in zip(axes[0], blocks.items()):
        for name, m in sorted(block["methods"].items(), key=lambda kv: (kv[0] != OURS, kv[0])):
            curve = m["anytime_iqm"]
            x = [(i + 1) / len(curve) * result["budget"] for i in range(len(curve))]
            (line,) = ax.plot(x, curve, label=name, linewidth=2.5 if name == OURS else 1.2)
            if m.get("anytime_ci"):  # the bootstrap 95 % band of the IQM
                low, high = zip(*m["anytime_ci"])
                ax.fill_between(x, low, high, color=line.get_color(), alpha=0.12, linewidth=0)
        ax.set_title(f"W = {workers}, {result['seeds']} seeds")
        unit = "device-seconds" if result["budget_unit"] == "seconds" else "trial-epochs"
        ax.set_xlabel(f"{unit} spent (the budget: {result['budget']:.0f})")
        ax.set_ylabel("normalized regret (IQM)")
        ax.set_yscale("symlog", linthresh=0.05)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


README_BLOCK = "quality-sim"


def readme_block(result: Mapping[str, Any], json_path: str) -> str:
    """What the README carries between its ``quality-sim`` markers."""
    return (
        f"From `{json_path}` ({result['date'][:10]}, `{result['command']}`, "
        f"{result['elapsed_s'] / 60:.1f} min):\n\n" + quality_tables(result)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument(
        "--page",
        "--readme",
        dest="readme",
        type=Path,
        default=None,
        help="put the tables between this markdown page's markers (--block), "
        "e.g. docs/compared.md",
    )
    parser.add_argument(
        "--block",
        default=README_BLOCK,
        help="the page block's name (quality-sim, quality-ablation)",
    )
    args = parser.parse_args(argv)
    result = json.loads(args.json.read_text(encoding="utf-8"))
    print(quality_tables(result))
    if args.plot:
        anytime_plot(result, args.plot)
    if args.readme:
        from benchmarks.common import replace_block

        text = args.readme.read_text(encoding="utf-8")
        args.readme.write_text(
            replace_block(text, args.block, readme_block(result, str(args.json))), encoding="utf-8"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
