"""The search methods ``peers.py`` compares, each set up the way its own documentation shows.

Every method runs the same :class:`Task` (space, fixed settings, data split, ``max_t``, ASHA's
``grace_period`` and ``reduction_factor``, concurrency where it has one, a budget in
trial-epochs) and returns a :class:`MethodRun`: one row per trained epoch, in arrival order,
with the seconds the trial measured itself. The Ray-based methods train through the project's
own trainable (``search.trial.trainable.train_trial``), the others through
``peer_trial.train_epochs`` or its Keras callback, which share the project's set-up sequence.

How each method stops at the budget is its own: a ``Stopper`` for Ray Tune (ours included:
its searcher and scheduler, from ``run_search``'s own factory, run in the same ``tune.Tuner``
set-up as stock Ray + Optuna), ``study.stop()`` from a callback for Optuna, whole Hyperband
iterations for Keras Tuner, ``StoppingCriterion(max_num_evaluations)`` for Syne Tune.
``peers.py`` then counts only the first ``budget`` trial-epochs of each, in arrival order.

Every method's epochs are timed in the same place (a Keras callback's epoch begin to end: the
project's trial reports it as ``epoch_seconds``), so imports, builds and restores count as the
framework's cost for every method alike; each method's random state comes from
:func:`peer_task.method_seed`; the test accuracy is that of the model at the best epoch within
the budget (Ray trials checkpoint every epoch and keep every checkpoint for it).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ray.tune import Stopper

from benchmarks.common import Context, logged
from benchmarks.peers.peer_task import (
    MethodRun,
    Task,
    asha_trials,
    hyperband_iteration_epochs,
    keras_tuner_config,
    method_seed,
    peer_gpus,
    ray_space,
    syne_space,
    write_task,
)
from benchmarks.peers.peer_trial import (
    TASK_FILE_KEY,
    evaluate_test,
    keras_recorder,
    load_task,
    read_rows,
    task_data,
    train_epochs,
)
from search.outputs.study import METRIC, MODE

PEER_TRIAL = Path(__file__).resolve().parent / "peer_trial.py"


class TrialEpochBudget(Stopper):
    """Ray Tune's documented way to end an experiment: every trial stops once the trials have
    reported ``budget`` epochs together (one report per epoch)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.seen: set[tuple[str, Any]] = set()

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        # Ray hands the stopper a trial's last result again (done) when its function
        # returns: count each trial's epoch once.
        self.seen.add((trial_id, result.get("epoch")))
        return False

    def stop_all(self) -> bool:
        return len(self.seen) >= self.budget


def _rows_since(rows: list[dict[str, Any]], began: float) -> list[dict[str, Any]]:
    for row in rows:
        row["t"] = float(row["t"]) - began
    return rows


def _ray_rows(trials: list[Any], began: float) -> list[dict[str, Any]]:
    """Rows from Ray trial records (one per reported epoch, failed epochs included)."""
    from benchmarks.common import arrival_key

    rows = []
    for trial in trials:
        first = True
        for row in sorted(trial.history, key=lambda r: int(r.get("epoch", 0))):
            rows.append(
                {
                    "trial": trial.trial_id,
                    "epoch": int(row.get("epoch", 0)),
                    METRIC: float(row.get(METRIC, math.nan)),
                    # The trial's own epoch time (Keras callback, begin to end), as the
                    # peers' rows: not differences of wall_seconds, whose clock starts
                    # with the attempt (imports, build, restore are the framework's).
                    "fit_s": float(row.get("epoch_seconds", 0.0) or 0.0),
                    "trial_failed": bool(row.get("trial_failed")),
                    "t": float(row.get("timestamp", began)) - began,
                    **({"config": dict(trial.config)} if first else {}),
                    "_key": arrival_key(row),
                }
            )
            first = False
    rows.sort(key=lambda r: r.pop("_key"))
    return rows


