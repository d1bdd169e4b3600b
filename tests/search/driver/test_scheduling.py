"""The scheduler contract, fed fake results (no TensorFlow, no Ray cluster), as Syne Tune tests
its schedulers: ASHA after a resume decides as if the search had never stopped, and the device
budget stops trials at epoch boundaries and keeps new ones from starting."""

from __future__ import annotations

import random

import pytest
import ray.cloudpickle as pickle
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from search.driver.scheduling import BudgetFIFO, DeviceBudget, RememberingASHA
from search.outputs.results import TrialRecord

ASHA_ARGS = dict(
    time_attr="epoch",
    metric="val_accuracy",
    mode="max",
    max_t=9,
    grace_period=1,
    reduction_factor=3,
)


class FakeTrial:
    def __init__(self, trial_id, status=Trial.RUNNING, last_result=None):
        self.trial_id = trial_id
        self.status = status
        self.last_result = last_result or {}


def events(seed=0, trials=12, concurrent=3):
    """Results as a search reports them: ``concurrent`` trials at a time, epochs interleaved,
    each trial with its own level of accuracy."""
    rng = random.Random(seed)
    level = {f"t{i}": rng.random() for i in range(trials)}
    waiting, running, order = list(level), [], []
    clock = 0.0
    while waiting or running:
        while waiting and len(running) < concurrent:
            running.append([waiting.pop(0), 0])
        slot = rng.randrange(len(running))
        running[slot][1] += 1
        trial_id, epoch = running[slot]
        clock += 1.0
        order.append(
            (
                trial_id,
                {
                    "epoch": epoch,
                    "timestamp": clock,
                    "val_accuracy": level[trial_id] + 0.01 * epoch,
                },
            )
        )
        if epoch == ASHA_ARGS["max_t"]:
            running.pop(slot)
    return order


def drive(scheduler, order, stopped):
    """Feeds results in order, as Ray does; returns each decision. Trials in ``stopped`` are
    over (their later results never come)."""
    decisions = []
    for trial_id, result in order:
        if trial_id in stopped:
            continue
        trial = FakeTrial(trial_id)
        if trial_id not in scheduler._trial_info:
            scheduler.on_trial_add(None, trial)
        decision = scheduler.on_trial_result(None, trial, result)
        decisions.append((trial_id, result["epoch"], decision))
        if decision == TrialScheduler.STOP:
            stopped.add(trial_id)
            scheduler.on_trial_complete(None, trial, result)
    return decisions


def records_of(order, trial_ids):
    rows: dict[str, list] = {t: [] for t in trial_ids}
    for trial_id, result in order:
        if trial_id in rows:
            rows[trial_id].append({**result, "trial_id": trial_id})
    return [
        TrialRecord(trial_id=t, round="main", path="", config={}, history=h)
        for t, h in rows.items()
    ]


def started(scheduler, records=()):
    """The scheduler once the run's first trial is added: it has read the experiment's
    records (none for a new search)."""
    scheduler.remember(list(records))
    return scheduler


def restored(scheduler):
    """The scheduler as ``Tuner.restore`` gives it back: unpickled from ``tuner.pkl``."""
    return pickle.loads(pickle.dumps(scheduler))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_asha_resumed_mid_search_decides_as_if_it_never_stopped(seed):
    order = events(seed)
    uninterrupted = drive(started(RememberingASHA(**ASHA_ARGS)), order, set())
    cut = len(order) // 2
    before, after = order[:cut], order[cut:]
    first = RememberingASHA(**ASHA_ARGS)
    pickled_at_start = restored(first)  # what tuner.pkl holds: empty rungs
    stopped: set[str] = set()
    decisions = drive(started(first), before, stopped)
    # The driver is killed here, after Ray's snapshot of every trial that reported.
    resumed = started(pickled_at_start, records_of(before, {t for t, _ in before}))
    decisions += drive(resumed, after, set(stopped))
    assert decisions == uninterrupted


def test_trial_resumed_below_the_rung_cutoff_is_stopped_at_that_rung():
    asha = dict(ASHA_ARGS, max_t=3)  # rungs at epochs 1 and 3
    strong = [(f"s{i}", {"epoch": 1, "timestamp": i, "val_accuracy": 0.9}) for i in range(4)]
    weak = ("weak", {"epoch": 1, "timestamp": 10, "val_accuracy": 0.1})
    # Before the interruption the weak trial had not reached rung 1: it resumes from epoch 0
    # and reports epoch 1 only after the resume.
    records = records_of(strong, {t for t, _ in strong})
    forgetful = restored(ASHAScheduler(**asha))  # Ray's own ASHA, as restore gives it back
    forgetful.on_trial_add(None, FakeTrial("weak"))
    assert forgetful.on_trial_result(None, FakeTrial("weak"), weak[1]) == TrialScheduler.CONTINUE
    remembering = started(restored(RememberingASHA(**asha)), records)
    remembering.on_trial_add(None, FakeTrial("weak"))
    assert remembering.on_trial_result(None, FakeTrial("weak"), weak[1]) == TrialScheduler.STOP


