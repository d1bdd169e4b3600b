"""Ray's results are the truth: bring the Optuna study in line with them before a driver starts.

A study can fall behind Ray. A cloud experiment's journal lives on the driver's machine and is
uploaded after each finished trial, so a driver killed in between leaves an older copy in the
bucket, and one killed before its first upload leaves none; a user may also resume on a fresh
machine. Ray's trial folders and experiment state, written by the trials themselves, hold
every epoch. :func:`reconcile_study` gives each Ray trial a study record that says what really
happened, so TPE learns from every trial, ASHA's PRUNED/COMPLETE rule holds, nothing is left
RUNNING that will not run again, and the restored searcher finds every trial it owns (by the
``ray_trial_id`` attribute).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from search.driver.study import (
    ATTR_END,
    ATTR_RAY_TRIAL,
    ATTR_REBUILT,
    METRIC,
    REASON_NO_METRIC,
    REASON_UNFINISHED,
    TIME_ATTR,
    TrialStatus,
)
from search.space import Distribution

if TYPE_CHECKING:
    import optuna

    from search.outputs.results import TrialRecord

# Ray statuses of a trial that `resume` continues (resume_unfinished and resume_errored).
RAY_CONTINUED = ("RUNNING", "PENDING", "PAUSED", "ERROR")


def _epoch_values(trial: TrialRecord) -> dict[int, float]:
    return {int(r[TIME_ATTR]): float(r[METRIC]) for r in trial.good_rows
            if isinstance(r.get(METRIC), (int, float)) and math.isfinite(r[METRIC])}


def _outcome(trial: TrialRecord, max_t: int, values: Mapping[int, float]
             ) -> tuple[Any, float | None, str]:
    """The study state, value and end reason of a Ray trial that will not run again."""
    from optuna.trial import TrialState

    status = trial.status(max_t)
    if status == TrialStatus.UNFINISHED:
        return TrialState.FAIL, None, REASON_UNFINISHED
    reason = trial.stop_reason(max_t)  # the results' own rule, as `export` and `status` say it
    if status == TrialStatus.FAILED:
        return TrialState.FAIL, None, reason
    if not values:
        return TrialState.FAIL, None, REASON_NO_METRIC
    if status == TrialStatus.COMPLETE:
        return TrialState.COMPLETE, float(trial.final[METRIC]), reason
    # Stopped before max_t (ASHA, a budget): Optuna takes a pruned trial's last intermediate
    # value.
    return TrialState.PRUNED, values[max(values)], reason


def _rebuilt(trial: TrialRecord, space: Mapping[str, Distribution], state: Any,
             value: float | None, reason: str | None,
             values: Mapping[int, float]) -> optuna.trial.FrozenTrial:
    import optuna

    searched = {k: d for k, d in space.items() if d.kind != "fixed"}
    params = {k: v for k, v in trial.config.items() if k in searched and searched[k].contains(v)}
    attrs: dict[str, Any] = {ATTR_RAY_TRIAL: trial.trial_id, ATTR_REBUILT: True}
    if reason is not None:
        attrs[ATTR_END] = reason
    return optuna.trial.create_trial(
        state=state, value=value, params=params,
        distributions={k: searched[k].to_optuna() for k in params},
        intermediate_values=dict(values), user_attrs=attrs)


def reconcile_study(study: optuna.Study, trials: Iterable[TrialRecord], *, max_t: int,
                    space: Mapping[str, Distribution],
                    continued_round: str | None = None) -> list[str]:
    """Gives every Ray trial a study record that agrees with its results.

    - A Ray trial the study does not know gets a new record (its params, every epoch's value,
      its final state), marked ``rebuilt_from_results``.
    - A study trial still RUNNING gets the epoch values it missed, and its final state when
      Ray says the trial ended (COMPLETE at ``max_t``, PRUNED when ASHA stopped it, FAIL).
    - Trials that ``resume`` continues (``continued_round``, Ray status running, pending,
      paused or error) stay RUNNING: the searcher reports their next epochs.
    - A study trial that is already finished is left as it is.

    Args:
        study: The experiment's study, opened for writing.
        trials: Every Ray trial of the experiment (:func:`search.outputs.results.load_trials`).
        max_t: ASHA's ``max_t``.
        space: The searched settings (their Optuna distributions).
        continued_round: The round ``resume`` continues, or ``None`` (``run``, ``extend``).

    Returns:
        The Ray trial ids whose study record was created or changed.
    """
    from optuna.trial import TrialState

    linked: dict[str, Any] = {}
    for frozen in study.get_trials(deepcopy=False):
        ray_id = frozen.user_attrs.get(ATTR_RAY_TRIAL)
        if ray_id is not None:
            linked[str(ray_id)] = frozen  # the newest record of a Ray trial wins
    storage = study._storage
    changed = []
    for trial in trials:
        values = _epoch_values(trial)
        continues = trial.round == continued_round and trial.ray_status in RAY_CONTINUED
        frozen = linked.get(trial.trial_id)
        if frozen is None:
            if continues:
                record = _rebuilt(trial, space, TrialState.RUNNING, None, None, values)
            else:
                record = _rebuilt(trial, space, *_outcome(trial, max_t, values), values)
            study.add_trial(record)
            changed.append(trial.trial_id)
            continue
        if frozen.state != TrialState.RUNNING:
            continue
        missing = {step: v for step, v in values.items()
                   if step not in frozen.intermediate_values}
        for step, value in missing.items():
            storage.set_trial_intermediate_value(frozen._trial_id, step, value)
        if not continues:
            state, value, reason = _outcome(trial, max_t, values)
            storage.set_trial_user_attr(frozen._trial_id, ATTR_END, reason)
            study.tell(frozen.number, value if state != TrialState.PRUNED else None,
                       state=state)
        if missing or not continues:
            changed.append(trial.trial_id)
    return changed


def ray_trials(experiment_dir: str, continued_round: str | None = None) -> list[TrialRecord]:
    """Every Ray trial of the experiment, with the continued round's trials that Ray created
    but never started (they have no folder yet; Ray's experiment state holds their config)."""
    from search.outputs import storage
    from search.outputs.experiment import round_dirs
    from search.outputs.results import TrialRecord, load_trials, ray_trial_states

    trials = load_trials(experiment_dir)
    known = {t.trial_id for t in trials}
    fs, root = storage.filesystem(experiment_dir)
    for round_name, round_path in round_dirs(fs, root):
        if round_name != continued_round:
            continue
        for trial_id, state in ray_trial_states(fs, round_path).items():
            if trial_id not in known:
                trials.append(TrialRecord(trial_id=trial_id, round=round_name, path="",
                                          config=state["config"], ray_status=state["status"]))
    return trials
