"""``finetune-search report``: one self-contained HTML page (and its PNGs) for a search.

Learning curves of every trial (stopped ones end visibly at their ASHA rung), best-so-far
against trial count and GPU-hours, parameter slices and Optuna's parameter importance, the top
trials table, and the baseline (original method) trial highlighted throughout.
"""

from __future__ import annotations

import base64
import html
import io
import os
from typing import Any, cast

from search import storage
from search.outputs.export import load_experiment
from search.outputs.report_text import format_value
from search.outputs.results import TrialRecord, best_trial, rank_trials
from search.outputs.study import METRIC, MODE, REASON_BUDGET, TIME_ATTR, TrialStatus
from search.spec import ORIGINAL_METHOD, ExperimentSpec

STATUS_COLORS = {
    TrialStatus.COMPLETE: "#1f77b4",
    TrialStatus.STOPPED: "#999999",
    TrialStatus.FAILED: "#d62728",
    TrialStatus.UNFINISHED: "#ff7f0e",
}
BASELINE_COLOR = "#2ca02c"


def is_baseline(trial: TrialRecord, spec: ExperimentSpec) -> bool:
    """Whether this trial ran the original method's settings (the baseline)."""
    point = spec.baseline_point()
    return bool(point) and all(trial.config.get(k) == v for k, v in point.items())


def trained_values(trial: TrialRecord, spec: ExperimentSpec) -> dict[str, Any]:
    """What ``trial`` actually trained with for the original method's settings and its
    searched ones: its drawn values over the spec's fixed ones over the model's defaults."""
    from dataclasses import fields

    from model_zoo import ModelConfig

    defaults = {f.name: f.default for f in fields(ModelConfig)}
    trained = {**defaults, **spec.fixed_config(), **trial.config}
    return {
        k: trained[k]
        for k in dict.fromkeys([*ORIGINAL_METHOD, *sorted(trial.config)])
        if k in trained
    }


def _figure_png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


# Drawing order of the learning curves: trial labels at the bottom, then the trials' lines,
# then the baseline on top, so overlapping labels never hide its green.
LABEL_ZORDER, TRIAL_ZORDER, BASELINE_ZORDER = 1, 2, 3


