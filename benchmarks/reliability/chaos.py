"""Kill the driver at seeded random moments, resume, and check that nothing is lost or undone.

Each cycle runs a small search through the CLI, SIGKILLs its driver's process group (the driver
and the Ray it started) 1 to 3 times at random moments, resumes it after each kill (sometimes
as a fresh machine: another ``HOME`` and working directory, only the storage left), lets the
last resume finish, then checks the invariants of issue 30:

- Ray's trials equal ``num_samples``;
- every study trial that reported an epoch has its Ray trial with at least that many epochs;
- no trial trained past the epoch at which the study says ASHA stopped it;
- every Ray trial trained an epoch or failed with an error it names;
- no study trial is RUNNING after the search ends;
- a FAIL (orphaned) study trial reported nothing.

Storage is a local folder or S3 (moto's server, started in this process). Usage::

    python benchmarks/reliability/chaos.py --storage local --cycles 20 --seed 0 --out local.json
    python benchmarks/reliability/chaos.py --storage s3 --cycles 20 --seed 0 --out s3.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from search import storage as store  # noqa: E402 - after the path

# The search, smaller so that a cycle fits in minutes on 2 CPU cores.
SPEC: dict[str, Any] = {
    "dataset": {"name": "digits", "subset": 200, "val_fraction": 0.25, "seed": 0},
    "model": {"backbone": "small_cnn", "weights": "none", "dense_units": 32},
    "train": {"epochs": 4, "batch_size": 32, "optimizer": "adam", "checkpoint": "asha_rungs"},
    "space": {
        "noise_std": {"loguniform": [0.001, 0.1]},
        "upsample": {"choice": [1, 2]},
        "dropout": {"uniform": [0.3, 0.8]},
        "learning_rate": {"loguniform": [0.0003, 0.01]},
    },
    "search": {"num_samples": 6, "max_concurrent": 2, "seed": 0, "max_failures": 2},
    "scheduler": {"grace_period": 1, "reduction_factor": 2},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
}
COMMAND_TIMEOUT_S = 900


def _driver(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "a") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "search", *args, "--num-cpus", "2"],
            cwd=cwd,
            env={**env, "PYTHONPATH": str(REPO)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _machine(root: Path, index: int, env: dict[str, str]) -> tuple[dict[str, str], Path]:
    """A machine's HOME and working directory (a fresh one has neither mirror nor cache)."""
    home = root / f"machine-{index}"
    (home / "work").mkdir(parents=True, exist_ok=True)
    return {**env, "HOME": str(home)}, home / "work"


def check_invariants(experiment: str, name: str, num_samples: int, max_t: int) -> list[str]:
    """The issue's invariants over the finished experiment; the violations, in words."""
    from optuna.trial import TrialState

    from search.outputs.results import load_trials
    from search.outputs.study import ATTR_END, ATTR_RAY_TRIAL, REASON_ORPHANED, load_study_readonly

    violations = []
    trials = {t.trial_id: t for t in load_trials(experiment)}
    if len(trials) != num_samples:
        violations.append(f"{len(trials)} Ray trials for num_samples {num_samples}")
    study = load_study_readonly(experiment, name)
    records = study.trials if study is not None else []
    newest: dict[str, Any] = {}
    for frozen in records:
        ray_id = frozen.user_attrs.get(ATTR_RAY_TRIAL)
        if ray_id is not None:
            newest[str(ray_id)] = frozen
        if frozen.state == TrialState.RUNNING:
            violations.append(f"study trial {frozen.number} still RUNNING")
        if (
            frozen.state == TrialState.FAIL
            and frozen.user_attrs.get(ATTR_END) == REASON_ORPHANED
            and frozen.intermediate_values
        ):
            violations.append(
                f"orphaned study trial {frozen.number} reported "
                f"{sorted(frozen.intermediate_values)}"
            )
        if frozen.intermediate_values and ray_id is not None:
            record = trials.get(str(ray_id))
            reported = max(frozen.intermediate_values)
            if record is None:
                violations.append(
                    f"study trial {frozen.number} reported epoch {reported}; "
                    f"Ray's results have no trial {ray_id}"
                )
            elif record.epochs_run < reported:
                violations.append(
                    f"trial {ray_id}: the study has epoch {reported}, Ray's "
                    f"results {record.epochs_run}"
                )
    for ray_id, frozen in newest.items():
        ended = str(frozen.user_attrs.get(ATTR_END, ""))
        if frozen.state == TrialState.PRUNED and ended.startswith("asha@") and ray_id in trials:
            stopped_at = int(ended.split("@", 1)[1])
            if trials[ray_id].epochs_run > stopped_at:
                violations.append(
                    f"trial {ray_id} trained {trials[ray_id].epochs_run} epochs; "
                    f"ASHA stopped it at {stopped_at}"
                )
    for ray_id, record in trials.items():
        if record.epochs_run < 1 and not (record.failed and record.failure_reason):
            violations.append(
                f"trial {ray_id}: no epoch trained and no error named "
                f"({record.status(max_t).value})"
            )
    return violations


