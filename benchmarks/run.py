"""Useful training per GPU-hour: framework overhead, search efficiency, memory, GPU throughput.

One entry script for issue 8. Each section prints a fixed-width table and all of them go to
one JSON file; a section that fails raises (nothing is caught and skipped silently).

* ``overhead``: the same trial (model, data, epochs, batch size) trained by plain
  ``model.fit`` (one call, and one call per epoch as the trial makes them; before and after
  the trial) and as a trial under ``run_search``; images/s of the training part of each
  epoch, the first epoch (graph tracing) excluded in both. Goal: the trial within 3% of plain.
  Also each path's all-in time per epoch, and the time from launching ``finetune-search run``
  to its first reported epoch.
* ``search``: ASHA + TPE against FIFO + random search on the offline digits data, same trials,
  epochs and seeds: trial-epochs and wall time spent, best validation accuracy, and the
  trial-epochs (in the order results arrived) needed to get within 1 point of the best.
  Goal: ASHA + TPE needs at most a third of FIFO random's trial-epochs.
* ``memory``: ``benchmarks/data_sharing.py`` (memory per trial with the dataset shared through
  the object store vs. a copy per trial).
* ``gpu``: VGG16 images/s at 64x64 and 160x160 in float32, mixed precision and XLA, the share
  of the GPU's peak that is, and trials per hour with 1, 2 and 4 trials packed on one GPU.
  Skipped where TensorFlow sees no GPU.

    python benchmarks/run.py --reduced --json /tmp/bench.json       # ~6 min on 2 CPU cores
    python benchmarks/run.py --only gpu --gpu-peak-tflops 989       # on a GPU machine

Experiment folders and logs go to a temporary folder (``--workdir`` keeps them). Progress goes
to stderr, tables to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Before TensorFlow is imported anywhere (here, in Ray workers, in subprocesses).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))  # run from a checkout, uninstalled
sys.path.insert(0, str(BENCHMARKS))  # data_sharing.py sits next to this file

SECTIONS = ("overhead", "search", "memory", "gpu")
OVERHEAD_GOAL = 0.97  # the trial's images/s at least 97% of plain model.fit's
SEARCH_GOAL = 1 / 3  # ASHA+TPE's trial-epochs to target at most a third of FIFO random's
TOLERANCE = 0.01  # "within 1 point" of validation accuracy
NO_GPU_MESSAGE = "skipped: no GPU visible to TensorFlow"
GPU_RESULT_PREFIX = "GPU_RESULT "
EPOCH_LINE = re.compile(r"\] trial (\S+) epoch 1/\d+ ")
STARTED_LINE = re.compile(r"\] trial (\S+) started")

# Dense (no sparsity) tensor-core peaks in TFLOP/s from NVIDIA's datasheets: (TF32, BF16/FP16).
# TensorFlow runs float32 convolutions and matmuls in TF32 on Ampere and later by default.
# A10G (AWS) is an A10 variant; its figures are the A10's, so pass --gpu-peak-tflops for an
# exact share. Matched in this order against `nvidia-smi --query-gpu=name`.
GPU_PEAK_TFLOPS: tuple[tuple[str, tuple[float, float]], ...] = (
    ("H200", (494.7, 989.4)),
    ("H100 PCIe", (378.0, 756.0)),
    ("H100", (494.7, 989.4)),
    ("A100", (156.0, 312.0)),
    ("A10G", (62.5, 125.0)),
)

# VGG16's convolutions: (filters, convs) per block, each block ending in a 2x2 max pool.
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
TRAINING_FLOPS_FACTOR = 3  # forward + backward (gradients for inputs and for weights)


@dataclass(frozen=True)
class Mode:
    """The sizes of one run; ``FULL`` and ``REDUCED`` below.

    Optuna's TPE draws its first 10 trials at random (``n_startup_trials``), with the same
    draws as the random sampler of the same seed, so ``search_trials`` is above 10 for TPE to
    act at all. The overhead runs have several epochs because the first (graph tracing) is
    left out and a shared machine's noise needs more than one to average over.
    """

    name: str
    overhead_subset: int  # digits images, split 80/20 into train/validation
    overhead_epochs: int
    overhead_batch: int
    search_trials: int
    search_epochs: int
    search_seeds: tuple[int, ...]
    memory_args: tuple[str, ...]
    gpu_steps: int
    gpu_warmup: int
    pack_images: int
    pack_epochs: int


FULL = Mode(name="full", overhead_subset=640, overhead_epochs=4, overhead_batch=32,
            search_trials=32, search_epochs=4, search_seeds=(0, 1, 2),
            memory_args=("--pipeline",), gpu_steps=60, gpu_warmup=10, pack_images=16384,
            pack_epochs=3)
REDUCED = Mode(name="reduced", overhead_subset=320, overhead_epochs=6, overhead_batch=32,
               search_trials=16, search_epochs=3, search_seeds=(0, 1),
               memory_args=("--reduced", "--pipeline"), gpu_steps=30, gpu_warmup=5,
               pack_images=8192, pack_epochs=2)


@dataclass
class Context:
    """What every section needs: the mode, where to write, how many CPUs Ray gets."""

    mode: Mode
    workdir: Path
    num_cpus: int
    gpu_peak_tflops: float | None = None


# --------------------------------------------------------------------------------------------
# small pure helpers (tested in tests/test_benchmarks.py)


@dataclass(frozen=True)
class Column:
    """One table column: the row key, its header, and a format spec for numbers."""

    key: str
    header: str
    fmt: str = ""


def format_cell(value: Any, fmt: str = "") -> str:
    """One value as table text: ``-`` for None/NaN, yes/no for booleans, ``fmt`` for numbers."""
    if value is None or isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and fmt:
        return format(value, fmt)
    return str(value)


def format_table(title: str, columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width text table: title, header, dashes, one line per row.

    Numbers are right-aligned and text left-aligned; every column is as wide as its widest
    cell or header. A key missing from a row prints as ``-``.
    """
    cells = [[format_cell(row.get(c.key), c.fmt) for c in columns] for row in rows]
    widths = [max([len(c.header)] + [len(line[i]) for line in cells])
              for i, c in enumerate(columns)]
    numeric = [all(row.get(c.key) is None or isinstance(row.get(c.key), (int, float))
                   and not isinstance(row.get(c.key), bool) for row in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w)
                 for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = [title, line([c.header for c in columns]), "  ".join("-" * w for w in widths)]
    out += [line(values) for values in cells]
    return "\n".join(out)


def format_pairs(title: str, pairs: Sequence[tuple[str, Any]]) -> str:
    """A two-column ``key  value`` block, keys padded to one width."""
    width = max(len(k) for k, _ in pairs)
    return "\n".join([title] + [f"  {k.ljust(width)}  {format_cell(v)}" for k, v in pairs])


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def arrival_key(row: Mapping[str, Any]) -> tuple[float, float, int]:
    """Sorts result rows in the order they arrived.

    Ray's ``timestamp`` has whole seconds; within one second the trial's start time plus its
    running time (``attempt_started_at + time_total_s``, where present) breaks the tie.
    """
    finer = float(row.get("attempt_started_at", 0.0)) + float(row.get("time_total_s", 0.0))
    return float(row.get("timestamp", 0.0)), finer, int(row.get("epoch", 0))


def trial_epochs_to_within(rows: Sequence[Mapping[str, Any]], target: float,
                           tolerance: float = TOLERANCE) -> int | None:
    """Trial-epochs spent until a result came within ``tolerance`` of ``target``.

    Args:
        rows: One row per trial-epoch, from every trial of a search (any order: they are
            sorted by :func:`arrival_key`). Rows with ``trial_failed`` count as spent epochs but
            never reach the target (their accuracy is the last good epoch's).
        target: The validation accuracy to get close to (e.g. the best of the search).
        tolerance: How close counts, in accuracy (0.01 is one point).

    Returns:
        The 1-based count of trial-epochs up to and including the first close enough, or
        ``None`` if none was.
    """
    for spent, row in enumerate(sorted(rows, key=arrival_key), start=1):
        value = row.get("val_accuracy")
        # The epsilon keeps a value exactly `tolerance` below the target counting as within.
        if not row.get("trial_failed") and _finite(value) and value >= target - tolerance - 1e-9:
            return spent
    return None


def harmonic_rate(rates: Sequence[float]) -> float:
    """The overall rate of equal-sized pieces of work done at ``rates`` (e.g. epochs' images/s)."""
    if not rates:
        return float("nan")
    return len(rates) / sum(1.0 / r for r in rates)


def vgg16_flops_per_image(height: int, width: int, *, num_classes: int = 10,
                          dense_units: int = 256, training: bool = True) -> float:
    """FLOPs for one image through VGG16 (3x3 same convs) and the flatten/dense head.

    Each conv costs ``2 * H * W * Cin * Cout * 9`` (a multiply-add is two FLOPs); each dense
    layer ``2 * inputs * outputs``; a training step is ``TRAINING_FLOPS_FACTOR`` (3) forward
    passes. Pools, activations and the optimizer update are left out (small next to convs).
    """
    flops = 0.0
    channels, h, w = 3, height, width
    for filters, convs in VGG16_BLOCKS:
        for _ in range(convs):
            flops += 2.0 * h * w * channels * filters * 9
            channels = filters
        h, w = h // 2, w // 2
    flops += 2.0 * h * w * channels * dense_units + 2.0 * dense_units * num_classes
    return flops * (TRAINING_FLOPS_FACTOR if training else 1)


def peak_tflops(gpu_name: str, mixed: bool, override: float | None = None) -> float | None:
    """The GPU's peak TFLOP/s: ``override`` if given, else the datasheet table, else None."""
    if override is not None:
        return override
    for key, (tf32, half) in GPU_PEAK_TFLOPS:
        if key.lower() in gpu_name.lower():
            return half if mixed else tf32
    return None


def _jsonable(value: Any) -> Any:
    """NaN and infinities become null, so the JSON file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# the machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            return round(int(meminfo.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return float("nan")


def gpu_names() -> list[str]:
    """Names of the machine's NVIDIA GPUs from ``nvidia-smi`` ([] without it)."""
    if shutil.which("nvidia-smi") is None:
        return []
    done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=30, check=False)
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def _version(*packages: str) -> str:
    from importlib import metadata

    for package in packages:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def machine_info() -> dict[str, Any]:
    """The machine and the versions the numbers were measured with."""
    gpus = gpu_names()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "gpu": ", ".join(gpus) if gpus else "none",
        "python": platform.python_version(),
        "tensorflow": _version("tensorflow", "tensorflow-cpu", "tf-nightly"),
        "keras": _version("keras"),
        "ray": _version("ray"),
        "optuna": _version("optuna"),
        "platform": platform.platform(),
    }


