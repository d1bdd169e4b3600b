"""The tables of the performance page, rendered from ``run.py``'s JSON (nothing is copied by
hand; ``tests/benchmarks/test_performance_page.py`` fails when a page's table is not what its
JSON gives).

Two blocks of ``docs/performance.md``: ``performance-reduced``, the sections of one run with the
same figures of other runs beside them, and ``performance-scale-full``, the full-size scale
section of one or more runs side by side::

    M=benchmarks/measured
    python benchmarks/performance_page.py $M/bench-reduced-2026-11-30-1238.json \\
        --also $M/bench-reduced-2026-11-30-1013.json ... --page docs/performance.md
    python benchmarks/performance_page.py --scale $M/scale-full-2026-11-30-0606.json \\
        $M/scale-full-2026-11-30-0704.json --page docs/performance.md

Without ``--page`` the block is printed. A goal's threshold is the issue's, kept here
(``GOALS``); whether a run met it is computed from the run's own figures.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script from a checkout

# The goals the sections were set (issue 8), as thresholds on the run's figures.
GOALS = {
    "one_fit_ratio": 0.99,  # the trial's images/s at least this share of plain fit's
    "whole_epoch_ratio": 1.05,  # a whole epoch at most this times plain's
    "search_ratio": 0.33,  # ASHA + TPE's trial-epochs to the target at most this share
    "object_store_ratio": 1.05,  # the object store at most this times the source's pixels
    "suggest_p99_ms": 100.0,  # suggest's p99 at the largest point
    "growth_ratio": 1.5,  # late growth per trial at most this times early (linear)
}

Run = Mapping[str, Any]
Json = Mapping[str, Any]


def _get(result: Json, path: str) -> Any:
    value: Any = result
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def _clock(result: Json) -> str:
    return str(result["started"])[11:16]


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


# -- the reduced run's table ---------------------------------------------------------------


def _one_fit(s: Json) -> str:
    o = s["overhead"]
    plain = [r for r in o["rows"] if r["path"].startswith("plain")]
    return (
        f"**{o['one_fit_ratio']:.3f}** (plain {o['plain_one_call_img_s']:.1f} img/s, trial "
        f"{o['trial_img_s']:.1f}; the trial's own spread {o['noise_spread']:.1%}, plain's "
        f"up to {max(r['spread'] for r in plain):.1%}); against plain `fit` called once "
        f"per epoch, before and after the trial pooled: {o['ratio_trial_to_plain']:.3f}"
    )


def _whole_epoch(part: Json, ratio: float, what: str) -> str:
    p = part["parts"]
    return (
        f"**{ratio:.3f}**: {part['trial_epoch_s']:.3f} s against plain's "
        f"{part['plain_epoch_s']:.3f} s per epoch = {p['fit_s']:.3f} s inside `fit` "
        f"{what} + {p['checkpoint_wait_s']:.3f} s waiting for checkpoints "
        f"({p['checkpoints']} in the {p['epochs']} epochs) + {p['report_s']:.3f} s waiting "
        f"for the last epoch's report"
    )


def _overlap(s: Json) -> str:
    c = s["overhead"]["checkpoint_overlap"]
    return (
        f"{c['after_epoch_s']:.3f} s per epoch after, {c['beside_epoch_s']:.3f} beside "
        f"(**{c['ratio']:.3f}**), {c['snapshot_epoch_s']:.3f} from the copy "
        f"(**{c['snapshot_ratio']:.3f}**, `snapshot_ratio`)"
    )


def _storage(s: Json) -> str:
    st = s["overhead"]["storage"]
    return (
        f"{st['trials_with_checkpoints']} trials hold checkpoints ({st['checkpoints_kept']} "
        f"folders), {_mb(st['checkpoint_bytes'])} of checkpoints, "
        f"{_mb(st['storage_bytes'])} in all"
    )


def _cli(s: Json) -> str:
    c = s["overhead"]["cli"]
    return (
        f"{c['launch_to_first_epoch_s']:.1f} s: {c['launch_to_started_s']:.1f} s to the "
        f"trial's start (Ray, data, TensorFlow import), {c['trial_epoch1_s']:.1f} s the "
        f"epoch"
    )


def _search_means(s: Json) -> dict[str, Json]:
    return {m["method"]: m for m in s["search"]["means"]}


def _search(s: Json) -> str:
    m = _search_means(s)
    ours, fifo = m["asha+tpe"], m["fifo+random"]
    never = " (FIFO random never got there)" if not fifo["reached_both_best"] else ""
    return (
        f"ASHA+TPE: {ours['trial_epochs']:.0f} trial-epochs, best {ours['best']:.3f}; FIFO "
        f"random: {fifo['trial_epochs']:.0f} trial-epochs, best {fifo['best']:.3f}. "
        f"Trial-epochs until within 1 point of the best either reached: "
        f"{ours['to_both_best']:.0f} vs {fifo['to_both_best']:.0f}{never}, ratio "
        f"{s['search']['ratio_to_target']:.2f}"
    )


def _liar(s: Json) -> str:
    ls = s["search"]["liar_spread"]
    seeds = ", ".join(f"{r['liar']:.3f}/{r['plain']:.3f}" for r in ls["rows"])
    return (
        f"{ls['liar_mean']:.3f} with the liar, {ls['plain_mean']:.3f} without "
        f"(x{ls['ratio']:.2f}; seeds {ls['rows'][0]['seed']}-{ls['rows'][-1]['seed']}: "
        f"{seeds})"
    )


def _object_store(s: Json) -> str:
    c = s["memory"]["cifar_sized"]
    return (
        f"{_mb(c['source_bytes'])} of pixels, {_mb(c['object_store_bytes'])} in the object "
        f"store (**{c['object_store_ratio']:.3f}x**; {c['dtype']} end to end, scaled to "
        f"[0,1] batch by batch in the input pipeline)"
    )


def _sharing(s: Json) -> str:
    r = {x["mode"]: x for x in s["memory"]["data_sharing"]["results"]}
    return (
        f"shared through the object store: +{r['shared']['pss_growth_per_trial_mb']:.1f} MB "
        f"PSS, +{r['shared']['uss_growth_per_trial_mb']:.0f} MB private (zero-copy); a copy "
        f"per trial: +{r['copy']['pss_growth_per_trial_mb']:.1f} MB PSS, "
        f"+{r['copy']['uss_growth_per_trial_mb']:.1f} MB private"
    )


def _throughput(s: Json) -> str:
    sc = s["scale"]
    return (
        f"{sc['trials_per_minute']:.1f} trials finished per minute "
        f"({sc['trial_epochs_per_minute']:,.0f} trial-epochs per minute)"
    )


def _suggest(s: Json) -> str:
    points = s["scale"]["points"]
    cells = []
    for i, p in enumerate(points):
        p99 = f"{p['suggest_p99_ms']:.1f} ms"
        cells.append(
            f"at {p['finished']:,} finished {p['suggest_p50_ms']:.1f} / "
            f"{f'**{p99}**' if i == len(points) - 1 else p99} "
            f"(CPU {p['suggest_cpu_p99_ms']:.1f} ms)"
        )
    return "; ".join(cells)


def _growth(s: Json) -> str:
    sc = s["scale"]
    first, last = sc["points"][0], sc["points"][-1]
    rss, journal = sc["growth"]["driver_rss_mb"], sc["growth"]["journal_bytes"]
    return (
        f"driver RSS {first['driver_rss_mb']:.0f} -> {last['driver_rss_mb']:.0f} MB "
        f"({rss['early']:.2f} -> {rss['late']:.2f} MB per trial, x{rss['ratio']:.2f}); "
        f"journal {first['journal_bytes'] / 1e6:.2f} -> {last['journal_bytes'] / 1e6:.2f} MB "
        f"({journal['early'] / 1e3:.1f} -> {journal['late'] / 1e3:.1f} KB per trial, "
        f"x{journal['ratio']:.2f})"
    )


def _snapshot(s: Json) -> str:
    sc = s["scale"]
    g = sc["growth"]["snapshot_bytes"]
    at = ", ".join(
        f"{p['snapshot_bytes'] / 1e6:.1f} MB at {p['finished']:,} finished" for p in sc["points"]
    )
    return (
        f"{at}; {g['early'] / 1e3:.1f} -> {g['late'] / 1e3:.1f} KB per trial "
        f"(x{g['ratio']:.2f}); {sc['snapshots']} snapshots, {sc['snapshot_s_total']:.1f} s "
        f"of the run's {sc['wall_s']:.0f} s, the longest {sc['snapshot_s_max']:.2f} s"
    )


def _driver_cpu(s: Json) -> str:
    sc = s["scale"]
    return (
        f"{sc['driver_cpu_s_per_trial_epoch_last_interval']:.4f} s in the last interval "
        f"({sc['driver_cpu_s_per_trial_epoch']:.4f} s over the run)"
    )


def _gpu(s: Json) -> str:
    g = s["gpu"]
    if g.get("skipped"):
        return f"not measured: {g['reason']}; the section skips with a message"
    return "measured: see the JSON's `gpu` section"


def _ratio_goal(key: str, at_most: bool) -> Callable[[Json], str]:
    def goal(s: Json) -> str:
        value = _get(s, key)
        limit = GOALS[key.split(".")[-1].replace("_short", "")]
        ok = value <= limit if at_most else value >= limit
        return f"{'<=' if at_most else '>='} {limit:g}: {_met(ok)}"

    return goal


def _linear(*keys: str) -> Callable[[Json], str]:
    def goal(s: Json) -> str:
        ok = all(s["scale"]["growth"][k]["ratio"] <= GOALS["growth_ratio"] for k in keys)
        return f"at most linear (late <= {GOALS['growth_ratio']:g}x early): {_met(ok)}"

    return goal


def _described(s: Json, sizes: Json) -> dict[str, str]:
    """The rows' descriptions, with the run's sizes."""
    o, sc = s["overhead"], s["scale"]
    st = o["storage"]
    plain = o["rows"][0]
    points = " and ".join(f"{p['finished']:,}" for p in sc["points"])
    return {
        "one_fit": (
            f"a. one `fit` per trial attempt: the trial's training images/s (epochs 2+) "
            f"/ one plain `fit` call on the same VGG16 (random weights, 32x32, batch "
            f"{sizes['overhead_batch']}, {plain['images']} digits images, "
            f"{sizes['overhead_epochs']} epochs) (`overhead.one_fit_ratio`)"
        ),
        "one_fit_short": (
            f"a. the same with short epochs: {o['short']['images']} images, plain "
            f"{o['short']['plain_epoch_s']:.2f} s per epoch "
            f"(`overhead.one_fit_ratio_short`)"
        ),
        "whole": (
            "a. whole epoch (train + validation + report + checkpoints amortised, the "
            "default `train.checkpoint`; the trial's epoch from one report's hand-off to "
            "the next, in the trial's own time) / plain epoch with validation "
            "(`overhead.whole_epoch_ratio`, parts `overhead.normal.parts`)"
        ),
        "whole_short": (
            "a. the same with short epochs (`overhead.whole_epoch_ratio_short`, "
            "parts `overhead.short.parts`)"
        ),
        "overlap": (
            "a. a checkpoint every epoch, plain `fit`, short epochs: its model written "
            "after validation, beside it (a CPU trial's way), or copied beside "
            "validation and written while the next epoch trains (a GPU trial's way) "
            "(`overhead.checkpoint_overlap`)"
        ),
        "storage": (
            f"a. what a search leaves in storage: {st['trials']} small_cnn trials, "
            f"{st['concurrent']} at once, `keep_checkpoints: {st['keep']}` "
            f"(`overhead.storage`)"
        ),
        "cli": "a. `finetune-search run` launch to its first reported epoch (`overhead.cli`)",
        "search": (
            f"b. ASHA+TPE vs FIFO random, {sizes['search_trials']} trials x "
            f"{sizes['search_epochs']} epochs, small_cnn on digits, seeds "
            f"{' and '.join(map(str, sizes['search_seeds']))}, no baseline (`search`)"
        ),
        "liar": (
            f"b2. TPE's concurrent suggestions with the constant liar (on when "
            f"`max_concurrent > 1`): mean pairwise distance in the unit cube of "
            f"{s['search']['liar_spread']['concurrent']} suggestions asked after "
            f"{s['search']['liar_spread']['finished']} finished trials, before any "
            f"reports (`search.liar_spread`)"
        ),
        "object_store": (
            "c. a CIFAR-10-sized uint8 dataset (50,000 x 32 x 32 x 3) in the object "
            "store (`memory.cifar_sized`)"
        ),
        "sharing": (
            f"c. memory per trial, {s['memory']['data_sharing']['size_mb']} MB dataset, "
            f"{s['memory']['data_sharing']['results'][0]['trials']} concurrent trials "
            f"(`memory.data_sharing`)"
        ),
        "throughput": (
            f"e. simulated trials through the real driver, searcher, ASHA and "
            f"journal, {sc['concurrent']} at once on {sc['logical_gpus']} logical "
            f"GPUs, `max_t` {sc['max_t']}, {sc['trials']:,} trials, points at "
            f"{points} finished, in a process of its own (`scale.trials_per_minute`)"
        ),
        "suggest": (
            f"e. the searcher's `suggest` latency over the last 100 suggestions (calls "
            f"that returned a config; {sc['suggest_declined']:,} calls declined while "
            f"every slot was taken are not timed), p50 / p99, and the p99 of the "
            f"calling thread's CPU in it (`scale.points`; other runs: p99 / its CPU at "
            f"the last point)"
        ),
        "growth": (
            "e. growth per finished trial, 2nd -> 4th quarter of the run (`scale.growth`: "
            "`driver_rss_mb`, `journal_bytes`)"
        ),
        "snapshot": (
            "e. Ray Tune's experiment snapshot (`scale.growth.snapshot_bytes`, `scale.snapshots`)"
        ),
        "driver_cpu": "e. the driver's CPU per trial-epoch (`scale.driver_cpu_s_per_trial_epoch`)",
        "gpu": (
            "d. GPU images/s (VGG16 160x160; float32 and mixed precision, each with and "
            "without XLA), share of the GPU's peak, trials/hour packed 1/2/4 per GPU, and "
            "short epochs with a checkpoint every epoch written the CPU trial's way and the "
            "GPU trial's (`gpu`)"
        ),
    }


def _suggest_goal(s: Json) -> str:
    last = s["scale"]["points"][-1]
    ok = last["suggest_p99_ms"] <= GOALS["suggest_p99_ms"]
    return (
        f"p99 <= {GOALS['suggest_p99_ms']:g} ms: {_met(ok)} at {last['finished']:,} "
        f"(at 2,000: the full-size runs below)"
    )


def _driver_goal(s: Json) -> str:
    budget = s["scale"]["driver_budget_s_per_trial_epoch"]
    ok = s["scale"]["driver_cpu_s_per_trial_epoch"] <= budget / 10
    return (
        f"<= {budget / 10:.3f} s (a tenth of the {budget:.2f} s that 64 GPUs with 1-minute "
        f"epochs leave): {_met(ok)}"
    )


def _storage_goal(s: Json) -> str:
    st = s["overhead"]["storage"]
    return (
        f"trials holding checkpoints <= K + concurrent = {st['keep'] + st['concurrent']}: "
        f"{_met(st['goal_met'])}"
    )


# (row, measured, the keys (space-separated) whose values other runs show beside it, goal)
ROWS: tuple[tuple[str, Callable[[Json], str], str | None, Callable[[Json], str]], ...] = (
    (
        "one_fit",
        _one_fit,
        "overhead.one_fit_ratio",
        _ratio_goal("overhead.one_fit_ratio", at_most=False),
    ),
    (
        "one_fit_short",
        lambda s: f"**{s['overhead']['one_fit_ratio_short']:.3f}**",
        "overhead.one_fit_ratio_short",
        _ratio_goal("overhead.one_fit_ratio_short", at_most=False),
    ),
    (
        "whole",
        lambda s: _whole_epoch(
            s["overhead"]["normal"],
            s["overhead"]["whole_epoch_ratio"],
            "(training, validation, the checkpoints' model written beside validation)",
        ),
        "overhead.whole_epoch_ratio",
        _ratio_goal("overhead.whole_epoch_ratio", at_most=True),
    ),
    (
        "whole_short",
        lambda s: _whole_epoch(
            s["overhead"]["short"],
            s["overhead"]["whole_epoch_ratio_short"],
            "(training, validation, the checkpoints' model written beside validation)",
        ),
        "overhead.whole_epoch_ratio_short",
        _ratio_goal("overhead.whole_epoch_ratio_short", at_most=True),
    ),
    ("overlap", _overlap, "overhead.checkpoint_overlap.ratio", lambda s: "-"),
    ("storage", _storage, None, _storage_goal),
    ("cli", _cli, "overhead.cli.launch_to_first_epoch_s", lambda s: "-"),
    (
        "search",
        _search,
        "search.ratio_to_target",
        lambda s: (
            f"ratio <= {GOALS['search_ratio']:g}: "
            f"{_met(s['search']['ratio_to_target'] <= GOALS['search_ratio'])}"
        ),
    ),
    (
        "liar",
        _liar,
        "search.liar_spread.ratio",
        lambda s: f"more spread: {_met(s['search']['liar_spread']['ratio'] > 1)}",
    ),
    (
        "object_store",
        _object_store,
        "memory.cifar_sized.object_store_ratio",
        lambda s: (
            f"<= {GOALS['object_store_ratio']:g}x: "
            f"{_met(s['memory']['cifar_sized']['object_store_ratio'] <= 1.05)}"
        ),
    ),
    ("sharing", _sharing, None, lambda s: "-"),
    ("throughput", _throughput, "scale.trials_per_minute", lambda s: "-"),
    ("suggest", _suggest, "scale.suggest_p99_ms scale.suggest_cpu_p99_ms", _suggest_goal),
    (
        "growth",
        _growth,
        "scale.growth.driver_rss_mb.ratio",
        _linear("driver_rss_mb", "journal_bytes"),
    ),
    ("snapshot", _snapshot, "scale.growth.snapshot_bytes.ratio", _linear("snapshot_bytes")),
    ("driver_cpu", _driver_cpu, "scale.driver_cpu_s_per_trial_epoch", _driver_goal),
    ("gpu", _gpu, None, lambda s: "-"),
)


def _other(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value < 0.1 else f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return str(value)


# Rows whose goal is a threshold on their key: (limit, whether the value must be at most it).
THRESHOLDS = {
    "overhead.one_fit_ratio": (GOALS["one_fit_ratio"], False),
    "overhead.one_fit_ratio_short": (GOALS["one_fit_ratio"], False),
    "overhead.whole_epoch_ratio": (GOALS["whole_epoch_ratio"], True),
    "overhead.whole_epoch_ratio_short": (GOALS["whole_epoch_ratio"], True),
    "search.ratio_to_target": (GOALS["search_ratio"], True),
}


def run_label(path: str, result: Json) -> str:
    """``HH:MM`` of a run: the time in its file name (``...-1013.json``), else when it began."""
    stem = Path(path).stem.rsplit("-", 1)[-1]
    if len(stem) == 4 and stem.isdigit():
        return f"{stem[:2]}:{stem[2:]}"
    return str(result["started"])[11:16]


class Other:
    """Another run whose figures go beside the main run's, some sections left out."""

    def __init__(self, path: str, result: Json, unquoted: Sequence[str] = ()) -> None:
        self.path, self.result, self.unquoted = path, result, tuple(unquoted)
        self.label = run_label(path, result)

    def value(self, key: str) -> Any:
        return None if key.split(".")[0] in self.unquoted else _get(self.result["sections"], key)

    def cite(self) -> str:
        left_out = "".join(f"; its {s} section not quoted" for s in self.unquoted)
        return f"`{self.path}` ({self.label}{left_out})"


