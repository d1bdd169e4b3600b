"""Ray scheduling across nodes: a head and two 2-GPU workers on this machine."""

from __future__ import annotations

import pytest

from search.driver.cluster import AUTOSCALING_ENV, SHARED_FS_ENV
from search.driver.service import run_search
from search.outputs.results import load_trials
from search.spec import load_spec_dict
from search.trial.runtime import FAKE_GPUS_ENV
from tests.helpers import TINY_SPEC, cli, write_spec

pytestmark = pytest.mark.slow


def tiny_spec(tmp_path, **changes):
    raw = {**TINY_SPEC, "storage": str(tmp_path / "results"), **changes}
    return load_spec_dict(raw)


@pytest.fixture(scope="module")
def gpu_nodes():
    """Head (no GPU) + two workers declaring 2 GPUs each; all share this machine's disk. Started
    once for the module's cluster tests (they run one after another, and only read it)."""
    from ray.cluster_utils import Cluster

    # The GPUs the workers declare are fake: trials holding one train on this machine's CPU.
    # The nodes (and so the trials) inherit the variable when they start.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FAKE_GPUS_ENV, "1")
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
        workers = [cluster.add_node(num_cpus=2, num_gpus=2) for _ in range(2)]
        cluster.wait_for_nodes()
    yield cluster, workers
    cluster.shutdown()


@pytest.fixture
def gpu_cluster(gpu_nodes, monkeypatch):
    """This test's driver connected to the module's GPU cluster."""
    import ray

    # Every node of this test cluster sees the same local folder.
    monkeypatch.setenv(SHARED_FS_ENV, "1")
    monkeypatch.setenv(FAKE_GPUS_ENV, "1")
    cluster, _ = gpu_nodes
    ray.init(address=cluster.address)
    yield gpu_nodes
    ray.shutdown()


def test_one_gpu_per_trial_spread_over_two_gpu_workers(tmp_path, gpu_cluster):
    cluster, workers = gpu_cluster
    spec = tiny_spec(
        tmp_path,
        name="gpus",
        search={"num_samples": 6, "max_concurrent": 6, "seed": 0},
        scheduler={"name": "fifo"},
        train={"epochs": 2, "batch_size": 32, "optimizer": "adam"},
        resources={"cpus_per_trial": 0.5, "gpus_per_trial": 1},
    )
    summary = run_search(spec, address=cluster.address)
    trials = load_trials(summary.experiment_dir)
    assert len(trials) == 6 and all(t.status(2) == "complete" for t in trials)

    worker_ids = {w.node_id for w in workers}
    nodes, intervals = set(), []
    for trial in trials:
        for row in trial.history:
            # Each trial saw exactly one GPU id, from Ray's assignment.
            assert len(row["gpu_ids"].split(",")) == 1, row["gpu_ids"]
            # ... and only that one is visible to TensorFlow in the trial.
            assert row["cuda_visible_devices"] == row["gpu_ids"]
            assert row["node_id"] in worker_ids
            nodes.add(row["node_id"])
        intervals.append((trial.history[0]["attempt_started_at"], trial.history[-1]["timestamp"]))
    assert nodes == worker_ids  # trials ran on both workers
    # At most 4 trials (4 GPUs) ran at once.
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 4
    # The search results are complete in the storage path.
    assert summary.best is not None and all(len(t.history) == 2 for t in trials)


def test_local_storage_on_a_multi_node_cluster_is_refused(tmp_path, gpu_cluster, monkeypatch):
    from search.errors import SpecError

    cluster, _ = gpu_cluster
    monkeypatch.delenv("FINETUNE_SEARCH_SHARED_FS")
    spec = tiny_spec(tmp_path, name="local", resources={"gpus_per_trial": 1})
    with pytest.raises(SpecError, match=r"storage: a cluster of 3 nodes needs shared storage"):
        run_search(spec, address=cluster.address)
    assert not (tmp_path / "results" / "local").exists()


