"""Tracking a search in MLflow, where teams already look (``tracking:`` in the spec).

One parent run per search (``run``, and every ``resume`` and ``extend`` of it, by the tag
``finetune_search.experiment_dir``), and one nested run per trial with its searched params,
per-epoch metrics (step = epoch) and final state in Optuna's words (``finetune_search.state``
COMPLETE / PRUNED / FAIL; MLflow's run status FINISHED, or FAILED for FAIL). ``export`` logs
the best model to the parent run. Without ``tracking.uri`` the store is local, in the
experiment folder (``mlflow.db`` and ``mlartifacts/``): no server needed, and
``mlflow ui --backend-store-uri sqlite:///<experiment>/mlflow.db`` shows it.

:class:`MlflowTracker` is a Ray Tune callback on the driver, like the progress lines: trials
never talk to MLflow, so a trial on any node is tracked the same. Ray's own
``MLflowLoggerCallback`` nests no runs and says FINISHED for pruned and NaN-failed trials alike.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any, cast

from ray import tune

from search._validate import one_line
from search.driver.study import METRIC, STATE_FAIL, TIME_ATTR, trial_outcome
from search.errors import SpecError
from search.outputs import storage
from search.outputs.experiment import local_mirror_dir
from search.spec import ExperimentSpec
from search.trial.report import METRICS

INSTALL_HINT = 'pip install -e ".[mlflow]"'
LOCAL_STORE = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"
TAG_EXPERIMENT = "finetune_search.experiment_dir"
TAG_ROLE = "finetune_search.run"  # "search" on the parent run, "trial" on a trial's
TAG_TRIAL = "finetune_search.trial_id"
TAG_STATE = "finetune_search.state"
TAG_STOP = "finetune_search.stop_reason"
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own tag for a nested run
TRACKED_METRICS = (*METRICS, "images_per_s", "gpu_seconds", "wall_seconds")
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
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health",
                                        timeout=HEALTH_TIMEOUT_S) as answer:
                answer.read()
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise SpecError(f"tracking.uri: cannot reach the MLflow tracking server at {uri} "
                            f"({one_line(err)})") from None


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
                name, artifact_location=location if local else None)

    def _find(self, tags: dict[str, str]) -> str | None:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=query,
                                       max_results=1)
        return runs[0].info.run_id if runs else None

    def parent_run(self) -> str | None:
        """The search's parent run, or ``None`` when it has none yet."""
        return self._find({TAG_EXPERIMENT: self.experiment_dir, TAG_ROLE: "search"})

    def open_parent_run(self, name: str, params: dict[str, Any]) -> str:
        """The search's parent run, created with ``params`` the first time, running again."""
        run_id = self.parent_run()
        if run_id is None:
            run_id = self.client.create_run(self.experiment_id, run_name=name,
                                            tags={TAG_EXPERIMENT: self.experiment_dir,
                                                  TAG_ROLE: "search"}).info.run_id
            self.log(run_id, params=params)
        else:
            self.client.update_run(run_id, status="RUNNING")
        return run_id

    def open_trial_run(self, parent: str, trial_id: str, params: dict[str, Any]) -> str:
        """A trial's run nested under ``parent``: found again when the trial resumes."""
        run_id = self._find({TAG_EXPERIMENT: self.experiment_dir, TAG_ROLE: "trial",
                             TAG_TRIAL: trial_id})
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run_id = self.client.create_run(
            self.experiment_id, run_name=f"trial_{trial_id}",
            tags={TAG_PARENT: parent, TAG_EXPERIMENT: self.experiment_dir,
                  TAG_ROLE: "trial", TAG_TRIAL: trial_id}).info.run_id
        self.log(run_id, params=params)
        return run_id

    def log(self, run_id: str, *, params: dict[str, Any] | None = None,
            metrics: dict[str, float] | None = None, step: int = 0,
            tags: dict[str, str] | None = None) -> None:
        """Logs params, metrics at ``step`` and tags in one call."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()],
            params=[Param(k, str(v)) for k, v in sorted((params or {}).items())],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])


def _finite_metrics(result: dict[str, Any]) -> dict[str, float]:
    return {k: float(result[k]) for k in TRACKED_METRICS
            if isinstance(result.get(k), (int, float)) and not isinstance(result.get(k), bool)
            and result[k] == result[k] and abs(result[k]) != float("inf")}


class MlflowTracker(tune.Callback):
    """Logs the search to MLflow from the driver: a parent run, a nested run per trial.

    A failing MLflow call does not stop the search: the first failure is said once on the
    console and tracking stops for the rest of this driver's run.
    """

    def __init__(self, spec: ExperimentSpec, experiment_dir: str) -> None:
        self.spec = spec
        self.experiment_dir = experiment_dir
        self.store: MlflowStore | None = None
        self.parent: str | None = None
        self.runs: dict[str, str] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self.broken = False

    def __getstate__(self) -> dict[str, Any]:
        # The tuner pickles its callbacks; the MLflow client is reopened on setup.
        return {**self.__dict__, "store": None, "parent": None, "runs": {}}

    def _safely(self, action: Any, *args: Any) -> None:
        if self.broken:
            return
        try:
            if self.store is None:
                self.store = MlflowStore(self.spec, self.experiment_dir)
            action(*args)
        except Exception as err:  # noqa: BLE001 - tracking must never stop a search
            self.broken = True
            print(f"warning: MLflow tracking stopped for this run ({one_line(err)}); the "
                  f"search goes on", file=sys.stderr, flush=True)

    @property
    def live(self) -> MlflowStore:
        """The store, which ``_safely`` opens before any action runs."""
        if self.store is None:
            raise RuntimeError("the MLflow store is used before it was opened")
        return self.store

    def setup(self, stop: Any = None, num_samples: int | None = None,
              total_num_samples: int | None = None, **info: Any) -> None:
        def open_parent() -> None:
            params = {**self.spec.fixed_config(), "max_t": self.spec.max_t,
                      "num_samples": self.spec.search.num_samples,
                      "algorithm": self.spec.search.algorithm,
                      "scheduler": self.spec.scheduler.name}
            self.parent = self.live.open_parent_run(self.spec.name, params)

        self._safely(open_parent)

    def _run_of(self, trial: Any) -> str:
        if trial.trial_id not in self.runs:
            self.runs[trial.trial_id] = self.live.open_trial_run(
                cast(str, self.parent), trial.trial_id, dict(trial.config))
        return self.runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely(self._run_of, trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self.last[trial.trial_id] = result

        def log() -> None:
            self.live.log(self._run_of(trial), metrics=_finite_metrics(result),
                           step=int(result.get(TIME_ATTR, 0)))

        if not result.get("trial_failed"):
            self._safely(log)

    def _finish(self, trial: Any, error: bool) -> None:
        state, reason = trial_outcome(self.last.get(trial.trial_id), error, self.spec.max_t)

        def end() -> None:
            run_id = self._run_of(trial)
            self.live.log(run_id, tags={TAG_STATE: state, TAG_STOP: reason})
            self.live.client.set_terminated(
                run_id, status="FAILED" if state == STATE_FAIL else "FINISHED")

        self._safely(end)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, error=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.parent is not None:
            self._safely(self.live.client.set_terminated, self.parent, "FINISHED")


def log_export(spec: ExperimentSpec, experiment_dir: str, out_dir: str, files: list[str],
               best_trial_id: str, best_value: float) -> str:
    """Logs an export's files (the best model among them) to the search's parent run.

    Returns:
        A line saying where they went.

    Raises:
        SpecError: When the tracking store holds no run of this search.
    """
    store = MlflowStore(spec, experiment_dir)
    run_id = store.parent_run()
    if run_id is None:
        raise SpecError(f"tracking: no MLflow run of {experiment_dir} at {store.uri}; the "
                        f"export's files are written in {out_dir}")
    for name in files:
        store.client.log_artifact(run_id, os.path.join(out_dir, name), artifact_path="export")
    store.log(run_id, metrics={f"best_{METRIC}": best_value},
              tags={"finetune_search.best_trial_id": best_trial_id})
    return f"MLflow: logged {', '.join(files)} to run {run_id} at {store.uri}"
