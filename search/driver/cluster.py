"""The Ray cluster a search runs on: joining it, what it can give a trial, shared storage.

Every check here runs before the first trial starts, so a search that could never run (GPUs
asked for on a cluster without any, a trial larger than every node, checkpoints on a disk the
other nodes cannot read) stops with a one-line error instead of waiting forever.
"""

from __future__ import annotations

import os

import ray

from search._validate import echo
from search.errors import SpecError
from search.outputs import storage
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
            raise SpecError(f"--address: cannot join the Ray cluster at {echo(address)} "
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
    return os.environ.get(AUTOSCALING_ENV, "") == "1" or bool(
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

    Raises:
        SpecError: On a local path with several nodes alive.
    """
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if storage.is_remote(spec.storage) or len(alive) <= 1:
        return
    if os.environ.get(SHARED_FS_ENV) == "1":
        return
    raise SpecError(f"storage: a cluster of {len(alive)} nodes needs shared storage for "
                    f"checkpoints (s3://..., gs://..., or an NFS path with "
                    f"{SHARED_FS_ENV}=1), got local path {spec.storage!r}")
