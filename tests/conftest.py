"""Shared test set-up: seeds, the `gpu` marker, and Ray kept to this machine and this run."""

from __future__ import annotations

import os
import random
import shutil
import tempfile

import numpy as np
import pytest

# Ray's own temp folder (sockets, logs, session files) per test run, short enough for Unix
# socket paths; and TensorFlow quiet in subprocesses.
_RAY_TMP = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
os.environ.setdefault("RAY_TMPDIR", _RAY_TMP)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def _gpu_available() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    except Exception:  # noqa: BLE001 - no usable TensorFlow GPU means skip
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any("gpu" in item.keywords for item in items) and not _gpu_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU visible to TensorFlow")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


# What ray.init sets in the driver's own environment and Ray then holds for the whole process
# (it reads them once): removing RAY_AUTH_MODE after a test that started a local Ray left the
# next test's ray.cluster_utils.Cluster nodes on another authentication mode than this process,
# and their trial actors were cancelled before they ran.
RAY_PROCESS_SETTINGS = frozenset({"RAY_AUTH_MODE", "PYTHONBREAKPOINT", "RAY_USAGE_STATS_ENABLED"})


@pytest.fixture(autouse=True)
def _environment_restored():
    """Whatever a test (or the library code it runs: Ray's init, the driver's connect) puts in
    ``os.environ`` is undone after it, so no test depends on another's leftovers. Tests set
    variables through ``monkeypatch`` in any case."""
    before = dict(os.environ)
    yield
    for key in set(os.environ) - set(before) - RAY_PROCESS_SETTINGS:
        del os.environ[key]
    for key, value in before.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)


@pytest.fixture
def ray_local():
    """A local Ray on loopback with 2 CPUs, never a cluster a stale file points to."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def s3_bucket(monkeypatch):
    """An S3-compatible server (moto's, in this process, on a free loopback port) with one empty
    bucket; yields its ``s3://`` URI. The credentials are fake; pyarrow's real S3 client, and
    Ray's processes started after this, reach it through ``AWS_ENDPOINT_URL``."""
    from tests.helpers import moto_s3_bucket

    with moto_s3_bucket() as (uri, settings):
        for key, value in settings.items():
            monkeypatch.setenv(key, value)
        yield uri
