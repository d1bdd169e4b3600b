"""a. Framework overhead: plain ``model.fit`` vs. the same trial under ``run_search``.

The same trial (model, data, epochs, batch size) trained by plain ``model.fit`` (one call, and
one call per epoch as the trial makes them; before and after the trial) and as a trial under
``run_search``; images/s of the training part of each epoch, the first epoch (graph tracing)
excluded in both. Goal: the trial within 3% of plain. Also each path's all-in time per epoch,
and the time from launching ``finetune-search run`` to its first reported epoch.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO,
    Column,
    Context,
    ensure_ray_stopped,
    format_table,
    harmonic_rate,
    load_average,
    load_spec,
    mean,
    progress,
    run_logged_search,
    spread,
)
from benchmarks.overhead.checkpoint_storage import (
    bench_checkpoint_storage,
    print_checkpoint_storage,
)
from search.outputs.study import TrialStatus

OVERHEAD_GOAL = 0.97  # the trial's images/s at least 97% of plain per-epoch model.fit calls
ONE_FIT_GOAL = 0.99  # the trial's images/s (epochs 2+) at least 99% of one plain fit call's
WHOLE_EPOCH_GOAL = 1.05  # a whole trial epoch at most 1.05x a plain epoch with validation
EPOCH_LINE = re.compile(r"\] trial (\S+) epoch 1/\d+ ")
STARTED_LINE = re.compile(r"\] trial (\S+) started")
PLAIN_RUNS = (("plain fit, one call", False), ("plain fit, a call per epoch", True))


def overhead_spec(ctx: Context, name: str, subset: int | None = None) -> dict[str, Any]:
    """One fixed trial: VGG16 (random init) at 32x32 on a few hundred digits images, under
    ASHA (grace period 1, reduction factor 3), so it checkpoints as a search's trials do by
    default: at ASHA's rungs and the last epoch (alone, ASHA never stops it).

    Args:
        ctx: The run's context (sizes, workdir, CPUs).
        name: The experiment's name.
        subset: Digits images (default: the mode's ``overhead_subset``).

    Returns:
        The raw experiment spec.
    """
    mode = ctx.mode
    return {
        "name": name,
        "dataset": {
            "name": "digits",
            "subset": subset or mode.overhead_subset,
            "val_fraction": 0.2,
            "seed": 0,
        },
        "model": {
            "backbone": "vgg16",
            "weights": "none",
            "upsample": 1,
            "noise_std": 0.01,
            "dense_units": 256,
            "dropout": 0.5,
            "pooling": "flatten",
        },
        "train": {
            "epochs": mode.overhead_epochs,
            "batch_size": mode.overhead_batch,
            "optimizer": "sgd",
            "learning_rate": 0.01,
            "momentum": 0.9,
            "mixed_precision": "auto",
            "jit_compile": "auto",
            "seed": 0,
        },
        "space": {},
        "search": {
            "num_samples": 1,
            "max_concurrent": 1,
            "seed": 0,
            "algorithm": "random",
            "baseline": False,
            "max_failures": 0,
        },
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 3},
        # The whole machine for the one trial, as the plain fit has it.
        "resources": {"cpus_per_trial": ctx.num_cpus, "gpus_per_trial": "auto"},
        "storage": str(ctx.workdir / "experiments"),
    }


def plain_fit(
    spec: Any, per_epoch_calls: bool = False, checkpoint: str | None = None
) -> dict[str, Any]:
    """Trains the spec's fixed trial with plain ``model.fit`` in this process, no Ray.

    Set up by the trial's own sequence, :mod:`search.trial.runtime` (devices, precision, XLA
    setting, seed, model, ``tf.data`` pipelines), validating every epoch and timing the
    training part of each epoch (epoch begin to validation begin) as the trial's
    ``images_per_s`` does.

    Args:
        spec: The overhead experiment spec; its fixed config is the trial's.
        per_epoch_calls: One ``fit`` call per epoch, as the trial makes them (new iterators
            every call), instead of one call for all epochs.
        checkpoint: A trial's checkpoint every epoch (:mod:`search.trial.checkpoint`), its
            model written ``"after"`` validation or ``"beside"`` it (begun as validation
            begins, waited for at the epoch's end); ``None``: no checkpoints. Epoch times
            include the wait.

    Returns:
        Images per epoch, the precision, and per epoch: training images/s, all-in seconds
        and seconds to the end of the first batch.
    """
    from search.data import load_dataset
    from search.trial import runtime

    params = spec.fixed_config()
    data = load_dataset(spec.dataset)
    # As a trial holding one whole GPU: memory growth, so later sections' trials still fit.
    # Devices are configured once per process (runtime.prepare remembers them).
    run = runtime.prepare(params, gpu_fraction=1.0)
    keras = run.keras
    batch = int(params["batch_size"])
    model = runtime.build_compiled_model(params, data.input_shape, data.num_classes)
    train_ds, val_ds = runtime.make_pipelines(
        params, data.x_train, data.y_train, data.x_val, data.y_val, batch
    )

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
    callbacks = [timer] if checkpoint is None else [checkpointer(keras, checkpoint), timer]
    epochs = int(params["epochs"])
    if per_epoch_calls:
        for epoch in range(epochs):
            model.fit(
                train_ds,
                validation_data=val_ds,
                initial_epoch=epoch,
                epochs=epoch + 1,
                verbose=0,
                shuffle=False,
                callbacks=[*callbacks, keras.callbacks.TerminateOnNaN()],
            )
    else:
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            verbose=0,
            shuffle=False,
            callbacks=callbacks,
        )
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    n = len(data.x_train)
    return {
        "images_per_epoch": n,
        "precision": run.precision,
        "images_per_s": [n / s for s in train_seconds],
        "epoch_seconds": epoch_seconds,
        "first_batch_seconds": first_batch_seconds,
    }


CHECKPOINT_WRITES = ("after", "beside", "snapshot")


def checkpointer(keras: Any, where: str, during_validation: bool = True) -> Any:
    """A Keras callback writing a trial's checkpoint every epoch, its model ``"after"`` the
    epoch's validation, ``"beside"`` it (``model.save`` begun as validation begins, waited
    for at the epoch's end: a CPU trial's way), or from a ``"snapshot"`` (the variables
    copied beside validation, waited for at the epoch's end, written while the next epoch
    trains: a GPU trial's way); each checkpoint deleted once written (only the time matters
    here). ``during_validation=False`` begins the two background ways at the epoch's end
    instead, as a trial does on a backend that cannot save during validation (JAX)."""
    from search.trial.checkpoint import ModelWrite, TrainingState, write_checkpoint

    if where not in CHECKPOINT_WRITES:
        raise ValueError(f"checkpoint: one of {', '.join(CHECKPOINT_WRITES)}; got {where!r}")

    def finish(model: Any, epoch: int, started: ModelWrite | None) -> None:
        shutil.rmtree(write_checkpoint(model, TrainingState(epoch=epoch + 1), started=started))

    class Checkpointer(keras.callbacks.Callback):
        started: ModelWrite | None = None
        finishing: threading.Thread | None = None

        def begin(self) -> None:
            if where != "after" and self.started is None:
                self.started = ModelWrite(self.model, beside_training=where == "snapshot")

        def on_test_begin(self, logs: Any = None) -> None:
            if during_validation:
                self.begin()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.begin()  # where validation did not begin it
            started, self.started = self.started, None
            if where != "snapshot":
                finish(self.model, epoch, started)
                return
            started.wait_until_copied()
            self.join()  # one write in flight, as the trial's reports
            self.finishing = threading.Thread(target=finish, args=(self.model, epoch, started))
            self.finishing.start()

        def on_train_end(self, logs: Any = None) -> None:
            self.join()

        def join(self) -> None:
            if self.finishing is not None:
                self.finishing.join()
                self.finishing = None

    return Checkpointer()


def checkpoint_overlap(ctx: Context, rounds: int = 2) -> dict[str, Any]:
    """Plain ``fit`` on the short epochs with a checkpoint every epoch, its model written
    after validation, beside it, or from a snapshot beside the next epoch
    (:func:`checkpointer`), in interleaved rounds (a slow spell of a shared machine then hits
    all three): the whole epoch's seconds (epochs 2+) of each.

    Args:
        ctx: The run's context (the short size).
        rounds: How many rounds of the three.

    Returns:
        Per run its mode and mean epoch seconds, each mode's mean, beside / after
        (``ratio``) and snapshot / after (``snapshot_ratio``).
    """
    spec = load_spec(overhead_spec(ctx, "overhead-overlap", ctx.mode.overhead_short_subset))
    runs = []
    for round_ in range(rounds):
        for where in CHECKPOINT_WRITES:
            progress(f"overhead: checkpoint every epoch, written {where} ({round_ + 1}/{rounds})")
            fitted = plain_fit(spec, checkpoint=where)
            runs.append({"where": where, "epoch_s": mean(fitted["epoch_seconds"][1:])})
    seconds = {
        where: mean([r["epoch_s"] for r in runs if r["where"] == where])
        for where in CHECKPOINT_WRITES
    }
    return {
        "runs": runs,
        "after_epoch_s": seconds["after"],
        "beside_epoch_s": seconds["beside"],
        "snapshot_epoch_s": seconds["snapshot"],
        "ratio": seconds["beside"] / seconds["after"],
        "snapshot_ratio": seconds["snapshot"] / seconds["after"],
        "images": fitted["images_per_epoch"],
    }


def format_overlap(result: Mapping[str, Any]) -> str:
    """One line: the short epoch with a checkpoint written after validation, beside it, and
    from a snapshot beside the next epoch."""
    snapshot = ""
    if "snapshot_epoch_s" in result:  # runs before 2026-11-30 13:00 lack it
        snapshot = (
            f", {result['snapshot_epoch_s']:.3f} from a snapshot beside the next "
            f"epoch (/ after = {result['snapshot_ratio']:.3f})"
        )
    return (
        f"checkpoint every epoch, plain fit, short epochs ({result['images']} images): "
        f"{result['after_epoch_s']:.3f} s/epoch written after validation, "
        f"{result['beside_epoch_s']:.3f} beside it (beside / after = "
        f"{result['ratio']:.3f}){snapshot}; "
        f"{sum(1 for run in result['runs'] if run['where'] == 'after')} interleaved rounds"
    )


def cli_time_to_first_epoch(raw: Mapping[str, Any], ctx: Context, log: Path) -> dict[str, Any]:
    """Launches ``finetune-search run`` and times its progress lines up to epoch 1.

    The spec is the overhead trial cut to one epoch (later epochs do not change the time to the
    first).

    Args:
        raw: The overhead spec (its ``train.epochs`` is set to 1 here).
        ctx: The run's context.
        log: Where the CLI's output is written.

    Returns:
        Launch-to-"started" and launch-to-"epoch 1" seconds, the CLI's total time, and the
        trial's own epoch-1 seconds (train + validation) from its results.

    Raises:
        RuntimeError: When the CLI fails or never reports epoch 1.
    """
    import yaml

    from search.outputs.results import load_trials

    raw = {**raw, "train": {**raw["train"], "epochs": 1}}
    name = str(raw["name"])
    path = ctx.workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(raw), sort_keys=False), encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "search",
        "run",
        str(path),
        "--num-cpus",
        str(ctx.num_cpus),
        "--name",
        name,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started_s = first_epoch_s = None
    lines: list[str] = []
    began = time.perf_counter()
    with subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as proc:
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
    epoch1 = float(trials[0].history[0]["epoch_seconds"]) if trials else float("nan")
    return {
        "command": " ".join(command[1:]),
        "launch_to_started_s": started_s,
        "launch_to_first_epoch_s": first_epoch_s,
        "cli_total_s": total_s,
        "trial_epoch1_s": epoch1,
        "startup_s": first_epoch_s - epoch1,
    }


def _trial_run(history: Sequence[Mapping[str, Any]], images: int) -> dict[str, Any]:
    """The trial's per-epoch figures from its result rows."""
    held = [float(r["wall_seconds"]) for r in history]
    return {
        "images_per_epoch": images,
        "precision": history[-1].get("precision"),
        "images_per_s": [float(r["images_per_s"]) for r in history],
        # The trial's whole epoch, as its thread lived it: from one report's hand-off to
        # the next (training, validation, the checkpoint, and any wait for the last
        # report, which Ray makes while the next epoch trains); the first includes the
        # set-up. Ray's time_this_iter_s no longer spans that: it counts from the
        # driver's next train() call, made while the trial already trains on.
        "epoch_seconds": [b - a for a, b in zip([0.0, *held], held)],
        "ray_time_this_iter_s": [float(r["time_this_iter_s"]) for r in history],
        # Its parts: the epoch inside fit (training and validation, a checkpoint's model
        # written beside validation), then the wait for the checkpoint.
        "fit_seconds": [float(r["epoch_seconds"]) for r in history],
        "checkpoint_seconds": [float(r.get("checkpoint_seconds", 0.0)) for r in history],
    }


