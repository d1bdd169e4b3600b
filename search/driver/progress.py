"""Live progress: one line per trial start, epoch, ASHA stop and failure, with the counts."""

from __future__ import annotations

import sys
import time
from typing import Any

from ray import tune

from search.driver import watchdog
from search.outputs.report_text import format_value
from search.outputs.study import (
    METRIC,
    REASON_BUDGET,
    STOP_REASON,
    TIME_ATTR,
    TrialStatus,
    is_better,
)

TALLY = (TrialStatus.RUNNING, TrialStatus.STOPPED, TrialStatus.COMPLETE, TrialStatus.FAILED)


class ProgressPrinter(tune.Callback):
    """One line per event: trials started, epochs, ASHA stops, failures, best so far."""

    def __init__(self, max_t: int, experiment_dir: str) -> None:
        self.max_t = max_t
        self.experiment_dir = experiment_dir
        self.best: tuple[float, str] | None = None
        self.last_epoch: dict[str, int] = {}
        self.states: dict[str, TrialStatus] = {}

    def _say(self, text: str) -> None:
        states = list(self.states.values())
        tally = " ".join(f"{s.value}={states.count(s)}" for s in TALLY)
        best = f" best={self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        # sys.stdout is looked up each time: the tuner pickles its callbacks.
        print(
            f"[{time.strftime('%H:%M:%S')}] {text}  |  {tally}{best}", file=sys.stdout, flush=True
        )

    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        # Where to look while it runs (Ray's own hint names a folder under /tmp/ray instead).
        print(
            f"[{time.strftime('%H:%M:%S')}] watch it: finetune-search status "
            f"{self.experiment_dir} --watch  |  tensorboard --logdir {self.experiment_dir}",
            file=sys.stdout,
            flush=True,
        )

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        watchdog.observe(trials)  # what the stall watchdog reports from

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.states[trial.trial_id] = TrialStatus.RUNNING
        params = " ".join(f"{k}={format_value(v)}" for k, v in sorted(trial.config.items()))
        self._say(f"trial {trial.trial_id} started: {params}")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        epoch = int(result.get(TIME_ATTR, 0))
        self.last_epoch[trial.trial_id] = epoch
        if result.get("trial_failed"):
            self.states[trial.trial_id] = TrialStatus.FAILED
            self._say(f"trial {trial.trial_id} failed: {result.get('failure_reason')}")
            return
        value = result.get(METRIC)
        if (
            isinstance(value, float)
            and value == value
            and is_better(value, self.best[0] if self.best else None)
        ):
            self.best = (value, trial.trial_id)
        self._say(
            f"trial {trial.trial_id} epoch {epoch}/{self.max_t} {METRIC}={value:.4f} "
            f"loss={result.get('loss', float('nan')):.4f} "
            f"{result.get('images_per_s', 0):.0f} img/s"
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epoch = self.last_epoch.get(trial.trial_id, 0)
        if self.states.get(trial.trial_id) == TrialStatus.FAILED:
            return
        if not trial.last_result:
            # Only the device budget ends a trial that never reported.
            self._say(f"trial {trial.trial_id} not started: the budget is spent")
        elif epoch >= self.max_t:
            self.states[trial.trial_id] = TrialStatus.COMPLETE
            self._say(f"trial {trial.trial_id} complete at epoch {epoch}")
        else:
            self.states[trial.trial_id] = TrialStatus.STOPPED
            by = "the budget" if trial.last_result.get(STOP_REASON) == REASON_BUDGET else "ASHA"
            self._say(f"trial {trial.trial_id} stopped by {by} at epoch {epoch}/{self.max_t}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.states[trial.trial_id] = TrialStatus.FAILED
        self._say(f"trial {trial.trial_id} errored (see its error.txt)")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.states[trial.trial_id] = TrialStatus.RUNNING
        self._say(f"trial {trial.trial_id} crashed; retrying from its last checkpoint")
