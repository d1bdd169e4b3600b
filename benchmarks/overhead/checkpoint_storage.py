"""a. What a search leaves in storage: checkpoints kept and bytes, after checkpoint pruning.

A real search (small_cnn on the digits, so it is quick; ASHA, two trials at once) through
``run_search``; then the experiment folder is counted: checkpoint folders, the trials that
hold them, the bytes of the checkpoints and of the whole folder. Goal: at most
``search.keep_checkpoints`` + concurrent trials hold checkpoints at the end (the finished
trials outside the best K lost theirs when they ended).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from benchmarks.common import (
    Column,
    Context,
    ensure_ray_stopped,
    format_table,
    progress,
    run_logged_search,
)

KEEP = 3  # search.keep_checkpoints' default
CONCURRENT = 2


def storage_spec(ctx: Context) -> dict[str, Any]:
    """The storage search: ``storage_trials`` small_cnn trials of 3 epochs on 300 digits."""
    return {
        "name": "checkpoint-storage",
        "dataset": {"name": "digits", "subset": 300, "val_fraction": 0.2, "seed": 0},
        "model": {"backbone": "small_cnn", "weights": "none", "upsample": 1},
        "train": {"epochs": 3, "batch_size": 32, "learning_rate": 0.05},
        "space": {
            "learning_rate": {"loguniform": [0.001, 0.2]},
            "dropout": {"uniform": [0.0, 0.6]},
        },
        "search": {
            "num_samples": ctx.mode.storage_trials,
            "max_concurrent": CONCURRENT,
            "seed": 0,
            "baseline": False,
            "keep_checkpoints": KEEP,
        },
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 3},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
        "storage": str(ctx.workdir / "experiments"),
    }


def count_storage(experiment_dir: str) -> dict[str, Any]:
    """Checkpoint folders, the trials holding them, and bytes, in an experiment folder."""
    from search import storage
    from search.driver.pruning import checkpoint_dirs
    from search.outputs.results import load_trials

    fs, root = storage.filesystem(experiment_dir)
    trials = load_trials(experiment_dir)
    folders = {t.trial_id: checkpoint_dirs(fs, t.path) for t in trials}
    return {
        "trials": len(trials),
        "checkpoints_kept": sum(len(f) for f in folders.values()),
        "trials_with_checkpoints": sum(1 for f in folders.values() if f),
        "checkpoint_bytes": sum(storage.tree_bytes(fs, d) for f in folders.values() for d in f),
        "storage_bytes": storage.tree_bytes(fs, root),
    }


def bench_checkpoint_storage(ctx: Context) -> dict[str, Any]:
    """Runs the storage search and counts what it left.

    Returns:
        The counts, ``keep`` and ``concurrent``, and whether the goal is met.
    """
    raw = storage_spec(ctx)
    progress(f"overhead: checkpoint storage, {raw['search']['num_samples']} small_cnn trials")
    summary, wall = run_logged_search(raw, ctx, ctx.workdir / "logs" / "storage.log")
    ensure_ray_stopped("overhead")
    counts = count_storage(summary.experiment_dir)
    return {
        **counts,
        "keep": KEEP,
        "concurrent": CONCURRENT,
        "search_wall_s": wall,
        "goal": f"trials holding checkpoints <= keep_checkpoints + concurrent = "
        f"{KEEP + CONCURRENT}",
        "goal_met": counts["trials_with_checkpoints"] <= KEEP + CONCURRENT,
    }


def print_checkpoint_storage(result: Mapping[str, Any]) -> str:
    """The storage search's one-row table and its goal."""
    table = format_table(
        f"What a search leaves in storage ({result['trials']} small_cnn trials, "
        f"keep_checkpoints={result['keep']}, {result['concurrent']} at once)",
        [
            Column("trials_with_checkpoints", "trials holding checkpoints"),
            Column("checkpoints_kept", "checkpoint folders"),
            Column("checkpoint_bytes", "checkpoint bytes"),
            Column("storage_bytes", "experiment folder bytes"),
        ],
        [result],
    )
    verdict = "met" if result["goal_met"] else "NOT met"
    return f"{table}\ngoal: {result['goal']}: {verdict}"
