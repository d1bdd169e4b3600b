"""The driver: ``run_search(spec)`` and friends, which the CLI, ``ray submit`` scripts, job
submissions and tests all call.

A search is one ``tune.Tuner``: :class:`~search.searcher.AshaAwareOptunaSearch` suggests (TPE,
seeded, its study in the experiment folder's Optuna journal), ``ASHAScheduler`` stops
(``time_attr="epoch"``, ``max_t = train.epochs``), each trial trains through
:func:`search.trainable.train_trial` with the dataset shared through the object store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import ray
from ray import tune

from search import results as results_mod
from search import searcher as searcher_mod
from search.errors import SpecError
from search.results import LOCK_FILE, ROUND_PREFIX, SPEC_FILE, TrialRecord
from search.searcher import METRIC, MODE, TIME_ATTR, AshaAwareOptunaSearch
from search.spec import ExperimentSpec, dump_spec, load_spec_dict
from search.trainable import train_trial

logger = logging.getLogger(__name__)


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
        return self.best.best["val_accuracy"] if self.best else None

    def counts(self) -> dict[str, int]:
        counts = {"complete": 0, "stopped": 0, "failed": 0}
        for trial in self.trials:
            status = trial.status(self.max_t)
            counts[status] = counts.get(status, 0) + 1
        return counts


# --------------------------------------------------------------------------------------------
# Ray and resources


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Joins the cluster at ``address`` or starts a local Ray on loopback.

    Returns:
        True when this call started Ray (and the caller should shut it down).
    """
    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise SpecError(f"--address: cannot join the Ray cluster at {address!r} "
                            f"({str(err).splitlines()[0]})") from None
        return True
    # Every epoch checkpoints by design; Ray's advice to checkpoint less is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # "local" never joins a cluster a stale file points to. Ray binds its core services on
    # every interface (it has no loopback-only mode), so the local Ray is locked instead: no
    # dashboard or job API, and Ray's token authentication, which a new local Ray turns on by
    # itself unless the user opted out with RAY_AUTH_MODE=disabled.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
             configure_logging=False, log_to_driver=True)
    return True


def cluster_has_autoscaler() -> bool:
    """Whether nodes may still join (a launcher or KubeRay cluster scaling from zero workers)."""
    return os.environ.get("FINETUNE_SEARCH_AUTOSCALING", "") == "1" or bool(
        os.environ.get("RAY_CLUSTER_NAME") or os.environ.get("KUBERAY_GEN_RAY_START_CMD"))


def resolve_gpus(spec: ExperimentSpec) -> float:
    """``gpus_per_trial`` for this cluster, checked against what it has.

    Raises:
        SpecError: When trials ask for GPUs or CPUs that no node can give.
    """
    total = ray.cluster_resources()
    gpus_in_cluster = float(total.get("GPU", 0))
    requested = spec.resources.gpus_per_trial
    requested = (1.0 if gpus_in_cluster > 0 else 0.0) if requested == "auto" else float(
        requested)
    if requested > 0 and gpus_in_cluster == 0 and not cluster_has_autoscaler():
        raise SpecError(f"resources.gpus_per_trial: the Ray cluster has no GPU, so no trial "
                        f"could start; set 0 or auto, got {spec.resources.gpus_per_trial!r}")
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not cluster_has_autoscaler():
        fits = any(n.get("CPU", 0) >= spec.resources.cpus_per_trial
                   and n.get("GPU", 0) >= requested for n in nodes)
        if not fits:
            largest = max((n.get("CPU", 0) for n in nodes), default=0)
            cpus = spec.resources.cpus_per_trial
            raise SpecError(f"resources.cpus_per_trial: no node has {cpus:g} CPUs and "
                            f"{requested:g} GPUs for one trial (largest node: {largest:g} "
                            f"CPUs), got cpus_per_trial={cpus:g}")
    return requested


