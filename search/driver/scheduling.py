"""ASHA that remembers, and the device budget: what Ray's schedulers forget or cannot do.

Ray restores a scheduler from the pickle made when the tuner was created, so after ``resume``
ASHA's rungs would be empty and every resumed or new trial would pass them until they refilled.
The schedulers here read the experiment's recorded results once, when the first trial of a run
is added (fresh, extended or resumed). ASHA replays them through its own rules in the order
they were reported, so its rungs, and where it stopped which trial, are as if the search had
never stopped; a resumed trial that ASHA had already stopped is stopped again at that rung.

:class:`DeviceBudget` counts the time every trial of the experiment held its devices (all
rounds, all attempts, read back from the results) and, once it is spent, stops running trials
at their next epoch boundary (a Ray ``Stopper``, recorded with reason ``budget``), while the
scheduler keeps new trials from starting and ends the searcher.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

from ray.tune import Stopper
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket

from search._validate import is_finite
from search.checkpoint_policy import asha_rung_epochs
from search.errors import SpecError
from search.outputs.experiment import experiment_root
from search.outputs.results import TrialRecord, read_trials
from search.outputs.study import METRIC, MODE, REASON_BUDGET, STOP_REASON, TIME_ATTR
from search.spec import ExperimentSpec

# While a driver runs a search: where the study says ASHA (or the budget) stopped which trial
# (Ray trial id -> epoch), read from the journal, which may be newer than Ray's results in
# storage; and, on a resume, how many trials the round holds. Set only through `study_records`.
_study_stops: dict[str, int] = {}
_round_trials: list[int] = []  # one count, taken by the first trial added


@contextlib.contextmanager
def study_records(stops: Mapping[str, int], round_trials: int | None = None) -> Iterator[None]:
    """Schedulers restored inside this block take what the driver read before Ray started.

    Ray restores the scheduler from its pickle inside ``Tuner.fit``; this block is how the
    driver hands it what the study recorded.

    Args:
        stops: Ray trial id -> the epoch at which the study says it was stopped.
        round_trials: On a resume, the trials the continued round holds (Ray's state and the
            trials rebuilt from the study): Ray's search generator counts its ``num_samples``
            from there, not from its own state, which a driver killed while uploading the
            snapshot can leave newer than the trials it lists.
    """
    global _study_stops, _round_trials
    previous = _study_stops, _round_trials
    _study_stops = dict(stops)
    _round_trials = [] if round_trials is None else [round_trials]
    try:
        yield
    finally:
        _study_stops, _round_trials = previous


# The spec's budgets and the result field each one counts (both are seconds a trial held its
# resources, from the start of its attempt to each report, all attempts together).
BUDGET_FIELDS = {"budget_gpu_hours": "gpu_seconds", "budget_device_hours": "wall_seconds"}


class DeviceBudget(Stopper):
    """Budgets of device time over every trial of an experiment.

    A trial's time is the largest total it reported (its reports are cumulative over its
    attempts), so a resumed or retried trial is not counted twice.

    Args:
        limits: Result field (``gpu_seconds`` or ``wall_seconds``) -> seconds allowed.
        max_t: ASHA's ``max_t``: a trial reporting this epoch ends anyway and is not marked.
    """

    def __init__(self, limits: Mapping[str, float], max_t: int) -> None:
        self.limits = dict(limits)
        self.max_t = max_t
        self._held: dict[str, dict[str, float]] = {}

    def record(self, trial_id: str, values: Mapping[str, Any]) -> None:
        """Counts a trial's cumulative times from one of its reports (or its record)."""
        held = self._held.setdefault(trial_id, {})
        for field in self.limits:
            value = values.get(field)
            if is_finite(value):
                held[field] = max(held.get(field, 0.0), float(cast(float, value)))

    def load_recorded(self, records: Iterable[TrialRecord]) -> None:
        """Counts what the experiment's trials already spent (earlier runs and rounds)."""
        for record in records:
            self.record(
                record.trial_id,
                {"gpu_seconds": record.gpu_seconds, "wall_seconds": record.wall_seconds},
            )

    def spent(self, field: str) -> float:
        """Seconds of ``field`` spent by all trials so far."""
        return sum(held.get(field, 0.0) for held in self._held.values())

    def progress(self) -> float:
        """The share of the budget spent, in [0, 1]: the furthest of its limits."""
        return min(
            max((self.spent(field) / limit for field, limit in self.limits.items()), default=0.0),
            1.0,
        )

    @property
    def reached(self) -> bool:
        """Whether any budget is spent."""
        return any(self.spent(field) >= limit for field, limit in self.limits.items())

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        self.record(trial_id, result)
        if (
            not self.reached
            or result.get("trial_failed")
            or int(result.get(TIME_ATTR, 0)) >= self.max_t
        ):
            return False
        # Ray hands a stopper the very dict that its loggers then write to result.json and
        # that becomes the trial's last result (what the searcher receives): the reason
        # travels with the results.
        result[STOP_REASON] = REASON_BUDGET
        return True

    def stop_all(self) -> bool:
        # Never the whole experiment at once: that would cut running trials mid-epoch.
        return False


