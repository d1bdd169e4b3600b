"""The driver: ``run_search(spec)`` and friends, which the CLI, ``ray submit`` scripts, job
submissions and tests all call.

A search is one ``tune.Tuner``: :class:`~search.driver.searcher.AshaAwareOptunaSearch` suggests
(TPE, seeded, its study in the experiment folder's Optuna journal), ASHA stops
(:mod:`search.driver.scheduling`: ``time_attr="epoch"``, ``max_t = train.epochs``, rungs that
survive a resume, the device budget), each trial trains through
:func:`search.trial.trainable.train_trial` with the dataset shared through the object store.
``run``, ``resume`` and ``extend`` differ only in how they make the tuner; :func:`_drive` does
the rest (lock, data, cluster checks, study, fit, journal upload, shut-down) once for all
three.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray import tune

from search import storage
from search._validate import echo
from search.checkpoint_policy import RUNG_EPOCHS_KEY
from search.driver.cluster import (
    WaitReporter,
    check_object_store,
    check_shared_storage,
    connect,
    resolve_gpus,
)
from search.driver.console import search_console
from search.driver.disk import refusing_full_disks
from search.driver.experiment_state import check_resumable_state, ray_snapshots
from search.driver.mirror import JournalMirror, mirroring
from search.driver.policy import make_search_policy
from search.driver.progress import ProgressPrinter
from search.driver.pruning import CheckpointPruner
from search.driver.reconcile import Reconciled, reconcile_before_start
from search.driver.scheduling import (
    budget_for,
    check_budget_left,
    checkpoint_rungs,
    study_records,
)
from search.driver.searcher import relocated_journal
from search.driver.tracking import MlflowTracker
from search.driver.watchdog import DEFAULT_STALL_MINUTES, watching
from search.errors import SpecError, write_failed
from search.outputs import experiment as folder
from search.outputs.lock import LOCK_FILE, driver_lock
from search.outputs.results import (
    TRIAL_DIR_PREFIX,
    TrialRecord,
    best_trial,
    load_trials,
)
from search.outputs.study import METRIC, MODE, TrialStatus, journal_path_for
from search.outputs.tracking import check_tracking
from search.spec import ExperimentSpec, dump_spec
from search.trial import backends
from search.trial.trainable import train_trial

Trainable = Callable[..., None]

# Each trial keeps its best checkpoint (what export takes) and its latest (what a resume or a
# retry continues from). Ray forces an experiment snapshot after every checkpoint with this;
# `ray_snapshots` (search/driver/experiment_state.py) paces those snapshots and defers the
# deletions until a later snapshot is in storage.
CHECKPOINTS_KEPT = 1
# (data, gpus per trial, local folder of the journal) -> the tuner to fit
TunerFactory = Callable[[Any, float, str], tune.Tuner]


@dataclass
class SearchSummary:
    """What a finished (or interrupted) search tells its caller."""

    experiment_dir: str
    trials: list[TrialRecord]
    best: TrialRecord | None
    max_t: int
    interrupted: bool = False

    @property
    def best_config(self) -> dict[str, Any]:
        return dict(self.best.config) if self.best else {}

    @property
    def best_value(self) -> float | None:
        return self.best.best_value if self.best else None

    def counts(self) -> dict[str, int]:
        counts = {
            TrialStatus.COMPLETE.value: 0,
            TrialStatus.STOPPED.value: 0,
            TrialStatus.FAILED.value: 0,
        }
        for trial in self.trials:
            status = trial.status(self.max_t).value
            counts[status] = counts.get(status, 0) + 1
        return counts


def summarize(experiment_dir: str, max_t: int, interrupted: bool = False) -> SearchSummary:
    """Reads the experiment folder back into a :class:`SearchSummary`.

    A search counts as interrupted when Ctrl-C reached it or a trial was left unfinished (Ray
    returns from ``fit`` after saving its state on the first Ctrl-C).
    """
    trials = load_trials(experiment_dir)
    interrupted = interrupted or any(t.status(max_t) == TrialStatus.UNFINISHED for t in trials)
    return SearchSummary(
        experiment_dir=experiment_dir,
        trials=trials,
        best=best_trial(trials),
        max_t=max_t,
        interrupted=interrupted,
    )


def with_fresh_name(spec: ExperimentSpec) -> ExperimentSpec:
    """The spec, renamed ``<name>-<timestamp>`` if its folder is taken (as Ray names runs)."""
    if not folder.experiment_exists(spec.experiment_path):
        return spec
    return replace(spec, name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")


# --------------------------------------------------------------------------------------------
# the tuner


def _trial_dirname(trial: Any) -> str:
    return f"{TRIAL_DIR_PREFIX}{trial.trial_id}"


def _wrap_trainable(
    spec: ExperimentSpec, data: Any, gpus: float, trainable: Trainable | None
) -> Any:
    """The trainable with its resources, and the dataset put in the object store once."""
    fixed = {
        **spec.fixed_config(),
        "gpus_per_trial": gpus,
        RUNG_EPOCHS_KEY: checkpoint_rungs(spec),
    }
    return tune.with_resources(
        tune.with_parameters(trainable or train_trial, data=data, fixed=fixed),
        {"cpu": spec.resources.cpus_per_trial, "gpu": gpus},
    )


def _build_tuner(
    spec: ExperimentSpec,
    data: Any,
    gpus: float,
    *,
    experiment_dir: str,
    run_name: str,
    storage_path: str,
    local_dir: str,
    num_samples: int,
    seed: int,
    baseline: bool,
    trainable: Trainable | None = None,
) -> tune.Tuner:
    # One budget object, pickled with the tuner: the stopper that ends running trials and
    # the scheduler that keeps new ones from starting share it (also after a resume).
    budget = budget_for(spec)
    search_alg, scheduler = make_search_policy(
        spec,
        journal_path=journal_path_for(local_dir),
        num_samples=num_samples,
        seed=seed,
        baseline=baseline,
        budget=budget,
    )
    return tune.Tuner(
        _wrap_trainable(spec, data, gpus, trainable),
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=spec.search.max_concurrent,
            time_budget_s=spec.search.time_budget_s,
            trial_dirname_creator=_trial_dirname,
            # One process per concurrent trial slot: TensorFlow is imported once, not per trial.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
            stop=budget,
            # The best checkpoint is what export takes; Ray also keeps the latest to resume.
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=CHECKPOINTS_KEPT,
                checkpoint_score_attribute=METRIC,
                checkpoint_score_order=MODE,
            ),
            callbacks=[
                ProgressPrinter(spec.max_t, experiment_dir),
                JournalMirror(),
                WaitReporter(),
                CheckpointPruner(spec.search.keep_checkpoints, spec.max_t),
                *([MlflowTracker(spec, experiment_dir)] if spec.tracking else []),
            ],
            verbose=0,
        ),
    )


def _fit(tuner: tune.Tuner, experiment_dir: str) -> bool:
    """Runs the tuner; returns True when a second Ctrl-C cut it short. A write refused by a
    full disk or an I/O error raises :class:`~search.errors.WriteFailed` (what, where)."""
    try:
        tuner.fit()
    except KeyboardInterrupt:
        return True
    except Exception as err:
        failed = write_failed(err, "a file of the search", experiment_dir)
        if failed is None:
            raise
        raise failed from None
    return False


def _drive(
    spec: ExperimentSpec,
    experiment_dir: str,
    make_tuner: TunerFactory,
    *,
    address: str | None,
    num_cpus: int | None,
    force: bool = False,
    continued_round: str | None = None,
    fresh: bool = False,
    stall_minutes: float = DEFAULT_STALL_MINUTES,
) -> SearchSummary:
    """The sequence every search runs: lock, data, cluster checks, study reconciled with Ray's
    results, fit (the journal mirrored to cloud storage as trials finish), last upload.

    Args:
        spec: The experiment's spec.
        experiment_dir: Its folder (local path or URI).
        make_tuner: Builds (or restores) the tuner once the cluster is known.
        address: A Ray cluster to join, or ``None`` for a local Ray.
        num_cpus: CPUs for a local Ray.
        force: Take the experiment's lock from another host's driver.
        continued_round: The round ``resume`` continues (its unfinished trials stay RUNNING in
            the study), or ``None``.
        fresh: A new search (``run``): right after the lock, the folder gets its spec and a
            new run id, so a driver killed from then on leaves a folder that ``resume``
            continues; a refusal before the search starts takes them away again.
        stall_minutes: After this long with trials running and none reporting, starting or
            ending, say which and what they wait for (:mod:`search.driver.watchdog`; 0: off).
    """
    from search.data import load_dataset

    # Before the lock, Ray or any trial: a backend this Python lacks is the user's to install.
    backends.check_installed(spec.train.backend)
    if spec.tracking is not None:
        check_tracking(spec, experiment_dir)
    # The lock first: a second driver stops before loading data or starting Ray. The console
    # shows the search; the stack's start-up and shut-down chatter stays in the logs (Ray's
    # shut-down of its workers included).
    with driver_lock(experiment_dir, force=force) as lock, search_console():
        took_over = fresh and _start_fresh(spec, experiment_dir)
        # The journal mirror of a cloud experiment is used only by the run it belongs to.
        local_dir = folder.local_mirror_dir(experiment_dir, folder.ensure_run_id(experiment_dir))
        started = False
        try:
            data = load_dataset(spec.dataset)
            started = connect(address, num_cpus)
            gpus = resolve_gpus(spec)
            check_shared_storage(spec)
            check_object_store(data.nbytes)
            journal = journal_path_for(local_dir)
            if storage.is_remote(experiment_dir):
                folder.fetch_journal(experiment_dir, journal)
            records = Reconciled()
            if not fresh:  # resume, extend: the study and Ray's results agree
                records = reconcile_before_start(spec, experiment_dir, journal, continued_round)
            # What the model's outputs mean, for export and predict to name them.
            folder.write_class_names(experiment_dir, data.class_names)
            with (
                mirroring(experiment_dir, local_dir, lock) as upload,
                relocated_journal(journal),
                study_records(records.stops, records.round_trials),
                ray_snapshots(),
                refusing_full_disks(),
                watching(stall_minutes, spec.max_t),
            ):
                interrupted = _fit(make_tuner(data, gpus, local_dir), experiment_dir)
                upload()
        except SpecError:
            if fresh and not took_over and folder.never_started(experiment_dir):
                # Refused before it started: no trace (the lock removes the folders it made).
                folder.clear_for_start(experiment_dir, keep=(LOCK_FILE,))
            raise
        finally:
            if started:
                ray.shutdown()
    return summarize(experiment_dir, spec.max_t, interrupted)


def _start_fresh(spec: ExperimentSpec, experiment_dir: str) -> bool:
    """A new search's first write, under its lock: ``spec.yaml`` (the run id follows). A folder
    left by a search that never started (its driver killed while it started) is taken over.

    Returns:
        Whether such a folder was taken over.

    Raises:
        SpecError: When the folder holds a search that started (another driver's, begun
            since the folder was checked).
    """
    if not folder.never_started(experiment_dir):
        raise _exists_error(experiment_dir)
    left = folder.clear_for_start(experiment_dir, keep=(LOCK_FILE,))
    if left:
        print(
            f"note: {experiment_dir}: a search that never started was left there (its "
            f"driver stopped before Ray's first snapshot; found {', '.join(sorted(left))}); "
            f"starting it anew",
            flush=True,
        )
    storage.write_atomic(storage.join(experiment_dir, folder.SPEC_FILE), dump_spec(spec))
    return bool(left)


def _exists_error(experiment_dir: str) -> SpecError:
    return SpecError(
        f"name: the experiment folder {experiment_dir} already exists; "
        f"`finetune-search resume` or `extend` it, or pick another name"
    )


# --------------------------------------------------------------------------------------------
# the entry points


def run_search(
    spec: ExperimentSpec,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    trainable: Trainable | None = None,
    force: bool = False,
    stall_minutes: float = DEFAULT_STALL_MINUTES,
) -> SearchSummary:
    """Runs a whole search: validates resources, loads the data once, tunes, summarizes.

    Args:
        spec: The validated experiment spec.
        address: A Ray cluster to join (``auto`` inside ``ray submit``/``ray job``); ``None``
            starts a local Ray on loopback.
        num_cpus: CPUs for a local Ray (default: all).
        trainable: Replaces :func:`~search.trial.trainable.train_trial` (same signature), e.g.
            a wrapper that injects faults in tests.
        force: Take the experiment's ``driver.lock`` from another host's driver.
        stall_minutes: The stall watchdog's wait (see :func:`_drive`; 0: off).

    Returns:
        The search's summary: every trial, the best one and the experiment folder.

    Raises:
        SpecError: When the experiment folder already holds a search that started, or
            resources don't fit. A folder left by a search that never started (only its
            start files and a dead driver's lock) is taken over.
    """
    experiment_dir = spec.experiment_path
    if folder.experiment_exists(experiment_dir) and not folder.never_started(experiment_dir):
        raise _exists_error(experiment_dir)
    return _run_new(
        spec,
        experiment_dir,
        address=address,
        num_cpus=num_cpus,
        trainable=trainable,
        force=force,
        stall_minutes=stall_minutes,
    )


def _run_new(
    spec: ExperimentSpec,
    experiment_dir: str,
    *,
    address: str | None,
    num_cpus: int | None,
    trainable: Trainable | None,
    force: bool,
    stall_minutes: float,
) -> SearchSummary:
    """A new search in ``experiment_dir`` (empty, or left by a search that never started)."""
    storage_path, run_name = storage.split_name(experiment_dir)

    def make_tuner(data: Any, gpus: float, local_dir: str) -> tune.Tuner:
        return _build_tuner(
            spec,
            data,
            gpus,
            experiment_dir=experiment_dir,
            run_name=run_name,
            storage_path=storage_path,
            local_dir=local_dir,
            num_samples=spec.search.num_samples,
            seed=spec.search.seed,
            baseline=spec.search.baseline,
            trainable=trainable,
        )

    return _drive(
        spec,
        experiment_dir,
        make_tuner,
        address=address,
        num_cpus=num_cpus,
        force=force,
        fresh=True,
        stall_minutes=stall_minutes,
    )


def resume_search(
    experiment_dir: str,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    trainable: Trainable | None = None,
    force: bool = False,
    stall_minutes: float = DEFAULT_STALL_MINUTES,
) -> SearchSummary:
    """Continues an interrupted search: unfinished and errored trials resume from checkpoints.

    Finished trials are neither lost nor run again; the searcher's study is reattached to the
    experiment's journal, and trials a killed driver had suggested but Ray never recorded are
    marked FAIL there so Ray and Optuna agree. ASHA's rungs and the budget's total are rebuilt
    from the recorded results; a trial the study had already finished that trains on gets a
    new study trial (see :class:`~search.driver.searcher.AshaAwareOptunaSearch`). A folder
    whose driver was killed before the search started (no Ray state, no trial) starts the
    search from its ``spec.yaml``.

    Raises:
        SpecError: When the folder is not an experiment or holds no Ray state to resume.
    """
    spec = folder.load_experiment_spec(experiment_dir)
    if folder.never_started(experiment_dir):
        # Its driver was killed while it started: nothing ran, so it starts now.
        print(
            f"note: {experiment_dir}: the search never started (its driver stopped before "
            f"Ray's first snapshot); starting it from its {folder.SPEC_FILE}",
            flush=True,
        )
        return _run_new(
            spec,
            experiment_dir,
            address=address,
            num_cpus=num_cpus,
            trainable=trainable,
            force=force,
            stall_minutes=stall_minutes,
        )
    fs, root = storage.filesystem(experiment_dir)
    round_name, _ = folder.round_dirs(fs, root)[-1]
    # Ray restores from a URI (s3://...) or a local path, never a path inside a filesystem.
    round_path = (
        experiment_dir
        if round_name == folder.MAIN_ROUND
        else storage.join(experiment_dir, round_name)
    )
    if not tune.Tuner.can_restore(round_path):
        raise SpecError(
            f"{experiment_dir}: no Ray experiment state to resume from (the search "
            f"was stopped before its first checkpoint); start it again with run"
        )
    check_resumable_state(round_path)

    def make_tuner(data: Any, gpus: float, local_dir: str) -> tune.Tuner:
        return tune.Tuner.restore(
            round_path,
            trainable=_wrap_trainable(spec, data, gpus, trainable),
            resume_unfinished=True,
            resume_errored=True,
        )

    return _drive(
        spec,
        experiment_dir,
        make_tuner,
        address=address,
        num_cpus=num_cpus,
        force=force,
        continued_round=round_name,
        stall_minutes=stall_minutes,
    )


def extend_search(
    experiment_dir: str,
    more: int,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    force: bool = False,
    stall_minutes: float = DEFAULT_STALL_MINUTES,
) -> SearchSummary:
    """Runs ``more`` trials on a finished search, continuing the same Optuna study.

    TPE starts from every trial already in the study (complete and pruned), which Ray Tune
    alone cannot do: a new ``Tuner`` starts a new searcher.

    Raises:
        SpecError: When ``more`` is not a positive int, the search is still running, or the
            experiment has spent its budget.
    """
    if isinstance(more, bool) or not isinstance(more, int) or more < 1:
        raise SpecError(f"more: must be an int >= 1, got {echo(more)}", key="more")
    spec = folder.load_experiment_spec(experiment_dir)
    check_budget_left(
        spec, load_trials(experiment_dir), storage.join(experiment_dir, folder.SPEC_FILE)
    )
    fs, root = storage.filesystem(experiment_dir)
    index = len(folder.round_dirs(fs, root))

    def make_tuner(data: Any, gpus: float, local_dir: str) -> tune.Tuner:
        return _build_tuner(
            spec,
            data,
            gpus,
            experiment_dir=experiment_dir,
            run_name=folder.round_name(index),
            storage_path=experiment_dir,
            local_dir=local_dir,
            num_samples=more,
            seed=spec.search.seed + index,
            baseline=False,
        )

    return _drive(
        spec,
        experiment_dir,
        make_tuner,
        address=address,
        num_cpus=num_cpus,
        force=force,
        stall_minutes=stall_minutes,
    )
