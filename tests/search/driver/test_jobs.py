"""`ray job submit` to a token-protected head started with `ray start --head`, as a user does."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from tests.helpers import REPO, write_spec

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_cli() -> str:
    found = shutil.which("ray", path=os.path.dirname(sys.executable))
    assert found, "the ray CLI is installed beside this Python"
    return found


@pytest.fixture
def token_head(tmp_path):
    """A head node that requires a token for every API, started as `ray start --head`."""
    token = secrets.token_hex(32)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
    }
    dashboard = free_port()
    # Unix socket paths must stay under 108 bytes: a short temp dir, not pytest's.
    ray_tmp = tempfile.mkdtemp(prefix="rj-", dir="/tmp")
    head = subprocess.Popen(
        [
            ray_cli(),
            "start",
            "--head",
            "--block",
            f"--port={free_port()}",
            f"--dashboard-port={dashboard}",
            "--dashboard-host=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=true",
            f"--temp-dir={ray_tmp}",
        ],
        env=env,
        stdout=open(tmp_path / "head.log", "w"),  # noqa: SIM115 - the server outlives this call stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while True:
        probe = subprocess.run(
            [ray_cli(), "job", "list", "--address", address],
            env=env,
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0:
            break
        assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
        assert time.time() < deadline, probe.stderr[-2000:]
        time.sleep(2)
    yield address, env
    head.terminate()  # --block: stopping the process stops this head, and only this one
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, 9)
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_ray_job_submit_runs_the_search_and_exports(tmp_path, token_head):
    address, env = token_head
    # Without the token the Jobs API refuses: nothing here relies on an open API.
    anonymous = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    refused = subprocess.run(
        [ray_cli(), "job", "list", "--address", address],
        env=anonymous,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0

    spec_path = write_spec(tmp_path, search__num_samples=3, train__epochs=2)
    entrypoint = (
        f"{sys.executable} -m search run {spec_path} --address auto "
        f"--name viajob && {sys.executable} -m search export "
        f"{tmp_path / 'results' / 'viajob'}"
    )
    submit = subprocess.run(
        [
            ray_cli(),
            "job",
            "submit",
            "--address",
            address,
            "--working-dir",
            str(REPO),
            "--submission-id",
            "finetune-search-test",
            "--",
            "bash",
            "-c",
            entrypoint,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-3000:]
    status = subprocess.run(
        [ray_cli(), "job", "status", "--address", address, "finetune-search-test"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert "succeeded" in (status.stdout + status.stderr).lower()
    assert "best config:" in submit.stdout
    export = tmp_path / "results" / "viajob" / "export"
    for name in ("best_config.yaml", "trials.parquet", "best_model.keras"):
        assert (export / name).is_file(), name
    import pyarrow.parquet as pq

    rows = pq.read_table(export / "trials.parquet").to_pylist()
    assert len(rows) == 3 and all(r["epochs_run"] >= 1 for r in rows)