def budget_for(spec: ExperimentSpec) -> DeviceBudget | None:
    """The spec's device budgets, or ``None`` when it sets none."""
    limits = {
        field: getattr(spec.search, key) * 3600
        for key, field in BUDGET_FIELDS.items()
        if getattr(spec.search, key) is not None
    }
    return DeviceBudget(limits, spec.max_t) if limits else None


def check_budget_left(spec: ExperimentSpec, records: list[TrialRecord], spec_path: str) -> None:
    """Refuses to add trials to an experiment that has already spent a budget.

    Raises:
        SpecError: Naming the budget, what was spent and where to raise it.
    """
    budget = budget_for(spec)
    if budget is None:
        return
    budget.load_recorded(records)
    for key, field in BUDGET_FIELDS.items():
        if field in budget.limits and budget.spent(field) >= budget.limits[field]:
            raise SpecError(
                f"search.{key}: the experiment has spent "
                f"{budget.spent(field) / 3600:.4g} of its "
                f"{budget.limits[field] / 3600:.4g} hours, so no trial could start; "
                f"raise it in {spec_path} to extend the search"
            )


def recorded_trials(trial: Any) -> list[TrialRecord]:
    """Every trial recorded in the experiment that ``trial`` belongs to (all rounds), read
    through the storage Ray gave the trial (right even when the folder has moved)."""
    fs = trial.storage.storage_filesystem
    return read_trials(fs, experiment_root(fs, trial.storage.experiment_fs_path))


class _RemembersExperiment:
    """What both schedulers add to Ray's: the experiment's records, read once per run, and a
    gate that keeps new trials from starting once the budget is spent."""

    budget: DeviceBudget | None
    _records_read: bool

    def _needs_records(self) -> bool:
        return self.budget is not None

    def remember(self, records: list[TrialRecord]) -> None:
        """Takes in what the experiment recorded before this run (tests call it directly)."""
        self._records_read = True
        if self.budget is not None:
            self.budget.load_recorded(records)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_records_read"] = False  # a restored scheduler reads the records again
        return state

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        if not self._records_read and self._needs_records():
            self.remember(recorded_trials(trial))
        generator = getattr(tune_controller, "search_alg", None)
        if _round_trials and generator is not None and hasattr(generator, "_counter"):
            # Ray adds a resumed run's trials after restoring its search generator, before it
            # asks for a new one: the count of trials made so far is set right first.
            generator._counter = _round_trials.pop()
        super().on_trial_add(tune_controller, trial)  # type: ignore[misc]

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        if self.budget is not None and self.budget.reached:
            tune_controller.search_alg.set_finished()
            for trial in list(tune_controller.get_trials()):
                # A trial that never reported must not start. One with results was
                # interrupted mid-epoch: it resumes and the budget stops it at the epoch's end.
                if trial.status == Trial.PENDING and not trial.last_result:
                    tune_controller.stop_trial(trial)
        return super().choose_trial_to_run(tune_controller)  # type: ignore[misc]

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        super().on_trial_error(tune_controller, trial)  # type: ignore[misc]
        # Ray 2.60 skips re-saving a trial whose worker process died (SIGKILL, the OOM
        # killer): its snapshot kept saying RUNNING, so the results called the trial
        # unfinished while the study said FAIL. Have it saved with the status it ends with
        # (a private hook: if a later Ray drops it, the resume test's status check says so).
        mark = getattr(tune_controller, "_mark_trial_to_checkpoint", None)
        if mark is not None:
            mark(trial)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)  # type: ignore[misc]
        if self.budget is not None and self.budget.reached:
            # Before Ray asks the searcher to fill the slot this trial freed.
            tune_controller.search_alg.set_finished()


