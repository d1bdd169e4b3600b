"""The table's data card, rendered from the table itself (never written by hand):

    python benchmarks/quality/card.py            # writes data/<table>.card.md and prints it

What the table is, how it was made (the commands, versions and machine of its chunks, from
``<table>.meta.json``), how many runs of each kind it holds, the noise its repeated runs
measure, the cost per ``upsample``, and how well an early epoch ranks configurations: the
Spearman correlation of epoch 1, 3 and 5 validation accuracy with the last epoch's, per
``upsample`` and overall (what multi-fidelity methods bet on).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

QUALITY_DIR = Path(__file__).resolve().parent
for _path in (QUALITY_DIR.parents[1], QUALITY_DIR.parent, QUALITY_DIR):  # run from a checkout
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
from build_table import table_path  # noqa: E402
from surrogate import (  # noqa: E402
    check_surrogate,
    noise_by_epoch,
    read_curves,
    spearman,
    table_curves,
)
from task import TASKS, TableTask, plan  # noqa: E402

EARLY_EPOCHS = (1, 3, 5)


def card_figures(task: TableTask, table: Path) -> dict[str, Any]:
    """The card's numbers, as data (the tests read them)."""
    curves = read_curves(table, task)
    planned = Counter(p.role for p in plan(task))
    have = Counter(curves.roles)
    seed0 = table_curves(curves)
    last = seed0.val[:, -1]
    upsample = np.array([c["upsample"] for c in seed0.configs])
    by_upsample: dict[str, Any] = {}
    for value in sorted(set(upsample.tolist())):
        mask = upsample == value
        by_upsample[str(value)] = {
            "configs": int(mask.sum()),
            "epoch_s_median": float(np.median(seed0.cost[mask].mean(axis=1))),
            "final_val_median": float(np.median(last[mask])),
            **{
                f"spearman_epoch{e}": spearman(seed0.val[mask, e - 1], last[mask])
                for e in EARLY_EPOCHS
                if e <= task.max_t
            },
        }
    overall = {
        f"spearman_epoch{e}": spearman(seed0.val[:, e - 1], last)
        for e in EARLY_EPOCHS
        if e <= task.max_t
    }
    checks = {f"k-NN, k={k}": check_surrogate(task, curves, k) for k in (1, 3, 5)}
    checks["random forest"] = check_surrogate(task, curves, 0, "forest")
    best = int(seed0.val.max(axis=1).argmax())
    return {
        "table": str(table.name),
        "runs": len(curves),
        "planned": dict(planned),
        "have": dict(have),
        "max_t": task.max_t,
        "noise": noise_by_epoch(curves),
        "by_upsample": by_upsample,
        "overall": overall,
        "surrogate": checks,
        "best": {
            "config_id": seed0.config_ids[best],
            "config": seed0.configs[best],
            "val": float(seed0.val[best].max()),
        },
        "chance_runs": int((last <= 0.15).sum()),
    }


