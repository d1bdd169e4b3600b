"""A seeded chaos soak: one fault per cycle, a resume, and every check of issue 29.

Each cycle runs a small real search (digits, ``small_cnn``, 8 trials of 4 epochs, ASHA with
grace period 1 and factor 2, 2 at a time, ``max_failures`` 2, checkpoints at the rungs, a
device budget too large to be reached, so that it is counted) and strikes it with one seeded
fault (:data:`FAULTS`): a SIGKILL of the driver's process group or of one trial's worker at a
random moment, an exception in a trial, or the driver killed while it writes the Optuna
journal, Ray's experiment snapshot or a trial's checkpoint (armed in
:mod:`benchmarks.reliability.soak_faults`). A driver that died is resumed, half the time on a
"fresh machine" (another ``HOME`` and working directory: only the storage is left). Cycles
alternate local storage and S3 (moto's server, started here). After each cycle:

- the command finishes within :data:`COMMAND_TIMEOUT_S` (else a hang: every stack dumped);
- every Ray trial is final (TERMINATED or ERROR) and no study trial is RUNNING;
- the Optuna study, Ray's results and the experiment folder agree: ``num_samples`` trials,
  each Ray trial's status and its newest study record's state (complete -> COMPLETE, stopped
  -> PRUNED, failed -> FAIL), the best complete trial, and :func:`chaos.check_invariants`;
- the device budget counts each epoch once: every trial's rows hold epochs 1..n once each,
  with cumulative held time that never decreases;
- no trial keeps checkpoints beyond ``keep_checkpoints`` finished ones (plus errored trials,
  which Ray and ``resume`` restart from theirs);
- no temporary file is left in the experiment folder, and no trial's local checkpoint copy in
  the cycle's temp folder (a SIGKILLed trial's are removed by the next trial on the node).

One line per cycle, then a summary; the JSON has ``cycles``, ``faults`` (by kind),
``hangs``, ``lost_trials``, ``disagreements``, ``max_resume_s`` and every cycle. Usage::

    python benchmarks/reliability/soak.py --cycles 30 --seed 0 --out soak.json
    python benchmarks/reliability/soak.py --cycles 10 --seed 0 --out soak.json \
        --resume-from soak.json
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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout
from benchmarks.reliability import chaos  # noqa: E402 - after the path

REPO = chaos.REPO
from search import storage as store  # noqa: E402 - after the path
from search.trial.checkpoint import TEMP_PREFIXES  # noqa: E402

FAULTS = (
    "driver_sigkill",
    "worker_sigkill",
    "trial_exception",
    "kill_in_journal_write",
    "kill_in_snapshot",
    "kill_in_checkpoint_upload",
)
SPEC: dict[str, Any] = {**json.loads(json.dumps(chaos.SPEC))}
SPEC["search"] = {
    "num_samples": 8,
    "max_concurrent": 2,
    "seed": 0,
    "max_failures": 2,
    "keep_checkpoints": 2,
    "budget_device_hours": 10.0,
}
COMMAND_TIMEOUT_S = 600
# A held-time step may exceed its epoch by an attempt's start (a new process, TensorFlow, the
# model restored) after a retry or a resume; a count that restarted or doubled would not fit.
ATTEMPT_SLACK_S = 90.0
RAY_MARKER = ".validate_storage_marker"  # Ray's own, written once where it stores an experiment
TRIAL_TITLES = ("ImplicitFunc", "train_trial")  # a trial's worker process, as Ray names it


def _command(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "a") as out:
        out.write(f"\n==== {' '.join(args[:2])} at {time.strftime('%H:%M:%S')}\n")
        out.flush()
        return subprocess.Popen(
            [
                sys.executable,
                str(REPO / "benchmarks" / "reliability" / "soak_faults.py"),
                *args,
                "--num-cpus",
                "2",
                "--stall-minutes",
                "2",
            ],
            cwd=cwd,
            env={**env, "PYTHONPATH": str(REPO)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _trial_workers(pid: int) -> list[Any]:
    import psutil

    found = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if any(title in " ".join(child.cmdline()) for title in TRIAL_TITLES):
                    found.append(child)
    return found


def _kill_a_worker(driver: subprocess.Popen, rng: random.Random, delay: float) -> str:
    """SIGKILLs one trial's worker ``delay`` s in (or the first one seen after it)."""
    deadline = time.monotonic() + delay
    while driver.poll() is None:
        workers = _trial_workers(driver.pid) if time.monotonic() >= deadline else []
        if workers:
            victim = rng.choice(workers)
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim.pid, signal.SIGKILL)
            return f"trial worker {victim.pid} killed at {delay:.1f} s"
        time.sleep(0.5)
    return "the search ended before a worker could be killed"