def test_trial_stopped_after_the_last_snapshot_is_stopped_again_at_its_rung():
    asha = dict(ASHA_ARGS, max_t=4, grace_period=2, reduction_factor=2)
    order = [
        ("good", {"epoch": 1, "timestamp": 1, "val_accuracy": 0.8}),
        ("good", {"epoch": 2, "timestamp": 2, "val_accuracy": 0.9}),
        ("late", {"epoch": 1, "timestamp": 3, "val_accuracy": 0.1}),
        ("late", {"epoch": 2, "timestamp": 4, "val_accuracy": 0.2}),
    ]
    live = started(RememberingASHA(**asha))
    assert drive(live, order, set())[-1] == ("late", 2, TrialScheduler.STOP)
    # The snapshot still shows "late" running from its epoch-1 checkpoint: Ray runs epoch 2
    # again, even better this time; ASHA stopped it there before, so it stops it again.
    resumed = started(restored(RememberingASHA(**asha)), records_of(order, {"good", "late"}))
    resumed.on_trial_add(None, FakeTrial("late"))
    again = {"epoch": 2, "timestamp": 9, "val_accuracy": 0.95}
    assert resumed.on_trial_result(None, FakeTrial("late"), again) == TrialScheduler.STOP
    resumed.on_trial_add(None, FakeTrial("good"))
    assert (
        resumed.on_trial_result(
            None, FakeTrial("good"), {"epoch": 3, "timestamp": 9, "val_accuracy": 0.9}
        )
        == TrialScheduler.CONTINUE
    )


class StoppingController:
    """What a scheduler sees of Ray's controller: the trials, and stopping one."""

    def __init__(self, trials):
        self.trials = trials
        self.stopped = []

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial):
        self.stopped.append(trial.trial_id)
        trial.status = Trial.TERMINATED


def test_a_stop_the_study_recorded_is_final_though_the_results_in_storage_are_older():
    # On S3 the study's journal can be newer than Ray's results in the bucket: the study says
    # ASHA stopped "stale" at epoch 4 and "caught" at epoch 2, the bucket has their epochs up
    # to 2 only, and Ray's older state resumes both.
    asha = dict(ASHA_ARGS, max_t=6, grace_period=1, reduction_factor=2)  # rungs 1, 2, 4
    order = [("good", {"epoch": e, "timestamp": e, "val_accuracy": 0.5}) for e in (1, 2, 3, 4)]
    order += [("stale", {"epoch": e, "timestamp": 10 + e, "val_accuracy": 0.9}) for e in (1, 2)]
    order += [("caught", {"epoch": e, "timestamp": 20 + e, "val_accuracy": 0.95}) for e in (1, 2)]
    resumed = restored(RememberingASHA(**asha))
    resumed.remember(
        records_of(order, {"good", "stale", "caught"}), stops={"stale": 4, "caught": 2}
    )
    stale = FakeTrial("stale", Trial.PENDING, last_result={"epoch": 2})
    caught = FakeTrial("caught", Trial.PENDING, last_result={"epoch": 2})
    controller = StoppingController([stale, caught])
    for trial in controller.trials:
        resumed.on_trial_add(controller, trial)
    # "caught" already reported the epoch it was stopped at: it must not train one more.
    assert resumed.choose_trial_to_run(controller) is stale
    assert controller.stopped == ["caught"]
    # "stale" retrains from its older checkpoint, better than anyone, and stops at epoch 4.
    assert (
        resumed.on_trial_result(
            controller, stale, {"epoch": 3, "timestamp": 30, "val_accuracy": 0.99}
        )
        == TrialScheduler.CONTINUE
    )
    assert (
        resumed.on_trial_result(
            controller, stale, {"epoch": 4, "timestamp": 31, "val_accuracy": 0.99}
        )
        == TrialScheduler.STOP
    )


def test_the_driver_hands_the_study_records_to_a_scheduler_restored_inside_fit():
    from search.driver.scheduling import study_records

    scheduler = restored(RememberingASHA(**ASHA_ARGS))
    with study_records({"x": 3}):
        scheduler.remember([])
    assert scheduler._stopped_at == {"x": 3}
    started(scheduler)  # outside the block: nothing from the study
    assert scheduler._stopped_at == {}


