"""The cluster checks without a cluster: Ray's view of it is faked, the rules are real."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import ray

from search.driver.cluster import (
    AUTOSCALING_ENV,
    SHARED_FS_ENV,
    WaitReporter,
    check_object_store,
    check_shared_storage,
    resolve_gpus,
)
from search.errors import SpecError
from tests.helpers import tiny_spec


@pytest.fixture
def head_only(monkeypatch):
    """A cluster of one CPU node (the head), no autoscaler and no shared-storage promise."""
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 8.0}}])
    for name in (AUTOSCALING_ENV, SHARED_FS_ENV, "RAY_CLUSTER_NAME", "KUBERAY_GEN_RAY_START_CMD"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_auto_gpus_is_1_on_a_cluster_that_adds_nodes_and_0_on_a_cpu_cluster(tmp_path, head_only):
    spec = tiny_spec(tmp_path)
    assert spec.resources.gpus_per_trial == "auto"
    assert resolve_gpus(spec) == 0.0
    head_only.setenv(AUTOSCALING_ENV, "1")  # GPU workers scale from zero: none yet
    assert resolve_gpus(spec) == 1.0
    head_only.delenv(AUTOSCALING_ENV)
    head_only.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 2.0})
    head_only.setattr(
        ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 2.0}}]
    )
    assert resolve_gpus(spec) == 1.0


def test_local_storage_on_an_autoscaling_cluster_of_one_node_is_refused(tmp_path, head_only):
    spec = tiny_spec(tmp_path)
    check_shared_storage(spec)  # one node, and no more to come: local storage is fine
    head_only.setenv(AUTOSCALING_ENV, "1")
    with pytest.raises(SpecError) as info:
        check_shared_storage(spec)
    message = str(info.value)
    assert message.startswith(
        "storage: a cluster that adds nodes (FINETUNE_SEARCH_AUTOSCALING=1"
        ", a cluster launcher or KubeRay) needs shared storage"
    )
    assert message.endswith(f"got local path {spec.storage!r}") and "\n" not in message


@pytest.mark.parametrize("marker", ["RAY_CLUSTER_NAME", "KUBERAY_GEN_RAY_START_CMD"])
def test_a_launcher_or_kuberay_cluster_counts_as_adding_nodes(tmp_path, head_only, marker):
    head_only.setenv(marker, "x")
    with pytest.raises(SpecError, match=r"^storage: a cluster that adds nodes"):
        check_shared_storage(tiny_spec(tmp_path))


def test_shared_storage_passes_on_an_autoscaling_cluster(tmp_path, head_only):
    head_only.setenv(AUTOSCALING_ENV, "1")
    check_shared_storage(tiny_spec(tmp_path, storage="s3://bucket/finetune-search"))
    head_only.setenv(SHARED_FS_ENV, "1")  # a path every node mounts, vouched for
    check_shared_storage(tiny_spec(tmp_path))


# --------------------------------------------------------------------------------------------
# WaitReporter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def trial(status: str) -> SimpleNamespace:
    return SimpleNamespace(
        status=status,
        placement_group_factory=SimpleNamespace(required_resources={"CPU": 4.0, "GPU": 1.0}),
    )


def reporter(clock: Clock) -> WaitReporter:
    free = {"CPU": 6.0, "memory": 1e9}
    return WaitReporter(interval_s=60, clock=clock, resources=lambda: (free, {"CPU": 8.0}))


def test_waiting_with_no_trial_running_is_said_once_a_minute(capsys, head_only):
    clock, waits = Clock(), [trial("PENDING"), trial("PENDING"), trial("TERMINATED")]
    say = reporter(clock)
    for seconds in (0, 30, 59):
        clock.now = 1000.0 + seconds
        say.on_step_end(iteration=1, trials=waits)
    assert capsys.readouterr().out == ""
    clock.now = 1060.0
    say.on_step_end(iteration=2, trials=waits)
    line = capsys.readouterr().out.strip()
    assert (
        "waiting 1m00s with no trial running: 2 pending, each asking CPU=4 GPU=1; the "
        "cluster has CPU=6 free of CPU=8; no node can be added"
    ) in line
    clock.now = 1090.0
    say.on_step_end(iteration=3, trials=waits)
    assert capsys.readouterr().out == ""
    head_only.setenv(AUTOSCALING_ENV, "1")
    clock.now = 1120.0
    say.on_step_end(iteration=4, trials=waits)
    line = capsys.readouterr().out.strip()
    assert "waiting 2m00s" in line and "`ray status`" in line and "GPU quota" in line


def test_nothing_is_said_while_a_trial_runs_and_the_wait_restarts_after(capsys):
    clock = Clock()
    say = reporter(clock)
    say.on_step_end(iteration=1, trials=[trial("PENDING")])
    clock.now += 120
    say.on_step_end(iteration=2, trials=[trial("PENDING"), trial("RUNNING")])
    clock.now += 120
    say.on_step_end(iteration=3, trials=[trial("PENDING")])  # a new wait starts here
    clock.now += 30
    say.on_step_end(iteration=4, trials=[trial("PENDING")])
    assert capsys.readouterr().out == ""
    say.on_step_end(iteration=5, trials=[trial("TERMINATED")])  # nothing pending: no wait
    assert say.waiting_since is None


def test_dataset_larger_than_the_object_store_is_refused_with_both_sizes(monkeypatch):
    monkeypatch.setattr(
        ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "driver")
    )
    monkeypatch.setattr(
        ray,
        "nodes",
        lambda: [
            {"NodeID": "worker", "Resources": {"object_store_memory": 8 * 2**30}},
            {"NodeID": "driver", "Resources": {"object_store_memory": 100 * 2**20}},
        ],
    )
    check_object_store(100 * 2**20)  # exactly fits
    with pytest.raises(
        SpecError,
        match=r"^dataset: needs 154 MiB in Ray's object store, "
        r"which holds 100 MiB on this node; ",
    ) as info:
        check_object_store(154 * 2**20)
    assert "\n" not in str(info.value)
