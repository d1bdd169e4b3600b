"""Tabulates the task's learning curves: every planned configuration trained to ``max_t``.

Each run trains through the project's own set-up (``search.trial.runtime``: seeds, model,
pipelines; the peers' trial code) on the peers' data split, one ``fit`` call per epoch, and
records per epoch: ``val_accuracy``, ``val_loss``, ``loss``, ``accuracy``, ``test_accuracy`` and
``fit_s``, the epoch's training and validation seconds (the cost a trial pays for the epoch;
the test evaluation is timed apart in ``test_s`` and is not part of it).

Generation is resumable and chunked: runs are appended to a side log as they finish (a killed
run loses only the configuration in progress), and every ``--chunk`` runs the side log is
merged into the Parquet table (written to a temporary file, then renamed). A new invocation
skips what the table and the side log hold. The plan is interleaved (see ``task.plan``), so a
table cut short is still balanced.

    python benchmarks/quality/build_table.py                     # digits/small_cnn, all runs
    python benchmarks/quality/build_table.py --limit 100         # the next 100 runs, then stop
    python benchmarks/quality/build_table.py --task cifar10      # VGG16 on CIFAR-10 (a GPU)

Writes ``benchmarks/quality/data/<table>.parquet`` and ``<table>.meta.json`` (the command,
versions and machine of every chunk).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

QUALITY_DIR = Path(__file__).resolve().parent
for _path in (QUALITY_DIR.parents[1], QUALITY_DIR.parent, QUALITY_DIR):  # run from a checkout
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from task import QUALITY, TASKS, Planned, TableTask, plan  # noqa: E402

from benchmarks.common import jsonable, load_average, machine_info, progress  # noqa: E402

DATA = QUALITY / "data"
COLUMNS = (
    "config_id",
    "role",
    "seed",
    "epoch",
    "val_accuracy",
    "val_loss",
    "loss",
    "accuracy",
    "test_accuracy",
    "fit_s",
    "test_s",
    "load",
)


def table_path(task: TableTask, folder: Path = DATA) -> Path:
    return folder / f"{task.name}.parquet"


def side_log(task: TableTask, folder: Path = DATA) -> Path:
    return folder / f"{task.name}.partial.jsonl"


def read_side_log(path: Path) -> list[dict[str, Any]]:
    """Runs appended so far (a line cut short by a kill is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def runs_to_rows(runs: Iterable[Mapping[str, Any]], dimensions: Iterable[str]) -> list[dict]:
    """One row per (run, epoch), the config's settings as columns."""
    rows = []
    for run in runs:
        for epoch in run["epochs"]:
            rows.append(
                {
                    "config_id": run["config_id"],
                    "role": run["role"],
                    "seed": run["seed"],
                    **{d: run["config"][d] for d in dimensions},
                    **{k: epoch[k] for k in COLUMNS[3:] if k in epoch},
                }
            )
    return rows


def read_table(path: Path) -> Any:
    """The table as a pandas DataFrame (empty with no file)."""
    import pandas as pd

    if not path.exists():
        return pd.DataFrame()
    return pd.read_parquet(path)


def merge(task: TableTask, folder: Path = DATA) -> int:
    """Moves the side log's runs into the Parquet table; returns the table's run count."""
    import pandas as pd

    path, log = table_path(task, folder), side_log(task, folder)
    old = read_table(path)
    new = pd.DataFrame(runs_to_rows(read_side_log(log), [d.name for d in task.dimensions]))
    table = pd.concat([old, new], ignore_index=True) if len(new) else old
    if len(table):
        table = (
            table.drop_duplicates(["config_id", "seed", "epoch"], keep="last")
            .sort_values(["config_id", "seed", "epoch"])
            .reset_index(drop=True)
        )
        tmp = path.with_suffix(".parquet.tmp")
        table.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    log.unlink(missing_ok=True)
    return 0 if not len(table) else int(table.groupby(["config_id", "seed"]).ngroups)


def done_keys(task: TableTask, folder: Path = DATA) -> set[tuple[str, int]]:
    """``(config_id, seed)`` of every run the table or the side log holds in full."""
    table = read_table(table_path(task, folder))
    keys = set()
    if len(table):
        counts = table.groupby(["config_id", "seed"])["epoch"].nunique()
        keys |= {(c, int(s)) for (c, s), n in counts.items() if n >= task.max_t}
    keys |= {(r["config_id"], int(r["seed"])) for r in read_side_log(side_log(task, folder))}
    return keys


def train_run(task: TableTask, planned: Planned, data: Any) -> dict[str, Any]:
    """Trains one planned configuration to ``max_t``; returns its per-epoch record."""
    from benchmarks.peers.peer_task import peer_gpus
    from benchmarks.peers.peer_trial import build, evaluate_test
    from search.spec import load_spec_dict

    raw = {
        **task.raw,
        "name": "table",
        "storage": "/tmp/unused",
        "train": {**task.raw["train"], "seed": planned.seed},
    }
    spec = load_spec_dict(dict(raw), source="benchmarks/quality")
    params = {**spec.fixed_config(), **planned.config, "gpus_per_trial": peer_gpus(spec)}
    model, train_ds, val_ds = build(params, data)
    epochs = []
    for epoch in range(1, task.max_t + 1):
        began = time.perf_counter()
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            initial_epoch=epoch - 1,
            epochs=epoch,
            verbose=0,
            shuffle=False,
        )
        fit_s = time.perf_counter() - began
        began = time.perf_counter()
        test_accuracy = evaluate_test(model, data)
        test_s = time.perf_counter() - began
        logs = {k: float(v[-1]) for k, v in history.history.items()}
        epochs.append(
            {
                "epoch": epoch,
                "val_accuracy": logs.get("val_accuracy"),
                "val_loss": logs.get("val_loss"),
                "loss": logs.get("loss"),
                "accuracy": logs.get("accuracy"),
                "test_accuracy": test_accuracy,
                "fit_s": fit_s,
                "test_s": test_s,
                "load": load_average(),
            }
        )
    return {
        "config_id": planned.config_id,
        "role": planned.role,
        "seed": planned.seed,
        "config": dict(planned.config),
        "epochs": epochs,
    }


