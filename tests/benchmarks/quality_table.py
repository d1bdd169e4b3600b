"""A tabulated-task table made without training, in the real Parquet format, for the
simulator's tests: the plan's first configurations with synthetic learning curves (the scale
benchmark's simulated accuracy) and a cost that grows with ``upsample`` squared."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
for path in (BENCHMARKS / "quality", BENCHMARKS):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def write_synthetic_table(folder: Path, runs: int = 160, max_t: int = 9) -> Path:
    """Writes ``<table>.parquet`` for the digits task's first ``runs`` planned runs."""
    import pandas as pd
    from build_table import runs_to_rows, table_path
    from task import digits_task, plan

    from benchmarks.scale.scale_sim import simulated_accuracy

    task = digits_task(max_t)
    records = []
    for planned in plan(task)[:runs]:
        config = dict(planned.config)
        epochs = []
        for epoch in range(1, max_t + 1):
            value = simulated_accuracy(config, epoch, seed=planned.seed)
            epochs.append(
                {
                    "epoch": epoch,
                    "val_accuracy": value,
                    "val_loss": 1 - value,
                    "loss": 1 - value,
                    "accuracy": value,
                    "test_accuracy": max(0.0, value - 0.01),
                    "fit_s": 0.2 * config["upsample"] ** 2 + 0.1 * config["input_convs"],
                    "test_s": 0.01,
                    "load": 0.0,
                }
            )
        records.append(
            {
                "config_id": planned.config_id,
                "role": planned.role,
                "seed": planned.seed,
                "config": config,
                "epochs": epochs,
            }
        )
    folder.mkdir(parents=True, exist_ok=True)
    path = table_path(task, folder)
    pd.DataFrame(runs_to_rows(records, [d.name for d in task.dimensions])).to_parquet(path)
    return path
