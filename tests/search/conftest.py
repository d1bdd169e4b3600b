"""One real tracked search that several test modules read: a 2-trial search through the CLI,
tracked in a real MLflow tracking server, watched with ``status --watch`` while it runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO, cli, start_mlflow_server, stop_process_group, write_spec


@dataclass
class TrackedSearch:
    """What the search left and what its user saw."""

    experiment: Path
    returncode: int
    stdout: str  # the driver's console, as a user sees it
    stderr: str
    watch: subprocess.CompletedProcess  # `status --watch 1` run alongside the search
    tracking_uri: str


@pytest.fixture(scope="session")
def tracked_search(tmp_path_factory) -> TrackedSearch:
    root = tmp_path_factory.mktemp("tracked")
    server, uri = start_mlflow_server(root)
    try:
        spec_path = write_spec(root, search__num_samples=2, tracking={"uri": uri})
        experiment = root / "results" / "tracked"
        # The console as a user gets it: TensorFlow's C++ logging not quietened by our tests.
        env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
        # Ray snapshots the experiment into its folder at every step of its loop, so what
        # `status --watch` reads follows the driver at once: these trials run for a few
        # seconds, less than Ray's default period (10 s, what the README says status lags by).
        env["TUNE_GLOBAL_CHECKPOINT_S"] = "0"
        with open(root / "run.out", "w") as out, open(root / "run.err", "w") as err:
            run = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "search",
                    "run",
                    str(spec_path),
                    "--num-cpus",
                    "2",
                    "--name",
                    "tracked",
                ],
                stdout=out,
                stderr=err,
                cwd=REPO,
                env={**env, "PYTHONUNBUFFERED": "1"},
            )
            deadline = time.monotonic() + 600
            # The driver takes its lock, then writes spec.yaml (status --watch says "starting"
            # in between; tests/search/outputs/test_status.py covers that).
            while (
                not (experiment / "spec.yaml").exists()
                and run.poll() is None
                and (time.monotonic() < deadline)
            ):
                time.sleep(0.5)
            # Watched from another process while the driver holds the experiment; the watch
            # ends by itself when the driver lets go.
            watch = cli("status", str(experiment), "--watch", "1", timeout=900)
            returncode = run.wait(timeout=900)
        yield TrackedSearch(
            experiment=experiment,
            returncode=returncode,
            stdout=(root / "run.out").read_text(),
            stderr=(root / "run.err").read_text(),
            watch=watch,
            tracking_uri=uri,
        )
    finally:
        stop_process_group(server)