def cycle_spec(
    name: str, index: int, spec: dict[str, Any], storage: str, root: Path
) -> tuple[dict[str, Any], Path, str]:
    """Cycle ``index``'s spec (its own search seed) written under ``root``: (the spec, its
    file, the experiment's folder or URI)."""
    raw = {**json.loads(json.dumps(spec)), "name": name, "storage": storage}
    raw["search"]["seed"] = index
    spec_path = root / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    return raw, spec_path, f"{storage.rstrip('/')}/{name}"


def run_cycle(
    index: int, rng: random.Random, storage: str, root: Path, env: dict[str, str]
) -> dict[str, Any]:
    name = f"chaos{index}"
    raw, spec_path, experiment = cycle_spec(name, index, SPEC, storage, root)
    log = root / f"{name}.log"
    kills = rng.randint(1, 3)
    machine = 0
    machine_env, cwd = _machine(root, machine, env)
    events: list[str] = []
    started = time.monotonic()
    command = ["run", str(spec_path), "--name", name]
    for kill in range(kills + 1):
        driver = _driver(command, machine_env, cwd, log)
        if kill < kills:
            delay = rng.uniform(3.0, 60.0)
            try:
                code = driver.wait(timeout=delay)
                events.append(f"{command[0]} exited {code} before the kill at {delay:.1f} s")
            except subprocess.TimeoutExpired:
                _kill_group(driver)
                events.append(f"{command[0]} killed at {delay:.1f} s")
        else:
            try:
                code = driver.wait(timeout=COMMAND_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _kill_group(driver)
                return {
                    "cycle": index,
                    "events": events,
                    "violations": [f"{command[0]} still ran after {COMMAND_TIMEOUT_S} s (a hang)"],
                }
            events.append(f"{command[0]} exited {code}")
            if code != 0:
                return {
                    "cycle": index,
                    "events": events,
                    "violations": [f"{command[0]} exited {code}: {log.read_text()[-1500:]}"],
                }
            break
        if rng.random() < 0.5:  # the next command on a fresh machine
            machine += 1
            machine_env, cwd = _machine(root, machine, env)
            events.append("fresh machine")
        # A driver killed before it took its lock left nothing: run it again.
        has_spec = store.path_exists(store.join(experiment, "spec.yaml"))
        command = ["resume", experiment] if has_spec else ["run", str(spec_path), "--name", name]
    violations = check_invariants(
        experiment, name, raw["search"]["num_samples"], raw["train"]["epochs"]
    )
    return {
        "cycle": index,
        "kills": sum(" killed at " in event for event in events),
        "events": events,
        "violations": violations,
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", choices=("local", "s3"), default="local")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    root = Path(tempfile.mkdtemp(prefix="chaos-"))
    results = []
    with contextlib.ExitStack() as stack:
        storage = str(root / "results")
        if args.storage == "s3":
            from tests.helpers import moto_s3_bucket

            bucket, settings = stack.enter_context(moto_s3_bucket("chaos"))
            env.update(settings)
            os.environ.update(settings)  # this process reads the bucket for the checks
            storage = f"{bucket}/exp"
        for index in range(args.cycles):
            result = run_cycle(index, rng, storage, root, env)
            results.append(result)
            print(json.dumps(result), flush=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO,
        text=True,
        capture_output=True,
        check=False,
    ).stdout.strip()
    summary = {
        "storage": args.storage,
        "seed": args.seed,
        "commit": commit,
        "cycles": len(results),
        "spec": SPEC,
        "kills": sum(r.get("kills", 0) for r in results),
        "cycles_with_violations": sum(1 for r in results if r["violations"]),
        "results": results,
    }
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if summary["cycles_with_violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
