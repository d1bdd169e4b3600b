"""Every simulated method's own decision code behind one small interface.

A method proposes jobs (a configuration trained from one epoch to another) and hears every
epoch's validation accuracy as it arrives; it answers whether the job goes on. The simulator
(``simulate.py``) owns the clock, the workers and the budget, so every method is measured the
same way, in the same place. What decides is each framework's real code:

* ``finetune_search``: the searcher and scheduler ``run_search`` builds
  (:func:`search.driver.policy.make_search_policy`), driven the way Ray's ``TuneController``
  drives them (scheduler first; the searcher hears a result only if the trial goes on, and
  ``on_trial_complete`` when it stops or reaches ``max_t``).
* ``ray_optuna``: Ray's stock ``OptunaSearch`` (TPE) and ``ASHAScheduler``, driven the same way.
* ``optuna``: Optuna's ``TPESampler`` and ``HyperbandPruner`` by ask/tell, ``report`` and
  ``should_prune`` after every epoch.
* ``keras_tuner``: Keras Tuner's ``HyperbandOracle`` (``create_trial`` per free worker,
  ``update_trial`` per epoch, ``end_trial``), synchronous brackets and promotions that resume
  from the parent trial's epoch.
* ``syne_tune`` / ``syne_tune_bohb``: Syne Tune's ``ASHA`` and ``BOHB`` schedulers
  (``suggest``, ``on_trial_result``, ``on_trial_complete``).
* ``random_fifo``: uniform random configurations, each trained to ``max_t``.
* ``one_epoch_topk``: random configurations trained one epoch each for half the budget, then
  the best of them trained on to ``max_t`` in order of their first epoch (Egele et al. 2023).

Each method gets its own random state from ``(method name, seed)``: two methods never share
a sampler's draws.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from task import TableTask

from benchmarks.peers.peer_task import method_seed

METRIC, TIME_ATTR = "val_accuracy", "epoch"


@dataclass
class Job:
    """Train ``config`` from epoch ``first`` to epoch ``last`` (both 1-based, inclusive)."""

    key: Any
    config: dict[str, Any]
    first: int
    last: int
    state: dict[str, Any] = field(default_factory=dict)


class Method:
    """The interface the simulator drives."""

    name = "method"

    def __init__(
        self, task: TableTask, seed: int, workers: int, budget_seconds: float | None = None
    ) -> None:
        self.task = task
        self.seed = method_seed(self.name, seed)
        self.workers = workers
        # The budget in device-seconds, for a method told its device budget (ours).
        self.budget_seconds = budget_seconds
        # The share of the budget spent so far, kept up to date by the simulator (a method
        # that plans by the budget reads it; see OneEpochTopK).
        self.spent_fraction = 0.0

    def suggest(self) -> Job | None:
        """A job for a free worker, or ``None`` (nothing now: ask again after the next
        result)."""
        raise NotImplementedError

    def report(self, job: Job, epoch: int, value: float) -> bool:
        """The job's ``epoch`` ended with ``value``; True: train its next epoch."""
        raise NotImplementedError

    def close(self) -> None:
        """Frees what the method holds (files)."""


def _space_config(task: TableTask, config: Mapping[str, Any]) -> dict[str, Any]:
    return {d.name: config[d.name] for d in task.dimensions}


# --------------------------------------------------------------------------------------------
# Ray Tune searchers and schedulers


@dataclass(frozen=True)
class RayTrial:
    """What Ray's schedulers read of a trial (its id)."""

    trial_id: str


def tell_result(
    searcher: Any,
    scheduler: Any,
    trial: RayTrial,
    epoch: int,
    value: float,
    last_epoch: int,
    seconds: float | None = None,
) -> bool:
    """Tells a Ray searcher and scheduler one epoch's result as Ray's ``TuneController`` does:
    the scheduler decides first; a trial that goes on is heard by the searcher as a result, one
    that stops (or reached ``last_epoch``) by both as complete. Shared by the simulator and
    :mod:`replay`, so what the replay checks is what the simulator runs.

    ``seconds`` is the device time the trial has held so far (the product's
    ``wall_seconds``).

    Returns:
        True when the trial trains on.
    """
    from ray.tune.schedulers import TrialScheduler

    result = {
        METRIC: value,
        TIME_ATTR: epoch,
        "training_iteration": epoch,
        "trial_id": trial.trial_id,
    }
    if seconds is not None:
        result["wall_seconds"] = seconds
    decision = scheduler.on_trial_result(None, trial, result)
    if decision == TrialScheduler.STOP or epoch >= last_epoch:
        scheduler.on_trial_complete(None, trial, result)
        searcher.on_trial_complete(trial.trial_id, result=result)
        return False
    searcher.on_trial_result(trial.trial_id, result)
    return True