def bench_overhead(ctx: Context) -> dict[str, Any]:
    """Plain ``model.fit`` vs. the same trial under ``run_search``, and CLI start-up time.

    Plain fits run before and after the trial, both as one ``fit`` call and as one call per
    epoch (the trial's loop), so that a slow spell of a shared machine shows up as a gap
    between plain runs rather than as framework overhead. The goal compares the trial with
    the per-epoch plain runs pooled: the same loop, with and without Ray.

    Args:
        ctx: The run's context.

    Returns:
        The section's result: a row per run, the trial/plain ratios, the goal, the CLI timing.

    Raises:
        RuntimeError: When the trial does not complete, or Ray is left running.
    """
    raw = overhead_spec(ctx, "overhead-trial")
    spec = load_spec(raw)
    load_before = load_average()
    runs: list[tuple[str, dict[str, Any]]] = []
    for label, per_epoch in PLAIN_RUNS:
        progress(f"overhead: {label} (before the trial)")
        runs.append((f"{label} (before)", plain_fit(spec, per_epoch)))
    ensure_ray_stopped("overhead")

    progress("overhead: the same trial under run_search")
    summary, search_wall = run_logged_search(raw, ctx, ctx.workdir / "logs" / "overhead-trial.log")
    if len(summary.trials) != 1 or summary.trials[0].status(spec.max_t) != TrialStatus.COMPLETE:
        raise RuntimeError(
            f"overhead: expected one complete trial, got "
            f"{[str(t.status(spec.max_t)) for t in summary.trials]}"
        )
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
        rows.append(
            {
                "path": label,
                "epochs": len(run["images_per_s"]),
                "images": run["images_per_epoch"],
                "precision": run["precision"],
                "epoch1_img_s": run["images_per_s"][0],
                "img_s": harmonic_rate(later),
                "best_img_s": max(later, default=float("nan")),
                "spread": spread(later),
                "epoch_s": mean(run["epoch_seconds"][1:]),
                "first_batch_s": " ".join(f"{t:.2f}" for t in run.get("first_batch_seconds", []))
                or None,
                "per_epoch": " ".join(f"{r:.1f}" for r in run["images_per_s"]),
                "epoch_seconds": run["epoch_seconds"],
                "images_per_s": run["images_per_s"],
            }
        )
    pooled = {
        per_epoch: [
            r for label, run in runs if label.startswith(name) for r in run["images_per_s"][1:]
        ]
        for name, per_epoch in PLAIN_RUNS
    }
    plain_later = pooled[True]
    trial_later = trial["images_per_s"][1:]
    ratio = harmonic_rate(trial_later) / harmonic_rate(plain_later)
    best_ratio = max(trial_later) / max(plain_later)
    noise = max(spread(plain_later), spread(trial_later))
    plain_epoch_s = mean(
        [
            s
            for label, run in runs
            if label.startswith(PLAIN_RUNS[1][0])
            for s in run["epoch_seconds"][1:]
        ]
    )
    normal = one_fit_ratios(runs)
    short = short_epochs(ctx)
    overlap = checkpoint_overlap(ctx)
    storage = bench_checkpoint_storage(ctx)
    return {
        "one_fit_ratio": normal["one_fit_ratio"],
        "whole_epoch_ratio": normal["whole_epoch_ratio"],
        "one_fit_ratio_short": short["one_fit_ratio"],
        "whole_epoch_ratio_short": short["whole_epoch_ratio"],
        "short": short,
        "normal": normal,
        "checkpoint_overlap": overlap,
        "checkpoints_kept": storage["checkpoints_kept"],
        "storage_bytes": storage["storage_bytes"],
        "storage": storage,
        "one_fit_goal": f"trial images/s (epochs 2+) >= {ONE_FIT_GOAL} of one plain fit call; "
        f"a whole epoch <= {WHOLE_EPOCH_GOAL}x plain's with validation; both "
        f"sizes",
        "one_fit_goal_met": all(
            r["one_fit_ratio"] >= ONE_FIT_GOAL and r["whole_epoch_ratio"] <= WHOLE_EPOCH_GOAL
            for r in (normal, short)
        ),
        "spec": {k: raw[k] for k in ("dataset", "model", "train", "resources")},
        "rows": rows,
        "plain_img_s": harmonic_rate(plain_later),
        "plain_one_call_img_s": harmonic_rate(pooled[False]),
        "trial_img_s": harmonic_rate(trial_later),
        "ratio_trial_to_plain": ratio,
        "ratio_trial_to_plain_one_call": harmonic_rate(trial_later) / harmonic_rate(pooled[False]),
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
        "load_avg_after": load_average(),
    }


