"""The viewers the README points to, opening a real search's folder as they do: optuna-dashboard
on the journal (its Python API, no browser) and TensorBoard's own event reader on every trial."""

from __future__ import annotations

import io
import json
import wsgiref.util

import pytest

from search.outputs.results import load_trials
from search.outputs.study import ATTR_RAY_TRIAL, STUDY_FILE

pytestmark = pytest.mark.slow


def _get(app, path: str) -> dict:
    environ: dict = {}
    wsgiref.util.setup_testing_defaults(environ)
    environ.update(
        PATH_INFO=path, REQUEST_METHOD="GET", QUERY_STRING="", **{"wsgi.input": io.BytesIO()}
    )
    status: list[str] = []
    body = b"".join(app(environ, lambda code, headers, *exc: status.append(code)))
    assert status[0].startswith("200"), (path, status, body[:500])
    return json.loads(body)


def test_optuna_dashboard_opens_the_journal_with_every_trial_and_its_epochs(tracked_search):
    from optuna_dashboard import wsgi

    experiment = tracked_search.experiment
    # What `optuna-dashboard results/<name>/optuna_study.journal` does with its argument.
    app = wsgi(str(experiment / STUDY_FILE))
    studies = _get(app, "/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["tracked"]
    detail = _get(app, f"/api/studies/{studies[0]['study_id']}")
    trials = {t.trial_id: t for t in load_trials(str(experiment))}
    shown = {
        next(a["value"] for a in t["user_attrs"] if a["key"] == ATTR_RAY_TRIAL): t
        for t in detail["trials"]
    }
    assert set(shown) == set(trials)
    for trial_id, trial in trials.items():
        expected = {"complete": "Complete", "stopped": "Pruned"}[trial.status(3).value]
        assert shown[trial_id]["state"] == expected
        assert sorted((v["step"], v["value"]) for v in shown[trial_id]["intermediate_values"]) == [
            (r["epoch"], pytest.approx(r["val_accuracy"])) for r in trial.history
        ]


def test_tensorboard_reads_every_trials_metrics_per_epoch(tracked_search):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trials = load_trials(str(tracked_search.experiment))
    assert trials
    for trial in trials:
        events = EventAccumulator(trial.path)
        events.Reload()
        tags = events.Tags()["scalars"]
        tag = next(t for t in tags if t.endswith("/val_accuracy"))
        assert [(e.step, e.value) for e in events.Scalars(tag)] == [
            (r["epoch"], pytest.approx(r["val_accuracy"], abs=1e-6)) for r in trial.history
        ]
        assert any(t.endswith("/loss") for t in tags)