def test_a_resumed_round_counts_the_trials_it_holds_not_rays_generator_state():
    # A driver killed while uploading Ray's snapshot can leave the search generator's count
    # (5) ahead of the trials Ray's state lists; the driver counted 3 (with those rebuilt from
    # the study): Ray makes num_samples - 3 new trials, not num_samples - 5.
    from search.driver.scheduling import study_records

    class Generator:
        _counter = 5

    class Controller:
        search_alg = Generator()

    controller = Controller()
    scheduler = started(restored(RememberingASHA(**ASHA_ARGS)))
    with study_records({}, round_trials=3):
        scheduler.on_trial_add(controller, FakeTrial("a"))
        assert controller.search_alg._counter == 3
        controller.search_alg._counter = 4  # Ray made one more
        scheduler.on_trial_add(controller, FakeTrial("b"))
    assert controller.search_alg._counter == 4


def rung_one(scheduler, values):
    """Each value reported at epoch 1 by a new trial, in order; the decisions."""
    order = [
        (f"t{i}", {"epoch": 1, "timestamp": i, "val_accuracy": v}) for i, v in enumerate(values)
    ]
    if isinstance(scheduler, RememberingASHA):
        started(scheduler)
    return [decision for _, _, decision in drive(scheduler, order, set())]


def test_trials_that_only_tie_the_cutoff_stop_once_the_rung_top_is_full():
    # From scratch most trials sit at chance after one epoch: Ray's ASHA lets every trial
    # that ties the cutoff train on; ties are broken by arrival here.
    chance = [0.1] * 6
    assert rung_one(ASHAScheduler(**ASHA_ARGS), chance) == [TrialScheduler.CONTINUE] * 6
    assert rung_one(RememberingASHA(**ASHA_ARGS), chance) == (
        [TrialScheduler.CONTINUE] + [TrialScheduler.STOP] * 5
    )
    # A better trial after the ties goes on; so does one that equals the cutoff while the
    # rung's top still has room (reduction_factor 2: 0.5 is the median of 0.25 and 0.75, and
    # only 0.75 is ahead of it, 1 < 3/2).
    assert rung_one(RememberingASHA(**ASHA_ARGS), [0.1, 0.1, 0.1, 0.8])[-1] == "CONTINUE"
    halving = dict(ASHA_ARGS, reduction_factor=2)
    assert rung_one(RememberingASHA(**halving), [0.25, 0.75, 0.5])[-1] == "CONTINUE"
    assert rung_one(RememberingASHA(**halving), [0.25, 0.75, 0.5, 0.5])[-1] == "STOP"


def test_break_ties_false_lets_ties_go_on_as_rays_asha_does():
    # scheduler.break_ties: false is Ray's rule for ties; min_rung_results still applies.
    chance = [0.1] * 6
    rays_ties = dict(ASHA_ARGS, break_ties=False)
    assert rung_one(RememberingASHA(**rays_ties), chance) == [TrialScheduler.CONTINUE] * 6
    assert rung_one(RememberingASHA(**rays_ties, min_rung_results=3), chance) == (
        [TrialScheduler.STOP] * 3 + [TrialScheduler.CONTINUE] * 3
    )
    order = events(0, trials=9)
    tied = [
        (trial_id, {**row, "val_accuracy": round(row["val_accuracy"], 1)})
        for trial_id, row in order
    ]
    assert drive(started(RememberingASHA(**rays_ties)), tied, set()) == drive(
        ASHAScheduler(**ASHA_ARGS), tied, set()
    )