def sync_journal(searcher: Any) -> None:
    """Fsyncs an ``AshaAwareOptunaSearch``'s journal now: its folder is about to go, and the
    journal's background fsync would warn about it."""
    backend = getattr(getattr(searcher._ot_study, "_storage", None), "_backend", None)
    if hasattr(backend, "sync"):
        backend.sync()


class RayMethod(Method):
    """A Ray searcher and scheduler, driven as Ray's ``TuneController`` drives them."""

    def __init__(
        self, task: TableTask, seed: int, workers: int, budget_seconds: float | None = None
    ) -> None:
        super().__init__(task, seed, workers, budget_seconds)
        self.count = 0
        self.searcher, self.scheduler = self.build()

    def build(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def suggest(self) -> Job | None:
        trial_id = f"{self.count:05d}"
        config = self.searcher.suggest(trial_id)
        if config is None or config == "FINISHED":
            return None
        self.count += 1
        trial = RayTrial(trial_id)
        self.scheduler.on_trial_add(None, trial)
        return Job(
            trial_id, _space_config(self.task, config), 1, self.task.max_t, {"trial": trial}
        )

    def report(self, job: Job, epoch: int, value: float) -> bool:
        return tell_result(
            self.searcher,
            self.scheduler,
            job.state["trial"],
            epoch,
            value,
            job.last,
            job.state.get("seconds"),
        )


def sim_spec(
    task: TableTask, name: str = "sim", settings: Mapping[str, Mapping[str, Any]] | None = None
) -> Any:
    """The experiment spec ``run_search`` would get for the tabulated task: the spec's own
    defaults for how it searches, ``settings`` (section -> keys) overriding them."""
    from search.spec import SearchSpec, load_spec_dict

    settings = settings or {}
    defaults = {
        key: getattr(SearchSpec, key)
        for key in ("algorithm", "baseline", "cost_exponent", "prior_weight")
    }
    raw = {
        **task.raw,
        "name": name,
        "storage": tempfile.gettempdir(),
        "train": {**task.raw["train"], "learning_rate": task.baseline["learning_rate"]},
        "search": {**task.raw["search"], **defaults, **settings.get("search", {})},
        "scheduler": {**task.raw["scheduler"], **settings.get("scheduler", {})},
    }
    return load_spec_dict(raw, source="benchmarks/quality")


class FinetuneSearch(RayMethod):
    """Ours: the searcher and scheduler ``run_search`` builds, through its own factory, with
    the spec's defaults (``settings`` changes them: the ablation's levers)."""

    name = "finetune_search"
    num_samples = 10_000  # the budget ends the search; this only sizes TPE's start-up (10)
    settings: dict[str, dict[str, Any]] = {}

    def build(self) -> tuple[Any, Any]:
        from search.driver.policy import make_search_policy

        self.folder = tempfile.mkdtemp(prefix="sim-ours-")
        settings = {
            section: dict(keys) for section, keys in self.settings.items() if section != "prior"
        }
        if self.budget_seconds:
            # Told its device budget, as a user would write it (it cools the cost lever).
            settings.setdefault("search", {})["budget_device_hours"] = self.budget_seconds / 3600.0
        spec = sim_spec(self.task, settings=settings)
        searcher, scheduler = make_search_policy(
            spec,
            journal_path=os.path.join(self.folder, "optuna_study.journal"),
            num_samples=self.num_samples,
            seed=self.seed,
            baseline=spec.search.baseline,
            prior=self.settings.get("prior"),
        )
        searcher.set_max_concurrency(self.workers)
        scheduler.remember([])  # a new search: nothing recorded before this run
        return searcher, scheduler

    def close(self) -> None:
        import shutil

        sync_journal(self.searcher)
        shutil.rmtree(self.folder, ignore_errors=True)


class RayOptuna(RayMethod):
    """Stock Ray Tune: ``OptunaSearch`` (its default TPE) and ``ASHAScheduler``."""

    name = "ray_optuna"

    def build(self) -> tuple[Any, Any]:
        import optuna
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(
            space=optuna_space(self.task),
            metric=METRIC,
            mode="max",
            sampler=optuna.samplers.TPESampler(seed=self.seed),
        )
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            metric=METRIC,
            mode="max",
            max_t=self.task.max_t,
            grace_period=int(self.task.raw["scheduler"]["grace_period"]),
            reduction_factor=self.task.raw["scheduler"]["reduction_factor"],
        )
        return searcher, scheduler


