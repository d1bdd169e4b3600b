"""The same search by finetune-search and by its peers: Ray Tune + stock Optuna, Optuna alone,
Keras Tuner, Syne Tune, and random search without early stopping (the floor).

Every method searches the same space with the same fixed settings, data split, ``max_t``,
concurrency (where it has one) and budget in trial-epochs, and trains through the project's
own model building and data (see ``peer_methods.py``), so only the search differs. Printed,
one table per figure: the best validation accuracy within the budget (over seeds); the test
accuracy of each method's best config as the method trained it; trial-epochs and wall time
until each method first came within 1 point of the best any method found with that seed;
the framework's cost per trial-epoch (slot-seconds not spent in the trials' own training);
and, for each peer, ours / peer and ours - peer paired by seed with a 95% interval.

    pip install -e ".[bench]"
    python benchmarks/peers/peers.py --reduced --json /tmp/peers-reduced.json   # ~15 min, 2 cores
    python benchmarks/peers/peers.py --json /tmp/peers.json                     # ~40 min, 2 cores
    python benchmarks/peers/peers.py --cifar --json /tmp/peers-cifar.json       # VGG16 on a GPU

A long comparison runs in chunks: ``--seeds 10 --resume --json F`` keeps the seeds ``F`` holds
and runs the others (the JSON is rewritten after every seed). Experiment folders and logs go to a
temporary folder (``--workdir`` keeps them). Progress goes
to stderr, tables to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run from a checkout: `benchmarks.*`, and `search` uninstalled

# common first: it sets TensorFlow's and Ray's environment before anything imports them.
from benchmarks.common import (  # noqa: E402
    FULL,
    REDUCED,
    Context,
    finite,
    format_pairs,
    gpu_names,
    jsonable,
    load_average,
    machine_info,
    progress,
)
from benchmarks.peers.peer_methods import METHODS, VARIANTS  # noqa: E402
from benchmarks.peers.peer_report import (  # noqa: E402
    print_tables,
    run_figures,
    summarize,
    to_target,
)
from benchmarks.peers.peer_task import MethodRun, Task  # noqa: E402

PEER_PACKAGES = ("keras-tuner", "syne-tune")


def space(
    upsample: list[int],
    freeze: list[int],
    noise: tuple[float, float],
    learning_rate: tuple[float, float],
    dropout: tuple[float, float],
) -> dict[str, Any]:
    """The searched settings, in the spec's vocabulary (every peer can express them)."""
    return {
        "noise_std": {"loguniform": list(noise)},
        "upsample": {"choice": upsample},
        "input_convs": {"int": [0, 2]},
        "freeze": {"choice": freeze},
        "learning_rate": {"loguniform": list(learning_rate)},
        "dropout": {"uniform": list(dropout)},
    }


def digits_task(
    max_t: int, budget: int, concurrency: int, train_images: int | None = None
) -> Task:
    """small_cnn on scikit-learn's digits (CPU). ``freeze`` 3/5 freeze the first one/two
    conv blocks of small_cnn (random weights: a real, usually harmful, choice)."""
    dataset: dict[str, Any] = {"name": "digits", "val_fraction": 0.2, "seed": 0}
    if train_images is not None:
        dataset["subset"] = train_images
    return Task(
        raw={
            "dataset": dataset,
            "model": {
                "backbone": "small_cnn",
                "weights": "none",
                "dense_units": 64,
                "pooling": "flatten",
            },
            "train": {"epochs": max_t, "batch_size": 32, "optimizer": "sgd", "momentum": 0.9},
            "space": space([1, 2], [0, 3, 5], (0.001, 0.3), (1e-4, 0.3), (0.0, 0.8)),
            "search": {"max_concurrent": concurrency, "algorithm": "tpe", "baseline": False},
            "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 3},
            "resources": {"cpus_per_trial": 1, "gpus_per_trial": "auto"},
        },
        budget=budget,
        concurrency=concurrency,
    )


def cifar_task(max_t: int, budget: int, concurrency: int) -> Task:
    """VGG16 (ImageNet weights where Keras has them, else random) on CIFAR-10, one GPU per
    trial: the README's method, on 10,000 training images so a comparison fits in hours."""
    return Task(
        raw={
            "dataset": {"name": "cifar10", "val_fraction": 0.1, "seed": 0, "subset": 10000},
            "model": {"backbone": "vgg16", "weights": "auto", "pooling": "flatten"},
            "train": {"epochs": max_t, "batch_size": 64, "optimizer": "sgd", "momentum": 0.9},
            "space": space(
                [1, 2, 3, 4, 5], [0, 4, 7, 11, 15], (0.001, 0.1), (1e-4, 0.05), (0.3, 0.8)
            ),
            "search": {"max_concurrent": concurrency, "algorithm": "tpe", "baseline": False},
            "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 3},
            "resources": {"cpus_per_trial": 4, "gpus_per_trial": 1},
        },
        budget=budget,
        concurrency=concurrency,
    )