def _stacks(driver: subprocess.Popen) -> str:
    """py-spy dumps of the driver and its trials' workers (a hang's evidence)."""
    from tests.helpers import _stacks_of_ray_workers_under

    spy = subprocess.run(
        ["py-spy", "dump", "--pid", str(driver.pid)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return spy.stdout + spy.stderr + "\n" + _stacks_of_ray_workers_under(driver.pid)


def _finish(
    driver: subprocess.Popen, what: str, log: Path, hangs_dir: Path
) -> tuple[int | None, str]:
    """Waits for the command; a hang is dumped and killed: (exit code or None, event)."""
    try:
        return driver.wait(timeout=COMMAND_TIMEOUT_S), f"{what} exited"
    except subprocess.TimeoutExpired:
        dump = hangs_dir / f"{log.stem}-{what}.stacks"
        dump.write_text(_stacks(driver))
        chaos._kill_group(driver)
        return None, f"{what} hung ({COMMAND_TIMEOUT_S} s; stacks in {dump})"


def _study_by_ray_id(experiment: str, name: str) -> dict[str, Any]:
    from search.outputs.study import ATTR_RAY_TRIAL, load_study_readonly

    study = load_study_readonly(experiment, name)
    newest: dict[str, Any] = {}
    for frozen in study.trials if study is not None else []:
        ray_id = frozen.user_attrs.get(ATTR_RAY_TRIAL)
        if ray_id is not None:
            newest[str(ray_id)] = frozen
    return newest


def check_cycle(
    experiment: str, name: str, raw: dict[str, Any], temp_dir: Path
) -> dict[str, list[str]]:
    """Issue 29's checks of one finished cycle: violations by kind (``lost``,
    ``disagreement``, ``not_final``, ``budget``, ``checkpoints``, ``temp``)."""
    from optuna.trial import TrialState

    from search.driver.pruning import checkpoint_dirs
    from search.outputs.results import load_trials, read_result_rows

    max_t, num_samples = raw["train"]["epochs"], raw["search"]["num_samples"]
    found: dict[str, list[str]] = {
        k: [] for k in ("lost", "disagreement", "not_final", "budget", "checkpoints", "temp")
    }
    for violation in chaos.check_invariants(experiment, name, num_samples, max_t):
        lost = "Ray's results have no" in violation or "Ray trials for" in violation
        found["lost" if lost else "disagreement"].append(violation)
    fs, root = store.filesystem(experiment)
    trials = load_trials(experiment)
    study = _study_by_ray_id(experiment, name)
    expected = {
        "complete": TrialState.COMPLETE,
        "stopped": TrialState.PRUNED,
        "failed": TrialState.FAIL,
    }
    for trial in trials:
        status = trial.status(max_t).value
        if trial.ray_status not in ("TERMINATED", "ERROR"):
            found["not_final"].append(f"{trial.trial_id}: Ray says {trial.ray_status!r}")
        frozen = study.get(trial.trial_id)
        if frozen is None:
            found["disagreement"].append(f"{trial.trial_id}: no study record")
        elif expected.get(status) != frozen.state:
            found["disagreement"].append(
                f"{trial.trial_id}: Ray {status}, study {frozen.state.name}"
            )
        raw_rows = read_result_rows(fs, trial.path)
        if {int(row["epoch"]) for row in raw_rows} != set(range(1, trial.epochs_run + 1)):
            found["budget"].append(f"{trial.trial_id}: epochs {[r['epoch'] for r in raw_rows]}")
        rows = trial.good_rows
        for before, row in zip(rows, rows[1:], strict=False):
            step = float(row["wall_seconds"]) - float(before["wall_seconds"])
            own = float(row["epoch_seconds"]) + float(row["checkpoint_seconds"])
            if not 0 < step <= own + ATTEMPT_SLACK_S:
                found["budget"].append(
                    f"{trial.trial_id}: epoch {row['epoch']} adds {step:.1f}"
                    f" s of held time for {own:.1f} s of its own"
                )
    complete = [t for t in trials if t.status(max_t).value == "complete"]
    ray_best = max(complete, key=lambda t: t.final.get("val_accuracy", -1.0), default=None)
    study_best = max(
        (f for f in study.values() if f.state == TrialState.COMPLETE),
        key=lambda f: f.value,
        default=None,
    )
    if ray_best is not None and (
        study_best is None or abs(study_best.value - ray_best.final["val_accuracy"]) > 1e-9
    ):
        found["disagreement"].append(
            f"best: Ray {ray_best.trial_id}, study {study_best.number if study_best else None}"
        )
    errored = sum(1 for t in trials if t.status(max_t).value == "failed")
    keeping = [t.trial_id for t in trials if checkpoint_dirs(fs, t.path)]
    if len(keeping) > raw["search"]["keep_checkpoints"] + errored:
        found["checkpoints"].append(f"{len(keeping)} trials keep checkpoints: {keeping}")
    found["temp"] += [
        f"{info.path}"
        for info in fs.get_file_info(store.pafs.FileSelector(root, recursive=True))
        if info.base_name.endswith((".partial", ".tmp"))
        or info.base_name.startswith(".")
        and info.base_name != RAY_MARKER
    ]
    found["temp"] += [str(p) for prefix in TEMP_PREFIXES for p in temp_dir.glob(f"{prefix}*")]
    return {k: v for k, v in found.items() if v}


def run_cycle(
    index: int, rng: random.Random, storage: str, root: Path, env: dict[str, str]
) -> dict[str, Any]:
    """One cycle: the search, its fault, the resume, the checks."""
    name = f"soak{index}"
    raw, spec_path, experiment = chaos.cycle_spec(name, index, SPEC, storage, root)
    log, cycle_dir, temp_dir = root / f"{name}.log", root / name, root / name / "tmp"
    temp_dir.mkdir(parents=True)
    fault = rng.choice(FAULTS)
    number = {
        "trial_exception": rng.randint(1, 4),
        "kill_in_journal_write": rng.randint(3, 40),
        "kill_in_snapshot": rng.randint(2, 12),
        "kill_in_checkpoint_upload": rng.randint(1, 10),
    }.get(fault, 0)
    cycle_env = {
        **env,
        "SOAK_FAULT": f"{fault}:{number}",
        "SOAK_DIR": str(cycle_dir),
        "TMPDIR": str(temp_dir),
    }
    machine_env, cwd = chaos._machine(root, 0, cycle_env)
    events, resume_s, started = [f"{fault}:{number}"], None, time.monotonic()
    driver = _command(["run", str(spec_path), "--name", name], machine_env, cwd, log)
    if fault == "driver_sigkill":
        delay = rng.uniform(3.0, 60.0)
        try:
            driver.wait(timeout=delay)
            events.append(f"run ended before the kill at {delay:.1f} s")
        except subprocess.TimeoutExpired:
            chaos._kill_group(driver)
            events.append(f"driver killed at {delay:.1f} s")
    elif fault == "worker_sigkill":
        events.append(_kill_a_worker(driver, rng, rng.uniform(5.0, 60.0)))
    code, event = _finish(driver, "run", log, root)
    events.append(f"{event} {code}")
    if code is not None and code != 0:
        # Killed (or failed): resume, disarmed, half the time on a fresh machine.
        if (cycle_dir / "killed").exists():
            events.append(f"killed during {(cycle_dir / 'killed').read_text()}")
        fresh = rng.random() < 0.5
        if fresh:
            machine_env, cwd = chaos._machine(root, 1, cycle_env)
        resume_env = {**machine_env, "SOAK_FAULT": "none:0"}
        has_spec = store.path_exists(store.join(experiment, "spec.yaml"))
        command = ["resume", experiment] if has_spec else ["run", str(spec_path), "--name", name]
        began = time.monotonic()
        driver = _command(command, resume_env, cwd, log)
        code, event = _finish(driver, command[0], log, root)
        resume_s = round(time.monotonic() - began, 1)
        events.append(f"{'fresh machine: ' if fresh else ''}{event} {code} in {resume_s} s")
    result: dict[str, Any] = {
        "cycle": index,
        "storage": "s3" if storage.startswith("s3") else "local",
        "fault": fault,
        "events": events,
        "resume_s": resume_s,
    }
    if code is None:
        result["hang"] = True
        result["violations"] = {"hang": [events[-1]]}
    elif code != 0:
        result["violations"] = {"exit": [f"exit {code}: {log.read_text()[-1500:]}"]}
    else:
        result["violations"] = check_cycle(experiment, name, raw, temp_dir)
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def summarize(results: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """The JSON's totals over every cycle."""
    faults: dict[str, int] = {}
    for result in results:
        faults[result["fault"]] = faults.get(result["fault"], 0) + 1
    kinds = ("lost", "disagreement", "not_final", "budget", "checkpoints", "temp", "exit")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO,
        text=True,
        capture_output=True,
        check=False,
    ).stdout.strip()
    return {
        "what": (
            "benchmarks/reliability/soak.py: one seeded fault per cycle, resume, issue 29's checks"
        ),
        "seed": seed,
        "commit": commit,
        "spec": SPEC,
        "cycles": len(results),
        "by_storage": {s: sum(1 for r in results if r["storage"] == s) for s in ("local", "s3")},
        "faults": faults,
        "hangs": sum(1 for r in results if r.get("hang")),
        "lost_trials": sum(len(r["violations"].get("lost", [])) for r in results),
        "disagreements": sum(len(r["violations"].get("disagreement", [])) for r in results),
        "other_violations": {
            k: sum(len(r["violations"].get(k, [])) for r in results) for k in kinds[2:]
        },
        "max_resume_s": max(
            (r["resume_s"] for r in results if r["resume_s"] is not None), default=None
        ),
        "results": results,
    }


def soak(
    cycles: int,
    seed: int,
    root: Path,
    done: list[dict[str, Any]] | None = None,
    out: Path | None = None,
) -> list[dict[str, Any]]:
    """Runs ``cycles`` cycles after the ``done`` ones (seeded per cycle, so a run split in
    chunks is the run made at once); prints a line per cycle and, with ``out``, rewrites the
    JSON after each one (a run cut short keeps its cycles)."""
    results = list(done or [])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    with contextlib.ExitStack() as stack:
        from tests.helpers import moto_s3_bucket

        bucket, settings = stack.enter_context(moto_s3_bucket("soak"))
        env.update(settings)
        os.environ.update(settings)  # this process reads the bucket for the checks
        for index in range(len(results), len(results) + cycles):
            storage = f"{bucket}/exp" if index % 2 else str(root / "results")
            result = run_cycle(index, random.Random(seed * 100_003 + index), storage, root, env)
            results.append(result)
            bad = {k: len(v) for k, v in result["violations"].items()}
            print(
                f"cycle {index:3d} {result['storage']:5s} {result['fault']:26s} "
                f"{result['seconds']:6.1f} s resume {result['resume_s']} s "
                f"{bad or 'ok'}",
                flush=True,
            )
            if out is not None:
                out.write_text(json.dumps(summarize(results, seed), indent=1) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--resume-from",
        type=Path,
        default=None,
        help="a JSON this wrote: its cycles are kept and the run goes on",
    )
    args = parser.parse_args(argv)
    done = json.loads(args.resume_from.read_text())["results"] if args.resume_from else []
    root = Path(tempfile.mkdtemp(prefix="soak-"))
    results = soak(args.cycles, args.seed, root, done, args.out)
    summary = summarize(results, args.seed)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("results", "spec")}))
    return 1 if summary["hangs"] or any(r["violations"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