def optuna_space(task: TableTask) -> dict[str, Any]:
    """The space as Optuna distributions (what Ray's ``OptunaSearch`` takes as it is)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    for d in task.dimensions:
        if d.kind in ("log", "linear"):
            out[d.name] = FloatDistribution(d.low, d.high, log=d.kind == "log")
        elif d.kind == "int":
            out[d.name] = IntDistribution(int(d.low), int(d.high))
        else:
            out[d.name] = CategoricalDistribution(list(d.values))
    return out


# --------------------------------------------------------------------------------------------
# Optuna alone


class OptunaHyperband(Method):
    """Optuna's ``TPESampler`` (defaults) and ``HyperbandPruner``, ask/tell."""

    name = "optuna"

    def __init__(
        self, task: TableTask, seed: int, workers: int, budget_seconds: float | None = None
    ) -> None:
        super().__init__(task, seed, workers, budget_seconds)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        scheduler = task.raw["scheduler"]
        self.study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=self.seed),
            pruner=optuna.pruners.HyperbandPruner(
                min_resource=int(scheduler["grace_period"]),
                max_resource=task.max_t,
                reduction_factor=int(scheduler["reduction_factor"]),
            ),
        )

    def suggest(self) -> Job | None:
        trial = self.study.ask()
        config = {}
        for d in self.task.dimensions:
            if d.kind == "log":
                config[d.name] = trial.suggest_float(d.name, d.low, d.high, log=True)
            elif d.kind == "linear":
                config[d.name] = trial.suggest_float(d.name, d.low, d.high)
            elif d.kind == "int":
                config[d.name] = trial.suggest_int(d.name, int(d.low), int(d.high))
            else:
                config[d.name] = trial.suggest_categorical(d.name, list(d.values))
        return Job(trial.number, config, 1, self.task.max_t, {"trial": trial})

    def report(self, job: Job, epoch: int, value: float) -> bool:
        import optuna

        trial = job.state["trial"]
        trial.report(value, epoch)
        if epoch >= job.last:
            self.study.tell(trial, value)
            return False
        if trial.should_prune():
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return False
        return True


# --------------------------------------------------------------------------------------------
# Keras Tuner


class KerasTunerHyperband(Method):
    """Keras Tuner's ``HyperbandOracle``: one tuner id per worker, as its distributed mode
    runs it; a promoted trial resumes from its parent's epoch."""

    name = "keras_tuner"

    def __init__(
        self, task: TableTask, seed: int, workers: int, budget_seconds: float | None = None
    ) -> None:
        super().__init__(task, seed, workers, budget_seconds)
        import keras_tuner

        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        hp = keras_tuner.HyperParameters()
        for d in task.dimensions:
            if d.kind in ("log", "linear"):
                hp.Float(d.name, d.low, d.high, sampling="log" if d.kind == "log" else "linear")
            elif d.kind == "int":
                hp.Int(d.name, int(d.low), int(d.high))
            else:
                hp.Choice(d.name, list(d.values))
        self.folder = tempfile.mkdtemp(prefix="sim-kt-")
        self.oracle = keras_tuner.oracles.HyperbandOracle(
            objective=keras_tuner.Objective(METRIC, direction="max"),
            max_epochs=task.max_t,
            factor=int(task.raw["scheduler"]["reduction_factor"]),
            hyperband_iterations=1000,
            seed=self.seed,
            hyperparameters=hp,
        )
        self.oracle._set_project_dir(self.folder, "sim")
        self.oracle._display.verbose = 0
        self.free = [f"worker{k}" for k in range(workers)]
        self.epochs_of: dict[str, int] = {}

    def suggest(self) -> Job | None:
        import keras_tuner

        if not self.free:
            return None
        tuner_id = self.free[-1]
        trial = self.oracle.create_trial(tuner_id)
        if trial.status != keras_tuner.engine.trial.TrialStatus.RUNNING:
            return None  # IDLE: the bracket waits for running trials
        self.free.pop()
        values = trial.hyperparameters.values
        first = int(values.get("tuner/initial_epoch", 0)) + 1
        last = int(values.get("tuner/epochs", self.task.max_t))
        return Job(
            trial.trial_id,
            _space_config(self.task, values),
            first,
            last,
            {"trial": trial, "tuner_id": tuner_id},
        )

    def report(self, job: Job, epoch: int, value: float) -> bool:
        import keras_tuner

        trial = job.state["trial"]
        self.oracle.update_trial(trial.trial_id, {METRIC: value}, step=epoch - 1)
        if epoch >= job.last:
            trial.status = keras_tuner.engine.trial.TrialStatus.COMPLETED
            self.oracle.end_trial(trial)
            self.free.append(job.state["tuner_id"])
            return False
        return True

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Syne Tune


