"""The report's baseline: the values it really trained with, and its curve drawn on top."""

from __future__ import annotations

from search.outputs.report import (
    BASELINE_COLOR,
    learning_curves_figure,
    trained_values,
)
from search.outputs.results import TrialRecord
from tests.helpers import tiny_spec


def _trial(trial_id: str, config: dict, values: list[float]) -> TrialRecord:
    history = [
        {"epoch": i + 1, "val_accuracy": v, "trial_id": trial_id} for i, v in enumerate(values)
    ]
    return TrialRecord(
        trial_id=trial_id,
        round="main",
        path="",
        config=config,
        history=history,
        ray_status="TERMINATED",
    )


def test_baseline_values_are_what_the_trial_trained_with_not_the_original_method(tmp_path):
    spec = tiny_spec(tmp_path)  # fixes dense_units: 32, where the original method has 256
    baseline = _trial("b", {**spec.baseline_point(), "learning_rate": 0.001}, [0.5, 0.6, 0.7])
    values = trained_values(baseline, spec)
    assert values["dense_units"] == 32
    assert values["noise_std"] == 0.01 and values["upsample"] == 2 and values["dropout"] == 0.75
    assert values["learning_rate"] == 0.001
    assert values["input_convs"] == 0 and values["freeze"] == 0  # the model's defaults


def test_baseline_curve_is_drawn_above_every_trial_line_and_label(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    spec = tiny_spec(tmp_path)
    point = spec.baseline_point()
    # Other trials end exactly where the baseline ends, so their labels sit on its curve.
    trials = [_trial("b", dict(point), [0.5, 0.6, 0.7])] + [
        _trial(f"t{i}", {**point, "dropout": 0.3 + i / 10}, [0.5, 0.6, 0.7]) for i in range(4)
    ]
    ax = learning_curves_figure(trials, spec).axes[0]
    green = [line for line in ax.lines if line.get_color() == BASELINE_COLOR]
    others = [line for line in ax.lines if line.get_color() != BASELINE_COLOR]
    assert green and others and ax.texts
    floor = min(line.get_zorder() for line in green)
    assert floor > max(line.get_zorder() for line in others)
    assert floor > max(text.get_zorder() for text in ax.texts)