def checkpoint_at(trial_path: str, epoch: int) -> str | None:
    """The trial's checkpoint folder written at ``epoch`` (``None`` if it kept none there)."""
    from search.trial.checkpoint import STATE_FILE, read_state

    for folder in sorted(Path(trial_path).glob("checkpoint_*")):
        if not (folder / STATE_FILE).exists():
            continue  # a checkpoint Ray had not finished writing
        if int(read_state(str(folder)).get("epoch", -1)) == epoch:
            return str(folder)
    return None


def _checkpoint_test(trials: list[Any], data: Any) -> Callable[[dict[str, Any]], float | None]:
    """Test accuracy of a Ray trial's model at a row's epoch (its checkpoint of that epoch:
    the best epoch within the budget, as the other methods test it)."""
    from search.trial.checkpoint import model_path

    by_id = {t.trial_id: t for t in trials}

    def test_of(row: dict[str, Any]) -> float | None:
        import keras

        folder = checkpoint_at(by_id[row["trial"]].path, int(row["epoch"]))
        if folder is None:
            return None
        return evaluate_test(keras.saving.load_model(model_path(folder)), data)

    return test_of


# --------------------------------------------------------------------------------------------
# the methods


def run_finetune_search(task: Task, seed: int, workdir: Path, ctx: Context) -> MethodRun:
    """Ours: the searcher and scheduler ``run_search`` builds
    (:func:`search.driver.policy.make_search_policy`: TPE told which trials ASHA stopped,
    ASHA whose rungs survive resume, the baseline first), in the same ``tune.Tuner`` set-up as
    stock Ray + Optuna, stopped at the budget by the same stopper."""
    from search.driver.policy import make_search_policy

    def policy(spec: Any) -> dict[str, Any]:
        workdir.mkdir(parents=True, exist_ok=True)
        searcher, scheduler = make_search_policy(
            spec,
            journal_path=str(workdir / "optuna_study.journal"),
            num_samples=asha_trials(task),
            seed=method_seed("finetune_search", seed),
            baseline=spec.search.baseline,
        )
        # Its space is its own (define-by-run) and it keeps the concurrency limit itself.
        return {"search_alg": searcher, "scheduler": scheduler, OWN_SPACE: True}

    return _run_ray_tuner(task, seed, workdir, ctx, f"ours-seed{seed}", asha_trials(task), policy)


# A make_config key: the searcher brings its space, metric and mode (no param_space).
OWN_SPACE = "own_space"


def _run_ray_tuner(
    task: Task,
    seed: int,
    workdir: Path,
    ctx: Context,
    name: str,
    num_samples: int,
    make_config: Callable[[Any], dict[str, Any]],
) -> MethodRun:
    """A plain ``tune.Tuner`` over the project's trainable, as Ray's docs show."""
    import ray
    from ray import tune

    from search.data import load_dataset
    from search.driver.cluster import connect, resolve_gpus
    from search.outputs.experiment import SPEC_FILE
    from search.outputs.results import load_trials
    from search.spec import dump_spec
    from search.trial.trainable import train_trial

    spec = task.spec(name, seed, workdir)
    config = make_config(spec)
    own_space = bool(config.pop(OWN_SPACE, False))
    began = time.time()
    with logged(workdir / f"{name}.log"):
        data = load_dataset(spec.dataset)
        started = connect(None, ctx.num_cpus)
        try:
            gpus = resolve_gpus(spec)
            trainable = tune.with_resources(
                # A checkpoint every epoch, as Ray's own examples report them.
                tune.with_parameters(
                    train_trial,
                    data=data,
                    fixed={
                        **spec.fixed_config(),
                        "gpus_per_trial": gpus,
                        "checkpoint": "every_epoch",
                    },
                ),
                {"cpu": spec.resources.cpus_per_trial, "gpu": gpus},
            )
            objective = {} if own_space else {"metric": METRIC, "mode": MODE}
            tuner = tune.Tuner(
                trainable,
                param_space=None if own_space else ray_space(spec.space),
                tune_config=tune.TuneConfig(
                    **objective,
                    num_samples=num_samples,
                    max_concurrent_trials=task.concurrency,
                    **config,
                ),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=str(workdir / "experiments"),
                    verbose=0,
                    stop=TrialEpochBudget(task.budget),
                    # Every epoch's checkpoint kept: the test is of the best epoch within
                    # the budget, whichever that is.
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                ),
            )
            grid = tuner.fit()
        finally:
            if started:
                ray.shutdown()
    wall = time.time() - began
    if grid.errors:
        raise RuntimeError(f"{name}: a trial errored: {grid.errors[0]} (see {workdir})")
    # The trials are the project's trainable's, so the project's reader reads them; it wants
    # the spec they trained with beside them.
    experiment = workdir / "experiments" / name
    (experiment / SPEC_FILE).write_text(dump_spec(spec), encoding="utf-8")
    trials = load_trials(str(experiment))
    return MethodRun(
        _ray_rows(trials, began), wall, began, task.concurrency, _checkpoint_test(trials, data)
    )