def _load() -> float:
    return round(os.getloadavg()[0], 2)


# --------------------------------------------------------------------------------------------
# running things quietly


def progress(message: str) -> None:
    """One progress line on the real stderr (tables alone go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.__stderr__, flush=True)


@contextlib.contextmanager
def logged(path: Path) -> Iterator[None]:
    """Sends Python-level stdout/stderr (Ray's progress and worker logs) to ``path``.

    On an exception the log's tail is shown on the real stderr, then the exception goes on.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        except BaseException:
            log.flush()
            tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
            print(f"--- last lines of {path} ---", *tail, sep="\n", file=sys.__stderr__)
            raise


def ensure_ray_stopped(section: str) -> None:
    """Sections must not leave Ray running for the next one (each starts its own)."""
    import ray

    if ray.is_initialized():
        raise RuntimeError(f"{section}: Ray is still initialised after the section")


def _spec(raw: Mapping[str, Any]) -> Any:
    from search.spec import load_spec_dict

    return load_spec_dict(dict(raw), source="benchmark")


def _run_search(raw: Mapping[str, Any], ctx: Context, log: Path) -> tuple[Any, float]:
    """Runs one search from a raw spec; returns its summary and the wall seconds it took."""
    from search.service import run_search

    spec = _spec(raw)
    began = time.perf_counter()
    with logged(log):
        summary = run_search(spec, num_cpus=ctx.num_cpus)
    wall = time.perf_counter() - began
    if summary.interrupted:
        raise RuntimeError(f"{spec.name}: the search was interrupted (see {log})")
    errored = [t for t in summary.trials if t.errored]
    if errored:
        raise RuntimeError(f"{spec.name}: trial {errored[0].trial_id} errored: "
                           f"{errored[0].error} (see {errored[0].path})")
    return summary, wall


# --------------------------------------------------------------------------------------------
# a. framework overhead


def overhead_spec(ctx: Context, name: str) -> dict[str, Any]:
    """One fixed trial: VGG16 (random init) at 32x32 on a few hundred digits images."""
    mode = ctx.mode
    return {
        "name": name,
        "dataset": {"name": "digits", "subset": mode.overhead_subset, "val_fraction": 0.2,
                    "seed": 0},
        "model": {"backbone": "vgg16", "weights": "none", "upsample": 1, "noise_std": 0.01,
                  "dense_units": 256, "dropout": 0.5, "pooling": "flatten"},
        "train": {"epochs": mode.overhead_epochs, "batch_size": mode.overhead_batch,
                  "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
                  "mixed_precision": "auto", "jit_compile": "auto", "seed": 0},
        "space": {},
        "search": {"num_samples": 1, "max_concurrent": 1, "seed": 0, "algorithm": "random",
                   "baseline": False, "max_failures": 0},
        "scheduler": {"name": "fifo"},
        # The whole machine for the one trial, as the plain fit has it.
        "resources": {"cpus_per_trial": ctx.num_cpus, "gpus_per_trial": "auto"},
        "storage": str(ctx.workdir / "experiments"),
    }


_CONFIGURED_DEVICES: list[Any] = []  # the GPUs plain_fit configured in this process


def plain_fit(spec: Any, per_epoch_calls: bool = False) -> dict[str, Any]:
    """Trains the spec's fixed trial with plain ``model.fit`` in this process, no Ray.

    Set up as :func:`search.trainable.train_trial` does (precision, XLA setting, seed, model,
    ``tf.data`` pipelines, validation every epoch), timing the training part of each epoch
    (epoch begin to validation begin) as the trial's ``images_per_s`` does.

    Args:
        spec: The overhead experiment spec; its fixed config is the trial's.
        per_epoch_calls: One ``fit`` call per epoch, as the trial makes them (new iterators
            every call), instead of one call for all epochs.
    """
    import keras
    import tensorflow as tf

    from search.datasets import load_dataset, make_input_pipeline
    from search.trainable import build_compiled_model, configure_gpus, resolve_precision

    params = spec.fixed_config()
    data = load_dataset(spec.dataset)
    keras.backend.clear_session()
    # As a trial holding one whole GPU: memory growth, so later sections' trials still fit.
    # Devices can be configured once per process only (before TensorFlow first uses them).
    if not _CONFIGURED_DEVICES:
        _CONFIGURED_DEVICES.extend(configure_gpus(tf, 1.0))
    gpus = list(_CONFIGURED_DEVICES)
    precision = resolve_precision(tf, params["mixed_precision"], gpus)
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(int(params["seed"]))
    batch = int(params["batch_size"])
    model = build_compiled_model(params, data, params.get("jit_compile", "auto"))
    train_ds = make_input_pipeline(data.x_train, data.y_train, batch_size=batch, training=True,
                                   seed=int(params["seed"]), augment=params.get("augment"))
    val_ds = make_input_pipeline(data.x_val, data.y_val, batch_size=batch, training=False,
                                 seed=int(params["seed"]))

    train_seconds: list[float] = []
    epoch_seconds: list[float] = []
    first_batch_seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start = time.perf_counter()
            self.timed = False

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if batch == 0:  # the iterator's start-up lands here
                first_batch_seconds.append(time.perf_counter() - self.start)

        def on_test_begin(self, logs: Any = None) -> None:
            if not self.timed:
                train_seconds.append(time.perf_counter() - self.start)
                self.timed = True

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            epoch_seconds.append(time.perf_counter() - self.start)

    timer = Timer()
    epochs = int(params["epochs"])
    if per_epoch_calls:
        for epoch in range(epochs):
            model.fit(train_ds, validation_data=val_ds, initial_epoch=epoch, epochs=epoch + 1,
                      verbose=0, shuffle=False,
                      callbacks=[timer, keras.callbacks.TerminateOnNaN()])
    else:
        model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0, shuffle=False,
                  callbacks=[timer])
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    n = len(data.x_train)
    return {"images_per_epoch": n, "precision": precision,
            "images_per_s": [n / s for s in train_seconds], "epoch_seconds": epoch_seconds,
            "first_batch_seconds": first_batch_seconds}