def render(task: TableTask, figures: dict[str, Any], meta: dict[str, Any]) -> str:
    chunks = meta.get("chunks", [])
    machine = chunks[-1]["machine"] if chunks else {}
    kinds = ", ".join(
        f"{kind} {figures['have'].get(kind, 0)}/{count}"
        for kind, count in figures["planned"].items()
    )
    versions = ", ".join(
        f"{k} {machine[k]}"
        for k in ("python", "tensorflow", "keras", "ray", "optuna")
        if k in machine
    )
    lines = [
        f"# Data card: {task.name}",
        "",
        "Rendered from the table by `python benchmarks/quality/card.py`; do not edit.",
        "",
        "**What**: learning curves of the shipped search space (`noise_std` log, `upsample` "
        "1-5, `input_convs` 0-2, `freeze`, `learning_rate` log, `dropout`) on the CPU proxy "
        "of the peers run (scikit-learn's digits upscaled to 32x32, `small_cnn`, 500 training "
        f"images, the peers' split), each configuration trained to epoch {task.max_t} with one "
        "`fit` call per epoch through the project's own set-up (`search.trial.runtime`). Per "
        "epoch: `val_accuracy`, `val_loss`, `loss`, `accuracy`, `test_accuracy`, `fit_s` (the "
        "epoch's training and validation seconds: the cost), `test_s`, `load` (the machine's "
        "1-minute load average then).",
        "",
        "**How made**: a scrambled Sobol sequence stratified over `upsample` x `input_convs` "
        "(the same count in each of the 15 cells), the seed article's configuration and "
        "perturbations of it, configurations trained again with seed 1 (the noise) and "
        "held-out configurations (the surrogate's check), interleaved so any prefix is "
        f"balanced. Generated in {len(chunks)} chunks (`benchmarks/quality/build_table.py`; "
        "commands, times and machine in the `.meta.json` beside the table).",
        "",
        f"- runs in the table: {figures['runs']} of {sum(figures['planned'].values())} "
        f"planned ({kinds})",
        f"- best table configuration: `{figures['best']['config_id']}` val "
        f"{figures['best']['val']:.4f} ({json.dumps(figures['best']['config'])})",
        f"- runs still at chance (final val <= 0.15): {figures['chance_runs']}",
        f"- machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores; {versions}",
        "",
        "**Noise** (runs trained twice, seeds 0 and 1: sd of one run = sd(diff)/sqrt 2), "
        f"{figures['noise']['pairs']} pairs:",
        "",
        "| epoch | " + " | ".join(str(e + 1) for e in range(task.max_t)) + " |",
        "|---|" + "---|" * task.max_t,
        "| val sd | " + " | ".join(f"{v:.3f}" for v in figures["noise"]["val_sd"]) + " |",
        "| val sd, robust (the simulator's) | "
        + " | ".join(f"{v:.3f}" for v in figures["noise"]["val_sd_robust"])
        + " |",
        "| test sd | " + " | ".join(f"{v:.3f}" for v in figures["noise"]["test_sd"]) + " |",
        "",
        "**Cost and early ranking per `upsample`** (Spearman of epoch-e val accuracy with the "
        "last epoch's, over the table's seed-0 configurations):",
        "",
        "| upsample | configs | epoch s (median) | final val (median) | "
        + " | ".join(f"Spearman e{e}" for e in EARLY_EPOCHS)
        + " |",
        "|---|---|---|---|" + "---|" * len(EARLY_EPOCHS),
    ]
    for value, row in figures["by_upsample"].items():
        lines.append(
            f"| {value} | {row['configs']} | {row['epoch_s_median']:.2f} | "
            f"{row['final_val_median']:.3f} | "
            + " | ".join(
                f"{row.get(f'spearman_epoch{e}', float('nan')):.2f}" for e in EARLY_EPOCHS
            )
            + " |"
        )
    lines.append(
        "| all | "
        + str(sum(r["configs"] for r in figures["by_upsample"].values()))
        + " | | | "
        + " | ".join(f"{figures['overall'][f'spearman_epoch{e}']:.2f}" for e in EARLY_EPOCHS)
        + " |"
    )
    lines += [
        "",
        "**Surrogate** (k nearest table configurations with inverse-distance weights, "
        "or a random forest over whole curves; `simulate.py --surrogate`), on the "
        "held-out configurations trained for real:",
        "",
        "| surrogate | held out | Spearman (final val) | MAE (final val) | "
        "Spearman (best epoch) |",
        "|---|---|---|---|---|",
    ]
    for name, check in figures["surrogate"].items():
        lines.append(
            f"| {name} | {check['holdout']} | {check['spearman']:.3f} | "
            f"{check['mae']:.3f} | {check['spearman_best_epoch']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="digits")
    parser.add_argument("--folder", type=Path, default=QUALITY_DIR / "data")
    args = parser.parse_args(argv)
    task = TASKS[args.task]()
    table = table_path(task, args.folder)
    if not table.exists():
        parser.error(f"--folder: no table at {table}; make it with build_table.py")
    meta_path = args.folder / f"{task.name}.meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    text = render(task, card_figures(task, table), meta)
    (args.folder / f"{task.name}.card.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