class TieAwareBracket(_Bracket):
    """Ray's ASHA bracket, with ties at a rung's cutoff broken by arrival (unless
    ``break_ties`` is false: ``scheduler.break_ties``), and, with
    ``min_results`` (``scheduler.min_rung_results``), no trial promoted unexamined.

    Ray continues a trial unless its value is *below* the rung's cutoff, the
    ``(1 - 1/reduction_factor)`` quantile of the values recorded there. When many trials share
    one value (from scratch most configurations sit at chance after an epoch, so the cutoff
    *is* chance), every one of them ties the cutoff and trains on: the budget goes to trials
    that have shown nothing. Here a trial whose value equals the cutoff continues only while
    the rung still has room in its top ``1/reduction_factor``, counting the trials recorded
    with at least its value as ahead of it (they arrived first), as successive halving's
    "promote the top ``1/eta``" means. Values above or below the cutoff are decided as Ray
    decides them; the first trial at a rung always continues (there is nothing to compare),
    unless ``min_results`` is set: a rung holding fewer results counts the ones still to come
    (up to ``min_results``) as ahead of the trial, so the first arrivals go on only if they
    stay in the rung's top ``1/reduction_factor`` even then (with ``min_results`` equal to the
    factor, the first ``factor - 1`` stop there and the next goes on if it beats them).
    """

    def __init__(
        self, *args: Any, min_results: int = 0, break_ties: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.min_results = min_results
        self.break_ties = break_ties

    def on_result(self, trial: Any, cur_iter: int, cur_rew: float | None) -> str:
        rung = self._deciding_rung(trial.trial_id, cur_iter)
        # Brackets pickled before min_results existed have none.
        min_results = getattr(self, "min_results", 0)
        if rung is not None and cur_rew is not None and len(rung) < min_results:
            # Too few results here to judge: the results still to come count as ahead of
            # this one, so a trial goes on only if it is in the rung's top 1/rf even then.
            missing = min_results - len(rung) - 1
            ahead = sum(1 for value in rung.values() if value >= cur_rew) + missing
            rung[trial.trial_id] = cur_rew
            size = len(rung) + missing
            return TrialScheduler.CONTINUE if ahead < size / self.rf else TrialScheduler.STOP
        # Brackets pickled before break_ties existed break them.
        if (
            getattr(self, "break_ties", True)
            and rung
            and cur_rew is not None
            and cur_rew == self.cutoff(rung)
        ):
            ahead = sum(1 for value in rung.values() if value >= cur_rew)
            if ahead >= (len(rung) + 1) / self.rf:
                rung[trial.trial_id] = cur_rew
                return TrialScheduler.STOP
        return super().on_result(trial, cur_iter, cur_rew)

    def _deciding_rung(self, trial_id: str, cur_iter: int) -> dict[str, float] | None:
        """The values of the rung that decides this result (Ray's walk over the rungs, from
        the highest: the first one reached that has not recorded the trial)."""
        if not self._stop_last_trials:
            return None  # Ray's other walk; the project never turns it on
        for milestone, recorded in self._rungs:
            if cur_iter >= milestone and trial_id not in recorded:
                return recorded
        return None


@dataclass(frozen=True)
class _RecordedTrial:
    """Stands for a recorded trial while ASHA replays its results (ASHA reads only the id)."""

    trial_id: str


class RememberingASHA(_RemembersExperiment, ASHAScheduler):
    """Ray's ASHA whose rungs survive ``resume`` (and span ``extend`` rounds), and whose rungs
    stop trials that only tie the cutoff once the rung's top is full (:class:`TieAwareBracket`).

    Args:
        max_t: Epochs of a complete trial.
        grace_period: The first rung.
        reduction_factor: Rung spacing; the top ``1/reduction_factor`` go on.
        budget: The device budget, or ``None``.
        min_rung_results: Results a rung needs before it promotes as Ray does (see
            :class:`TieAwareBracket`); 0: Ray's rule.
        break_ties: Stop a trial that only ties a rung's cutoff once the rung's top is full
            (:class:`TieAwareBracket`); false: Ray's rule, ties go on.
        **asha: ``ASHAScheduler``'s other arguments.
    """

    def __init__(
        self,
        *,
        max_t: int,
        grace_period: int,
        reduction_factor: float,
        budget: DeviceBudget | None = None,
        min_rung_results: int = 0,
        break_ties: bool = True,
        **asha: Any,
    ) -> None:
        super().__init__(
            max_t=max_t, grace_period=grace_period, reduction_factor=reduction_factor, **asha
        )
        # The same rungs as Ray builds them, deciding ties at the cutoff by arrival.
        self._brackets = [
            TieAwareBracket(
                grace_period,
                max_t,
                reduction_factor,
                s,
                stop_last_trials=self._stop_last_trials,
                min_results=min_rung_results,
                break_ties=break_ties,
            )
            for s in range(len(self._brackets))
        ]
        self.budget = budget
        self._records_read = False
        self._stopped_at: dict[str, int] = {}

    def _needs_records(self) -> bool:
        return True

    def remember(self, records: list[TrialRecord], stops: Mapping[str, int] | None = None) -> None:
        """Takes in the recorded results and where the study says trials were stopped
        (``stops``; by default what :func:`study_records` holds): the study's stops win."""
        super().remember(records)
        self._stopped_at = {**self._replay(records), **(_study_stops if stops is None else stops)}
        self._restored_unchecked = True

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        if getattr(self, "_restored_unchecked", False):
            # Once per run, after Ray added the trials it restored (one pass, not per step).
            self._restored_unchecked = False
            for trial in list(tune_controller.get_trials()):
                stopped_at = self._stopped_at.get(trial.trial_id)
                if (
                    trial.status == Trial.PENDING
                    and stopped_at is not None
                    and trial.last_result
                    and int(trial.last_result.get(TIME_ATTR, 0)) >= stopped_at
                ):
                    # Stopped there before the search was interrupted, and Ray's older state
                    # resumes it: one more epoch would train past the stop.
                    tune_controller.stop_trial(trial)
        return super().choose_trial_to_run(tune_controller)

    def _replay(self, records: list[TrialRecord]) -> dict[str, int]:
        """Feeds every recorded epoch to ASHA in the order reported; returns where it
        stopped which trial."""
        rows = sorted(
            (
                (row.get("timestamp", 0), record.trial_id, row)
                for record in records
                for row in record.good_rows
                if is_finite(row.get(METRIC))
            ),
            key=lambda item: (item[0], item[1], item[2].get(TIME_ATTR, 0)),
        )
        stopped: dict[str, int] = {}
        for _, trial_id, row in rows:
            if trial_id in stopped:
                continue  # epochs a stale resume ran past ASHA's stop never counted
            stand_in = _RecordedTrial(trial_id)
            if trial_id not in self._trial_info:
                ASHAScheduler.on_trial_add(self, None, stand_in)  # type: ignore[arg-type]
            action = ASHAScheduler.on_trial_result(self, None, stand_in, row)  # type: ignore[arg-type]
            if action == TrialScheduler.STOP and int(row[TIME_ATTR]) < self._max_t:
                stopped[trial_id] = int(row[TIME_ATTR])
        # Live trials are added again by Ray; the rungs keep every recorded value.
        self._trial_info.clear()
        return stopped

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        stopped_at = self._stopped_at.get(trial.trial_id)
        if stopped_at is not None and int(result.get(TIME_ATTR, 0)) >= stopped_at:
            # ASHA stopped this trial here before the search was interrupted, and Ray's last
            # snapshot (or the results in storage) missed it: stop it again where it was
            # stopped.
            return TrialScheduler.STOP
        return super().on_trial_result(tune_controller, trial, result)


class BudgetFIFO(_RemembersExperiment, FIFOScheduler):
    """Ray's FIFO scheduler (no early stopping) with the budget gate."""

    def __init__(self, *, budget: DeviceBudget | None = None) -> None:
        super().__init__()
        self.budget = budget
        self._records_read = False


def checkpoint_rungs(spec: ExperimentSpec) -> tuple[int, ...]:
    """The epochs below ``max_t`` where the spec's scheduler decides (none for FIFO): where
    ``train.checkpoint: asha_rungs`` writes checkpoints."""
    if spec.scheduler.name != "asha":
        return ()
    return asha_rung_epochs(
        spec.scheduler.grace_period, spec.scheduler.reduction_factor, spec.max_t
    )


def make_scheduler(spec: ExperimentSpec, budget: DeviceBudget | None) -> TrialScheduler:
    """The spec's scheduler (ASHA or FIFO) over ``budget``."""
    if spec.scheduler.name == "asha":
        return RememberingASHA(
            budget=budget,
            time_attr=TIME_ATTR,
            metric=METRIC,
            mode=MODE,
            max_t=spec.max_t,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
            min_rung_results=spec.scheduler.min_rung_results,
            break_ties=spec.scheduler.break_ties,
        )
    return BudgetFIFO(budget=budget)