def check_shared_storage(spec: ExperimentSpec) -> None:
    """Refuses a local storage path on a multi-node cluster, where checkpoints would be lost.

    A trial that moves to another node resumes from its checkpoint only if that node can read
    it: with several nodes, storage must be shared (a cloud URI, or a path every node mounts,
    which the user vouches for with ``FINETUNE_SEARCH_SHARED_FS=1``).
    """
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if "://" in spec.storage or len(alive) <= 1:
        return
    if os.environ.get("FINETUNE_SEARCH_SHARED_FS") == "1":
        return
    raise SpecError(f"storage: a cluster of {len(alive)} nodes needs shared storage for "
                    f"checkpoints (s3://..., gs://..., or an NFS path with "
                    f"FINETUNE_SEARCH_SHARED_FS=1), got local path {spec.storage!r}")


# --------------------------------------------------------------------------------------------
# the experiment folder


def _local_dir(experiment_dir: str) -> str:
    """Where the driver keeps the Optuna journal: the experiment folder, or a local mirror of
    a cloud one (a journal appends under file locks, which object stores do not have)."""
    if "://" not in experiment_dir:
        return experiment_dir
    digest = hashlib.sha256(experiment_dir.encode("utf-8")).hexdigest()[:12]
    name = experiment_dir.rstrip("/").rpartition("/")[2]
    cache = os.path.join(os.path.expanduser("~"), ".cache", "finetune-search",
                         f"{name}-{digest}")
    os.makedirs(cache, exist_ok=True)
    return cache


def write_atomic(fs_path: str, text: str) -> None:
    """Writes a file so a reader never sees it half-written (temp file, then rename)."""
    fs, path = results_mod.filesystem(fs_path)
    if isinstance(fs, results_mod.pafs.LocalFileSystem):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
        return
    # Object stores replace whole objects on close: a reader sees the old or the new one.
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode("utf-8"))


@contextlib.contextmanager
def driver_lock(experiment_dir: str) -> Iterator[None]:
    """Marks the experiment as held by this driver (``export`` refuses a running search)."""
    path = os.path.join(experiment_dir, LOCK_FILE)
    if "://" in experiment_dir:
        yield
        return
    if results_mod.is_running(experiment_dir):
        raise SpecError(f"{experiment_dir}: another driver is running this experiment "
                        f"(see {path})")
    write_atomic(path, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                   "since": time.time()}))
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)


def _sync_journal(experiment_dir: str, local_dir: str) -> None:
    """Copies the local journal up to a cloud experiment folder."""
    if "://" not in experiment_dir:
        return
    source = searcher_mod.journal_path_for(local_dir)
    if os.path.exists(source):
        with open(source, encoding="utf-8") as handle:
            write_atomic(experiment_dir.rstrip("/") + "/" + searcher_mod.STUDY_FILE,
                         handle.read())


def _fetch_journal(experiment_dir: str, local_dir: str) -> None:
    """Brings a cloud experiment's journal down before a driver continues its study.

    The journal needs a local file (it appends with file locks); the copy in storage is the
    truth when this machine's mirror is missing or older (another driver machine).
    """
    if "://" not in experiment_dir:
        return
    fs, root = results_mod.filesystem(experiment_dir)
    remote = results_mod.posixpath.join(root, searcher_mod.STUDY_FILE)
    if not results_mod.exists(fs, remote):
        return
    text = results_mod.read_text(fs, remote)
    local = searcher_mod.journal_path_for(local_dir)
    if not os.path.exists(local) or os.path.getsize(local) <= len(text.encode("utf-8")):
        write_atomic(local, text)


# --------------------------------------------------------------------------------------------
# progress