def learning_curves_figure(trials: list[TrialRecord], spec: ExperimentSpec) -> Any:
    """The learning-curves figure (one line per trial, the baseline drawn above the rest)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for trial in trials:
        rows = trial.good_rows
        if not rows:
            continue
        xs = [r[TIME_ATTR] for r in rows]
        ys = [r[METRIC] for r in rows]
        status = trial.status(spec.max_t)
        base = is_baseline(trial, spec)
        color = BASELINE_COLOR if base else STATUS_COLORS.get(status, "#333333")
        zorder = BASELINE_ZORDER if base else TRIAL_ZORDER
        ax.plot(
            xs,
            ys,
            color=color,
            lw=2.5 if base else 1,
            alpha=1 if base else 0.7,
            label="baseline (original method)" if base else None,
            zorder=zorder,
        )
        if status == TrialStatus.STOPPED:  # cut at its ASHA rung: mark the cut
            ax.plot(xs[-1], ys[-1], marker="x", color=color, ms=7, zorder=zorder)
        ax.annotate(trial.trial_id, (xs[-1], ys[-1]), fontsize=6, alpha=0.7, zorder=LABEL_ZORDER)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(METRIC)
    ax.set_title("Learning curves (x = stopped by ASHA, grey = stopped, blue = complete)")
    if any(is_baseline(t, spec) for t in trials):
        ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def learning_curves(trials: list[TrialRecord], spec: ExperimentSpec) -> bytes:
    return _figure_png(learning_curves_figure(trials, spec))


def best_so_far(trials: list[TrialRecord]) -> bytes:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    best, counts, values, gpu_hours, hours = float("-inf"), [], [], [], 0.0
    for index, trial in enumerate(trials, start=1):
        hours += trial.gpu_seconds / 3600
        if trial.best and not trial.failed:
            best = max(best, cast(float, trial.best_value))
        counts.append(index)
        values.append(best if best > float("-inf") else float("nan"))
        gpu_hours.append(hours)
    left.step(counts, values, where="post")
    left.set_xlabel("trials started")
    left.set_ylabel(f"best {METRIC} so far")
    right.step(gpu_hours, values, where="post")
    right.set_xlabel("GPU-hours spent")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _figure_png(fig)


def parameter_slices(trials: list[TrialRecord], spec: ExperimentSpec) -> bytes | None:
    import matplotlib.pyplot as plt

    keys = [k for k in spec.space if spec.space[k].kind != "fixed"]
    scored = [t for t in trials if t.best and not t.failed]
    if not keys or not scored:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(t.config.get(key), t.best_value, t) for t in scored if key in t.config]
        for value, score, trial in points:
            x = value if isinstance(value, (int, float)) else str(value)
            base = is_baseline(trial, spec)
            ax.scatter(
                [x],
                [score],
                color=BASELINE_COLOR
                if base
                else STATUS_COLORS.get(trial.status(spec.max_t), "#333"),
                s=40 if base else 18,
            )
        if spec.space[key].kind == "loguniform":
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"best {METRIC}")
    fig.suptitle("Parameter slices (green = baseline)")
    return _figure_png(fig)


def parameter_importance(experiment_dir: str, spec: ExperimentSpec) -> dict[str, float]:
    """Optuna's fANOVA importances over the study's finished trials ({} when too few)."""
    import optuna

    from search.outputs.study import load_study_readonly

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study_readonly(experiment_dir, spec.name)
    if study is None:
        return {}
    finished = [
        t
        for t in study.trials
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        and t.value is not None
    ]
    if len(finished) < 3:
        return {}
    try:
        # fANOVA explains the variance of the objective, whichever direction is optimised.
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(
            optuna.importance.get_param_importances(
                study, evaluator=evaluator, target=lambda t: cast(float, t.value)
            )
        )
    except (ValueError, RuntimeError):
        # Importances need at least two distinct values per parameter; say nothing instead.
        return {}


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return f"<p><em>{html.escape(alt)}: not enough data.</em></p>"
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(trials: list[TrialRecord], spec: ExperimentSpec) -> str:
    keys = sorted({k for t in trials for k in t.config})
    ranked = rank_trials(trials, include_failed=True)
    head = "".join(
        f"<th>{html.escape(h)}</th>"
        for h in [
            "rank",
            "trial",
            "status",
            "stop reason",
            "epochs",
            f"best {METRIC}",
            "GPU-s",
            *keys,
        ]
    )
    rows = []
    for rank, trial in enumerate(ranked, start=1):
        base = is_baseline(trial, spec)
        cells = [
            str(rank),
            trial.trial_id + (" (baseline)" if base else ""),
            trial.status(spec.max_t).value,
            trial.stop_reason(spec.max_t),
            str(trial.epochs_run),
            f"{trial.best_value:.4f}" if trial.best else "-",
            f"{trial.gpu_seconds:.0f}",
            *(format_value(trial.config.get(k, "-")) for k in keys),
        ]
        style = ' class="baseline"' if base else ""
        rows.append(
            f"<tr{style}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
        )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def write_report(experiment_dir: str, out_dir: str | None = None) -> str:
    """Writes ``report.html`` (self-contained) and the PNGs it shows.

    Args:
        experiment_dir: The experiment folder.
        out_dir: Where to write; default the experiment folder's ``report/``.

    Returns:
        The HTML file's path.
    """
    import matplotlib

    matplotlib.use("Agg")
    spec, trials = load_experiment(experiment_dir)
    out_dir = out_dir or (
        os.path.abspath(f"{spec.name}-report")
        if storage.is_remote(experiment_dir)
        else os.path.join(experiment_dir, "report")
    )
    os.makedirs(out_dir, exist_ok=True)
    figures = {
        "learning_curves.png": learning_curves(trials, spec),
        "best_so_far.png": best_so_far(trials),
        "parameter_slices.png": parameter_slices(trials, spec),
    }
    for name, png in figures.items():
        if png is not None:
            with (
                storage.atomic_path(storage.confined(out_dir, name)) as tmp,
                open(tmp, "wb") as handle,
            ):
                handle.write(png)
    importance = parameter_importance(experiment_dir, spec)
    baseline = next((t for t in trials if is_baseline(t, spec)), None)
    best = best_trial(trials)
    counts: dict[str, int] = {}
    for trial in trials:
        status = trial.status(spec.max_t).value
        counts[status] = counts.get(status, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    gpu_hours = sum(t.gpu_seconds for t in trials) / 3600
    device_hours = sum(t.wall_seconds for t in trials) / 3600
    lines = [
        f"<p>{len(trials)} trials ({summary}); max_t = {spec.max_t} epochs; Keras backend "
        f"{html.escape(spec.train.backend)}; "
        f"{gpu_hours:.2f} GPU-hours, {device_hours:.2f} device-hours (trials' time holding "
        f"their devices). Metric: {METRIC} ({MODE}).</p>",
    ]
    budgets = [
        f"{limit:g} {unit}"
        for limit, unit in (
            (spec.search.budget_gpu_hours, "GPU-hours"),
            (spec.search.budget_device_hours, "device-hours"),
        )
        if limit is not None
    ]
    if budgets:
        by_budget = sum(t.stop_reason(spec.max_t) == REASON_BUDGET for t in trials)
        lines.append(
            f"<p><b>Budget:</b> {' and '.join(budgets)}; {by_budget} trial(s) "
            f"stopped by it at an epoch boundary.</p>"
        )
    if best:
        lines.append(
            f"<p><b>Best:</b> trial {html.escape(best.trial_id)}, {METRIC} "
            f"{best.best_value:.4f} at epoch {best.best.get(TIME_ATTR)}.</p>"
        )
    if baseline and baseline.best:
        values = ", ".join(
            f"{k}={format_value(v)}" for k, v in trained_values(baseline, spec).items()
        )
        lines.append(
            f"<p class='baseline'><b>Baseline</b> (the original method, as it "
            f"trained: {html.escape(values)}): trial "
            f"{html.escape(baseline.trial_id)}, {METRIC} "
            f"{baseline.best_value:.4f}.</p>"
        )
    importance_html = (
        "<ul>"
        + "".join(f"<li>{html.escape(k)}: {v:.3f}</li>" for k, v in importance.items())
        + "</ul>"
        if importance
        else "<p><em>Parameter importance needs at least 3 finished trials "
        "with varied parameters.</em></p>"
    )
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(spec.name)}: search report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px}}
tr.baseline td,p.baseline{{background:#e5f5e0}}img{{max-width:100%}}</style></head><body>
<h1>Search report: {html.escape(spec.name)}</h1>
{"".join(lines)}
<h2>Learning curves</h2>{_img(figures["learning_curves.png"], "learning curves")}
<h2>Best so far</h2>{_img(figures["best_so_far.png"], "best so far")}
<h2>Parameters</h2>{_img(figures["parameter_slices.png"], "parameter slices")}
<h3>Parameter importance (Optuna)</h3>{importance_html}
<h2>Trials</h2>{_table(trials, spec)}
</body></html>
"""
    with (
        storage.atomic_path(storage.confined(out_dir, "report.html")) as tmp,
        open(tmp, "w", encoding="utf-8") as f,
    ):
        f.write(page)
    return os.path.join(out_dir, "report.html")
