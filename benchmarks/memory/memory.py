"""c. Data sharing: memory per trial, the dataset shared through Ray's object store vs. copied.

A wrapper of ``benchmarks/memory/data_sharing.py`` (which also runs on its own): runs its ``main``
with the mode's arguments, reads back its JSON and captures its table.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Mapping
from typing import Any

from benchmarks.common import Context, ensure_ray_stopped, format_cell, logged, progress

CIFAR_TRAIN_SHAPE = (50_000, 32, 32, 3)  # CIFAR-10's training images
OBJECT_STORE_GOAL = 1.05  # object-store bytes at most 1.05x the source's pixels


def cifar_sized_object_store() -> dict[str, Any]:
    """A CIFAR-10-sized uint8 dataset (random pixels, 10 classes) split as ``load_dataset``
    splits CIFAR, then put in Ray's object store as ``tune.with_parameters`` puts it: the
    object's size there against the source's pixel bytes."""
    import numpy as np
    import ray

    from search.data import DatasetSpec
    from search.data.split import Pool, split_pool

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, CIFAR_TRAIN_SHAPE, dtype=np.uint8)
    labels = np.arange(CIFAR_TRAIN_SHAPE[0]) % 10
    pool = Pool(pixels, labels, None, None, tuple(str(i) for i in range(10)), "cifar-sized")
    data = split_pool(pool, DatasetSpec.from_mapping({"name": "cifar10", "val_fraction": 0.1}))
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        ref = ray.put(data)
        size = ray.experimental.get_object_locations([ref])[ref]["object_size"]
    finally:
        ray.shutdown()
    ratio = size / pixels.nbytes
    return {
        "source_bytes": int(pixels.nbytes),
        "object_store_bytes": int(size),
        "object_store_ratio": ratio,
        "dtype": str(data.x_train.dtype),
        "goal": f"object store <= {OBJECT_STORE_GOAL}x the source's pixels",
        "goal_met": ratio <= OBJECT_STORE_GOAL,
    }


def bench_memory(ctx: Context) -> dict[str, Any]:
    """Runs ``data_sharing.main`` and reads back its JSON and its table.

    Args:
        ctx: The run's context (``mode.memory_args``, CPUs, workdir).

    Returns:
        The arguments, data_sharing's JSON, its table, and the PSS per trial that sharing
        saved (``None`` unless both modes ran).

    Raises:
        RuntimeError: When ``data_sharing.main`` fails or Ray is left running.
    """
    from benchmarks.memory import data_sharing

    out = ctx.workdir / "data_sharing.json"
    args = [*ctx.mode.memory_args, "--num-cpus", str(ctx.num_cpus), "--json", str(out)]
    progress(f"memory: data_sharing.py {' '.join(args)}")
    with logged(ctx.workdir / "logs" / "data_sharing.log"):
        code = data_sharing.main(args)
    if code != 0:
        raise RuntimeError(f"data_sharing.main returned {code}")
    ensure_ray_stopped("memory")
    result = json.loads(out.read_text(encoding="utf-8"))
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        data_sharing.print_table(result["results"], "--pipeline" in args)
    by_mode = {row["mode"]: row for row in result["results"]}
    saved = None
    if {"shared", "copy"} <= set(by_mode):
        saved = by_mode["copy"]["pss_per_trial_mb"] - by_mode["shared"]["pss_per_trial_mb"]
    progress("memory: a CIFAR-10-sized uint8 dataset in the object store")
    cifar = cifar_sized_object_store()
    ensure_ray_stopped("memory")
    return {
        "args": args,
        "data_sharing": result,
        "table": table.getvalue().rstrip(),
        "pss_saved_per_trial_mb": saved,
        "source_bytes": cifar["source_bytes"],
        "object_store_bytes": cifar["object_store_bytes"],
        "cifar_sized": cifar,
    }


def print_memory(result: Mapping[str, Any]) -> str:
    """The memory section's table and the PSS saved per trial.

    Args:
        result: What :func:`bench_memory` returned.

    Returns:
        The text to print.
    """
    size = result["data_sharing"]["size_mb"]
    lines = [
        f"c. Data sharing: memory per trial, {size:g} MB dataset "
        f"(benchmarks/memory/data_sharing.py {' '.join(result['args'][:-2])})",
        result["table"],
    ]
    if result["pss_saved_per_trial_mb"] is not None:
        zero_copy = result["data_sharing"]["results"][0].get("zero_copy_in_workers")
        lines.append(
            f"PSS saved per trial by sharing: {result['pss_saved_per_trial_mb']:.1f} MB;"
            f" zero-copy in workers: {format_cell(zero_copy)}"
        )
    cifar = result["cifar_sized"]
    lines.append(
        f"CIFAR-10-sized dataset ({CIFAR_TRAIN_SHAPE[0]:,} x 32 x 32 x 3, "
        f"{cifar['dtype']}): source pixels {cifar['source_bytes'] / 1e6:.1f} MB, in "
        f"the object store {cifar['object_store_bytes'] / 1e6:.1f} MB "
        f"({cifar['object_store_ratio']:.3f}x); goal {cifar['goal']}: "
        f"{'met' if cifar['goal_met'] else 'NOT met'}"
    )
    return "\n".join(lines)