class ProgressPrinter(tune.Callback):
    """One line per event: trials started, epochs, ASHA stops, failures, best so far."""

    def __init__(self, max_t: int) -> None:
        self.max_t = max_t
        self.best: tuple[float, str] | None = None
        self.last_epoch: dict[str, int] = {}
        self.states: dict[str, str] = {}

    def _say(self, text: str) -> None:
        counts = {s: list(self.states.values()).count(s)
                  for s in ("running", "stopped", "complete", "failed")}
        tally = " ".join(f"{k}={v}" for k, v in counts.items())
        best = f" best={self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        # sys.stdout is looked up each time: the tuner pickles its callbacks.
        print(f"[{time.strftime('%H:%M:%S')}] {text}  |  {tally}{best}", file=sys.stdout,
              flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.states[trial.trial_id] = "running"
        params = " ".join(f"{k}={_fmt(v)}" for k, v in sorted(trial.config.items()))
        self._say(f"trial {trial.trial_id} started: {params}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        epoch = int(result.get(TIME_ATTR, 0))
        self.last_epoch[trial.trial_id] = epoch
        if result.get("trial_failed"):
            self.states[trial.trial_id] = "failed"
            self._say(f"trial {trial.trial_id} failed: {result.get('failure_reason')}")
            return
        value = result.get(METRIC)
        if isinstance(value, float) and value == value and (
            self.best is None or value > self.best[0]
        ):
            self.best = (value, trial.trial_id)
        self._say(f"trial {trial.trial_id} epoch {epoch}/{self.max_t} {METRIC}={value:.4f} "
                  f"loss={result.get('loss', float('nan')):.4f} "
                  f"{result.get('images_per_s', 0):.0f} img/s")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epoch = self.last_epoch.get(trial.trial_id, 0)
        if self.states.get(trial.trial_id) == "failed":
            return
        if epoch >= self.max_t:
            self.states[trial.trial_id] = "complete"
            self._say(f"trial {trial.trial_id} complete at epoch {epoch}")
        else:
            self.states[trial.trial_id] = "stopped"
            self._say(f"trial {trial.trial_id} stopped by ASHA at epoch {epoch}/{self.max_t}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.states[trial.trial_id] = "failed"
        self._say(f"trial {trial.trial_id} errored (see its error.txt)")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.states[trial.trial_id] = "running"
        self._say(f"trial {trial.trial_id} crashed; retrying from its last checkpoint")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------------------------
# the search


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _wrap_trainable(spec: ExperimentSpec, data: Any, gpus: float,
                    trainable: Callable[..., None] | None) -> Any:
    """The trainable with its resources, and the dataset put in the object store once."""
    fixed = {**spec.fixed_config(), "gpus_per_trial": gpus}
    return tune.with_resources(
        tune.with_parameters(trainable or train_trial, data=data, fixed=fixed),
        {"cpu": spec.resources.cpus_per_trial, "gpu": gpus},
    )


def _build_tuner(spec: ExperimentSpec, data: Any, gpus: float, *, run_name: str,
                 storage_path: str, local_dir: str, num_samples: int, seed: int,
                 baseline: bool, trainable: Callable[..., None] | None = None) -> tune.Tuner:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    trainable = _wrap_trainable(spec, data, gpus, trainable)
    points = [spec.baseline_point()] if baseline and spec.baseline_point() else None
    budget = spec.search.budget_gpu_hours
    search_alg = AshaAwareOptunaSearch(
        spec.space,
        journal_path=searcher_mod.journal_path_for(local_dir),
        study_name=spec.name,
        max_t=spec.max_t,
        seed=seed,
        algorithm=spec.search.algorithm,
        points_to_evaluate=points,
        budget_gpu_seconds=budget * 3600 if budget is not None else None,
        fixed_config=spec.fixed_config(),
        num_samples=num_samples,
    )
    if spec.scheduler.name == "asha":
        scheduler = ASHAScheduler(time_attr=TIME_ATTR, metric=METRIC, mode=MODE,
                                  max_t=spec.max_t, grace_period=spec.scheduler.grace_period,
                                  reduction_factor=spec.scheduler.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
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
            # The best checkpoint is what export takes; Ray also keeps the latest to resume.
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=METRIC, checkpoint_score_order=MODE),
            callbacks=[ProgressPrinter(spec.max_t)],
            verbose=0,
        ),
    )


def _split_storage(path: str) -> tuple[str, str]:
    """``(storage_path, name)`` for Ray's RunConfig from a full experiment path."""
    path = path.rstrip("/")
    if "://" in path:
        head, _, name = path.rpartition("/")
        return head, name
    return os.path.dirname(path), os.path.basename(path)


def summarize(experiment_dir: str, max_t: int, interrupted: bool = False) -> SearchSummary:
    """Reads the experiment folder back into a :class:`SearchSummary`.

    A search counts as interrupted when Ctrl-C reached it or a trial was left unfinished (Ray
    returns from ``fit`` after saving its state on the first Ctrl-C).
    """
    trials = results_mod.load_trials(experiment_dir)
    interrupted = interrupted or any(t.status(max_t) == "unfinished" for t in trials)
    return SearchSummary(experiment_dir=experiment_dir, trials=trials,
                         best=results_mod.best_trial(trials), max_t=max_t,
                         interrupted=interrupted)


def _fit(tuner: tune.Tuner) -> bool:
    """Runs the tuner; returns True when a second Ctrl-C cut it short."""
    try:
        tuner.fit()
    except KeyboardInterrupt:
        return True
    return False


def experiment_exists(path: str) -> bool:
    """Whether ``path`` already holds something (an earlier search, or anything else)."""
    fs, root = results_mod.filesystem(path)
    return results_mod.exists(fs, root) and bool(
        fs.get_file_info(results_mod.pafs.FileSelector(root, allow_not_found=True)))


def with_fresh_name(spec: ExperimentSpec) -> ExperimentSpec:
    """The spec, renamed ``<name>-<timestamp>`` if its folder is taken (as Ray names runs)."""
    if not experiment_exists(spec.experiment_path):
        return spec
    from dataclasses import replace

    return replace(spec, name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")


def run_search(spec: ExperimentSpec, *, address: str | None = None,
               num_cpus: int | None = None,
               trainable: Callable[..., None] | None = None) -> SearchSummary:
    """Runs a whole search: validates resources, loads the data once, tunes, summarizes.

    Args:
        spec: The validated experiment spec.
        address: A Ray cluster to join (``auto`` inside ``ray submit``/``ray job``); ``None``
            starts a local Ray on loopback.
        num_cpus: CPUs for a local Ray (default: all).
        trainable: Replaces :func:`~search.trainable.train_trial` (same signature), e.g. a
            wrapper that injects faults in tests.

    Returns:
        The search's summary: every trial, the best one and the experiment folder.

    Raises:
        SpecError: When the experiment folder already holds a search, or resources don't fit.
    """
    from search.datasets import load_dataset

    experiment_dir = spec.experiment_path
    if experiment_exists(experiment_dir):
        raise SpecError(f"name: the experiment folder {experiment_dir} already exists; "
                        f"`finetune-search resume` or `extend` it, or pick another --name")
    data = load_dataset(spec.dataset)
    started = connect(address, num_cpus)
    try:
        gpus = resolve_gpus(spec)
        check_shared_storage(spec)
        # "/" joins both a local POSIX path and a URI.
        write_atomic(results_mod.posixpath.join(experiment_dir, SPEC_FILE), dump_spec(spec))
        local_dir = _local_dir(experiment_dir)
        storage_path, run_name = _split_storage(experiment_dir)
        with driver_lock(experiment_dir):
            tuner = _build_tuner(spec, data, gpus, run_name=run_name, storage_path=storage_path,
                                 local_dir=local_dir, num_samples=spec.search.num_samples,
                                 seed=spec.search.seed, baseline=spec.search.baseline,
                                 trainable=trainable)
            interrupted = _fit(tuner)
            _sync_journal(experiment_dir, local_dir)
    finally:
        if started:
            ray.shutdown()
    return summarize(experiment_dir, spec.max_t, interrupted)


def load_experiment_spec(experiment_dir: str) -> ExperimentSpec:
    """The spec a search was started with, from its folder."""
    fs, root = results_mod.check_experiment_dir(experiment_dir)
    text = results_mod.read_text(fs, results_mod.posixpath.join(root, SPEC_FILE))
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raise SpecError(f"{experiment_dir}/{SPEC_FILE}: invalid YAML") from None
    return load_spec_dict(raw, source=f"{experiment_dir}/{SPEC_FILE}")


def _restore_round(spec: ExperimentSpec, round_path: str, data: Any, gpus: float,
                   trainable: Callable[..., None] | None = None) -> bool:
    tuner = tune.Tuner.restore(round_path, trainable=_wrap_trainable(spec, data, gpus, trainable),
                               resume_unfinished=True, resume_errored=True)
    return _fit(tuner)


def resume_search(experiment_dir: str, *, address: str | None = None,
                  num_cpus: int | None = None,
                  trainable: Callable[..., None] | None = None) -> SearchSummary:
    """Continues an interrupted search: unfinished and errored trials resume from checkpoints.

    Finished trials are neither lost nor run again; the searcher's study is reattached to the
    experiment's journal, and trials a killed driver had suggested but Ray never recorded are
    marked FAIL there so Ray and Optuna agree.
    """
    from search.datasets import load_dataset

    spec = load_experiment_spec(experiment_dir)
    fs, root = results_mod.filesystem(experiment_dir)
    rounds = results_mod.round_dirs(fs, root)
    _, round_path = rounds[-1]
    if not tune.Tuner.can_restore(round_path):
        raise SpecError(f"{experiment_dir}: no Ray experiment state to resume from (the search "
                        f"was stopped before its first checkpoint); start it again with run")
    data = load_dataset(spec.dataset)
    started = connect(address, num_cpus)
    try:
        gpus = resolve_gpus(spec)
        local_dir = _local_dir(experiment_dir)
        _fetch_journal(experiment_dir, local_dir)
        searcher_mod.JOURNAL_OVERRIDE = searcher_mod.journal_path_for(local_dir)
        with driver_lock(experiment_dir):
            interrupted = _restore_round(spec, round_path, data, gpus, trainable)
            _sync_journal(experiment_dir, local_dir)
    finally:
        searcher_mod.JOURNAL_OVERRIDE = None
        if started:
            ray.shutdown()
    return summarize(experiment_dir, spec.max_t, interrupted)


def extend_search(experiment_dir: str, more: int, *, address: str | None = None,
                  num_cpus: int | None = None) -> SearchSummary:
    """Runs ``more`` trials on a finished search, continuing the same Optuna study.

    TPE starts from every trial already in the study (complete and pruned), which Ray Tune
    alone cannot do: a new ``Tuner`` starts a new searcher.
    """
    from search.datasets import load_dataset

    if isinstance(more, bool) or not isinstance(more, int) or more < 1:
        raise SpecError(f"--more: must be an int >= 1, got {more!r}")
    spec = load_experiment_spec(experiment_dir)
    if results_mod.is_running(experiment_dir):
        raise SpecError(f"{experiment_dir}: the search is still running; extend it when it ends")
    fs, root = results_mod.filesystem(experiment_dir)
    index = len(results_mod.round_dirs(fs, root))
    data = load_dataset(spec.dataset)
    started = connect(address, num_cpus)
    try:
        gpus = resolve_gpus(spec)
        local_dir = _local_dir(experiment_dir)
        _fetch_journal(experiment_dir, local_dir)
        with driver_lock(experiment_dir):
            tuner = _build_tuner(spec, data, gpus, run_name=f"{ROUND_PREFIX}{index}",
                                 storage_path=experiment_dir, local_dir=local_dir,
                                 num_samples=more, seed=spec.search.seed + index,
                                 baseline=False)
            interrupted = _fit(tuner)
            _sync_journal(experiment_dir, local_dir)
    finally:
        if started:
            ray.shutdown()
    return summarize(experiment_dir, spec.max_t, interrupted)