def cli_time_to_first_epoch(raw: Mapping[str, Any], ctx: Context, log: Path) -> dict[str, Any]:
    """Launches ``finetune-search run`` and times its progress lines up to epoch 1.

    The spec is the overhead trial cut to one epoch (later epochs do not change the time to the
    first). Returns launch-to-"started" and launch-to-"epoch 1" seconds, the CLI's total
    time, and the trial's own epoch-1 seconds (train + validation) from its results.
    """
    import yaml

    from search.results import load_trials

    raw = {**raw, "train": {**raw["train"], "epochs": 1}}
    name = str(raw["name"])
    path = ctx.workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(raw), sort_keys=False), encoding="utf-8")
    command = [sys.executable, "-m", "search", "run", str(path), "--num-cpus",
               str(ctx.num_cpus), "--name", name]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started_s = first_epoch_s = None
    lines: list[str] = []
    began = time.perf_counter()
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout or ():
            now = time.perf_counter() - began
            lines.append(line)
            if started_s is None and STARTED_LINE.search(line):
                started_s = now
            if first_epoch_s is None and EPOCH_LINE.search(line):
                first_epoch_s = now
        returncode = proc.wait(timeout=600)
    total_s = time.perf_counter() - began
    log.write_text("".join(lines), encoding="utf-8")
    if returncode != 0:
        tail = "".join(lines[-30:])
        raise RuntimeError(f"`{' '.join(command)}` exited with {returncode}:\n{tail}")
    if first_epoch_s is None:
        raise RuntimeError(f"no `trial <id> epoch 1/N` line in the CLI's output (see {log})")
    trials = load_trials(str(Path(raw["storage"]) / name))
    epoch1 = float(trials[0].history[0]["wall_seconds"]) if trials else float("nan")
    return {"command": " ".join(command[1:]), "launch_to_started_s": started_s,
            "launch_to_first_epoch_s": first_epoch_s, "cli_total_s": total_s,
            "trial_epoch1_s": epoch1, "startup_s": first_epoch_s - epoch1}