def test_gpu_hour_budget_stops_new_trials_and_every_trial_reports_gpu_seconds(
    tmp_path, gpu_cluster
):
    cluster, _ = gpu_cluster
    # 1.8 GPU-seconds: spent by the first trials' first epochs (their set-up counts too), so
    # they stop at that epoch's end and no more trials start.
    spec = tiny_spec(
        tmp_path,
        name="budget",
        search={"num_samples": 12, "max_concurrent": 2, "seed": 0, "budget_gpu_hours": 0.0005},
        scheduler={"name": "fifo"},
        train={"epochs": 2, "batch_size": 32, "optimizer": "adam"},
        resources={"cpus_per_trial": 0.5, "gpus_per_trial": 1},
    )
    summary = run_search(spec, address=cluster.address)
    trials = load_trials(summary.experiment_dir)
    assert 1 <= len(trials) <= 2
    assert all(t.gpu_seconds > 0 for t in trials)
    assert {t.stop_reason(2) for t in trials} == {"budget"}
    # GPU-seconds are the trial's wall time on its one GPU.
    for trial in trials:
        assert trial.gpu_seconds == pytest.approx(trial.wall_seconds)


def test_gpus_requested_on_a_cluster_without_gpus_is_a_clear_error(tmp_path, ray_local):
    from search.errors import SpecError

    spec = tiny_spec(tmp_path, name="nogpu", resources={"gpus_per_trial": 1})
    with pytest.raises(
        SpecError,
        match=r"resources\.gpus_per_trial: the Ray cluster has no "
        r"GPU.*got 1",
    ):
        run_search(spec)
    # A GPU-hour budget on a cluster whose trials hold no GPU would never be spent.
    gpu_budget = tiny_spec(tmp_path, name="gpubudget", search={"budget_gpu_hours": 1.0})
    with pytest.raises(
        SpecError,
        match=r"search\.budget_gpu_hours: trials hold no GPU on this "
        r"cluster .* use search\.budget_device_hours",
    ):
        run_search(gpu_budget)
    assert not (tmp_path / "results" / "gpubudget").exists()
    auto = tiny_spec(
        tmp_path,
        name="auto",
        search={"num_samples": 1},
        train={"epochs": 1, "batch_size": 32, "optimizer": "adam"},
    )
    summary = run_search(auto)
    row = summary.trials[0].history[0]
    assert row["gpu_ids"] == ""  # auto -> 0 GPUs on this machine
    # A trial that asked for no GPU sees none (Ray no longer blanks the variable itself).
    assert row["cuda_visible_devices"] == ""
    greedy = tiny_spec(tmp_path, name="greedy", resources={"cpus_per_trial": 64})
    with pytest.raises(SpecError, match=r"resources\.cpus_per_trial: no node has 64 CPUs"):
        run_search(greedy)
    assert not (tmp_path / "results" / "greedy").exists()


@pytest.fixture
def ray_with_one_undeclared_gpu(monkeypatch):
    """A local Ray that declares one GPU this machine does not have, without the opt-out."""
    import ray

    monkeypatch.delenv(FAKE_GPUS_ENV, raising=False)
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=1,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


def test_trial_holding_a_gpu_tensorflow_cannot_see_fails_with_no_gpu(
    tmp_path, ray_with_one_undeclared_gpu
):
    spec = tiny_spec(
        tmp_path,
        name="nogpu",
        search={"num_samples": 1, "max_concurrent": 1, "seed": 0},
        resources={"cpus_per_trial": 1, "gpus_per_trial": 1},
    )
    summary = run_search(spec)
    (trial,) = load_trials(summary.experiment_dir)
    assert trial.status(spec.max_t) == "failed"
    assert trial.failure_reason.startswith(
        "no_gpu: Ray assigned GPU 0 but TensorFlow sees no GPU"
    ), trial.failure_reason
    assert trial.epochs_run <= 1  # it ended at once, it did not train on the CPU


def test_local_storage_on_an_autoscaling_cluster_is_refused_before_any_trial(
    tmp_path, monkeypatch
):
    monkeypatch.setenv(AUTOSCALING_ENV, "1")
    monkeypatch.delenv(SHARED_FS_ENV, raising=False)
    spec_path = write_spec(tmp_path, name="autoscaled")
    done = cli("run", str(spec_path), "--num-cpus", "2")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: storage: a cluster that adds nodes ({AUTOSCALING_ENV}=1, a cluster "
        f"launcher or KubeRay) needs shared storage for checkpoints (s3://..., "
        f"gs://..., or an NFS path with {SHARED_FS_ENV}=1), got local path "
        f"{str(tmp_path / 'results')!r}"
    ]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "results" / "autoscaled").exists()