@dataclass(frozen=True)
class Size:
    """One comparison's sizes. ``budget`` is a whole number of Keras Tuner Hyperband
    iterations (11 trial-epochs at ``max_t`` 3, 75 at 9), so Keras Tuner spends exactly it.
    ``--json`` is written after every seed (``complete`` false until the last)."""

    name: str
    max_t: int
    budget: int
    seeds: tuple[int, ...]
    variants: bool
    train_images: int | None = None  # dataset.subset (None: all)


SIZES = {
    # 500 of the digits' training images (about half the epoch time of all 1,149) and one
    # Hyperband iteration at max_t 9: all eight methods, three seeds, in about 40 min on 2 cores.
    "full": Size("full", max_t=9, budget=75, seeds=(0, 1, 2), variants=True, train_images=500),
    "reduced": Size("reduced", max_t=3, budget=22, seeds=(0, 1), variants=False, train_images=500),
}


# --------------------------------------------------------------------------------------------
# the run


def run_comparison(
    task: Task,
    seeds: Sequence[int],
    names: Sequence[str],
    workdir: Path,
    ctx: Context,
    after_seed: Callable[[dict[str, Any]], None] | None = None,
    done: Mapping[str, Sequence[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Runs every method for every seed and computes the figures.

    Args:
        task: The search every method runs.
        seeds: The seeds (each seeds the search and the training).
        names: Keys of ``METHODS`` or ``VARIANTS``.
        workdir: Where experiment folders and logs go.
        ctx: The benchmark context (CPUs for each local Ray).
        after_seed: Called with the results so far after every seed (a long run keeps what
            it measured).
        done: Per method, the per-seed records of seeds measured before (``--resume``):
            those seeds are not run again.

    Returns:
        ``methods``, ``comparisons``, ``budget_trial_epochs``, ``seeds``.
    """
    runners = {**METHODS, **VARIANTS}
    done = done or {}
    per_seed: dict[str, list[dict[str, Any]]] = {
        name: [r for r in done.get(name, ()) if r["seed"] in seeds] for name in names
    }
    for seed in seeds:
        if all(any(r["seed"] == seed for r in per_seed[name]) for name in names):
            progress(f"peers: seed {seed} measured before (--resume), kept")
            continue
        runs: dict[str, MethodRun] = {}
        figures: dict[str, dict[str, Any]] = {}
        for name in names:
            progress(
                f"peers: {name} seed {seed} (budget {task.budget} trial-epochs, max_t "
                f"{task.max_t}, load {load_average()})"
            )
            run = runners[name](task, seed, workdir / f"{name}-seed{seed}", ctx)
            if not run.rows:
                raise RuntimeError(
                    f"{name} seed {seed}: no epoch was trained (see the logs in "
                    f"{workdir / f'{name}-seed{seed}'})"
                )
            runs[name], figures[name] = run, run_figures(run, task.budget)
            progress(
                f"peers: {name} seed {seed}: best {figures[name]['best_val']:.4f} in "
                f"{figures[name]['trial_epochs']} trial-epochs, {run.wall_s:.0f} s"
            )
        best_any = max(
            (f["best_val"] for f in figures.values() if finite(f["best_val"])),
            default=float("nan"),
        )
        for name in names:
            epochs, seconds = to_target(runs[name].rows, task.budget, best_any)
            # The rows (each trial's config on its first) stay in the JSON: every figure can
            # be computed again from them.
            per_seed[name].append(
                {
                    "seed": seed,
                    **figures[name],
                    "best_any": best_any,
                    "epochs_to_target": epochs,
                    "seconds_to_target": seconds,
                    "rows": runs[name].rows,
                }
            )
        if after_seed is not None:
            done = list(seeds[: seeds.index(seed) + 1])
            after_seed(
                {
                    **summarize(per_seed, task.budget),
                    "budget_trial_epochs": task.budget,
                    "seeds": done,
                }
            )
    return {
        **summarize(per_seed, task.budget),
        "budget_trial_epochs": task.budget,
        "seeds": list(seeds),
    }


def check_peers_installed() -> None:
    """The peers come with the ``bench`` extra; say how to get them, not a traceback."""
    from importlib import metadata

    missing = []
    for package in PEER_PACKAGES:
        try:
            metadata.version(package)
        except metadata.PackageNotFoundError:
            missing.append(package)
    if missing:
        raise SystemExit(
            f'peers.py: {", ".join(missing)} not installed; run pip install -e ".[bench]"'
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reduced",
        action="store_true",
        help="2 seeds, max_t 3, 22 trial-epochs, 500 training images: ~15 min on 2 idle CPU cores",
    )
    parser.add_argument(
        "--cifar", action="store_true", help="VGG16 on CIFAR-10, one GPU per trial (a GPU machine)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the seeds the --json file already holds (same size, task "
        "and methods) and run only the others",
    )
    parser.add_argument(
        "--seeds", type=int, default=None, metavar="N", help="seeds 0..N-1 instead of the size's"
    )
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated subset of " + ",".join([*METHODS, *VARIANTS]),
    )
    parser.add_argument(
        "--num-cpus",
        type=int,
        default=os.cpu_count() or 1,
        help="CPUs for each local Ray (default: all)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep experiment folders and logs here (default: a temp folder)",
    )
    return parser


def choose_methods(text: str | None, size: Size) -> list[str]:
    """The methods to run, ours first (``--methods``, or the six plus the size's variants)."""
    known = [*METHODS, *VARIANTS]
    if text is None:
        return [*METHODS, *(VARIANTS if size.variants else [])]
    chosen = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in known]
    if unknown or not chosen:
        raise SystemExit(
            f"--methods: must be a comma-separated subset of {','.join(known)}, got {text!r}"
        )
    return [m for m in known if m in chosen]


def resumed_runs(
    path: Path | None, size: str, task: Task, names: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """The per-seed records a ``--json`` file of an earlier run of the same comparison holds
    (none when it does not exist yet).

    Raises:
        SystemExit: With one line when there is no ``--json``, the file cannot be read, or it
            holds another size, task or set of methods.
    """
    if path is None:
        raise SystemExit("--resume: needs --json, the file the seeds so far were written to")
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        methods = {**old["methods"], **old.get("variants", {})}
        runs = {name: list(methods[name]["runs"]) for name in methods}
        old_size, old_task = old["size"], old["task"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"--resume: {path} is not a peers.py report ({err!r})") from None
    if old_size != size or old_task != jsonable(dict(task.raw)):
        raise SystemExit(
            f"--resume: {path} holds another comparison (size {old_size!r}, or "
            f"another task); got size {size!r}: write to a new --json"
        )
    if sorted(runs) != sorted(names):
        raise SystemExit(
            f"--resume: {path} holds the methods {','.join(sorted(runs))}, got "
            f"--methods {','.join(names)}"
        )
    return runs


def main(argv: list[str] | None = None) -> int:
    """Runs the comparison, prints its tables and writes the JSON report."""
    args = build_parser().parse_args(argv)
    check_peers_installed()
    size = SIZES["reduced" if args.reduced else "full"]
    names = choose_methods(args.methods, size)
    seeds = tuple(range(args.seeds)) if args.seeds else size.seeds
    if args.cifar:
        concurrency = max(1, len(gpu_names()))
        task = cifar_task(size.max_t, size.budget, concurrency)
    else:
        task = digits_task(
            size.max_t,
            size.budget,
            concurrency=min(2, args.num_cpus),
            train_images=size.train_images,
        )
    done = resumed_runs(args.json, size.name, task, names) if args.resume else {}
    keep = args.workdir is not None
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="peers-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(mode=REDUCED if args.reduced else FULL, workdir=workdir, num_cpus=args.num_cpus)
    machine = machine_info(*PEER_PACKAGES)
    print(
        format_pairs(
            f"finetune-search vs peers ({size.name}, "
            f"{'cifar10/vgg16' if args.cifar else 'digits/small_cnn'})",
            [
                *machine.items(),
                ("date", time.strftime("%Y-%m-%d")),
                ("seeds", list(seeds)),
                ("budget trial-epochs", task.budget),
                ("max_t", task.max_t),
                ("concurrency", task.concurrency),
            ],
        ),
        flush=True,
    )
    began = time.perf_counter()

    def finish(result: dict[str, Any], complete: bool) -> dict[str, Any]:
        result.update(
            {
                "size": size.name,
                "task": dict(task.raw),
                "max_t": task.max_t,
                "concurrency": task.concurrency,
                "machine": machine,
                "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "complete": complete,
                "total_seconds": time.perf_counter() - began,
            }
        )
        variants = {n: result["methods"].pop(n) for n in list(result["methods"]) if n in VARIANTS}
        if variants:
            result["variants"] = variants
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(jsonable(result), indent=2) + "\n", encoding="utf-8")
        return {**result, "methods": {**result["methods"], **variants}}

    def after_seed(partial: dict[str, Any]) -> None:
        if len(partial["seeds"]) < len(seeds):  # the last seed's tables come below
            shown = finish(partial, complete=False)
            print(f"\n(after seeds {shown['seeds']})\n{print_tables(shown)}", flush=True)

    try:
        result = finish(
            run_comparison(task, seeds, names, workdir, ctx, after_seed, done), complete=True
        )
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n(all seeds {result['seeds']})\n{print_tables(result)}")
    print(f"\ntotal {result['total_seconds'] / 60:.1f} min")
    if args.json:
        print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
