"""The Ray cluster a search runs on: joining it, what it can give a trial, shared storage.

Every check here runs before the first trial starts, so a search that could never run (GPUs
asked for on a cluster without any, a trial larger than every node, checkpoints on a disk the
other nodes cannot read) stops with a one-line error instead of waiting forever. What only the
running search can see (an autoscaler that never brings the node a trial needs) the
:class:`WaitReporter` says once a minute.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import ray
from ray import tune

from search import storage
from search._validate import echo
from search.errors import SpecError
from search.spec import ExperimentSpec

AUTOSCALING_ENV = "FINETUNE_SEARCH_AUTOSCALING"
SHARED_FS_ENV = "FINETUNE_SEARCH_SHARED_FS"


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Joins the cluster at ``address`` or starts a local Ray on loopback.

    Args:
        address: A cluster address (``auto`` inside ``ray submit``/``ray job``); ``None``
            starts a local Ray.
        num_cpus: CPUs for a local Ray (default: all).

    Returns:
        True when this call started Ray (and the caller should shut it down).

    Raises:
        SpecError: When the cluster at ``address`` cannot be joined.
    """
    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise SpecError(
                f"--address: cannot join the Ray cluster at {echo(address)} "
                f"({str(err).splitlines()[0]})"
            ) from None
        return True
    # Every epoch checkpoints by design; Ray's advice to checkpoint less is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # "local" never joins a cluster a stale file points to. Ray binds its core services on
    # every interface (it has no loopback-only mode), so the local Ray is locked instead: no
    # dashboard or job API, and Ray's token authentication, which a new local Ray turns on by
    # itself unless the user opted out with RAY_AUTH_MODE=disabled.
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=True,
    )
    return True


def cluster_has_autoscaler() -> bool:
    """Whether nodes may still join (a launcher or KubeRay cluster scaling from zero workers)."""
    return os.environ.get(AUTOSCALING_ENV, "") == "1" or bool(
        os.environ.get("RAY_CLUSTER_NAME") or os.environ.get("KUBERAY_GEN_RAY_START_CMD")
    )


def resolve_gpus(spec: ExperimentSpec) -> float:
    """``gpus_per_trial`` for this cluster, checked against what it has.

    ``auto`` is 1 on a cluster that has GPUs or can add nodes (its GPU workers scale from zero,
    so it has none when the search starts), else 0.

    Raises:
        SpecError: When trials ask for GPUs or CPUs that no node can give, or a GPU-hour budget
            could never be spent (trials hold no GPU here).
    """
    total = ray.cluster_resources()
    gpus_in_cluster = float(total.get("GPU", 0))
    requested = spec.resources.gpus_per_trial
    if requested == "auto":
        requested = 1.0 if gpus_in_cluster > 0 or cluster_has_autoscaler() else 0.0
    requested = float(requested)
    if requested > 0 and gpus_in_cluster == 0 and not cluster_has_autoscaler():
        raise SpecError(
            f"resources.gpus_per_trial: the Ray cluster has no GPU, so no trial "
            f"could start; set 0 or auto, got {spec.resources.gpus_per_trial!r}"
        )
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not cluster_has_autoscaler():
        fits = any(
            n.get("CPU", 0) >= spec.resources.cpus_per_trial and n.get("GPU", 0) >= requested
            for n in nodes
        )
        if not fits:
            largest = max((n.get("CPU", 0) for n in nodes), default=0)
            cpus = spec.resources.cpus_per_trial
            raise SpecError(
                f"resources.cpus_per_trial: no node has {cpus:g} CPUs and "
                f"{requested:g} GPUs for one trial (largest node: {largest:g} "
                f"CPUs), got cpus_per_trial={cpus:g}"
            )
    if requested == 0 and spec.search.budget_gpu_hours is not None:
        raise SpecError(
            f"search.budget_gpu_hours: trials hold no GPU on this cluster "
            f"(gpus_per_trial resolves to 0), so GPU-hours never accrue; use "
            f"search.budget_device_hours, got "
            f"budget_gpu_hours={spec.search.budget_gpu_hours!r}"
        )
    return requested