def one_fit_ratios(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The trial against one plain ``fit`` call (the plain one-call runs pooled), epochs 2+:
    images/s of training, and the whole epoch (the trial's: from one report's hand-off to the
    next, so training, validation, checkpoints and the wait for the last report amortised;
    plain: epoch begin to end with validation); and where the trial's epoch goes (``parts``,
    mean seconds per epoch)."""
    plain = [run for label, run in runs if label.startswith(PLAIN_RUNS[0][0])]
    (trial,) = [run for label, run in runs if label.startswith("trial")]
    plain_img_s = harmonic_rate([r for run in plain for r in run["images_per_s"][1:]])
    plain_epoch_s = mean([s for run in plain for s in run["epoch_seconds"][1:]])
    trial_epoch_s = mean(trial["epoch_seconds"][1:])
    result: dict[str, Any] = {
        "one_fit_ratio": harmonic_rate(trial["images_per_s"][1:]) / plain_img_s,
        "whole_epoch_ratio": trial_epoch_s / plain_epoch_s,
        "plain_epoch_s": plain_epoch_s,
        "trial_epoch_s": trial_epoch_s,
    }
    if "fit_seconds" in trial:
        fit_s = mean(trial["fit_seconds"][1:])
        checkpoint_s = mean(trial["checkpoint_seconds"][1:])
        result["parts"] = {
            "fit_s": fit_s,
            "checkpoint_wait_s": checkpoint_s,
            # The trial's epoch less the two: the wait for the last epoch's report (Ray's copy
            # of a checkpoint to storage and the driver's answer, made while this epoch
            # trained) and the fit loop's own work between epochs.
            "report_s": trial_epoch_s - fit_s - checkpoint_s,
            "checkpoints": sum(1 for s in trial["checkpoint_seconds"][1:] if s > 0),
            "epochs": len(trial["checkpoint_seconds"][1:]),
        }
    return result


def format_parts(name: str, ratios: Mapping[str, Any]) -> str:
    """One line: where the trial's epoch goes against plain's."""
    parts = ratios.get("parts")
    if not parts:
        return f"{name}: no breakdown (results without checkpoint_seconds)"
    return (
        f"{name}: a trial epoch {ratios['trial_epoch_s']:.3f} s against plain's "
        f"{ratios['plain_epoch_s']:.3f} s = fit (training, validation) "
        f"{parts['fit_s']:.3f} + checkpoint wait {parts['checkpoint_wait_s']:.3f} "
        f"({parts['checkpoints']} checkpoints in {parts['epochs']} epochs) + waiting for "
        f"the last report {parts['report_s']:.3f}"
    )


def short_epochs(ctx: Context) -> dict[str, Any]:
    """The same comparison with short epochs (``overhead_short_subset`` images: a second or
    two per epoch here, what a fast GPU makes of a CIFAR epoch): one plain ``fit`` call before
    and after the trial."""
    raw = overhead_spec(ctx, "overhead-short", ctx.mode.overhead_short_subset)
    spec = load_spec(raw)
    progress("overhead: short epochs, plain fit (before the trial)")
    runs = [("plain fit, one call (before)", plain_fit(spec))]
    ensure_ray_stopped("overhead")
    progress("overhead: short epochs, the trial under run_search")
    summary, _ = run_logged_search(raw, ctx, ctx.workdir / "logs" / "overhead-short.log")
    runs.append(
        (
            "trial (run_search)",
            _trial_run(summary.trials[0].history, runs[0][1]["images_per_epoch"]),
        )
    )
    ensure_ray_stopped("overhead")
    progress("overhead: short epochs, plain fit (after the trial)")
    runs.append(("plain fit, one call (after)", plain_fit(spec)))
    return {"images": runs[0][1]["images_per_epoch"], **one_fit_ratios(runs)}


def print_overhead(result: Mapping[str, Any]) -> str:
    """The overhead section's tables and verdict lines.

    Args:
        result: What :func:`bench_overhead` returned.

    Returns:
        The text to print.
    """
    columns = [
        Column("path", "path"),
        Column("epochs", "epochs"),
        Column("images", "images/epoch"),
        Column("precision", "precision"),
        Column("epoch1_img_s", "epoch 1 img/s", ".1f"),
        Column("img_s", "img/s epochs 2+", ".1f"),
        Column("best_img_s", "best epoch img/s", ".1f"),
        Column("spread", "spread (CV)", ".1%"),
        Column("epoch_s", "s/epoch all-in", ".2f"),
        Column("per_epoch", "per epoch img/s"),
        Column("first_batch_s", "first batch s per epoch"),
    ]
    spec = result["spec"]
    model = spec["model"]
    title = (
        f"a. Framework overhead: {model['backbone']} weights={model['weights']} at 32x32, "
        f"batch {spec['train']['batch_size']}, digits "
        f"({result['rows'][0]['images']} train images), training part of each epoch"
    )
    cli = result["cli"]
    verdict = "met" if result["goal_met"] else "NOT met"
    noise = (
        f"per-epoch spread {result['noise_spread']:.1%} is "
        + ("below" if result["decidable"] else "ABOVE")
        + f" the {1 - OVERHEAD_GOAL:.0%} the goal must resolve"
    )
    lines = [
        format_table(title, columns, result["rows"]),
        f"trial / plain img/s (epochs 2+; plain a call per epoch, before+after pooled) = "
        f"{result['ratio_trial_to_plain']:.3f}  goal >= {OVERHEAD_GOAL:.2f}: {verdict}",
        f"trial / plain one-call img/s = {result['ratio_trial_to_plain_one_call']:.3f}",
        f"trial / plain best-epoch img/s = {result['ratio_best_epochs']:.3f}  goal: "
        f"{'met' if result['goal_met_best_epoch'] else 'NOT met'}; {noise}",
        f"all-in epoch time, epochs 2+ (plain a call per epoch: epoch begin to end incl. "
        f"validation; trial: report to report, also fit set-up, checkpoint, report): "
        f"trial / plain = {result['epoch_time_ratio']:.3f}",
        f"one fit call: trial / plain img/s (epochs 2+) = {result['one_fit_ratio']:.3f}, "
        f"whole epoch trial / plain = {result['whole_epoch_ratio']:.3f}; short epochs "
        f"({result['short']['images']} images, plain {result['short']['plain_epoch_s']:.2f} "
        f"s/epoch): {result['one_fit_ratio_short']:.3f} and "
        f"{result['whole_epoch_ratio_short']:.3f}. Goal: {result['one_fit_goal']}: "
        f"{'met' if result['one_fit_goal_met'] else 'NOT met'}",
        format_parts("where it goes, epochs 2+, mean s", result.get("normal", {})),
        format_parts("short epochs", result.get("short", {})),
        format_overlap(result["checkpoint_overlap"]) if "checkpoint_overlap" in result else "",
        print_checkpoint_storage(result["storage"]),
        f"load average (1 min) before/after: {result['load_avg_before']} / "
        f"{result['load_avg_after']} on {os.cpu_count()} cores",
        "",
        format_table(
            "CLI start-up: `" + cli["command"] + "` (train.epochs=1)",
            [
                Column("launch_to_started_s", "launch -> trial started s", ".1f"),
                Column("launch_to_first_epoch_s", "launch -> epoch 1 reported s", ".1f"),
                Column("trial_epoch1_s", "trial's epoch 1 s", ".1f"),
                Column("startup_s", "start-up (difference) s", ".1f"),
                Column("cli_total_s", "CLI total s", ".1f"),
            ],
            [cli],
        ),
    ]
    return "\n".join(lines)