def _trial_run(history: Sequence[Mapping[str, Any]], images: int) -> dict[str, Any]:
    """The trial's per-epoch figures from its result rows."""
    return {"images_per_epoch": images, "precision": history[-1].get("precision"),
            "images_per_s": [float(r["images_per_s"]) for r in history],
            # Ray's time for the whole iteration: fit set-up, training, validation, the
            # checkpoint and the report.
            "epoch_seconds": [float(r["time_this_iter_s"]) for r in history]}


def spread(values: Sequence[float]) -> float:
    """Coefficient of variation (population standard deviation / mean); NaN below 2 values."""
    if len(values) < 2:
        return float("nan")
    average = sum(values) / len(values)
    return math.sqrt(sum((v - average) ** 2 for v in values) / len(values)) / average


PLAIN_RUNS = (("plain fit, one call", False), ("plain fit, a call per epoch", True))


def bench_overhead(ctx: Context) -> dict[str, Any]:
    """Plain ``model.fit`` vs. the same trial under ``run_search``, and CLI start-up time.

    Plain fits run before and after the trial, both as one ``fit`` call and as one call per
    epoch (the trial's loop), so that a slow spell of a shared machine shows up as a gap
    between plain runs rather than as framework overhead. The goal compares the trial with
    the per-epoch plain runs pooled: the same loop, with and without Ray.
    """
    raw = overhead_spec(ctx, "overhead-trial")
    spec = _spec(raw)
    load_before = _load()
    runs: list[tuple[str, dict[str, Any]]] = []
    for label, per_epoch in PLAIN_RUNS:
        progress(f"overhead: {label} (before the trial)")
        runs.append((f"{label} (before)", plain_fit(spec, per_epoch)))
    ensure_ray_stopped("overhead")

    progress("overhead: the same trial under run_search")
    summary, search_wall = _run_search(raw, ctx, ctx.workdir / "logs" / "overhead-trial.log")
    if len(summary.trials) != 1 or summary.trials[0].status(spec.max_t) != "complete":
        raise RuntimeError(f"overhead: expected one complete trial, got "
                           f"{[t.status(spec.max_t) for t in summary.trials]}")
    trial = _trial_run(summary.trials[0].history, runs[0][1]["images_per_epoch"])
    runs.append(("trial (run_search)", trial))
    ensure_ray_stopped("overhead")

    for label, per_epoch in reversed(PLAIN_RUNS):
        progress(f"overhead: {label} (after the trial)")
        runs.append((f"{label} (after)", plain_fit(spec, per_epoch)))

    progress("overhead: finetune-search run to its first epoch")
    cli_raw = overhead_spec(ctx, "overhead-cli")
    cli = cli_time_to_first_epoch(cli_raw, ctx, ctx.workdir / "logs" / "overhead-cli.log")
    ensure_ray_stopped("overhead")

    rows = []
    for label, run in runs:
        later = run["images_per_s"][1:]
        rows.append({"path": label, "epochs": len(run["images_per_s"]),
                     "images": run["images_per_epoch"], "precision": run["precision"],
                     "epoch1_img_s": run["images_per_s"][0], "img_s": harmonic_rate(later),
                     "best_img_s": max(later, default=float("nan")), "spread": spread(later),
                     "epoch_s": mean(run["epoch_seconds"][1:]),
                     "first_batch_s": " ".join(f"{t:.2f}" for t in
                                               run.get("first_batch_seconds", [])) or None,
                     "per_epoch": " ".join(f"{r:.1f}" for r in run["images_per_s"]),
                     "epoch_seconds": run["epoch_seconds"], "images_per_s": run["images_per_s"]})
    pooled = {per_epoch: [r for label, run in runs if label.startswith(name)
                          for r in run["images_per_s"][1:]]
              for name, per_epoch in PLAIN_RUNS}
    plain_later = pooled[True]
    trial_later = trial["images_per_s"][1:]
    ratio = harmonic_rate(trial_later) / harmonic_rate(plain_later)
    best_ratio = max(trial_later) / max(plain_later)
    noise = max(spread(plain_later), spread(trial_later))
    plain_epoch_s = mean([s for label, run in runs if label.startswith(PLAIN_RUNS[1][0])
                          for s in run["epoch_seconds"][1:]])
    return {
        "spec": {k: raw[k] for k in ("dataset", "model", "train", "resources")},
        "rows": rows,
        "plain_img_s": harmonic_rate(plain_later),
        "plain_one_call_img_s": harmonic_rate(pooled[False]),
        "trial_img_s": harmonic_rate(trial_later),
        "ratio_trial_to_plain": ratio,
        "ratio_trial_to_plain_one_call": harmonic_rate(trial_later) / harmonic_rate(
            pooled[False]),
        "ratio_best_epochs": best_ratio,
        "noise_spread": noise,
        "epoch_time_ratio": mean(trial["epoch_seconds"][1:]) / plain_epoch_s,
        "goal": f"trial images/s >= {OVERHEAD_GOAL:.0%} of plain model.fit's (a call per "
                f"epoch, before and after pooled), epochs 2+, harmonic mean of the epochs",
        "goal_met": ratio >= OVERHEAD_GOAL,
        "goal_met_best_epoch": best_ratio >= OVERHEAD_GOAL,
        "decidable": noise < 1 - OVERHEAD_GOAL,
        "search_wall_s": search_wall,
        "cli": cli,
        "load_avg_before": load_before,
        "load_avg_after": _load(),
    }


