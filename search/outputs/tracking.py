"""A search's MLflow store, where teams already look (``tracking:`` in the spec).

One parent run per search (``run``, and every ``resume`` and ``extend`` of it, by the tag
``finetune_search.experiment_dir``), and one nested run per trial, found again by their tags.
Without ``tracking.uri`` the store is local, in the experiment folder (``mlflow.db`` and
``mlartifacts/``): no server needed, and
``mlflow ui --backend-store-uri sqlite:///<experiment>/mlflow.db`` shows it. The driver's Ray
callback (:class:`search.driver.tracking.MlflowTracker`) writes the search into it; ``export``
logs the best model to the parent run (:func:`log_export`). Free of Ray.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
import urllib.error
import urllib.request
from typing import Any

from search import storage
from search._validate import one_line
from search.errors import SpecError
from search.outputs.experiment import local_mirror_dir
from search.outputs.study import METRIC
from search.spec import ExperimentSpec

INSTALL_HINT = 'pip install -e ".[mlflow]"'
LOCAL_STORE = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"
TAG_EXPERIMENT = "finetune_search.experiment_dir"
TAG_ROLE = "finetune_search.run"  # "search" on the parent run, "trial" on a trial's
TAG_TRIAL = "finetune_search.trial_id"
TAG_STATE = "finetune_search.state"
TAG_STOP = "finetune_search.stop_reason"
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own tag for a nested run
HEALTH_TIMEOUT_S = 5


def tracking_uri(spec: ExperimentSpec, experiment_dir: str) -> str:
    """The spec's ``tracking.uri``, or the local store in the experiment folder (in the
    driver's local mirror for a cloud experiment: SQLite needs a local file)."""
    if spec.tracking is not None and spec.tracking.uri:
        return spec.tracking.uri
    return f"sqlite:///{os.path.join(local_mirror_dir(experiment_dir), LOCAL_STORE)}"


def _client(uri: str) -> Any:
    if importlib.util.find_spec("mlflow") is None:
        raise SpecError(f"tracking.backend: mlflow is not installed; {INSTALL_HINT}")
    from mlflow import MlflowClient

    # MLflow's and its database migrations' start-up lines are not the search's (set after the
    # import: importing mlflow configures its logger).
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


def check_tracking(spec: ExperimentSpec, experiment_dir: str) -> None:
    """Fails fast, before Ray starts, when tracking cannot work: MLflow missing, or a tracking
    server that does not answer its health check.

    Raises:
        SpecError: ``tracking.uri: cannot reach ...`` or ``tracking.backend: ... installed``.
    """
    uri = tracking_uri(spec, experiment_dir)
    _client(uri)
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(
                f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S
            ) as answer:
                answer.read()
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise SpecError(
                f"tracking.uri: cannot reach the MLflow tracking server at {uri} ({one_line(err)})"
            ) from None


class MlflowStore:
    """The search's MLflow experiment and runs, found again by their tags."""

    def __init__(self, spec: ExperimentSpec, experiment_dir: str) -> None:
        self.uri = tracking_uri(spec, experiment_dir)
        self.client = _client(self.uri)
        self.experiment_dir = experiment_dir
        name = (spec.tracking.experiment if spec.tracking else None) or spec.name
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            # A local store keeps its artifacts in the experiment folder too; a server decides
            # for itself.
            local = spec.tracking is None or not spec.tracking.uri
            location = storage.join(experiment_dir, LOCAL_ARTIFACTS)
            if local and not storage.is_remote(location):
                location = f"file://{location}"
            self.experiment_id = self.client.create_experiment(
                name, artifact_location=location if local else None
            )

    def _find(self, tags: dict[str, str]) -> str | None:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1)
        return runs[0].info.run_id if runs else None

    def parent_run(self) -> str | None:
        """The search's parent run, or ``None`` when it has none yet."""
        return self._find({TAG_EXPERIMENT: self.experiment_dir, TAG_ROLE: "search"})

    def open_parent_run(self, name: str, params: dict[str, Any]) -> str:
        """The search's parent run, created with ``params`` the first time, running again."""
        run_id = self.parent_run()
        if run_id is None:
            run_id = self.client.create_run(
                self.experiment_id,
                run_name=name,
                tags={TAG_EXPERIMENT: self.experiment_dir, TAG_ROLE: "search"},
            ).info.run_id
            self.log(run_id, params=params)
        else:
            self.client.update_run(run_id, status="RUNNING")
        return run_id

    def open_trial_run(self, parent: str, trial_id: str, params: dict[str, Any]) -> str:
        """A trial's run nested under ``parent``: found again when the trial resumes."""
        run_id = self._find(
            {TAG_EXPERIMENT: self.experiment_dir, TAG_ROLE: "trial", TAG_TRIAL: trial_id}
        )
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run_id = self.client.create_run(
            self.experiment_id,
            run_name=f"trial_{trial_id}",
            tags={
                TAG_PARENT: parent,
                TAG_EXPERIMENT: self.experiment_dir,
                TAG_ROLE: "trial",
                TAG_TRIAL: trial_id,
            },
        ).info.run_id
        self.log(run_id, params=params)
        return run_id

    def log(
        self,
        run_id: str,
        *,
        params: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        step: int = 0,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Logs params, metrics at ``step`` and tags in one call."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()],
            params=[Param(k, str(v)) for k, v in sorted((params or {}).items())],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )


def log_export(
    spec: ExperimentSpec,
    experiment_dir: str,
    out_dir: str,
    files: list[str],
    best_trial_id: str,
    best_value: float,
) -> str:
    """Logs an export's files (the best model among them) to the search's parent run.

    Returns:
        A line saying where they went.

    Raises:
        SpecError: When the tracking store holds no run of this search.
    """
    store = MlflowStore(spec, experiment_dir)
    run_id = store.parent_run()
    if run_id is None:
        raise SpecError(
            f"tracking: no MLflow run of {experiment_dir} at {store.uri}; the "
            f"export's files are written in {out_dir}"
        )
    for name in files:
        store.client.log_artifact(run_id, os.path.join(out_dir, name), artifact_path="export")
    store.log(
        run_id,
        metrics={f"best_{METRIC}": best_value},
        tags={"finetune_search.best_trial_id": best_trial_id},
    )
    return f"MLflow: logged {', '.join(files)} to run {run_id} at {store.uri}"
