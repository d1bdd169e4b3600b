"""Tracking a search in MLflow from the driver (``tracking:`` in the spec).

A nested run per trial with its searched params, per-epoch metrics (step = epoch) and final
state in Optuna's words (``finetune_search.state`` COMPLETE / PRUNED / FAIL; MLflow's run status
FINISHED, or FAILED for FAIL), under the search's parent run; the store itself, its runs and
tags are :mod:`search.outputs.tracking`'s.

:class:`MlflowTracker` is a Ray Tune callback on the driver, like the progress lines: trials
never talk to MLflow, so a trial on any node is tracked the same. Ray's own
``MLflowLoggerCallback`` nests no runs and says FINISHED for pruned and NaN-failed trials alike.
"""

from __future__ import annotations

import sys
from typing import Any, cast

from ray import tune

from search._validate import one_line
from search.outputs.study import STATE_FAIL, TIME_ATTR, trial_outcome
from search.outputs.tracking import TAG_STATE, TAG_STOP, MlflowStore
from search.spec import ExperimentSpec
from search.trial.report import METRICS

TRACKED_METRICS = (*METRICS, "images_per_s", "gpu_seconds", "wall_seconds")


def _finite_metrics(result: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(result[k])
        for k in TRACKED_METRICS
        if isinstance(result.get(k), (int, float))
        and not isinstance(result.get(k), bool)
        and result[k] == result[k]
        and abs(result[k]) != float("inf")
    }


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
            print(
                f"warning: MLflow tracking stopped for this run ({one_line(err)}); the "
                f"search goes on",
                file=sys.stderr,
                flush=True,
            )

    @property
    def live(self) -> MlflowStore:
        """The store, which ``_safely`` opens before any action runs."""
        if self.store is None:
            raise RuntimeError("the MLflow store is used before it was opened")
        return self.store

    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        def open_parent() -> None:
            params = {
                **self.spec.fixed_config(),
                "max_t": self.spec.max_t,
                "num_samples": self.spec.search.num_samples,
                "algorithm": self.spec.search.algorithm,
                "scheduler": self.spec.scheduler.name,
            }
            self.parent = self.live.open_parent_run(self.spec.name, params)

        self._safely(open_parent)

    def _run_of(self, trial: Any) -> str:
        if trial.trial_id not in self.runs:
            self.runs[trial.trial_id] = self.live.open_trial_run(
                cast(str, self.parent), trial.trial_id, dict(trial.config)
            )
        return self.runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely(self._run_of, trial)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self.last[trial.trial_id] = result

        def log() -> None:
            self.live.log(
                self._run_of(trial),
                metrics=_finite_metrics(result),
                step=int(result.get(TIME_ATTR, 0)),
            )

        if not result.get("trial_failed"):
            self._safely(log)

    def _finish(self, trial: Any, error: bool) -> None:
        state, reason = trial_outcome(self.last.get(trial.trial_id), error, self.spec.max_t)

        def end() -> None:
            run_id = self._run_of(trial)
            self.live.log(run_id, tags={TAG_STATE: state, TAG_STOP: reason})
            self.live.client.set_terminated(
                run_id, status="FAILED" if state == STATE_FAIL else "FINISHED"
            )

        self._safely(end)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, error=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.parent is not None:
            self._safely(self.live.client.set_terminated, self.parent, "FINISHED")
