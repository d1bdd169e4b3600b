"""c. Data sharing: memory per trial, the dataset shared through Ray's object store vs. copied.

A wrapper of ``benchmarks/data_sharing.py`` (which also runs on its own): runs its ``main``
with the mode's arguments, reads back its JSON and captures its table.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Mapping
from typing import Any

from common import Context, ensure_ray_stopped, format_cell, logged, progress


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
    import data_sharing

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
    return {"args": args, "data_sharing": result, "table": table.getvalue().rstrip(),
            "pss_saved_per_trial_mb": saved}


def print_memory(result: Mapping[str, Any]) -> str:
    """The memory section's table and the PSS saved per trial.

    Args:
        result: What :func:`bench_memory` returned.

    Returns:
        The text to print.
    """
    size = result["data_sharing"]["size_mb"]
    lines = [f"c. Data sharing: memory per trial, {size:g} MB dataset "
             f"(benchmarks/data_sharing.py {' '.join(result['args'][:-2])})",
             result["table"]]
    if result["pss_saved_per_trial_mb"] is not None:
        zero_copy = result["data_sharing"]["results"][0].get("zero_copy_in_workers")
        lines.append(f"PSS saved per trial by sharing: {result['pss_saved_per_trial_mb']:.1f} MB;"
                     f" zero-copy in workers: {format_cell(zero_copy)}")
    return "\n".join(lines)
