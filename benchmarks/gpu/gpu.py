"""d. GPU throughput: VGG16 images/s, share of the GPU's peak, and trials packed on one GPU.

VGG16 images/s at 160x160 in float32 and mixed precision, each with and without XLA (each
measured in a fresh ``benchmarks/run.py --gpu-worker`` process), the share of the GPU's peak
that is, trials per hour with 1, 2 and 4 trials packed on one GPU, and the seconds per short
epoch with a checkpoint every epoch written the CPU trial's way (the next epoch waits for the
whole write) and the GPU trial's way (it waits for the variables' copy only). Skipped where the
backend sees no GPU. ``--backend jax`` or ``torch`` runs the same section on that Keras backend
(workers, synthetic data and the packed trials alike); the section's own code and its workers
import no TensorFlow then (a packed trial's ``keras.utils.set_random_seed`` still seeds
TensorFlow where it is installed: Keras's behaviour).

Its time is bounded, to run in one command in under 10 minutes: each throughput case times
its steps for ``Mode.gpu_seconds`` (not a step count, which a slow GPU would stretch), a
worker that hangs is stopped after ``WORKER_TIMEOUT_S``, and a packing search that would not
fit in what is left of ``SECTION_BUDGET_S`` is skipped and reported as such.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BENCHMARKS,
    REPO,
    Column,
    Context,
    ensure_ray_stopped,
    format_table,
    gpu_names,
    mean,
    progress,
    run_logged_search,
)
from search.outputs.study import TrialStatus
from search.trial import backends
from search.trial.runtime import BACKEND_GPU_BUILDS

NO_GPU_MESSAGE = "skipped: no GPU visible to {}"
GPU_RESULT_PREFIX = "GPU_RESULT "
RUN_SCRIPT = BENCHMARKS / "run.py"  # its hidden --gpu-worker runs gpu_worker

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

GPU_CASES = ((160, 128),)  # (image size, batch size that fills a large GPU)
GPU_MODES = (("float32", False), ("float32", True), ("mixed", False), ("mixed", True))
PACKING = (1, 2, 4)
MIN_TIMED_STEPS = 3
# A checkpoint every epoch on short epochs, the GPU trial's way (the variables' copy waited for,
# the write beside the next epoch) against the CPU trial's (the whole write waited for) and
# none: (image size, batch, train images, validation images, epochs). About a second per epoch
# at 160x160 on an H100-class GPU, where validation hides least of a write.
CHECKPOINT_CASE = (160, 64, 2048, 256, 6)
CHECKPOINT_WAYS = ("none", "beside", "snapshot")
CHECKPOINT_GUESS_S = 150.0  # the checkpoint job's expected time, for the section's budget
WORKER_TIMEOUT_S = 240  # TensorFlow's start, the build, XLA's compilation and the timed steps
SECTION_BUDGET_S = 540  # the whole section, packing searches included: under 10 minutes
FIRST_PACKING_GUESS_S = 150  # what a packing search is expected to take before one has run


def vgg16_flops_per_image(
    height: int,
    width: int,
    *,
    num_classes: int = 10,
    dense_units: int = 256,
    training: bool = True,
) -> float:
    """FLOPs for one image through VGG16 (3x3 same convs) and the flatten/dense head.

    Each conv costs ``2 * H * W * Cin * Cout * 9`` (a multiply-add is two FLOPs); each dense
    layer ``2 * inputs * outputs``; a training step is ``TRAINING_FLOPS_FACTOR`` (3) forward
    passes. Pools, activations and the optimizer update are left out (small next to convs).

    Args:
        height: The image's height in pixels.
        width: The image's width in pixels.
        num_classes: The classifier's outputs.
        dense_units: The hidden dense layer's width.
        training: A training step (forward and backward) rather than a forward pass.

    Returns:
        The FLOPs per image.
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
    """The GPU's peak TFLOP/s: ``override`` if given, else the datasheet table, else None.

    Args:
        gpu_name: The GPU's name as ``nvidia-smi`` gives it.
        mixed: The half-precision (BF16/FP16) peak rather than TF32's.
        override: A peak given on the command line (``--gpu-peak-tflops``).

    Returns:
        The peak in TFLOP/s, or ``None`` for a GPU not in ``GPU_PEAK_TFLOPS``.
    """
    if override is not None:
        return override
    for key, (tf32, half) in GPU_PEAK_TFLOPS:
        if key.lower() in gpu_name.lower():
            return half if mixed else tf32
    return None


