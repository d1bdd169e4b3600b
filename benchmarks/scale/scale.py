"""e. Scale: thousands of simulated trials through the real driver, searcher, ASHA and journal.

``run_search`` (the real driver: ``AshaAwareOptunaSearch`` with TPE and its Optuna journal,
``ASHAScheduler``, the progress callback, Ray Tune's experiment snapshots) runs a search whose
trainable only reports simulated learning curves (:mod:`scale_sim`), on a local Ray that
declares many logical GPUs, one per trial. The trainable costs next to nothing, so what the
run measures is the driver: trials finished per minute, the searcher's ``suggest`` latency
(p50/p99 over the suggestions made just before 100, 500, 1,000 and 2,000 trials had
finished), the driver process's memory (RSS), the journal's size, Ray's experiment snapshots
and the driver's CPU-seconds per trial-epoch, against the 0.94 s that 64 GPUs running
1-minute epochs would leave it.

``suggest`` and the searcher's result callbacks are timed and counted by wrapping the
library's methods in the benchmark (:class:`scale_probe.ScaleProbe`); the library is not
changed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.common import (
    Column,
    Context,
    ensure_ray_stopped,
    format_table,
    load_average,
    load_spec,
    logged,
    progress,
)
from benchmarks.scale.scale_probe import SUGGEST_WINDOW, ScaleProbe, point_rows
from search.outputs.study import TrialStatus, journal_path_for

SUGGEST_P99_GOAL_MS = 100.0
EPOCH_SECONDS = 60.0  # the goal's GPUs run 1-minute epochs ...
GOAL_GPUS = 64  # ... on 64 GPUs: the driver has 60 / 64 = 0.94 s per trial-epoch
DRIVER_SHARE_GOAL = 0.1  # and should use at most a tenth of it ("never the bottleneck")
LINEAR_SLACK = 1.5  # late growth per trial at most 1.5x the early one counts as linear
MAX_T = 9  # epochs; ASHA (grace 1, reduction 3) decides at 1 and 3, complete trials run 9

# The search space of configs/cifar10.yaml, so TPE's cost per suggestion is a real one.
SCALE_SPACE: dict[str, Any] = {
    "noise_std": {"loguniform": [0.001, 0.1]},
    "upsample": {"choice": [1, 2, 3, 4, 5]},
    "input_convs": {"int": [0, 2]},
    "input_conv_filters": {"choice": [8, 16, 32]},
    "freeze": {"choice": [0, 4, 7, 11, 15]},
    "learning_rate": {"loguniform": [0.0001, 0.05]},
    "dropout": {"uniform": [0.3, 0.8]},
}


# --------------------------------------------------------------------------------------------
# small pure helpers (tested in tests/benchmarks/test_scale.py)


def growth_per_trial(trace: Sequence[Mapping[str, Any]], key: str, start: int, end: int) -> float:
    """How much ``key`` grew per finished trial between the samples at ``start`` and ``end``.

    Args:
        trace: Samples with ``finished`` and ``key``, by ``finished``.
        start: The first sample's ``finished``.
        end: The last sample's ``finished``.

    Returns:
        ``(value at end - value at start) / (end - start)``; NaN when a sample is missing.
    """
    by_finished = {int(s["finished"]): s for s in trace}
    if start not in by_finished or end not in by_finished or end <= start:
        return float("nan")
    return (float(by_finished[end][key]) - float(by_finished[start][key])) / (end - start)


def linear_growth(trace: Sequence[Mapping[str, Any]], key: str, floor: float) -> dict[str, Any]:
    """Whether ``key`` grows at most linearly: its growth per trial in the last quarter of the
    run against the second quarter's (the first quarter holds the start-up).

    Args:
        trace: Samples with ``finished`` and ``key``, every few finished trials.
        key: The quantity (e.g. ``driver_rss_mb``).
        floor: Growth per trial below which a quarter counts as flat (noise).

    Returns:
        ``early`` and ``late`` growth per trial, their ``ratio`` and ``linear`` (late at most
        ``LINEAR_SLACK`` times early, or below ``floor``); NaN and None without enough samples.
    """
    marks = sorted(int(s["finished"]) for s in trace)
    if len(marks) < 5:
        return {"early": float("nan"), "late": float("nan"), "ratio": float("nan"), "linear": None}
    last = marks[-1]

    def nearest(target: float) -> int:
        return min(marks, key=lambda m: abs(m - target))

    early = growth_per_trial(trace, key, nearest(last / 4), nearest(last / 2))
    late = growth_per_trial(trace, key, nearest(3 * last / 4), last)
    ratio = late / early if early > 0 else float("nan")
    return {
        "early": early,
        "late": late,
        "ratio": ratio,
        "linear": late <= max(LINEAR_SLACK * max(early, 0.0), floor),
    }


def scale_sizes(points: Sequence[int], concurrent: int) -> int:
    """Trials to run so that suggestions are still made when the last point has finished.

    Every finished trial makes room for one more suggestion, so the last suggestion comes when
    ``trials - concurrent`` trials have finished.

    Args:
        points: The finished-trial counts to measure at.
        concurrent: Trials running at once.

    Returns:
        ``max(points) + concurrent``.
    """
    return max(points) + concurrent


# --------------------------------------------------------------------------------------------
# the run


def scale_spec(ctx: Context, trials: int, concurrent: int) -> dict[str, Any]:
    """The simulated search: ``trials`` trials, ``concurrent`` at once, one logical GPU each.

    Args:
        ctx: The run's context (workdir, CPUs).
        trials: ``search.num_samples``.
        concurrent: ``search.max_concurrent``; the CPUs are split evenly between them.

    Returns:
        The raw experiment spec.
    """
    return {
        "name": f"scale-{trials}-trials",
        # Loaded once and put in the object store like any search's data; never trained on.
        "dataset": {"name": "digits", "subset": 200, "val_fraction": 0.2, "seed": 0},
        "model": {"backbone": "vgg16", "weights": "none"},
        "train": {"epochs": MAX_T, "batch_size": 64, "seed": 0},
        "space": SCALE_SPACE,
        # The searcher as shipped (search.algorithm's default), so its suggest is what is timed.
        "search": {
            "num_samples": trials,
            "max_concurrent": concurrent,
            "seed": 0,
            "baseline": False,
            "max_failures": 0,
        },
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 3},
        "resources": {"cpus_per_trial": round(ctx.num_cpus / concurrent, 4), "gpus_per_trial": 1},
        "storage": str(ctx.workdir / "experiments"),
    }


def bench_scale(ctx: Context) -> dict[str, Any]:
    """Runs the simulated search and measures the driver at each point.

    Args:
        ctx: The run's context (``mode.scale_points``, ``mode.scale_concurrent``).

    Returns:
        The section's result: ``trials``, ``suggest_p99_ms`` (at the last point), ``points``,
        the throughput, the growth checks, the snapshots and the goals.
    """
    import ray

    from benchmarks.scale import scale_sim
    from search.driver.service import run_search

    points = tuple(ctx.mode.scale_points)
    concurrent = ctx.mode.scale_concurrent
    trials = scale_sizes(points, concurrent)
    raw = scale_spec(ctx, trials, concurrent)
    spec = load_spec(raw)
    scale_sim.ship_by_value()
    progress(
        f"scale: {trials} simulated trials, {concurrent} at once on {concurrent} logical "
        f"GPUs, points {list(points)}"
    )
    load_before = load_average()
    probe = ScaleProbe(
        journal=journal_path_for(spec.experiment_path), experiment_dir=spec.experiment_path
    )
    log = ctx.workdir / "logs" / f"{raw['name']}.log"
    with logged(log):
        # The driver's connect() keeps a Ray that is already up: this one declares the GPUs.
        ray.init(
            address="local",
            num_cpus=ctx.num_cpus,
            num_gpus=concurrent,
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
        )
        try:
            with probe.installed():
                began = time.perf_counter()
                summary = run_search(spec, trainable=scale_sim.simulated_trainable)
                wall = time.perf_counter() - began
        finally:
            ray.shutdown()
    ensure_ray_stopped("scale")
    if summary.interrupted:
        raise RuntimeError(f"scale: the search was interrupted (see {log})")
    counts = summary.counts()
    epochs = sum(len(t.history) for t in summary.trials)
    if len(summary.trials) != trials or counts[TrialStatus.FAILED.value]:
        raise RuntimeError(
            f"scale: {len(summary.trials)} of {trials} trials, {counts} (see {log})"
        )
    if probe.results != epochs:
        raise RuntimeError(
            f"scale: the searcher saw {probe.results} results, the trials wrote {epochs}"
        )
    rows = point_rows(probe, points)
    last = probe.trace[-1]
    cpu_per_epoch = last["driver_cpu_s"] / max(last["trial_epochs"], 1)
    late_cpu = rows[-1]["driver_cpu_s_per_trial_epoch"]
    budget = EPOCH_SECONDS / GOAL_GPUS
    growth = {
        "driver_rss_mb": linear_growth(probe.trace, "driver_rss_mb", floor=0.05),
        "journal_bytes": linear_growth(probe.trace, "journal_bytes", floor=0.0),
        "snapshot_bytes": linear_growth(probe.trace, "snapshot_bytes", floor=0.0),
    }
    suggest_p99 = rows[-1]["suggest_p99_ms"]
    goals = {
        "suggest_p99": suggest_p99 <= SUGGEST_P99_GOAL_MS,
        "memory_linear": bool(growth["driver_rss_mb"]["linear"]),
        "journal_linear": bool(growth["journal_bytes"]["linear"]),
        "driver_not_bottleneck": late_cpu <= DRIVER_SHARE_GOAL * budget,
    }
    best = summary.best_value
    return {
        "trials": len(summary.trials),
        "concurrent": concurrent,
        "logical_gpus": concurrent,
        "cpus_per_trial": raw["resources"]["cpus_per_trial"],
        "max_t": MAX_T,
        "points": rows,
        "suggest_p99_ms": suggest_p99,
        "suggest_cpu_p99_ms": rows[-1]["suggest_cpu_p99_ms"],
        "suggest_declined": probe.declined,
        "wall_s": wall,
        "trial_epochs": epochs,
        "counts": counts,
        "best_val_accuracy": best,
        "trials_per_minute": len(summary.trials) * 60 / wall,
        "trial_epochs_per_minute": epochs * 60 / wall,
        "driver_cpu_s_per_trial_epoch": cpu_per_epoch,
        "driver_cpu_s_per_trial_epoch_last_interval": late_cpu,
        "driver_budget_s_per_trial_epoch": budget,
        "snapshots": len(probe.snapshots),
        "snapshot_s_total": sum(s for _, s in probe.snapshots),
        "snapshot_s_max": max((s for _, s in probe.snapshots), default=0.0),
        "growth": growth,
        "goals": goals,
        "goal_met": all(goals.values()),
        "trace": probe.trace,
        "load_avg_before": load_before,
        "load_avg_after": load_average(),
    }


def print_scale(result: Mapping[str, Any]) -> str:
    """The scale section's table and verdict lines.

    Args:
        result: What :func:`bench_scale` returned.

    Returns:
        The text to print.
    """
    title = (
        f"e. Scale: {result['trials']} simulated trials (max_t {result['max_t']}, ASHA, "
        f"TPE) through run_search, {result['concurrent']} at once on "
        f"{result['logical_gpus']} logical GPUs, {result['cpus_per_trial']:g} CPU each"
    )
    table = format_table(
        title,
        [
            Column("finished", "finished"),
            Column("suggestions", "suggests"),
            Column("suggest_p50_ms", "suggest p50 ms", ".1f"),
            Column("suggest_p99_ms", "suggest p99 ms", ".1f"),
            Column("suggest_cpu_p99_ms", "p99 thread CPU ms", ".1f"),
            Column("driver_rss_mb", "driver RSS MB", ".0f"),
            Column("journal_bytes", "journal bytes"),
            Column("snapshot_bytes", "Ray snapshot bytes"),
            Column("driver_cpu_s_per_trial_epoch", "driver CPU s/trial-epoch", ".4f"),
            Column("wall_s_per_trial_epoch", "wall s/trial-epoch", ".4f"),
            Column("running", "running"),
        ],
        result["points"],
    )
    goals = result["goals"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    growth = result["growth"]

    def grown(key: str, unit: str, scale: float = 1.0) -> str:
        g = growth[key]
        return (
            f"{g['early'] * scale:.3g} -> {g['late'] * scale:.3g} {unit}/trial "
            f"(2nd -> 4th quarter)"
        )

    budget = result["driver_budget_s_per_trial_epoch"]
    lines = [
        table,
        f"suggest: the last {SUGGEST_WINDOW} suggestions (calls that returned a config; "
        f"{result['suggest_declined']} calls declined while every slot was taken, untimed) "
        "made while at most `finished` trials had finished;"
        " CPU and wall s/trial-epoch: since the previous point",
        f"trials finished per minute: {result['trials_per_minute']:.1f} "
        f"({result['trial_epochs_per_minute']:.0f} trial-epochs/min, {result['wall_s']:.0f} s)",
        f"suggest p99 at {result['points'][-1]['finished']} finished: "
        f"{result['suggest_p99_ms']:.1f} ms  goal <= {SUGGEST_P99_GOAL_MS:.0f} ms: "
        f"{verdict(goals['suggest_p99'])}; the calling thread's CPU in suggest, p99: "
        f"{result['suggest_cpu_p99_ms']:.1f} ms (the rest: waiting for a core or the GIL)",
        f"driver RSS growth: {grown('driver_rss_mb', 'KB', 1024)}  goal at most linear: "
        f"{verdict(goals['memory_linear'])}",
        f"journal growth: {grown('journal_bytes', 'bytes')}  goal at most linear: "
        f"{verdict(goals['journal_linear'])}",
        f"Ray experiment snapshot: {grown('snapshot_bytes', 'bytes')}; "
        f"{result['snapshots']} snapshots, {result['snapshot_s_total']:.1f} s in all, "
        f"longest {result['snapshot_s_max']:.2f} s",
        f"driver CPU per trial-epoch, last interval: "
        f"{result['driver_cpu_s_per_trial_epoch_last_interval']:.4f} s (whole run "
        f"{result['driver_cpu_s_per_trial_epoch']:.4f} s) of the {budget:.2f} s that "
        f"{GOAL_GPUS} GPUs with {EPOCH_SECONDS:.0f}-s epochs leave; goal <= "
        f"{DRIVER_SHARE_GOAL * budget:.3f} s: {verdict(goals['driver_not_bottleneck'])}",
        f"load average (1 min) before/after: {result['load_avg_before']} / "
        f"{result['load_avg_after']}",
    ]
    return "\n".join(lines)