def check_shared_storage(spec: ExperimentSpec) -> None:
    """Refuses a local storage path where checkpoints would be lost: on a cluster of several
    nodes, or on one that can add nodes (an autoscaling cluster starts with the head alone).

    A trial on a worker writes its checkpoints to ``storage``, and a trial that moves to another
    node resumes only if that node can read them: storage must be shared (a cloud URI, or a path
    every node mounts, which the user vouches for with ``FINETUNE_SEARCH_SHARED_FS=1``).

    Raises:
        SpecError: On a local path with several nodes alive or nodes still to come.
    """
    if storage.is_remote(spec.storage) or os.environ.get(SHARED_FS_ENV) == "1":
        return
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if cluster_has_autoscaler():
        cluster = f"a cluster that adds nodes ({AUTOSCALING_ENV}=1, a cluster launcher or KubeRay)"
    elif len(alive) > 1:
        cluster = f"a cluster of {len(alive)} nodes"
    else:
        return
    raise SpecError(
        f"storage: {cluster} needs shared storage for checkpoints (s3://..., "
        f"gs://..., or an NFS path with {SHARED_FS_ENV}=1), got local path "
        f"{spec.storage!r}"
    )


def check_object_store(dataset_bytes: int) -> None:
    """Refuses, before any trial starts, a dataset larger than Ray's object store on the
    driver's node, where ``tune.with_parameters`` puts it once for every trial.

    Raises:
        SpecError: With both sizes and what to change.
    """
    node_id = ray.get_runtime_context().get_node_id()
    capacity = next(
        (
            node["Resources"].get("object_store_memory")
            for node in ray.nodes()
            if node.get("NodeID") == node_id
        ),
        None,
    )
    if capacity is not None and dataset_bytes > capacity:
        raise SpecError(
            f"dataset: needs {dataset_bytes / 2**20:,.0f} MiB in Ray's object store, "
            f"which holds {capacity / 2**20:,.0f} MiB on this node; lower "
            f"dataset.subset or dataset.image_size, store uint8 pixels, or give Ray "
            f"more (ray start --object-store-memory)"
        )


def _format_resources(resources: Mapping[str, float]) -> str:
    shown = {
        k: v
        for k, v in sorted(resources.items())
        if k in ("CPU", "GPU") or k.startswith("accelerator_type")
    }
    return " ".join(f"{k}={v:g}" for k, v in shown.items()) or "nothing"


class WaitReporter(tune.Callback):
    """Says, once a minute, what the search waits for while no trial runs.

    On an autoscaling cluster a trial that no node type can fit, or an account whose GPU quota
    blocks every launch, leaves Tune waiting without a word; this line names the pending
    demand, what the cluster has free, and how long the wait has lasted.

    Args:
        interval_s: Seconds between two lines (and before the first).
        clock: Monotonic seconds (tests pass a fake one).
        resources: Returns (free, total) resources of the cluster; Ray's by default.
    """

    def __init__(
        self,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        resources: Callable[[], tuple[Mapping[str, float], Mapping[str, float]]] | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.resources = resources
        self.waiting_since: float | None = None
        self.last_said: float | None = None

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        pending = [t for t in trials if t.status == "PENDING"]
        if not pending or any(t.status == "RUNNING" for t in trials):
            self.waiting_since = self.last_said = None
            return
        now = self.clock()
        if self.waiting_since is None:
            self.waiting_since = self.last_said = now
            return
        if self.last_said is not None and now - self.last_said < self.interval_s:
            return
        self.last_said = now
        free, total = (
            self.resources()
            if self.resources
            else (ray.available_resources(), ray.cluster_resources())
        )
        demand = _format_resources(pending[0].placement_group_factory.required_resources)
        minutes, seconds = divmod(int(now - self.waiting_since), 60)
        hint = (
            "the autoscaler adds nodes for it; if none comes, `ray status` and "
            "`ray monitor cluster.yaml` say why (e.g. a GPU quota, no node type that fits)"
            if cluster_has_autoscaler()
            else "no node can be added: the trials wait until resources free up"
        )
        print(
            f"[{time.strftime('%H:%M:%S')}] waiting {minutes}m{seconds:02d}s with no trial "
            f"running: {len(pending)} pending, each asking {demand}; the cluster has "
            f"{_format_resources(free)} free of {_format_resources(total)}; {hint}",
            file=sys.stdout,
            flush=True,
        )