def timed_steps(
    step: Callable[[], Any],
    seconds: float,
    min_steps: int = MIN_TIMED_STEPS,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[int, float]:
    """Runs ``step`` until ``seconds`` have passed and at least ``min_steps`` ran.

    Args:
        step: One training step that returns once the device is done (``train_on_batch``
            returns host floats, so it waits for the device).
        seconds: How long to keep stepping.
        min_steps: The fewest steps, however slow each one.
        clock: The time source.

    Returns:
        The steps run and the seconds they took.
    """
    steps, began = 0, clock()
    while True:
        step()
        steps += 1
        elapsed = clock() - began
        if elapsed >= seconds and steps >= min_steps:
            return steps, elapsed


def no_gpu_message(backend: str) -> str:
    """The section's skip line for ``backend`` (one of ``backends.BACKENDS``)."""
    return NO_GPU_MESSAGE.format(BACKEND_GPU_BUILDS[backend][0])


def backend_gpus(backend: str) -> list[Any]:
    """The GPUs ``backend`` sees in this process (JAX without preallocating their memory)."""
    chosen = backends.get_backend(backend)
    chosen.set_environment(1.0, deterministic=False)
    return chosen.configure_gpus(1.0)


def gpu_worker(job: Mapping[str, Any]) -> dict[str, Any]:
    """Images/s of VGG16 training steps on synthetic data that stays on the device.

    Runs in its own process (``--gpu-worker``) so that every precision policy and XLA setting
    starts from a fresh framework.

    Args:
        job: ``backend``, ``size``, ``batch``, ``precision`` (float32 or mixed), ``xla``
            (``jit_compile``: XLA on TensorFlow and JAX, ``torch.compile`` on PyTorch),
            ``seconds`` (how long to time steps) and ``warmup`` (untimed steps first).

    Returns:
        The job's settings, the precision policy it ran, images/s and the device.
    """
    if job.get("kind") == "checkpoint":
        return checkpoint_worker(job)
    backend = backends.activate(job.get("backend", "tensorflow"), gpu_fraction=1.0)
    import keras

    gpus = backend.configure_gpus(1.0)
    precision = _set_precision(keras, backend, gpus, job["precision"])
    size, batch = int(job["size"]), int(job["batch"])
    model = _vgg16(keras, size, bool(job["xla"]))
    # Keras's random ops make the tensors on the backend's default device: the GPU when there
    # is one, so no step copies its batch from the host.
    x = keras.random.uniform((batch, size, size, 3), seed=0)
    y = keras.random.randint((batch,), 0, 10, seed=1)
    for _ in range(int(job["warmup"])):  # tracing, XLA compilation, cuDNN autotuning
        model.train_on_batch(x, y)
    # train_on_batch returns Python floats: each step waits for the device, so the timing is
    # honest.
    steps, seconds = timed_steps(lambda: model.train_on_batch(x, y), float(job["seconds"]))
    return {
        "backend": backend.name,
        "size": size,
        "batch": batch,
        "precision": precision,
        "xla": bool(job["xla"]),
        "steps": steps,
        "seconds": seconds,
        "images_per_s": steps * batch / seconds,
        "device": "GPU:0" if gpus else "CPU",
    }


def _set_precision(keras: Any, backend: Any, gpus: list[Any], wanted: str) -> str:
    """Sets Keras's global policy; ``mixed`` is bfloat16 from compute capability 8 on,
    float16 before (the trials' ``auto``)."""
    precision = (
        backends.resolve_precision("auto", backend.compute_capability(gpus))
        if wanted == "mixed"
        else "float32"
    )
    keras.mixed_precision.set_global_policy(precision)
    return precision


def _vgg16(keras: Any, size: int, xla: bool) -> Any:
    """The benchmark's VGG16 (random weights, the project's head), compiled as trials are."""
    from model_zoo import build_model

    model = build_model(
        {
            "backbone": "vgg16",
            "weights": "none",
            "upsample": 1,
            "noise_std": 0.0,
            "dense_units": 256,
            "dropout": 0.5,
        },
        input_shape=(size, size, 3),
        num_classes=10,
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        jit_compile=xla,
    )
    return model


def checkpoint_worker(job: Mapping[str, Any]) -> dict[str, Any]:
    """Seconds per epoch (epochs 2+) of VGG16 ``fit`` with validation and a checkpoint every
    epoch, written each way in ``ways`` (see ``overhead.checkpointer``: ``beside`` is a CPU
    trial's way, the next epoch waiting for the whole write; ``snapshot`` a GPU trial's, the
    next epoch waiting only for the variables' copy), ``none`` without checkpoints; a fresh
    model for each, in this one process.

    Args:
        job: ``backend``, ``size``, ``batch``, ``train_images``, ``val_images``, ``epochs``,
            ``precision`` (float32 or mixed) and ``ways``.

    Returns:
        The job's settings, the precision it ran, the mean epoch seconds per way, the
        checkpoint's bytes and the device.
    """
    backend = backends.activate(job.get("backend", "tensorflow"), gpu_fraction=1.0)
    import keras
    import numpy as np

    from benchmarks.overhead.overhead import checkpointer

    gpus = backend.configure_gpus(1.0)
    precision = _set_precision(keras, backend, gpus, job["precision"])
    size, batch, epochs = int(job["size"]), int(job["batch"]), int(job["epochs"])
    rng = np.random.default_rng(0)
    images = int(job["train_images"]) + int(job["val_images"])
    x = rng.random((images, size, size, 3), dtype=np.float32)
    y = rng.integers(0, 10, images)
    split = int(job["train_images"])
    epoch_s: dict[str, float] = {}
    checkpoint_bytes = 0
    for way in job["ways"]:
        seconds: list[float] = []

        class EpochTimer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                self.began = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                seconds.append(time.perf_counter() - self.began)  # noqa: B023 - this way's

        model = _vgg16(keras, size, xla=False)
        # The checkpointer first: the epoch's time includes what its end waits for.
        callbacks = (
            []
            if way == "none"
            else [checkpointer(keras, way, during_validation=backend.saves_during_validation)]
        )
        model.fit(
            x[:split],
            y[:split],
            batch_size=batch,
            epochs=epochs,
            verbose=0,
            validation_data=(x[split:], y[split:]),
            shuffle=False,
            callbacks=[*callbacks, EpochTimer()],
        )
        epoch_s[way] = mean(seconds[1:])
        checkpoint_bytes = sum(
            int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
            for v in [*model.weights, *model.optimizer.variables]
        )
        del model
        keras.backend.clear_session()
    return {
        "kind": "checkpoint",
        "backend": backend.name,
        "size": size,
        "batch": batch,
        "train_images": split,
        "val_images": images - split,
        "epochs": epochs,
        "precision": precision,
        "epoch_s": epoch_s,
        "checkpoint_bytes": checkpoint_bytes,
        "device": "GPU:0" if gpus else "CPU",
    }


def _run_gpu_worker(job: Mapping[str, Any], log: Path) -> dict[str, Any]:
    command = [sys.executable, str(RUN_SCRIPT), "--gpu-worker", json.dumps(job)]
    try:
        done = subprocess.run(
            command,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        tail = err.stderr or ""
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        raise RuntimeError(
            f"GPU worker {job} ran past {WORKER_TIMEOUT_S} s:\n{tail[-3000:]}"
        ) from None
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"$ {' '.join(command)}\n{done.stdout}\n{done.stderr}\n")
    if done.returncode != 0:
        raise RuntimeError(
            f"GPU worker {job} exited with {done.returncode}:\n{done.stderr[-3000:]}"
        )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(GPU_RESULT_PREFIX):
            return json.loads(line[len(GPU_RESULT_PREFIX) :])
    raise RuntimeError(f"GPU worker {job} printed no result (see {log})")


def write_packing_data(path: Path, images: int, seed: int = 0) -> Path:
    """A synthetic 32x32 RGB, 10-class npz dataset for the packing searches.

    Args:
        path: The ``.npz`` file to write.
        images: How many images.
        seed: The random generator's seed.

    Returns:
        ``path``.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8),
        y_train=(np.arange(images) % 10).astype(np.int64),
    )
    return path


def packing_spec(ctx: Context, per_gpu: int, data_path: Path) -> dict[str, Any]:
    """``per_gpu`` trials sharing one GPU (``gpus_per_trial = 1 / per_gpu``), two waves.

    Sized to take about a minute or two on a large GPU: ``Mode.pack_images`` 32x32 images
    (x2 upsampled to 64x64), ``Mode.pack_epochs`` epochs, batch 128; most of a trial's time
    is TensorFlow's start and the XLA compilation, which packing overlaps.

    Args:
        ctx: The run's context (sizes, workdir, CPUs).
        per_gpu: Trials packed on the GPU at once.
        data_path: The npz file from :func:`write_packing_data`.

    Returns:
        The raw experiment spec.
    """
    return {
        "name": f"packing-{per_gpu}-per-gpu",
        "dataset": {"name": "npz", "path": str(data_path), "val_fraction": 0.1, "seed": 0},
        "model": {
            "backbone": "vgg16",
            "weights": "none",
            "upsample": 2,
            "noise_std": 0.01,
            "dense_units": 256,
            "dropout": 0.5,
        },
        "train": {
            "epochs": ctx.mode.pack_epochs,
            "batch_size": 128,
            "optimizer": "sgd",
            "momentum": 0.9,
            "mixed_precision": "auto",
            "jit_compile": "auto",
            "backend": ctx.backend,
        },
        "space": {"learning_rate": {"loguniform": [0.001, 0.01]}},
        "search": {
            "num_samples": 2 * per_gpu,
            "max_concurrent": per_gpu,
            "seed": 0,
            "algorithm": "random",
            "baseline": False,
            "max_failures": 0,
        },
        "scheduler": {"name": "fifo"},
        "resources": {
            "cpus_per_trial": max(1, ctx.num_cpus // per_gpu),
            "gpus_per_trial": 1 / per_gpu,
        },
        "storage": str(ctx.workdir / "experiments"),
    }


def packing_figures(
    trials: Sequence[Any], max_t: int, wall_s: float, train_images: int
) -> dict[str, Any]:
    """Trials per hour and images/s (all trials together, and per trial) of one search.

    The span runs from the first trial's start to the last result, so Ray's start-up is left
    out of ``trials_per_hour`` (``trials_per_hour_wall`` keeps it).

    Args:
        trials: The search's ``TrialRecord`` objects.
        max_t: The epochs a complete trial ran.
        wall_s: The search's wall seconds, Ray's start-up included.
        train_images: Training images per epoch.

    Returns:
        Trials, span, trials per hour (span and wall), trial-epochs and images/s.

    Raises:
        RuntimeError: When a trial did not complete.
    """
    incomplete = [t.trial_id for t in trials if t.status(max_t) != TrialStatus.COMPLETE]
    if incomplete:
        raise RuntimeError(f"packing: trials {incomplete} did not complete")
    first = min(
        float(t.history[0].get("attempt_started_at", t.history[0]["timestamp"])) for t in trials
    )
    last = max(float(r["timestamp"]) for t in trials for r in t.history)
    span = max(last - first, 1e-9)
    trial_epochs = sum(len(t.history) for t in trials)
    later = [float(r["images_per_s"]) for t in trials for r in t.history[1:]]
    return {
        "trials": len(trials),
        "span_s": span,
        "wall_s": wall_s,
        "trials_per_hour": len(trials) * 3600 / span,
        "trials_per_hour_wall": len(trials) * 3600 / wall_s,
        "trial_epochs": trial_epochs,
        "aggregate_img_s": trial_epochs * train_images / span,
        "trial_img_s": mean(later),
    }


def bench_gpu(ctx: Context, visible_gpus: Sequence[Any] | None = None) -> dict[str, Any]:
    """GPU throughput and packing; skipped (with a message) where the backend sees no GPU.

    Args:
        ctx: The run's context (``ctx.backend``: the Keras backend).
        visible_gpus: The GPUs the backend sees; ``None`` asks the backend.

    Returns:
        ``{"skipped": True, "reason": ...}`` without a GPU; else the GPU's name, a throughput
        row per case and precision, and a packing row per trials-per-GPU.
    """
    gpus = backend_gpus(ctx.backend) if visible_gpus is None else list(visible_gpus)
    if not gpus:
        message = no_gpu_message(ctx.backend)
        print(message, flush=True)
        return {
            "skipped": True,
            "reason": message.removeprefix("skipped: "),
            "backend": ctx.backend,
        }
    began = time.perf_counter()
    names = gpu_names()
    name = names[0] if names else "unknown GPU"
    log = ctx.workdir / "logs" / "gpu.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for size, batch in GPU_CASES:
        flops = vgg16_flops_per_image(size, size)
        for precision, xla in GPU_MODES:
            progress(f"gpu: VGG16 {size}x{size} batch {batch} {precision} xla={xla}")
            job = {
                "backend": ctx.backend,
                "size": size,
                "batch": batch,
                "precision": precision,
                "xla": xla,
                "seconds": ctx.mode.gpu_seconds,
                "warmup": ctx.mode.gpu_warmup,
            }
            row = _run_gpu_worker(job, log)
            # The peak of the precision the worker really ran (mixed is float32 before Volta).
            peak = peak_tflops(name, row["precision"] != "float32", ctx.gpu_peak_tflops)
            achieved = row["images_per_s"] * flops / 1e12
            row.update(
                train_gflops_per_image=flops / 1e9,
                tflops=achieved,
                peak_tflops=peak,
                share_of_peak=achieved / peak if peak else None,
            )
            rows.append(row)

    data_path = write_packing_data(ctx.workdir / "packing.npz", ctx.mode.pack_images)
    train_images = ctx.mode.pack_images - math.ceil(0.1 * ctx.mode.pack_images)  # val 10%
    packing: list[dict[str, Any]] = []
    expected = FIRST_PACKING_GUESS_S
    for per_gpu in PACKING:
        entry: dict[str, Any] = {"per_gpu": per_gpu, "gpus_per_trial": 1 / per_gpu}
        left = SECTION_BUDGET_S - (time.perf_counter() - began)
        if expected > left:
            progress(
                f"gpu: {per_gpu} trial(s) per GPU skipped: ~{expected:.0f} s needed, "
                f"{left:.0f} s left of the section's {SECTION_BUDGET_S} s"
            )
            packing.append({**entry, "skipped": f"time budget ({left:.0f} s left)"})
            continue
        raw = packing_spec(ctx, per_gpu, data_path)
        # Ray stops the search at what is left of the budget, if it ever runs that long.
        raw["search"]["time_budget_s"] = max(60.0, left)
        progress(f"gpu: {per_gpu} trial(s) per GPU (gpus_per_trial={1 / per_gpu:g})")
        summary, wall = run_logged_search(raw, ctx, ctx.workdir / "logs" / f"{raw['name']}.log")
        ensure_ray_stopped("gpu")
        expected = 1.25 * wall  # more trials packed take a little longer than the last search
        complete = [t for t in summary.trials if t.status(summary.max_t) == TrialStatus.COMPLETE]
        if len(complete) < len(summary.trials):
            packing.append(
                {
                    **entry,
                    "skipped": f"cut by the time budget after {len(complete)} "
                    f"of {len(summary.trials)} trials",
                }
            )
            continue
        packing.append(
            {**entry, **packing_figures(summary.trials, summary.max_t, wall, train_images)}
        )
    checkpoint = bench_checkpoint_writes(
        ctx, log, SECTION_BUDGET_S - (time.perf_counter() - began)
    )
    return {
        "skipped": False,
        "backend": ctx.backend,
        "gpu": name,
        "throughput": rows,
        "packing": packing,
        "checkpoint": checkpoint,
        "section_budget_s": SECTION_BUDGET_S,
        "peak_source": "--gpu-peak-tflops" if ctx.gpu_peak_tflops else "datasheet table",
        "packing_spec": {
            k: v for k, v in packing_spec(ctx, 1, data_path).items() if k in ("model", "train")
        },
    }


def bench_checkpoint_writes(ctx: Context, log: Path, left_s: float) -> dict[str, Any]:
    """Short epochs with a checkpoint every epoch, each way (:func:`checkpoint_worker`, in a
    fresh process); skipped when it would not fit in ``left_s`` seconds.

    Returns:
        The worker's result with ``snapshot_ratio`` (GPU way / CPU way) and
        ``checkpoint_cost`` per way (epoch seconds / without checkpoints), or
        ``{"skipped": reason}``.
    """
    if left_s < CHECKPOINT_GUESS_S:
        progress(
            f"gpu: checkpoint writes skipped: ~{CHECKPOINT_GUESS_S:.0f} s needed, "
            f"{left_s:.0f} s left of the section's {SECTION_BUDGET_S} s"
        )
        return {"skipped": f"time budget ({left_s:.0f} s left)"}
    size, batch, train_images, val_images, epochs = CHECKPOINT_CASE
    progress(
        f"gpu: a checkpoint every epoch, VGG16 {size}x{size}, {train_images} images "
        f"per epoch: {', '.join(CHECKPOINT_WAYS)}"
    )
    result = _run_gpu_worker(
        {
            "kind": "checkpoint",
            "backend": ctx.backend,
            "size": size,
            "batch": batch,
            "train_images": train_images,
            "val_images": val_images,
            "epochs": epochs,
            "precision": "mixed",
            "ways": list(CHECKPOINT_WAYS),
        },
        log,
    )
    return with_checkpoint_ratios(result)


def with_checkpoint_ratios(result: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint worker's result with ``snapshot_ratio`` (the GPU trial's way over the
    CPU trial's) and ``checkpoint_cost`` (each way's epoch over one without checkpoints)."""
    epoch_s = result["epoch_s"]
    return {
        **result,
        "snapshot_ratio": epoch_s["snapshot"] / epoch_s["beside"],
        "checkpoint_cost": {
            way: seconds / epoch_s["none"] for way, seconds in epoch_s.items() if way != "none"
        },
    }


def format_checkpoint_writes(result: Mapping[str, Any]) -> str:
    """One line: epoch seconds with a checkpoint every epoch, each way, and their ratios."""
    if "skipped" in result:
        return f"checkpoint writes: skipped ({result['skipped']})"
    epoch_s, cost = result["epoch_s"], result["checkpoint_cost"]
    return (
        f"a checkpoint every epoch ({result['checkpoint_bytes'] / 1e6:.0f} MB; VGG16 "
        f"{result['size']}x{result['size']}, {result['train_images']} images per epoch, "
        f"{result['precision']}): {epoch_s['none']:.3f} s/epoch without, "
        f"{epoch_s['beside']:.3f} waiting for the write (CPU trial's way, "
        f"x{cost['beside']:.3f}), {epoch_s['snapshot']:.3f} waiting for the copy only "
        f"(GPU trial's way, x{cost['snapshot']:.3f}); GPU way / CPU way = "
        f"{result['snapshot_ratio']:.3f}"
    )


def print_gpu(result: Mapping[str, Any]) -> str:
    """The GPU section's throughput and packing tables, or the skip message.

    Args:
        result: What :func:`bench_gpu` returned.

    Returns:
        The text to print.
    """
    backend = result.get("backend", "tensorflow")
    if result["skipped"]:
        return f"d. GPU throughput ({backend})\n{no_gpu_message(backend)}"
    throughput = format_table(
        f"d. GPU throughput: VGG16 (weights none) on {result['gpu']}, Keras on {backend}, "
        f"synthetic data on the device (peak: {result['peak_source']})",
        [
            Column("size", "size"),
            Column("batch", "batch"),
            Column("precision", "precision"),
            Column("xla", "XLA"),
            Column("images_per_s", "img/s", ".0f"),
            Column("train_gflops_per_image", "GFLOP/img (train)", ".2f"),
            Column("tflops", "TFLOP/s", ".1f"),
            Column("peak_tflops", "peak TFLOP/s", ".1f"),
            Column("share_of_peak", "share of peak", ".1%"),
        ],
        result["throughput"],
    )
    packing = format_table(
        "Trials packed on one GPU (VGG16 64x64, batch 128, two waves of trials)",
        [
            Column("per_gpu", "trials/GPU"),
            Column("gpus_per_trial", "gpus_per_trial", ".2f"),
            Column("skipped", "skipped"),
            Column("trials", "trials"),
            Column("span_s", "first start->last result s", ".1f"),
            Column("trials_per_hour", "trials/hour", ".1f"),
            Column("trials_per_hour_wall", "trials/hour (incl. Ray start)", ".1f"),
            Column("aggregate_img_s", "img/s all trials", ".0f"),
            Column("trial_img_s", "img/s per trial (epochs 2+)", ".0f"),
        ],
        result["packing"],
    )
    checkpoint = result.get("checkpoint")  # runs before 2026-11-30 13:00 lack it
    tail = f"\n\n{format_checkpoint_writes(checkpoint)}" if checkpoint else ""
    return f"{throughput}\n\n{packing}{tail}"