def test_tie_aware_rungs_keep_rays_other_settings():
    asha = dict(ASHA_ARGS, brackets=2, stop_last_trials=False)
    ours, rays = RememberingASHA(**asha), ASHAScheduler(**asha)
    assert [(b._rungs, b.rf, b._stop_last_trials) for b in ours._brackets] == [
        (b._rungs, b.rf, b._stop_last_trials) for b in rays._brackets
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_without_ties_the_rungs_decide_as_rays_asha(seed):
    order = events(seed)  # every trial its own level: no two values tie
    assert drive(started(RememberingASHA(**ASHA_ARGS)), order, set()) == drive(
        ASHAScheduler(**ASHA_ARGS), order, set()
    )


def test_tie_aware_rungs_survive_the_tuner_pickle_and_the_replay():
    chance = [(f"t{i}", {"epoch": 1, "timestamp": i, "val_accuracy": 0.1}) for i in range(3)]
    resumed = started(
        restored(RememberingASHA(**ASHA_ARGS)), records_of(chance, {"t0", "t1", "t2"})
    )
    resumed.on_trial_add(None, FakeTrial("t3"))
    assert (
        resumed.on_trial_result(
            None, FakeTrial("t3"), {"epoch": 1, "timestamp": 9, "val_accuracy": 0.1}
        )
        == TrialScheduler.STOP
    )


def test_budget_stops_running_trials_at_their_epoch_boundary_and_marks_them():
    budget = DeviceBudget({"wall_seconds": 100.0}, max_t=3)
    assert not budget("a", {"epoch": 1, "wall_seconds": 60.0})
    result = {"epoch": 1, "wall_seconds": 45.0}
    assert budget("b", result) and result["stop_reason"] == "budget"
    # A trial reporting max_t ends anyway: not marked.
    last = {"epoch": 3, "wall_seconds": 70.0}
    assert not budget("a", last) and "stop_reason" not in last
    # Cumulative reports: a trial resumed from an earlier checkpoint is not counted twice.
    assert budget.spent("wall_seconds") == pytest.approx(115.0)
    budget("a", {"epoch": 2, "wall_seconds": 65.0})
    assert budget.spent("wall_seconds") == pytest.approx(115.0)


def test_budget_counts_what_the_experiment_spent_before_this_run():
    previous = [
        TrialRecord(
            trial_id=t,
            round="main",
            path="",
            config={},
            history=[{"epoch": 1, "gpu_seconds": 30.0, "wall_seconds": 30.0}],
        )
        for t in ("x", "y")
    ]
    budget = DeviceBudget({"gpu_seconds": 100.0}, max_t=3)
    started(BudgetFIFO(budget=budget), previous)
    assert budget.spent("gpu_seconds") == pytest.approx(60.0) and not budget.reached
    assert budget("z", {"epoch": 1, "gpu_seconds": 41.0})


def test_spent_budget_starts_no_new_trial_and_ends_the_searcher():
    class SearchAlg:
        finished = False

        def set_finished(self):
            self.finished = True

    class Controller(StoppingController):
        def __init__(self, trials):
            super().__init__(trials)
            self.search_alg = SearchAlg()

    budget = DeviceBudget({"wall_seconds": 10.0}, max_t=3)
    scheduler = started(RememberingASHA(budget=budget, **ASHA_ARGS))
    new, interrupted = (
        FakeTrial("new", Trial.PENDING),
        FakeTrial("interrupted", Trial.PENDING, last_result={"epoch": 1}),
    )
    running = FakeTrial("running", Trial.RUNNING)
    controller = Controller([new, interrupted, running])
    for trial in controller.trials:
        scheduler.on_trial_add(controller, trial)
    assert scheduler.choose_trial_to_run(controller) is not None  # budget not spent yet
    budget("running", {"epoch": 1, "wall_seconds": 12.0})
    assert scheduler.choose_trial_to_run(controller) is interrupted
    # The new trial never starts; the interrupted one resumes to its next epoch boundary.
    assert controller.stopped == ["new"] and controller.search_alg.finished


def test_budget_shared_by_scheduler_and_stopper_survives_the_tuner_pickle():
    budget = DeviceBudget({"gpu_seconds": 10.0}, max_t=3)
    scheduler, stopper = pickle.loads(pickle.dumps((BudgetFIFO(budget=budget), budget)))
    assert scheduler.budget is stopper


# --------------------------------------------------------------------------------------------
# scheduler.min_rung_results: no trial promoted unexamined


def test_a_rung_with_too_few_results_does_not_promote_unexamined():
    # Ray's ASHA lets the first arrival at a rung go on whatever it is worth (nothing to
    # compare); with min_rung_results 3 (= reduction_factor), the first two stop there and
    # the third goes on only if it beats both; from then on, Ray's cutoff.
    assert rung_one(RememberingASHA(**ASHA_ARGS), [0.3])[-1] == TrialScheduler.CONTINUE
    examined = dict(ASHA_ARGS, min_rung_results=3)
    assert rung_one(RememberingASHA(**examined), [0.9, 0.95]) == [TrialScheduler.STOP] * 2
    assert rung_one(RememberingASHA(**examined), [0.5, 0.6, 0.7])[-1] == "CONTINUE"
    assert rung_one(RememberingASHA(**examined), [0.5, 0.6, 0.55])[-1] == "STOP"
    # Once the rung holds 3 results, Ray's rule: above the 2/3 quantile goes on.
    assert rung_one(RememberingASHA(**examined), [0.5, 0.6, 0.7, 0.8])[-1] == "CONTINUE"
    assert rung_one(RememberingASHA(**examined), [0.5, 0.6, 0.7, 0.55])[-1] == "STOP"


def test_min_rung_results_survives_the_tuner_pickle_and_the_replay():
    examined = dict(ASHA_ARGS, min_rung_results=3)
    early = [(f"t{i}", {"epoch": 1, "timestamp": i, "val_accuracy": 0.9}) for i in range(1)]
    resumed = started(restored(RememberingASHA(**examined)), records_of(early, {"t0"}))
    resumed.on_trial_add(None, FakeTrial("t1"))
    # One result recorded before the resume: the second arrival still stops, unexamined.
    assert (
        resumed.on_trial_result(
            None, FakeTrial("t1"), {"epoch": 1, "timestamp": 9, "val_accuracy": 0.95}
        )
        == TrialScheduler.STOP
    )