@dataclass
class _SyneTrial:
    trial_id: int
    config: dict[str, Any]


class SyneTune(Method):
    """Syne Tune's ``ASHA`` (random search, stopping type)."""

    name = "syne_tune"
    scheduler_name = "asha"

    def __init__(
        self, task: TableTask, seed: int, workers: int, budget_seconds: float | None = None
    ) -> None:
        super().__init__(task, seed, workers, budget_seconds)
        from syne_tune.optimizer.baselines import ASHA, BOHB

        from benchmarks.peers.peer_task import syne_space

        # Its searcher warns about an argument its own constructor passes twice.
        logging.getLogger("syne_tune").setLevel(logging.ERROR)
        scheduler = task.raw["scheduler"]
        np.random.seed(self.seed)  # Syne Tune's ASHA picks brackets with NumPy's global state
        self.scheduler = {"asha": ASHA, "bohb": BOHB}[self.scheduler_name](
            syne_space(sim_spec(task).space),
            metric=METRIC,
            do_minimize=False,
            time_attr=TIME_ATTR,
            max_t=task.max_t,
            grace_period=int(scheduler["grace_period"]),
            reduction_factor=scheduler["reduction_factor"],
            random_seed=self.seed,
        )
        self.count = 0

    def suggest(self) -> Job | None:
        suggestion = self.scheduler.suggest()
        if suggestion is None or suggestion.spawn_new_trial_id is False:
            return None
        trial = _SyneTrial(self.count, dict(suggestion.config))
        self.count += 1
        self.scheduler.on_trial_add(trial)
        return Job(
            trial.trial_id,
            _space_config(self.task, trial.config),
            1,
            self.task.max_t,
            {"trial": trial},
        )

    def report(self, job: Job, epoch: int, value: float) -> bool:
        # As Syne Tune's Tuner: every result to on_trial_result; a trial that reached max_t
        # (its script returns) then to on_trial_complete.
        result = {METRIC: value, TIME_ATTR: epoch}
        decision = self.scheduler.on_trial_result(job.state["trial"], result)
        if epoch >= job.last:
            self.scheduler.on_trial_complete(job.state["trial"], result)
            return False
        return decision == "CONTINUE"


class SyneTuneBOHB(SyneTune):
    """Syne Tune's ``BOHB``: ASHA with a kernel-density model on the rungs."""

    name = "syne_tune_bohb"
    scheduler_name = "bohb"


# --------------------------------------------------------------------------------------------
# the floor and the one-epoch baseline


class RandomFIFO(Method):
    """Uniform random configurations, each trained to ``max_t``."""

    name = "random_fifo"

    def __init__(
        self, task: TableTask, seed: int, workers: int, budget_seconds: float | None = None
    ) -> None:
        super().__init__(task, seed, workers, budget_seconds)
        self.rng = np.random.default_rng(self.seed)
        self.count = 0

    def draw(self) -> dict[str, Any]:
        return {d.name: d.from_unit(float(self.rng.random())) for d in self.task.dimensions}

    def suggest(self) -> Job | None:
        self.count += 1
        return Job(self.count, self.draw(), 1, self.task.max_t)

    def report(self, job: Job, epoch: int, value: float) -> bool:
        return epoch < job.last


class OneEpochTopK(RandomFIFO):
    """Random configurations one epoch each for half the budget (``spent_fraction``), then
    the best first epochs trained on to ``max_t``, best first."""

    name = "one_epoch_topk"

    def __init__(
        self, task: TableTask, seed: int, workers: int, budget_seconds: float | None = None
    ) -> None:
        super().__init__(task, seed, workers, budget_seconds)
        self.screened: list[tuple[float, int, dict[str, Any]]] = []

    def suggest(self) -> Job | None:
        if self.spent_fraction < 0.5:
            self.count += 1
            return Job(self.count, self.draw(), 1, 1)
        if not self.screened:
            return None
        self.screened.sort(key=lambda item: (-item[0], item[1]))
        _, key, config = self.screened.pop(0)
        return Job(key, config, 2, self.task.max_t)

    def report(self, job: Job, epoch: int, value: float) -> bool:
        if job.last == 1:
            self.screened.append((value, job.key, job.config))
        return epoch < job.last


