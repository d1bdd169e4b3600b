"""Plain-text views of a search's results, for the terminal."""

from __future__ import annotations

from typing import Any


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def results_table(summary: Any, limit: int = 30) -> str:
    """The trials as a fixed-width table, best first (failed trials last).

    Args:
        summary: A :class:`search.service.SearchSummary`.
        limit: At most this many rows.
    """
    trials = sorted(summary.trials,
                    key=lambda t: (t.failed, -(t.best.get("val_accuracy", -1.0) if t.best
                                                else -1.0)))
    params = sorted({k for t in trials for k in t.config})
    header = ["trial", "status", "epochs", "best_val_acc", "final_val_acc", *params]
    rows = [header]
    for trial in trials[:limit]:
        status = trial.status(summary.max_t)
        rows.append([
            trial.trial_id, status, str(trial.epochs_run),
            _cell(trial.best.get("val_accuracy", "-")),
            _cell(trial.final.get("val_accuracy", "-")),
            *(_cell(trial.config.get(k, "-")) for k in params),
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if len(trials) > limit:
        lines.append(f"... {len(trials) - limit} more")
    return "\n".join(lines)
