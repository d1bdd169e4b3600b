"""Memory per trial: the dataset shared through Ray's object store vs. a copy in every trial.

Runs a tiny Ray Tune search twice with N concurrent function trials. In ``shared`` mode the
dataset reaches the trials through ``tune.with_parameters`` (one copy in the object store, read
zero-copy by every worker); in ``copy`` mode each trial builds its own. Each trial touches every
array, waits until all trials have, then reads its own memory from /proc:

* RSS (VmRSS): resident pages, counting shared pages in full in every process;
* PSS (smaps_rollup): shared pages split between the processes mapping them, the honest share;
* USS (Private_Clean + Private_Dirty): pages only this process holds.

``--pipeline`` also builds each trial's ``make_input_pipeline`` and runs one epoch, to show
that the ``tf.data`` pipeline does not copy the shared arrays (USS growth stays small).

    python benchmarks/memory/data_sharing.py                 # ~400 MB dataset, 2 trials
    python benchmarks/memory/data_sharing.py --reduced --json results/data_sharing.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

from search.data import Dataset  # noqa: E402 - needs the path above

FULL_MB = 400
REDUCED_MB = 100
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}
BARRIER_TIMEOUT_S = 300
MODES = ("shared", "copy")


def synthetic_dataset(size_mb: float, seed: int = 0) -> Dataset:
    """A CIFAR-shaped float32 dataset of about `size_mb` MB (images dominate the size)."""
    per_image = int(np.prod(IMAGE_SHAPE)) * 4
    total = max(int(size_mb * 2**20 / per_image), 3 * NUM_CLASSES)
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    start = 0
    for name, share in SPLITS.items():
        n = int(total * share)
        arrays[f"x_{name}"] = rng.random((n, *IMAGE_SHAPE), dtype=np.float32)
        arrays[f"y_{name}"] = (np.arange(start, start + n) % NUM_CLASSES).astype(np.int32)
        start += n
    for array in arrays.values():
        array.flags.writeable = False
    return Dataset(class_names=tuple(str(i) for i in range(NUM_CLASSES)), **arrays)


def memory_mb() -> dict[str, float]:
    """This process's RSS, PSS and USS in MB (PSS/USS are NaN without smaps_rollup)."""
    out = {"rss": float("nan"), "pss": float("nan"), "uss": float("nan")}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1]) / 1024
    try:
        with open("/proc/self/smaps_rollup") as rollup:
            fields = {
                line.split(":")[0]: int(line.split()[1])
                for line in rollup
                if line.split()[-1] == "kB"
            }
    except OSError:  # kernels before 4.14
        return out
    out["pss"] = fields["Pss"] / 1024
    out["uss"] = (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024
    return out


def _barrier(folder: str, stage: str, trials: int) -> None:
    """Waits until every trial reached `stage`, so measurements see all mappings at once."""
    Path(folder, f"{stage}-{os.getpid()}").touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while len(list(Path(folder).glob(f"{stage}-*"))) < trials:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only some trials reached {stage}; are they concurrent?")
        time.sleep(0.05)


def trial(config: dict[str, Any], data: Dataset | None = None) -> None:
    """A function trainable: get the data, touch every array, measure, report once."""
    from ray import tune

    before = memory_mb()
    if data is None:  # copy mode: what every trial loading its own dataset costs
        data = synthetic_dataset(config["size_mb"], seed=config["seed"])
    arrays = [data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test]
    checksum = float(sum(a.sum(dtype=np.float64) for a in arrays))  # reads every page
    _barrier(config["barrier"], "touched", config["trials"])
    after = memory_mb()
    metrics = {f"{k}_mb": v for k, v in after.items()}
    metrics.update({f"{k}_before_mb": v for k, v in before.items()})
    # Arrays read from the object store are views of its shared memory, so they have a base.
    metrics.update(checksum=checksum, pid=os.getpid(), shared=data.x_train.base is not None)
    if config["pipeline"]:
        from search.data import make_input_pipeline

        pipeline = make_input_pipeline(
            data.x_train, data.y_train, batch_size=256, training=True, seed=0, augment="flip+crop"
        )
        ready = memory_mb()
        for _ in pipeline:
            pass
        metrics["pipeline_uss_growth_mb"] = memory_mb()["uss"] - ready["uss"]
    _barrier(config["barrier"], "measured", config["trials"])
    tune.report(metrics)


def run_mode(mode: str, data: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """One Tune run with `args.trials` concurrent trials; returns the averaged figures."""
    from ray import tune

    with tempfile.TemporaryDirectory(prefix="data-sharing-") as scratch:
        barrier = Path(scratch, "barrier")
        barrier.mkdir()
        config = {
            "size_mb": args.size_mb,
            "seed": 0,
            "barrier": str(barrier),
            "trials": args.trials,
            "pipeline": args.pipeline,
        }
        trainable = tune.with_parameters(trial, data=data if mode == "shared" else None)
        # Fractional CPUs so that every trial runs at once (the barrier needs them all).
        trainable = tune.with_resources(trainable, {"cpu": args.num_cpus / args.trials})
        tuner = tune.Tuner(
            trainable,
            param_space=config,
            tune_config=tune.TuneConfig(
                num_samples=args.trials, max_concurrent_trials=args.trials
            ),
            run_config=tune.RunConfig(
                name=f"data-sharing-{mode}", storage_path=scratch, verbose=0
            ),
        )
        results = tuner.fit()
        if results.errors:
            raise RuntimeError(f"{mode}: {results.errors[0]}")
        rows = [r.metrics for r in results]
    summary: dict[str, Any] = {
        "mode": mode,
        "trials": len(rows),
        "dataset_mb": round(data.nbytes / 2**20, 1),
    }
    for key in ("rss", "pss", "uss"):
        summary[f"{key}_per_trial_mb"] = round(float(np.mean([r[f"{key}_mb"] for r in rows])), 1)
        growth = [r[f"{key}_mb"] - r[f"{key}_before_mb"] for r in rows]
        summary[f"{key}_growth_per_trial_mb"] = round(float(np.mean(growth)), 1)
    if args.pipeline:
        summary["pipeline_uss_growth_mb"] = round(
            float(np.mean([r["pipeline_uss_growth_mb"] for r in rows])), 1
        )
    summary["zero_copy_in_workers"] = all(r["shared"] for r in rows)
    return summary


def machine() -> dict[str, Any]:
    try:
        with open("/proc/meminfo") as meminfo:
            total_kb = int(meminfo.readline().split()[1])
    except OSError:
        total_kb = 0
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(total_kb / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def print_table(rows: list[dict[str, Any]], pipeline: bool) -> None:
    columns = [
        ("mode", "mode"),
        ("trials", "trials"),
        ("dataset_mb", "dataset MB"),
        ("rss_per_trial_mb", "RSS/trial MB"),
        ("pss_per_trial_mb", "PSS/trial MB"),
        ("uss_per_trial_mb", "USS/trial MB"),
        ("pss_growth_per_trial_mb", "PSS growth MB"),
        ("uss_growth_per_trial_mb", "USS growth MB"),
    ]
    if pipeline:
        columns.append(("pipeline_uss_growth_mb", "tf.data USS growth MB"))
    widths = [max(len(title), *(len(str(r[key])) for r in rows)) for key, title in columns]
    print("  ".join(title.rjust(w) for (_, title), w in zip(columns, widths)))
    for row in rows:
        print("  ".join(str(row[key]).rjust(w) for (key, _), w in zip(columns, widths)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=FULL_MB, help="dataset size (MB)")
    parser.add_argument("--reduced", action="store_true", help=f"use {REDUCED_MB} MB")
    parser.add_argument("--trials", type=int, default=2, help="concurrent trials")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs for the local Ray")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="also run one tf.data epoch per trial (imports TensorFlow)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.reduced:
        args.size_mb = REDUCED_MB

    import ray

    data = synthetic_dataset(args.size_mb)
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        rows = [run_mode(mode, data, args) for mode in args.modes]
    finally:
        ray.shutdown()
    print_table(rows, args.pipeline)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"machine": machine(), "size_mb": args.size_mb, "results": rows}, indent=2)
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