# The ablation: ours with settings of its spec changed (levers on or off, alone or together).
# A deliberately poor prior: the most expensive configuration, with the learning rate, the
# dropout and the noise at the top of their ranges (near chance on the table).
BAD_PRIOR = {
    "noise_std": 0.3,
    "upsample": 5,
    "input_convs": 2,
    "freeze": 5,
    "learning_rate": 0.3,
    "dropout": 0.8,
}

LEVERS: dict[str, dict[str, dict[str, Any]]] = {
    # TPE models the highest rung d+2 trials reached (BOHB's rule)
    "tpe_rungs": {"search": {"algorithm": "tpe_rungs"}},
    # TPE ranks trials by how far they trained (Optuna's way with pruned trials)
    "tpe": {"search": {"algorithm": "tpe"}},
    # the seed article's configuration not run first
    "no_baseline": {"search": {"baseline": False}},
    # no trial promoted unexamined: a rung judges once it holds reduction_factor results
    "examined_rungs": {"scheduler": {"min_rung_results": 3}},
    # Ray's rule at a rung's cutoff: trials that only tie it go on (scheduler.break_ties)
    "ray_ties": {"scheduler": {"break_ties": False}},
    "ray_ties+examined_rungs": {"scheduler": {"break_ties": False, "min_rung_results": 3}},
    # TPE's acquisition per cost ** alpha, alpha cooled from 1 to 0 over the budget (CArBO)
    "cost_aware": {"search": {"cost_exponent": 1.0}},
    # draws around the baseline, chance 3 / (3 + trials so far) (piBO / PriorBand)
    "prior": {"search": {"prior_weight": 3.0}},
    # the same, with a deliberately poor configuration as the prior (run first, drawn around)
    "prior+bad_prior": {"search": {"prior_weight": 3.0}, "prior": BAD_PRIOR},
    "bad_prior": {"prior": BAD_PRIOR},
    "cost_aware+tpe_rungs": {"search": {"cost_exponent": 1.0, "algorithm": "tpe_rungs"}},
    "prior+tpe_rungs": {"search": {"prior_weight": 3.0, "algorithm": "tpe_rungs"}},
    "cost_aware+prior": {"search": {"cost_exponent": 1.0, "prior_weight": 3.0}},
    "cost_aware+prior+tpe_rungs": {
        "search": {"cost_exponent": 1.0, "prior_weight": 3.0, "algorithm": "tpe_rungs"}
    },
    "cost_aware+prior+tpe_rungs+examined_rungs": {
        "search": {"cost_exponent": 1.0, "prior_weight": 3.0, "algorithm": "tpe_rungs"},
        "scheduler": {"min_rung_results": 3},
    },
    # together
    "tpe_rungs+examined_rungs": {
        "search": {"algorithm": "tpe_rungs"},
        "scheduler": {"min_rung_results": 3},
    },
    "no_baseline+tpe_rungs": {"search": {"algorithm": "tpe_rungs", "baseline": False}},
    "no_baseline+examined_rungs": {
        "search": {"baseline": False},
        "scheduler": {"min_rung_results": 3},
    },
    "no_baseline+tpe_rungs+examined_rungs": {
        "search": {"algorithm": "tpe_rungs", "baseline": False},
        "scheduler": {"min_rung_results": 3},
    },
}


def lever_method(lever: str) -> type[Method]:
    """Ours with ``LEVERS[lever]`` applied, named ``finetune_search+<lever>``."""
    return type(
        f"Ours_{lever}",
        (FinetuneSearch,),
        {"name": f"{FinetuneSearch.name}+{lever}", "settings": LEVERS[lever]},
    )


METHODS: dict[str, type[Method]] = {
    "finetune_search": FinetuneSearch,
    "ray_optuna": RayOptuna,
    "optuna": OptunaHyperband,
    "keras_tuner": KerasTunerHyperband,
    "syne_tune": SyneTune,
    "syne_tune_bohb": SyneTuneBOHB,
    "random_fifo": RandomFIFO,
    "one_epoch_topk": OneEpochTopK,
}


def clamp_config(task: TableTask, config: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration inside the table's space (a sampler's float on a bound)."""
    out = {}
    for d in task.dimensions:
        value = config[d.name]
        if d.kind in ("log", "linear"):
            value = float(min(max(float(value), d.low), d.high))
        elif d.kind == "int":
            value = int(min(max(int(round(float(value))), d.low), d.high))
        out[d.name] = value
    return out


def method_class(name: str) -> type[Method]:
    """A method by name: one of :data:`METHODS`, or ``finetune_search+<lever>``."""
    if "+" in name:
        return lever_method(name.split("+", 1)[1])
    return METHODS[name]