def record_chunk(task: TableTask, meta: dict[str, Any], folder: Path = DATA) -> None:
    path = folder / f"{task.name}.meta.json"
    old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"chunks": []}
    old["task"] = {
        "name": task.name,
        "raw": task.raw,
        "baseline": task.baseline,
        "max_t": task.max_t,
        "per_cell": task.per_cell,
        "perturbations": task.perturbations,
        "repeats": task.repeats,
        "holdout": task.holdout,
    }
    old["chunks"].append(meta)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(jsonable(old), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="digits")
    parser.add_argument("--max-t", type=int, default=9)
    parser.add_argument("--limit", type=int, default=None, help="stop after this many runs")
    parser.add_argument(
        "--chunk", type=int, default=10, help="merge into the Parquet table every this many runs"
    )
    parser.add_argument("--folder", type=Path, default=DATA)
    args = parser.parse_args(argv)
    if args.max_t < 1:
        parser.error(f"--max-t: must be >= 1, got {args.max_t}")
    task = TASKS[args.task](args.max_t)
    args.folder.mkdir(parents=True, exist_ok=True)
    merge(task, args.folder)  # a side log a killed run left
    done = done_keys(task, args.folder)
    todo = [p for p in plan(task) if (p.config_id, p.seed) not in done]
    if args.limit is not None:
        todo = todo[: args.limit]
    progress(f"build_table {task.name}: {len(done)} runs in the table, {len(todo)} to train")
    if not todo:
        return 0
    from benchmarks.peers.peer_trial import task_data

    data = task_data({"dataset": task.raw["dataset"]})
    began, since_merge = time.time(), 0
    chunk_meta = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "began": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine_info(),
        "runs": 0,
    }
    for index, planned in enumerate(todo, start=1):
        run = train_run(task, planned, data)
        with open(side_log(task, args.folder), "a", encoding="utf-8") as out:
            out.write(json.dumps(jsonable(run)) + "\n")
        last = run["epochs"][-1]
        progress(
            f"  {index}/{len(todo)} {planned.config_id} seed {planned.seed}: "
            f"val {last['val_accuracy']:.3f} test {last['test_accuracy']:.3f}, "
            f"{sum(e['fit_s'] for e in run['epochs']):.1f} s "
            f"({time.time() - began:.0f} s so far)"
        )
        since_merge += 1
        if since_merge >= args.chunk or index == len(todo):
            total = merge(task, args.folder)
            chunk_meta.update(
                {
                    "runs": chunk_meta["runs"] + since_merge,
                    "ended": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
            )
            record_chunk(task, dict(chunk_meta), args.folder)
            chunk_meta.update({"runs": 0, "began": chunk_meta["ended"]})
            progress(f"  merged: {total} runs in {table_path(task, args.folder)}")
            since_merge = 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
