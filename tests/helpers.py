"""Shared test helpers: the tiny experiment spec every search test builds on, the CLI, and
waiting for (and killing) a driver running in its own process group."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

# A search that trains in seconds on CPU: 200 digits images, the small CNN, 6 trials x 3 epochs.
TINY_SPEC: dict[str, Any] = {
    "name": "tiny",
    "dataset": {"name": "digits", "subset": 200, "val_fraction": 0.25, "seed": 0},
    "model": {"backbone": "small_cnn", "weights": "none", "dense_units": 32},
    "train": {"epochs": 3, "batch_size": 32, "optimizer": "adam"},
    "space": {
        "noise_std": {"loguniform": [0.001, 0.1]},
        "upsample": {"choice": [1, 2]},
        "dropout": {"uniform": [0.3, 0.8]},
        "learning_rate": {"loguniform": [0.0003, 0.01]},
    },
    "search": {"num_samples": 6, "max_concurrent": 2, "seed": 0, "baseline": True},
    "scheduler": {"grace_period": 1, "reduction_factor": 3},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": "auto"},
}


def tiny_raw(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """TINY_SPEC stored under tmp_path, with ``section__key=value`` or ``section=value``
    changes."""
    spec = json.loads(json.dumps(TINY_SPEC))
    spec["storage"] = str(tmp_path / "results")
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            spec[section][field] = value
        else:
            spec[section] = value
    return spec


def tiny_spec(tmp_path: Path, name: str = "tiny", **changes: Any) -> Any:
    """The tiny spec, validated, under ``name``."""
    from search.spec import load_spec_dict

    return load_spec_dict({**tiny_raw(tmp_path, **changes), "name": name})


def write_spec(tmp_path: Path, **changes: Any) -> Path:
    """The tiny spec written to ``tmp_path/spec.yaml``."""
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(tmp_path, **changes)))
    return path


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> SHA-256 of its bytes): two digests are equal
    only if no file was added, removed or changed."""
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def cli(*args: str, timeout: float = 600, **kwargs: Any) -> subprocess.CompletedProcess:
    """Runs ``python -m search ARGS`` from the repository, as a user would.

    A command still running after ``timeout`` seconds fails the test with the tail of what it
    printed and every thread's stack at that moment (Python's faulthandler, on SIGABRT), so a
    hang says where it hung.
    """
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONFAULTHANDLER": "1",
        **kwargs.pop("env", {}),
    }
    command = [sys.executable, "-m", "search", *args]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
        start_new_session=True,
        **kwargs,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            workers = _stacks_of_ray_workers_under(process.pid)
            process.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            try:
                stdout, stderr = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                stdout = stderr = None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # and the Ray processes it started
            if stdout is None:
                stdout, stderr = process.communicate()
            stderr = re.sub(r"\nExtension modules: [^\n]*", "", stderr)  # faulthandler's list
            raise AssertionError(
                f"`{' '.join(command[1:])}` still ran after {timeout} s; its output's end:\n"
                f"{stdout[-4000:]}\n---- stderr (the stacks at the end) ----\n"
                f"{stderr[-12000:]}\n---- its Ray workers' stacks ----\n{workers[-12000:]}"
            ) from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _stacks_of_ray_workers_under(pid: int) -> str:
    """``py-spy dump`` of every Ray worker (``ray::...``) under process ``pid``: where a hung
    trial waits (py-spy is in the test extra; it reads the processes without stopping them)."""
    import shutil

    import psutil

    py_spy = shutil.which("py-spy")
    if py_spy is None:
        return "(py-spy not found)"
    dumps = []
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error, subprocess.TimeoutExpired):
            title = " ".join(child.cmdline())
            if "ray::" not in title:
                continue
            dump = subprocess.run(
                [py_spy, "dump", "--pid", str(child.pid)],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            dumps.append(f"-- {child.pid} {title[:100]}\n{dump.stdout}{dump.stderr}")
    return "\n".join(dumps) or "(no Ray workers)"


def study_trials(experiment_dir: Path | str, study_name: str | None = None) -> dict[str, Any]:
    """The experiment's Optuna trials by Ray trial id (``#<number>`` for unlinked ones), read
    without writing to the experiment."""
    from search.outputs.study import ATTR_RAY_TRIAL, load_study_readonly

    name = study_name or str(experiment_dir).rstrip("/").rsplit("/", 1)[-1]
    study = load_study_readonly(str(experiment_dir), name)
    assert study is not None, f"no study {name!r} in {experiment_dir}"
    return {t.user_attrs.get(ATTR_RAY_TRIAL, f"#{t.number}"): t for t in study.trials}


@contextlib.contextmanager
def moto_s3_bucket(prefix: str = "bucket") -> Iterator[tuple[str, dict[str, str]]]:
    """An S3-compatible server (moto's, in this process, on a free loopback port) with one
    empty bucket.

    Yields:
        The bucket's ``s3://`` URI, and the settings (fake credentials, ``AWS_ENDPOINT_URL``)
        through which pyarrow's real S3 client, and processes started with them, reach it.
    """
    import logging
    import uuid

    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    settings = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    bucket = f"{prefix}-{uuid.uuid4().hex[:8]}"
    try:
        pafs.S3FileSystem(
            endpoint_override=endpoint,
            scheme="http",
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
            allow_bucket_creation=True,
        ).create_dir(bucket)
        yield f"s3://{bucket}", settings
    finally:
        server.stop()


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_mlflow_server(folder: Path, timeout: float = 600) -> tuple[subprocess.Popen, str]:
    """A real ``mlflow server`` (SQLite backend, artifacts in ``folder``) on a free port.

    Returns:
        The server process (its own process group: stop it with ``stop_process_group``) and
        its tracking URI, once its health check answers.
    """
    import time
    import urllib.request

    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(folder / "mlflow-server.log", "w")  # noqa: SIM115 - the server holds it
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log_text = (folder / "mlflow-server.log").read_text()
            raise RuntimeError(f"mlflow server exited: {log_text[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5):
                return server, uri
        except OSError:
            time.sleep(1)
    stop_process_group(server)
    raise RuntimeError(f"mlflow server did not answer within {timeout} s")


def stop_process_group(process: subprocess.Popen) -> None:
    """Ends a process started with ``start_new_session=True`` and its children."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def wait_for(
    condition: Callable[[], Any],
    driver: subprocess.Popen,
    log_path: Path,
    what: str,
    timeout: float = 600,
) -> Any:
    """Polls ``condition`` until it returns something true, and returns that; fails when the
    driver ends first or ``timeout`` seconds pass, with the tail of its log."""
    deadline = time.time() + timeout
    while True:
        found = condition()
        if found:
            return found
        tail = log_path.read_text()[-3000:]
        assert driver.poll() is None, f"driver ended before {what}:\n{tail}"
        assert time.time() < deadline, f"no {what} in time:\n{tail}"
        time.sleep(0.2)


def kill_when(
    condition: Callable[[], bool],
    driver: subprocess.Popen,
    log_path: Path,
    what: str,
    timeout: float = 600,
) -> None:
    """SIGKILLs the driver's process group (the driver and the Ray it started) once
    ``condition`` holds, checked while the group is stopped (SIGSTOP), so that nothing the
    check read changes before the kill."""

    def stopped_check() -> bool:
        os.killpg(driver.pid, signal.SIGSTOP)
        found = False
        try:
            found = condition()
        finally:
            os.killpg(driver.pid, signal.SIGKILL if found else signal.SIGCONT)
        return found

    wait_for(stopped_check, driver, log_path, what, timeout)
    driver.wait()