def run_ray_optuna(task: Task, seed: int, workdir: Path, ctx: Context) -> MethodRun:
    """Ray Tune with its stock ``OptunaSearch`` (TPE) and ``ASHAScheduler``: ASHA-stopped
    trials reach the study as COMPLETE with their last value."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    return _run_ray_tuner(
        task,
        seed,
        workdir,
        ctx,
        f"ray-optuna-seed{seed}",
        asha_trials(task),
        lambda spec: {
            "search_alg": OptunaSearch(seed=method_seed("ray_optuna", seed)),
            "scheduler": ASHAScheduler(
                max_t=task.max_t,
                grace_period=task.grace_period,
                reduction_factor=task.reduction_factor,
            ),
        },
    )


def run_random_fifo(task: Task, seed: int, workdir: Path, ctx: Context) -> MethodRun:
    """Ray Tune's random search, every trial trained to ``max_t`` (the floor)."""
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return _run_ray_tuner(
        task,
        seed,
        workdir,
        ctx,
        f"random-fifo-seed{seed}",
        math.ceil(task.budget / task.max_t),
        lambda spec: {
            "search_alg": BasicVariantGenerator(random_state=method_seed("random_fifo", seed)),
            "scheduler": FIFOScheduler(),
        },
    )


def _optuna_worker(
    journal: str,
    study_name: str,
    task_file: str,
    seed: int,
    budget: int,
    grace_period: int,
    reduction_factor: int,
    log: str,
) -> None:
    """One of the processes that share the study (Optuna's documented way to parallelise
    across processes): TPE suggests, the Hyperband pruner prunes, a callback stops the study
    once the trials have reported ``budget`` epochs."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from search.driver.searcher import define_by_run
    from search.space import parse_distribution

    with open(log, "a", encoding="utf-8") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    task = load_task(task_file)
    space = {k: parse_distribution(v, f"space.{k}") for k, v in task["space"].items()}
    storage = JournalStorage(JournalFileBackend(journal))
    study = optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.HyperbandPruner(
            min_resource=grace_period,
            max_resource=task["max_t"],
            reduction_factor=reduction_factor,
        ),
    )

    def objective(trial: optuna.Trial) -> float:
        config = {**define_by_run(space)(trial), **trial.params}

        def report(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        return train_epochs(config, task, report, trial=f"{study_name}-{trial.number}")

    def stop_at_budget(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        spent = sum(len(t.intermediate_values) for t in study.get_trials(deepcopy=False))
        if spent >= budget:
            study.stop()

    study.optimize(objective, callbacks=[stop_at_budget])


def run_optuna(task: Task, seed: int, workdir: Path, ctx: Context) -> MethodRun:
    """Optuna alone: ``TPESampler`` + ``HyperbandPruner``, epochs reported through
    ``trial.report``/``should_prune``, ``concurrency`` processes sharing a journal storage."""
    import multiprocessing

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    spec = task.spec(f"optuna-seed{seed}", seed, workdir)
    task_file = write_task(task, spec, peer_gpus(spec), workdir)
    journal = str(workdir / "optuna.journal")
    began = time.time()
    optuna.create_study(
        study_name=spec.name,
        direction="maximize",
        storage=JournalStorage(JournalFileBackend(journal)),
    )
    spawn = multiprocessing.get_context("spawn")
    # Distinct seeds: workers with one seed would draw the same start-up configs.
    workers = [
        spawn.Process(
            target=_optuna_worker,
            args=(
                journal,
                spec.name,
                str(task_file),
                method_seed("optuna", seed) + k,
                task.budget,
                task.grace_period,
                task.reduction_factor,
                str(workdir / f"optuna-worker{k}.log"),
            ),
        )
        for k in range(task.concurrency)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.time() - began
    failed = [w.exitcode for w in workers if w.exitcode != 0]
    if failed:
        raise RuntimeError(f"optuna: a worker exited with {failed[0]} (see {workdir})")
    return MethodRun(
        _rows_since(read_rows(workdir / "rows"), began), wall, began, task.concurrency
    )


def _keras_tuner_hypermodel(task_file: Path, space: Mapping[str, Any]) -> Any:
    import keras_tuner

    from search.trial import runtime

    task = load_task(task_file)
    data = task_data(task)

    class HyperModel(keras_tuner.HyperModel):
        """Builds through ``model_zoo`` and trains on the project's pipelines."""

        def build(self, hp: Any) -> Any:
            params = {**task["fixed"], **keras_tuner_config(hp, space)}
            runtime.prepare(params, gpu_fraction=float(params["gpus_per_trial"]))
            return runtime.build_compiled_model(params, data.input_shape, data.num_classes)

        def fit(self, hp: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
            params = {**task["fixed"], **hp.values}
            train_ds, val_ds = runtime.make_pipelines(
                params,
                data.x_train,
                data.y_train,
                data.x_val,
                data.y_val,
                int(params["batch_size"]),
            )
            config = {k: v for k, v in hp.values.items() if not k.startswith("tuner/")}
            callbacks = [*kwargs.pop("callbacks", []), keras_recorder(task, data, config)]
            return model.fit(
                train_ds,
                validation_data=val_ds,
                callbacks=callbacks,
                verbose=0,
                shuffle=False,
                **kwargs,
            )

    return HyperModel()


def _run_keras_tuner(task: Task, seed: int, workdir: Path, algorithm: str) -> MethodRun:
    import keras_tuner

    spec = task.spec(f"keras-tuner-{algorithm}-seed{seed}", seed, workdir)
    task_file = write_task(task, spec, peer_gpus(spec), workdir)
    began = time.time()
    with logged(workdir / "keras_tuner.log"):
        hypermodel = _keras_tuner_hypermodel(task_file, spec.space)
        common = {
            "objective": keras_tuner.Objective(METRIC, direction="max"),
            "seed": method_seed(f"keras_tuner_{algorithm}", seed),
            "directory": str(workdir / "keras_tuner"),
            "project_name": spec.name,
            "overwrite": True,
        }
        if algorithm == "hyperband":
            iterations = math.ceil(
                task.budget / hyperband_iteration_epochs(task.max_t, task.reduction_factor)
            )
            tuner = keras_tuner.Hyperband(
                hypermodel,
                max_epochs=task.max_t,
                factor=task.reduction_factor,
                hyperband_iterations=iterations,
                **common,
            )
            tuner.search()
        else:
            tuner = keras_tuner.BayesianOptimization(
                hypermodel, max_trials=math.ceil(task.budget / task.max_t), **common
            )
            tuner.search(epochs=task.max_t)
    wall = time.time() - began
    return MethodRun(_rows_since(read_rows(workdir / "rows"), began), wall, began, 1)


def run_keras_tuner(task: Task, seed: int, workdir: Path, ctx: Context) -> MethodRun:
    """Keras Tuner's ``Hyperband`` (``max_epochs = max_t``, ``factor = reduction_factor``),
    as many iterations as the budget holds; one trial at a time (Keras Tuner runs trials in
    parallel only as a distributed chief/worker set-up)."""
    return _run_keras_tuner(task, seed, workdir, "hyperband")


def run_keras_tuner_bayesian(task: Task, seed: int, workdir: Path, ctx: Context) -> MethodRun:
    """Keras Tuner's ``BayesianOptimization`` (Gaussian process), every trial to ``max_t``."""
    return _run_keras_tuner(task, seed, workdir, "bayesian")


def _run_syne_tune(task: Task, seed: int, workdir: Path, scheduler_name: str) -> MethodRun:
    saved = dict(os.environ)
    try:
        # Syne Tune writes under $SYNETUNE_FOLDER and sets OMP_NUM_THREADS=1 when it is
        # unset; neither should leak into the methods that run after it.
        os.environ["SYNETUNE_FOLDER"] = str(workdir / "syne-tune")
        omp = os.environ.get("OMP_NUM_THREADS")
        from syne_tune import StoppingCriterion, Tuner
        from syne_tune.backend import LocalBackend
        from syne_tune.optimizer.baselines import ASHA, BOHB

        # Syne Tune sets OMP_NUM_THREADS=1 on its first import only (it was then seed 0's
        # alone): its trials get the environment every other method's trials get.
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp

        spec = task.spec(f"syne-tune-{scheduler_name}-seed{seed}", seed, workdir)
        task_file = write_task(task, spec, peer_gpus(spec), workdir)
        config_space = {**syne_space(spec.space), TASK_FILE_KEY: str(task_file)}
        scheduler_class = {"asha": ASHA, "bohb": BOHB}[scheduler_name]
        scheduler = scheduler_class(
            config_space,
            metric=METRIC,
            do_minimize=False,
            time_attr="epoch",
            max_t=task.max_t,
            grace_period=task.grace_period,
            reduction_factor=task.reduction_factor,
            random_seed=method_seed(f"syne_tune_{scheduler_name}", seed),
        )
        began = time.time()
        with logged(workdir / "syne_tune.log"):
            tuner = Tuner(
                trial_backend=LocalBackend(entry_point=str(PEER_TRIAL)),
                scheduler=scheduler,
                n_workers=task.concurrency,
                stop_criterion=StoppingCriterion(max_num_evaluations=task.budget),
                tuner_name=spec.name.replace("_", "-"),
            )
            tuner.run()
        wall = time.time() - began
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return MethodRun(
        _rows_since(read_rows(workdir / "rows"), began), wall, began, task.concurrency
    )


def run_syne_tune(task: Task, seed: int, workdir: Path, ctx: Context) -> MethodRun:
    """Syne Tune's ``ASHA`` (random search + asynchronous successive halving, stopping
    type) on its local backend, stopped after ``budget`` reported epochs."""
    return _run_syne_tune(task, seed, workdir, "asha")


def run_syne_tune_bohb(task: Task, seed: int, workdir: Path, ctx: Context) -> MethodRun:
    """Syne Tune's ``BOHB``: ASHA with a kernel-density model fitted on every rung."""
    return _run_syne_tune(task, seed, workdir, "bohb")


# The six methods of the comparison, ours first; then the peers' model-based alternatives,
# run in the full comparison only (they need their whole budget to say anything).
METHODS: dict[str, Callable[[Task, int, Path, Context], MethodRun]] = {
    "finetune_search": run_finetune_search,
    "ray_optuna": run_ray_optuna,
    "optuna": run_optuna,
    "keras_tuner": run_keras_tuner,
    "syne_tune": run_syne_tune,
    "random_fifo": run_random_fifo,
}
VARIANTS: dict[str, Callable[[Task, int, Path, Context], MethodRun]] = {
    "keras_tuner_bayesian": run_keras_tuner_bayesian,
    "syne_tune_bohb": run_syne_tune_bohb,
}
