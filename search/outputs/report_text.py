"""Plain-text views of a search's results, for the terminal."""

from __future__ import annotations

from typing import Any

from search.outputs.results import rank_trials
from search.outputs.study import METRIC


def format_value(value: Any) -> str:
    """A value for a progress line or a table cell (floats to 4 significant digits)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_table(rows: list[list[str]]) -> list[str]:
    """Rows of cells (the first the header) as left-aligned fixed-width lines."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def results_table(summary: Any, limit: int = 30) -> str:
    """The trials as a fixed-width table, best first (failed trials last).

    Args:
        summary: A :class:`search.driver.service.SearchSummary`.
        limit: At most this many rows.
    """
    trials = rank_trials(summary.trials, include_failed=True)
    params = sorted({k for t in trials for k in t.config})
    header = ["trial", "status", "epochs", f"best_{METRIC}", f"final_{METRIC}", *params]
    rows = [header]
    for trial in trials[:limit]:
        rows.append(
            [
                trial.trial_id,
                trial.status(summary.max_t).value,
                str(trial.epochs_run),
                format_value(trial.best.get(METRIC, "-")),
                format_value(trial.final.get(METRIC, "-")),
                *(format_value(trial.config.get(k, "-")) for k in params),
            ]
        )
    lines = format_table(rows)
    if len(trials) > limit:
        lines.append(f"... {len(trials) - limit} more")
    return "\n".join(lines)
