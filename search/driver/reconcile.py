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

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from search.outputs.study import (
    ATTR_END,
    ATTR_RAY_TRIAL,
    ATTR_REBUILT,
    METRIC,
    REASON_LOST,
    REASON_MAX_T,
    REASON_NO_METRIC,
    REASON_ORPHANED,
    REASON_UNFINISHED,
    REBUILT_FROM_STUDY,
    STOP_REASON,
    TIME_ATTR,
    TrialStatus,
)
from search.space import Distribution

if TYPE_CHECKING:
    import optuna

    from search.outputs.results import TrialRecord
    from search.spec import ExperimentSpec

# Ray statuses of a trial that `resume` continues (resume_unfinished and resume_errored).
RAY_CONTINUED = ("RUNNING", "PENDING", "PAUSED", "ERROR")


def _epoch_values(trial: TrialRecord) -> dict[int, float]:
    return {
        int(r[TIME_ATTR]): float(r[METRIC])
        for r in trial.good_rows
        if isinstance(r.get(METRIC), (int, float)) and math.isfinite(r[METRIC])
    }


def _outcome(
    trial: TrialRecord, max_t: int, values: Mapping[int, float]
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


def _rebuilt(
    trial: TrialRecord,
    space: Mapping[str, Distribution],
    state: Any,
    value: float | None,
    reason: str | None,
    values: Mapping[int, float],
) -> optuna.trial.FrozenTrial:
    import optuna

    searched = {k: d for k, d in space.items() if d.kind != "fixed"}
    params = {k: v for k, v in trial.config.items() if k in searched and searched[k].contains(v)}
    attrs: dict[str, Any] = {ATTR_RAY_TRIAL: trial.trial_id, ATTR_REBUILT: True}
    if reason is not None:
        attrs[ATTR_END] = reason
    return optuna.trial.create_trial(
        state=state,
        value=value,
        params=params,
        distributions={k: searched[k].to_optuna() for k in params},
        intermediate_values=dict(values),
        user_attrs=attrs,
    )


def reconcile_study(
    study: optuna.Study,
    trials: Iterable[TrialRecord],
    *,
    max_t: int,
    space: Mapping[str, Distribution],
    continued_round: str | None = None,
) -> list[str]:
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

    linked = _newest_records(study)
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
        missing = {step: v for step, v in values.items() if step not in frozen.intermediate_values}
        for step, value in missing.items():
            storage.set_trial_intermediate_value(frozen._trial_id, step, value)
        if not continues:
            state, final, reason = _outcome(trial, max_t, values)
            storage.set_trial_user_attr(frozen._trial_id, ATTR_END, reason)
            study.tell(frozen.number, final if state != TrialState.PRUNED else None, state=state)
        if missing or not continues:
            changed.append(trial.trial_id)
    return changed


def _newest_records(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    """Ray trial id -> the newest study record linked to it."""
    newest: dict[str, Any] = {}
    for frozen in study.get_trials(deepcopy=False):
        ray_id = frozen.user_attrs.get(ATTR_RAY_TRIAL)
        if ray_id is not None:
            newest[str(ray_id)] = frozen
    return newest


def rebuild_lost_trials(
    study: optuna.Study,
    trials: Iterable[TrialRecord],
    *,
    round_dir: str,
    space: Mapping[str, Distribution],
    fixed_config: Mapping[str, Any],
    max_t: int,
) -> list[str]:
    """Gives Ray's results the trials that the study saw train but Ray's results lack.

    On cloud storage a trial's results reach the bucket with Ray's experiment snapshot, which
    may come later than the journal's upload: a driver killed in between leaves trials that
    trained (their epochs in the study) with no folder in storage, and Ray's state resumes
    without them. Each gets its folder back in ``round_dir`` (the round ``resume``
    continues): its ``params.json`` and one result row per epoch the study recorded, marked
    ``rebuilt_from_study``. Its checkpoints are lost, so it is not run again: one the study
    still had RUNNING ends PRUNED with its last value (COMPLETE at ``max_t``), ended by
    ``REASON_LOST``. Failed study trials are left as they are.

    Returns:
        The Ray trial ids rebuilt.
    """
    import optuna
    from optuna.trial import TrialState

    from search import storage
    from search.driver.searcher import define_by_run
    from search.outputs.results import TRIAL_DIR_PREFIX

    known = {t.trial_id for t in trials}
    rebuilt = []
    for ray_id, frozen in _newest_records(study).items():
        if (
            ray_id in known
            or not frozen.intermediate_values
            or frozen.state not in (TrialState.RUNNING, TrialState.PRUNED, TrialState.COMPLETE)
        ):
            continue
        values = dict(sorted(frozen.intermediate_values.items()))
        last = max(values)
        if frozen.state == TrialState.RUNNING:
            complete = last >= max_t
            study._storage.set_trial_user_attr(
                frozen._trial_id, ATTR_END, REASON_MAX_T if complete else REASON_LOST
            )
            study.tell(
                frozen.number,
                values[last] if complete else None,
                state=TrialState.COMPLETE if complete else TrialState.PRUNED,
            )
            frozen = study._storage.get_trial(frozen._trial_id)
        try:  # the settings the searcher returned beside the drawn ones
            fixed = define_by_run(space, fixed_config)(optuna.trial.FixedTrial(frozen.params))
        except ValueError:
            fixed = {}
        start = frozen.datetime_start.timestamp() if frozen.datetime_start else 0.0
        rows = [
            {
                TIME_ATTR: step,
                "training_iteration": step,
                METRIC: value,
                "trial_id": ray_id,
                "timestamp": int(start) + step,
                REBUILT_FROM_STUDY: True,
            }
            for step, value in values.items()
        ]
        if frozen.state == TrialState.PRUNED:
            rows[-1][STOP_REASON] = str(frozen.user_attrs.get(ATTR_END) or REASON_LOST)
        folder = storage.join(round_dir, f"{TRIAL_DIR_PREFIX}{ray_id}")
        storage.write_atomic(
            storage.join(folder, "params.json"), json.dumps({**frozen.params, **fixed})
        )
        storage.write_atomic(
            storage.join(folder, "result.json"), "".join(json.dumps(row) + "\n" for row in rows)
        )
        rebuilt.append(ray_id)
    return rebuilt


def drop_untrained_strays(
    fs: Any, trials: Iterable[TrialRecord], ray_ids: Iterable[str], *, round_name: str
) -> list[TrialRecord]:
    """Removes the folders of ``round_name``'s trials that Ray's state does not know
    (``ray_ids``) and that never reported an epoch; returns the other trials.

    A driver killed while it uploaded Ray's snapshot can leave a new trial's folder without
    the state that lists it: Ray's resume never runs that trial, and the folder would count as
    a trial stopped at epoch 0. Without it, a new trial takes its place.

    Args:
        fs: The experiment's filesystem (the records' paths are inside it).
        trials: Every trial of the experiment.
        ray_ids: The trials Ray's newest state lists for ``round_name``.
        round_name: The round ``resume`` continues.
    """
    from search import storage

    known = set(ray_ids)
    kept = []
    for trial in trials:
        if (
            trial.round == round_name
            and trial.path
            and trial.trial_id not in known
            and not trial.history
        ):
            storage.remove_tree(fs, trial.path)  # a path inside ``fs``, as the records hold
            continue
        kept.append(trial)
    return kept


def fail_orphans(study: optuna.Study, ray_ids: Iterable[str]) -> list[int]:
    """Ends as FAIL (``REASON_ORPHANED``) the study trials still RUNNING under a Ray trial id
    that Ray's results do not hold (``ray_ids``): nothing will run them again. (Those that
    trained were rebuilt into Ray's results first: these reported nothing.)

    Returns:
        The study trial numbers failed.
    """
    from optuna.trial import TrialState

    known = set(ray_ids)
    failed = []
    for ray_id, frozen in _newest_records(study).items():
        if frozen.state == TrialState.RUNNING and ray_id not in known:
            study._storage.set_trial_user_attr(frozen._trial_id, ATTR_END, REASON_ORPHANED)
            study.tell(frozen.number, state=TrialState.FAIL)
            failed.append(frozen.number)
    return failed


def final_stops(study: optuna.Study) -> dict[str, int]:
    """Ray trial id -> the epoch at which the study says the trial was stopped (PRUNED by ASHA
    or the budget): its newest record, with at least one epoch. That stop is final, whatever
    an older snapshot of Ray's says (:class:`~search.driver.scheduling.RememberingASHA`)."""
    from optuna.trial import TrialState

    newest = _newest_records(study)
    return {
        ray_id: max(frozen.intermediate_values)
        for ray_id, frozen in newest.items()
        if frozen.state == TrialState.PRUNED and frozen.intermediate_values
    }


def ray_trials(experiment_dir: str, continued_round: str | None = None) -> list[TrialRecord]:
    """Every Ray trial of the experiment, with the continued round's trials that Ray created
    but never started (they have no folder yet; Ray's experiment state holds their config)."""
    from search import storage
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
                trials.append(
                    TrialRecord(
                        trial_id=trial_id,
                        round=round_name,
                        path="",
                        config=state["config"],
                        ray_status=state["status"],
                    )
                )
    return trials


# --------------------------------------------------------------------------------------------
# before a search starts


@dataclass
class Reconciled:
    """What the scheduler must know of the study before Ray starts (see
    :func:`~search.driver.scheduling.study_records`)."""

    stops: dict[str, int] = field(default_factory=dict)
    round_trials: int | None = None


def reconcile_before_start(
    spec: ExperimentSpec, experiment_dir: str, journal: str, continued_round: str | None
) -> Reconciled:
    """Brings the study and Ray's results in line before the searcher opens the study (the
    driver's step before Ray starts, :func:`search.driver.service._drive`).

    Ray's results rebuild the study's records they are ahead of (a cloud journal may be older
    than them, or missing on a fresh machine). On a resume the study rebuilds, in turn, the
    trials it saw train that Ray's results lack (:func:`rebuild_lost_trials`), and the
    continued round's folders of trials Ray never recorded nor ran go
    (:func:`drop_untrained_strays`).
    """
    from search import storage
    from search.driver.study import open_study
    from search.outputs import experiment as folder
    from search.outputs.results import ray_trial_states
    from search.outputs.study import STUDY_FILE

    trials = ray_trials(experiment_dir, continued_round)
    fs, root = storage.filesystem(experiment_dir)
    round_uri, in_round = experiment_dir, 0
    if continued_round is not None:
        round_path = dict(folder.round_dirs(fs, root))[continued_round]
        if continued_round != folder.MAIN_ROUND:
            round_uri = storage.join(experiment_dir, continued_round)
        recorded = ray_trial_states(fs, round_path)
        trials = drop_untrained_strays(fs, trials, recorded, round_name=continued_round)
        # Ray's state, and folders with results that a killed upload left out of it
        in_round = len({t.trial_id for t in trials if t.round == continued_round})
    if (
        not trials
        and not storage.exists(fs, storage.join(root, STUDY_FILE))
        and not (os.path.exists(journal))
    ):
        return Reconciled()
    study = open_study(journal, spec.name, spec.search.seed, spec.search.algorithm)
    changed = reconcile_study(
        study, trials, max_t=spec.max_t, space=spec.space, continued_round=continued_round
    )
    if changed:
        print(
            f"study: {len(changed)} trial record(s) rebuilt from Ray's results (the journal "
            f"was missing or older than them)",
            flush=True,
        )
    if continued_round is None:
        return Reconciled(final_stops(study))
    lost = rebuild_lost_trials(
        study,
        trials,
        round_dir=round_uri,
        space=spec.space,
        fixed_config=spec.fixed_config(),
        max_t=spec.max_t,
    )
    if lost:
        print(
            f"results: {len(lost)} trial(s) rebuilt from the study (they trained, but the "
            f"driver was killed before Ray's results reached storage; their checkpoints "
            f"are lost): {', '.join(lost)}",
            flush=True,
        )
    fail_orphans(study, {t.trial_id for t in trials} | set(lost))
    return Reconciled(final_stops(study), in_round + len(lost))