def reduced_table(result: Json, others: Sequence[Other] = ()) -> str:
    """The sections of one ``run.py --reduced`` run, one row per figure, with the same figure
    of each of ``others`` beside it (newest first), and which of them met a threshold goal."""
    s = result["sections"]
    described = _described(s, result["sizes"])
    others = sorted(others, key=lambda o: str(o.result["started"]), reverse=True)
    lines = ["| what | measured | other runs | goal |", "|---|---|---|---|"]
    for row, measured, key, goal in ROWS:
        beside, verdict = "-", goal(s)
        if key is not None:
            values = [(o.label, [o.value(k) for k in key.split()]) for o in others]
            values = [(label, v) for label, v in values if None not in v]
            beside = (
                "; ".join(f"{label}: {' / '.join(map(_other, v))}" for label, v in values) or "-"
            )
            if key in THRESHOLDS and values:
                limit, at_most = THRESHOLDS[key]
                met = [label for label, (v,) in values if (v <= limit if at_most else v >= limit)]
                verdict += (
                    f"; other runs that met it: {', '.join(met)}"
                    if met
                    else "; no other run met it"
                )
        lines.append(f"| {described[row]} | {measured(s)} | {beside} | {verdict} |")
    return "\n".join(lines)


def reduced_block(path: str, result: Json, others: Sequence[Other] = ()) -> str:
    """The ``performance-reduced`` block: the run, its machine, the other runs, the table."""
    m = result["machine"]
    head = (
        f"From `{path}` ({str(result['started'])[:10]}, started {_clock(result)}, "
        f"{result['mode']} sizes, {result['total_seconds'] / 60:.1f} min; {m['cpu']}, "
        f"{m['cores']} cores, {m['memory_gb']} GB RAM, GPU: {m['gpu']}; Python "
        f"{m['python']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}, Ray {m['ray']}, "
        f"Optuna {m['optuna']})"
    )
    if others:
        ordered = sorted(others, key=lambda o: str(o.result["started"]), reverse=True)
        head += "; the same figures of other runs: " + ", ".join(o.cite() for o in ordered)
    return head + ".\n\n" + reduced_table(result, others)