def print_overhead(result: Mapping[str, Any]) -> str:
    columns = [Column("path", "path"), Column("epochs", "epochs"),
               Column("images", "images/epoch"), Column("precision", "precision"),
               Column("epoch1_img_s", "epoch 1 img/s", ".1f"),
               Column("img_s", "img/s epochs 2+", ".1f"),
               Column("best_img_s", "best epoch img/s", ".1f"),
               Column("spread", "spread (CV)", ".1%"),
               Column("epoch_s", "s/epoch all-in", ".2f"),
               Column("per_epoch", "per epoch img/s"),
               Column("first_batch_s", "first batch s per epoch")]
    spec = result["spec"]
    model = spec["model"]
    title = (f"a. Framework overhead: {model['backbone']} weights={model['weights']} at 32x32, "
             f"batch {spec['train']['batch_size']}, digits "
             f"({result['rows'][0]['images']} train images), training part of each epoch")
    cli = result["cli"]
    verdict = "met" if result["goal_met"] else "NOT met"
    noise = (f"per-epoch spread {result['noise_spread']:.1%} is "
             + ("below" if result["decidable"] else "ABOVE")
             + f" the {1 - OVERHEAD_GOAL:.0%} the goal must resolve")
    lines = [
        format_table(title, columns, result["rows"]),
        f"trial / plain img/s (epochs 2+; plain a call per epoch, before+after pooled) = "
        f"{result['ratio_trial_to_plain']:.3f}  goal >= {OVERHEAD_GOAL:.2f}: {verdict}",
        f"trial / plain one-call img/s = {result['ratio_trial_to_plain_one_call']:.3f}",
        f"trial / plain best-epoch img/s = {result['ratio_best_epochs']:.3f}  goal: "
        f"{'met' if result['goal_met_best_epoch'] else 'NOT met'}; {noise}",
        f"all-in epoch time, epochs 2+ (plain a call per epoch: epoch begin to end incl. "
        f"validation; trial: Ray's time_this_iter_s, also fit set-up, checkpoint, report): "
        f"trial / plain = {result['epoch_time_ratio']:.3f}",
        f"load average (1 min) before/after: {result['load_avg_before']} / "
        f"{result['load_avg_after']} on {os.cpu_count()} cores",
        "",
        format_table(
            "CLI start-up: `" + cli["command"] + "` (train.epochs=1)",
            [Column("launch_to_started_s", "launch -> trial started s", ".1f"),
             Column("launch_to_first_epoch_s", "launch -> epoch 1 reported s", ".1f"),
             Column("trial_epoch1_s", "trial's epoch 1 s", ".1f"),
             Column("startup_s", "start-up (difference) s", ".1f"),
             Column("cli_total_s", "CLI total s", ".1f")],
            [cli]),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# b. search efficiency


SEARCH_METHODS = {
    "asha+tpe": {"scheduler": "asha", "algorithm": "tpe"},
    "fifo+random": {"scheduler": "fifo", "algorithm": "random"},
}


def search_spec(ctx: Context, method: str, seed: int) -> dict[str, Any]:
    """The search-efficiency spec: small_cnn on digits, a wide space, no baseline trial."""
    mode = ctx.mode
    choice = SEARCH_METHODS[method]
    return {
        "name": f"search-{method.replace('+', '-')}-seed{seed}",
        "dataset": {"name": "digits", "val_fraction": 0.2, "seed": 0},
        "model": {"backbone": "small_cnn", "weights": "none", "dense_units": 64,
                  "pooling": "flatten"},
        "train": {"epochs": mode.search_epochs, "batch_size": 32, "optimizer": "sgd",
                  "momentum": 0.9, "seed": seed},
        "space": {
            "learning_rate": {"loguniform": [1e-4, 0.3]},
            "noise_std": {"loguniform": [0.001, 0.3]},
            "dropout": {"uniform": [0.0, 0.8]},
            "upsample": {"choice": [1, 2]},
        },
        # No baseline trial for either method: both start from their sampler's first draw.
        "search": {"num_samples": mode.search_trials, "max_concurrent": ctx.num_cpus,
                   "seed": seed, "algorithm": choice["algorithm"], "baseline": False},
        "scheduler": {"name": choice["scheduler"], "grace_period": 1, "reduction_factor": 3},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": "auto"},
        "storage": str(ctx.workdir / "experiments"),
    }


def search_run_figures(trials: Sequence[Any]) -> dict[str, Any]:
    """Trial-epochs, failures, best and epochs-to-own-best of one search's trial records."""
    rows = [row for t in trials for row in t.history]
    values = [r["val_accuracy"] for r in rows
              if not r.get("trial_failed") and _finite(r.get("val_accuracy"))]
    best = max(values) if values else float("nan")
    return {"trials": len(trials), "trial_epochs": len(rows),
            "failed": sum(1 for t in trials if t.failed), "best": best,
            "to_own_best": trial_epochs_to_within(rows, best) if values else None,
            "rows": rows}


def bench_search(ctx: Context) -> dict[str, Any]:
    """ASHA+TPE vs. FIFO+random with the same trials, epochs and seeds."""
    runs: list[dict[str, Any]] = []
    load_before = _load()
    for seed in ctx.mode.search_seeds:
        for method in SEARCH_METHODS:
            raw = search_spec(ctx, method, seed)
            progress(f"search: {method} seed {seed} ({ctx.mode.search_trials} trials x "
                     f"{ctx.mode.search_epochs} epochs)")
            summary, wall = _run_search(raw, ctx, ctx.workdir / "logs" / f"{raw['name']}.log")
            ensure_ray_stopped("search")
            runs.append({"method": method, "seed": seed, "wall_s": wall,
                         **search_run_figures(summary.trials)})
    for seed in ctx.mode.search_seeds:
        same_seed = [r for r in runs if r["seed"] == seed]
        best_both = max(r["best"] for r in same_seed)
        for run in same_seed:
            run["best_both"] = best_both
            run["to_both_best"] = trial_epochs_to_within(run["rows"], best_both)
    means = []
    for method in SEARCH_METHODS:
        mine = [r for r in runs if r["method"] == method]
        # A run that never got within a point of the joint best is counted at its whole
        # budget: a lower bound on what it would have needed.
        censored = [r["to_both_best"] if r["to_both_best"] is not None else r["trial_epochs"]
                    for r in mine]
        means.append({
            "method": method, "seed": "mean", "trials": mean([r["trials"] for r in mine]),
            "trial_epochs": mean([r["trial_epochs"] for r in mine]),
            "failed": mean([r["failed"] for r in mine]),
            "wall_s": mean([r["wall_s"] for r in mine]),
            "best": mean([r["best"] for r in mine]),
            "to_own_best": mean([r["to_own_best"] for r in mine
                                 if r["to_own_best"] is not None]),
            "to_both_best": mean(censored),
            "reached_both_best": sum(r["to_both_best"] is not None for r in mine),
        })
    asha, fifo = means
    ratio = asha["to_both_best"] / fifo["to_both_best"]
    budget_ratio = asha["trial_epochs"] / fifo["trial_epochs"]
    for run in runs:
        del run["rows"]
    return {
        "runs": runs, "means": means,
        "ratio_to_target": ratio,
        "ratio_total_budget": budget_ratio,
        "target": "within 0.01 of the best val_accuracy reached by either method with the "
                  "same seed (also reported: of the run's own best)",
        "goal": f"ASHA+TPE's trial-epochs to target <= {SEARCH_GOAL:.2f} x FIFO random's",
        "goal_met": ratio <= SEARCH_GOAL,
        "baseline_trial": False,
        "spec": {k: v for k, v in search_spec(ctx, "asha+tpe", 0).items()
                 if k in ("dataset", "model", "train", "space", "scheduler")},
        "load_avg_before": load_before,
        "load_avg_after": _load(),
    }


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean; NaN for no values."""
    return sum(values) / len(values) if values else float("nan")


def print_search(result: Mapping[str, Any], mode: Mode) -> str:
    columns = [Column("method", "method"), Column("seed", "seed"), Column("trials", "trials"),
               Column("trial_epochs", "trial-epochs", ".3g"), Column("failed", "failed", ".3g"),
               Column("wall_s", "wall s", ".1f"), Column("best", "best val_acc", ".4f"),
               Column("to_own_best", "epochs to own best-0.01", ".3g"),
               Column("to_both_best", "epochs to joint best-0.01", ".3g")]
    title = (f"b. Search efficiency: small_cnn on digits, {mode.search_trials} trials x "
             f"{mode.search_epochs} epochs, seeds {list(mode.search_seeds)}, "
             f"search.baseline: false for both")
    lines = [
        format_table(title, columns, list(result["runs"]) + list(result["means"])),
        "epochs to ... = trial-epochs, in the order results arrived, until a result within 0.01"
        " of the best;",
        "  joint best = best of both methods with the same seed (a run that never got there "
        "counts its whole budget in the mean)",
        f"ASHA+TPE / FIFO random trial-epochs to joint best: {result['ratio_to_target']:.2f}  "
        f"goal <= {SEARCH_GOAL:.2f}: {'met' if result['goal_met'] else 'NOT met'}",
        f"ASHA+TPE / FIFO random total trial-epochs: {result['ratio_total_budget']:.2f}",
        f"load average (1 min) before/after: {result['load_avg_before']} / "
        f"{result['load_avg_after']}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# c. data sharing (benchmarks/data_sharing.py)


def bench_memory(ctx: Context) -> dict[str, Any]:
    """Runs ``data_sharing.main`` and reads back its JSON and its table."""
    import data_sharing

    out = ctx.workdir / "data_sharing.json"
    args = [*ctx.mode.memory_args, "--num-cpus", str(ctx.num_cpus), "--json", str(out)]
    progress(f"memory: data_sharing.py {' '.join(args)}")
    with logged(ctx.workdir / "logs" / "data_sharing.log"):
        code = data_sharing.main(args)
    if code != 0:
        raise RuntimeError(f"data_sharing.main returned {code}")
    ensure_ray_stopped("memory")
    result = json.loads(out.read_text(encoding="utf-8"))
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        data_sharing.print_table(result["results"], "--pipeline" in args)
    by_mode = {row["mode"]: row for row in result["results"]}
    saved = None
    if {"shared", "copy"} <= set(by_mode):
        saved = by_mode["copy"]["pss_per_trial_mb"] - by_mode["shared"]["pss_per_trial_mb"]
    return {"args": args, "data_sharing": result, "table": table.getvalue().rstrip(),
            "pss_saved_per_trial_mb": saved}


def print_memory(result: Mapping[str, Any]) -> str:
    size = result["data_sharing"]["size_mb"]
    lines = [f"c. Data sharing: memory per trial, {size:g} MB dataset "
             f"(benchmarks/data_sharing.py {' '.join(result['args'][:-2])})",
             result["table"]]
    if result["pss_saved_per_trial_mb"] is not None:
        zero_copy = result["data_sharing"]["results"][0].get("zero_copy_in_workers")
        lines.append(f"PSS saved per trial by sharing: {result['pss_saved_per_trial_mb']:.1f} MB;"
                     f" zero-copy in workers: {format_cell(zero_copy)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# d. GPU throughput


GPU_CASES = ((64, 256), (160, 128))  # (image size, batch size that fills a large GPU)
GPU_MODES = (("float32", False), ("float32", True), ("mixed", False), ("mixed", True))
PACKING = (1, 2, 4)


def tensorflow_gpus() -> list[Any]:
    """The GPUs TensorFlow sees in this process."""
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def gpu_worker(job: Mapping[str, Any]) -> dict[str, Any]:
    """Images/s of VGG16 training steps on synthetic data that stays on the device.

    Runs in its own process (``--gpu-worker``) so that every precision policy and XLA setting
    starts from a fresh TensorFlow. ``job``: size, batch, precision (float32 or mixed), xla,
    steps, warmup.
    """
    import keras
    import tensorflow as tf

    from model_zoo import build_model
    from search.trainable import resolve_precision

    gpus = tf.config.list_physical_devices("GPU")
    # mixed: bfloat16 from compute capability 8 on, float16 before (the trials' `auto`).
    precision = resolve_precision(tf, "auto", gpus) if job["precision"] == "mixed" else "float32"
    keras.mixed_precision.set_global_policy(precision)
    size, batch = int(job["size"]), int(job["batch"])
    model = build_model({"backbone": "vgg16", "weights": "none", "upsample": 1,
                         "noise_std": 0.0, "dense_units": 256, "dropout": 0.5},
                        input_shape=(size, size, 3), num_classes=10)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy", jit_compile=bool(job["xla"]))
    device = "/GPU:0" if gpus else "/CPU:0"
    with tf.device(device):
        x = tf.random.uniform((batch, size, size, 3))
        y = tf.random.uniform((batch,), maxval=10, dtype=tf.int32)
    for _ in range(int(job["warmup"])):  # tracing, XLA compilation, cuDNN autotuning
        model.train_on_batch(x, y)
    steps = int(job["steps"])
    began = time.perf_counter()
    for _ in range(steps):
        # Returns Python floats: each step waits for the device, so the timing is honest.
        model.train_on_batch(x, y)
    seconds = time.perf_counter() - began
    return {"size": size, "batch": batch, "precision": precision, "xla": bool(job["xla"]),
            "steps": steps, "images_per_s": steps * batch / seconds, "device": device}


def _run_gpu_worker(job: Mapping[str, Any], log: Path) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--gpu-worker", json.dumps(job)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800,
                          check=False)
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"$ {' '.join(command)}\n{done.stdout}\n{done.stderr}\n")
    if done.returncode != 0:
        raise RuntimeError(f"GPU worker {job} exited with {done.returncode}:\n"
                           f"{done.stderr[-3000:]}")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(GPU_RESULT_PREFIX):
            return json.loads(line[len(GPU_RESULT_PREFIX):])
    raise RuntimeError(f"GPU worker {job} printed no result (see {log})")


def write_packing_data(path: Path, images: int, seed: int = 0) -> Path:
    """A synthetic 32x32 RGB, 10-class npz dataset for the packing searches."""
    import numpy as np

    rng = np.random.default_rng(seed)
    np.savez(path, x_train=rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8),
             y_train=(np.arange(images) % 10).astype(np.int64))
    return path


def packing_spec(ctx: Context, per_gpu: int, data_path: Path) -> dict[str, Any]:
    """``per_gpu`` trials sharing one GPU (``gpus_per_trial = 1 / per_gpu``), two waves."""
    return {
        "name": f"packing-{per_gpu}-per-gpu",
        "dataset": {"name": "npz", "path": str(data_path), "val_fraction": 0.1, "seed": 0},
        "model": {"backbone": "vgg16", "weights": "none", "upsample": 2, "noise_std": 0.01,
                  "dense_units": 256, "dropout": 0.5},
        "train": {"epochs": ctx.mode.pack_epochs, "batch_size": 128, "optimizer": "sgd",
                  "momentum": 0.9, "mixed_precision": "auto", "jit_compile": "auto"},
        "space": {"learning_rate": {"loguniform": [0.001, 0.01]}},
        "search": {"num_samples": 2 * per_gpu, "max_concurrent": per_gpu, "seed": 0,
                   "algorithm": "random", "baseline": False, "max_failures": 0},
        "scheduler": {"name": "fifo"},
        "resources": {"cpus_per_trial": max(1, ctx.num_cpus // per_gpu),
                      "gpus_per_trial": 1 / per_gpu},
        "storage": str(ctx.workdir / "experiments"),
    }


def packing_figures(trials: Sequence[Any], max_t: int, wall_s: float,
                    train_images: int) -> dict[str, Any]:
    """Trials per hour and images/s (all trials together, and per trial) of one search.

    The span runs from the first trial's start to the last result, so Ray's start-up is left
    out of ``trials_per_hour`` (``trials_per_hour_wall`` keeps it).
    """
    incomplete = [t.trial_id for t in trials if t.status(max_t) != "complete"]
    if incomplete:
        raise RuntimeError(f"packing: trials {incomplete} did not complete")
    first = min(float(t.history[0].get("attempt_started_at", t.history[0]["timestamp"]))
                for t in trials)
    last = max(float(r["timestamp"]) for t in trials for r in t.history)
    span = max(last - first, 1e-9)
    trial_epochs = sum(len(t.history) for t in trials)
    later = [float(r["images_per_s"]) for t in trials for r in t.history[1:]]
    return {"trials": len(trials), "span_s": span, "wall_s": wall_s,
            "trials_per_hour": len(trials) * 3600 / span,
            "trials_per_hour_wall": len(trials) * 3600 / wall_s,
            "trial_epochs": trial_epochs,
            "aggregate_img_s": trial_epochs * train_images / span,
            "trial_img_s": mean(later)}


def bench_gpu(ctx: Context, visible_gpus: Sequence[Any] | None = None) -> dict[str, Any]:
    """GPU throughput and packing; skipped (with a message) where TensorFlow sees no GPU.

    Args:
        ctx: The run's context.
        visible_gpus: The GPUs TensorFlow sees; ``None`` asks TensorFlow.
    """
    gpus = tensorflow_gpus() if visible_gpus is None else list(visible_gpus)
    if not gpus:
        print(NO_GPU_MESSAGE, flush=True)
        return {"skipped": True, "reason": NO_GPU_MESSAGE.removeprefix("skipped: ")}
    names = gpu_names()
    name = names[0] if names else "unknown GPU"
    log = ctx.workdir / "logs" / "gpu.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for size, batch in GPU_CASES:
        flops = vgg16_flops_per_image(size, size)
        for precision, xla in GPU_MODES:
            progress(f"gpu: VGG16 {size}x{size} batch {batch} {precision} xla={xla}")
            job = {"size": size, "batch": batch, "precision": precision, "xla": xla,
                   "steps": ctx.mode.gpu_steps, "warmup": ctx.mode.gpu_warmup}
            row = _run_gpu_worker(job, log)
            # The peak of the precision the worker really ran (mixed is float32 before Volta).
            peak = peak_tflops(name, row["precision"] != "float32", ctx.gpu_peak_tflops)
            achieved = row["images_per_s"] * flops / 1e12
            row.update(train_gflops_per_image=flops / 1e9, tflops=achieved, peak_tflops=peak,
                       share_of_peak=achieved / peak if peak else None)
            rows.append(row)

    data_path = write_packing_data(ctx.workdir / "packing.npz", ctx.mode.pack_images)
    train_images = ctx.mode.pack_images - math.ceil(0.1 * ctx.mode.pack_images)  # val 10%
    packing = []
    for per_gpu in PACKING:
        raw = packing_spec(ctx, per_gpu, data_path)
        progress(f"gpu: {per_gpu} trial(s) per GPU (gpus_per_trial={1 / per_gpu:g})")
        summary, wall = _run_search(raw, ctx, ctx.workdir / "logs" / f"{raw['name']}.log")
        ensure_ray_stopped("gpu")
        packing.append({"per_gpu": per_gpu, "gpus_per_trial": 1 / per_gpu,
                        **packing_figures(summary.trials, summary.max_t, wall,
                                          train_images)})
    return {"skipped": False, "gpu": name, "throughput": rows, "packing": packing,
            "peak_source": "--gpu-peak-tflops" if ctx.gpu_peak_tflops else "datasheet table",
            "packing_spec": {k: v for k, v in packing_spec(ctx, 1, data_path).items()
                             if k in ("model", "train")}}


def print_gpu(result: Mapping[str, Any]) -> str:
    if result["skipped"]:
        return f"d. GPU throughput\n{NO_GPU_MESSAGE}"
    throughput = format_table(
        f"d. GPU throughput: VGG16 (weights none) on {result['gpu']}, synthetic data on the "
        f"device (peak: {result['peak_source']})",
        [Column("size", "size"), Column("batch", "batch"), Column("precision", "precision"),
         Column("xla", "XLA"), Column("images_per_s", "img/s", ".0f"),
         Column("train_gflops_per_image", "GFLOP/img (train)", ".2f"),
         Column("tflops", "TFLOP/s", ".1f"), Column("peak_tflops", "peak TFLOP/s", ".1f"),
         Column("share_of_peak", "share of peak", ".1%")],
        result["throughput"])
    packing = format_table(
        "Trials packed on one GPU (VGG16 64x64, batch 128, two waves of trials)",
        [Column("per_gpu", "trials/GPU"), Column("gpus_per_trial", "gpus_per_trial", ".2f"),
         Column("trials", "trials"), Column("span_s", "first start->last result s", ".1f"),
         Column("trials_per_hour", "trials/hour", ".1f"),
         Column("trials_per_hour_wall", "trials/hour (incl. Ray start)", ".1f"),
         Column("aggregate_img_s", "img/s all trials", ".0f"),
         Column("trial_img_s", "img/s per trial (epochs 2+)", ".0f")],
        result["packing"])
    return f"{throughput}\n\n{packing}"


# --------------------------------------------------------------------------------------------
# the entry point


def parse_only(text: str | None) -> list[str]:
    """``--only`` as a list of sections in run order; all sections for None."""
    if text is None:
        return list(SECTIONS)
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"--only: must be a comma-separated subset of "
                                         f"{','.join(SECTIONS)}, got {text!r}")
    return [s for s in SECTIONS if s in chosen]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Sections: overhead (plain fit vs. trial, CLI start-up), search (ASHA+TPE vs. "
               "FIFO random), memory (data_sharing.py), gpu (throughput, packing; skipped "
               "without a GPU).")
    parser.add_argument("--reduced", action="store_true",
                        help="smaller sizes, for a 2-core CPU machine in under 15 minutes")
    parser.add_argument("--json", type=Path, default=None,
                        help="write all results here (default: a file in the temp folder)")
    parser.add_argument("--only", type=parse_only, default=None, metavar="SECTIONS",
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1,
                        help="CPUs for each local Ray (default: all)")
    parser.add_argument("--gpu-peak-tflops", type=float, default=None,
                        help="the GPU's peak TFLOP/s for the share-of-peak column (default: "
                             "datasheet table for H100/H200/A100/A10G by nvidia-smi's name)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep experiment folders and logs here (default: a temp folder, "
                             "removed at the end)")
    parser.add_argument("--gpu-worker", default=None, help=argparse.SUPPRESS)
    return parser


SECTION_RUNNERS: dict[str, tuple[Callable[[Context], dict[str, Any]],
                                 Callable[[Mapping[str, Any], Context], str]]] = {
    "overhead": (bench_overhead, lambda r, c: print_overhead(r)),
    "search": (bench_search, lambda r, c: print_search(r, c.mode)),
    "memory": (bench_memory, lambda r, c: print_memory(r)),
    "gpu": (bench_gpu, lambda r, c: print_gpu(r)),
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.gpu_worker is not None:
        print(GPU_RESULT_PREFIX + json.dumps(gpu_worker(json.loads(args.gpu_worker))),
              flush=True)
        return 0
    mode = REDUCED if args.reduced else FULL
    sections = args.only or list(SECTIONS)
    json_path = args.json or Path(tempfile.gettempdir(), f"finetune-search-bench-{mode.name}.json")
    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(mode=mode, workdir=workdir.resolve(), num_cpus=args.num_cpus,
                  gpu_peak_tflops=args.gpu_peak_tflops)

    began = time.perf_counter()
    machine = machine_info()
    report: dict[str, Any] = {"mode": mode.name, "sizes": asdict(mode), "num_cpus": ctx.num_cpus,
                              "machine": machine, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                              "sections": {}, "complete": False}
    print(format_pairs(f"finetune-search benchmarks ({mode.name})", list(machine.items())))
    print(f"  {'ray num_cpus'.ljust(10)}  {ctx.num_cpus}\n", flush=True)
    try:
        for name in sections:
            run, show = SECTION_RUNNERS[name]
            section_began = time.perf_counter()
            result = run(ctx)
            result["seconds"] = time.perf_counter() - section_began
            report["sections"][name] = result
            print(show(result, ctx))
            print(f"({name}: {result['seconds']:.0f} s)\n", flush=True)
            # Written after every section, so a later failure keeps what was measured.
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(_jsonable(report), indent=2) + "\n",
                                 encoding="utf-8")
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report["total_seconds"] = time.perf_counter() - began
    report["complete"] = True
    json_path.write_text(json.dumps(_jsonable(report), indent=2) + "\n", encoding="utf-8")
    goals = [(n, report["sections"][n].get("goal_met")) for n in sections
             if "goal_met" in report["sections"][n]]
    summary = ", ".join(f"{n} goal {'met' if met else 'NOT met'}" for n, met in goals)
    print(f"total {report['total_seconds'] / 60:.1f} min; {summary or 'no goals checked'}; "
          f"JSON: {json_path}" + (f"; workdir kept: {workdir}" if keep else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