# -- the full-size scale runs ----------------------------------------------------------------


def scale_table(results: Sequence[Json]) -> str:
    """The full-size scale section of each run, side by side at each point (``a; b``)."""
    runs = [r["sections"]["scale"] for r in results]
    finished = [p["finished"] for p in runs[0]["points"]]

    def cell(i: int, fmt: Callable[[Json], str]) -> str:
        return "; ".join(fmt(run["points"][i]) for run in runs)

    lines = [
        "| finished | suggest p50 / p99 ms | p99 of the thread's CPU ms | driver RSS MB | "
        "journal MB | Ray snapshot MB | driver CPU s per trial-epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, n in enumerate(finished):
        last = i == len(finished) - 1

        def p99(p: Json, bold: bool = last) -> str:
            return f"**{p['suggest_p99_ms']:.1f}**" if bold else f"{p['suggest_p99_ms']:.1f}"

        lines.append(
            "| "
            + " | ".join(
                [
                    f"{n:,}",
                    cell(i, lambda p: f"{p['suggest_p50_ms']:.1f} / {p99(p)}"),
                    cell(i, lambda p: f"{p['suggest_cpu_p99_ms']:.1f}"),
                    cell(i, lambda p: f"{p['driver_rss_mb']:.0f}"),
                    cell(i, lambda p: f"{p['journal_bytes'] / 1e6:.2f}"),
                    cell(i, lambda p: f"{p['snapshot_bytes'] / 1e6:.1f}"),
                    cell(i, lambda p: f"{p['driver_cpu_s_per_trial_epoch']:.4f}"),
                ]
            )
            + " |"
        )
    whole = [
        f"{run['trials']:,} trials, {run['concurrent']} at once on {run['logical_gpus']} "
        f"logical GPUs: {run['trials_per_minute']:.1f} trials per minute, snapshots "
        f"{run['snapshot_s_total']:.1f} s of {run['wall_s']:.0f} s (the longest "
        f"{run['snapshot_s_max']:.2f} s), {run['suggest_declined']:,} calls declined, "
        f"growth per trial from the 2nd to the 4th quarter: driver RSS "
        f"x{run['growth']['driver_rss_mb']['ratio']:.2f}, journal "
        f"x{run['growth']['journal_bytes']['ratio']:.2f}, snapshot "
        f"x{run['growth']['snapshot_bytes']['ratio']:.2f}"
        for run in runs
    ]
    return "\n".join(lines) + "\n\nWhole runs: " + "; ".join(whole) + "."


def scale_block(results: Mapping[str, Json]) -> str:
    """The ``performance-scale-full`` block: which runs, then their table."""
    cited = " and ".join(
        f"`{p}` (started {str(r['started'])[:10]} {_clock(r)})" for p, r in results.items()
    )
    return f"From {cited}; each cell is one run, then the other.\n\n" + scale_table(
        list(results.values())
    )


def _load(path: str) -> Json:
    return json.loads((REPO / path).read_text(encoding="utf-8"))


def rerender(block: str) -> str:
    """What the renderer makes of the runs a page's block cites (its first line): the block
    as it must read."""
    head = block.strip().split("\n", 1)[0]
    cited = re.findall(r"`([^`]+\.json)`( \([^)]*\))?", head)
    if head.startswith("From `") and "; each cell is one run" in head:
        return scale_block({p: _load(p) for p, _ in cited})
    (main_path, _), *rest = cited
    others = [
        Other(p, _load(p), re.findall(r"its (\w+) section not quoted", note)) for p, note in rest
    ]
    return reduced_block(main_path, _load(main_path), others)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "json",
        nargs="+",
        help="run.py's JSON, relative to the repository (with --scale: each full-size scale run)",
    )
    parser.add_argument(
        "--also",
        nargs="*",
        default=[],
        help="other runs whose figures go "
        "beside the first's; PATH:SECTION,... leaves those sections out",
    )
    parser.add_argument(
        "--scale", action="store_true", help="render the performance-scale-full block instead"
    )
    parser.add_argument(
        "--page",
        type=Path,
        help="write the block between this page's markers, e.g. docs/performance.md",
    )
    args = parser.parse_args(argv)
    if args.scale:
        name, block = "performance-scale-full", scale_block({p: _load(p) for p in args.json})
    else:
        name = "performance-reduced"
        others = []
        for spec in args.also:
            path, _, unquoted = spec.partition(":")
            others.append(Other(path, _load(path), [s for s in unquoted.split(",") if s]))
        block = reduced_block(args.json[0], _load(args.json[0]), others)
    print(block)
    if args.page:
        from benchmarks.common import replace_block

        text = args.page.read_text(encoding="utf-8")
        args.page.write_text(replace_block(text, name, block), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
