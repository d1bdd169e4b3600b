"""One trial of a peer method, trained the way a finetune-search trial trains.

The peers that run a Python objective (Optuna, Keras Tuner, Syne Tune) train through
:func:`train_epochs` or :class:`EpochRecorder`, which use the project's own set-up sequence
(``search.trial.runtime``: devices, precision, seed, ``model_zoo.build_model``, the ``tf.data``
pipelines) on the project's own data split (``search.data.load_dataset``). So what differs
between the methods is the search, not the training.

Every trained epoch is written as one JSON line to a rows folder (one file per process), with
the time it arrived, the epoch's seconds (``fit_s``: from a Keras callback's ``on_epoch_begin``
to its ``on_epoch_end``, training and validation, the place where ``finetune-search``'s own
trial times its ``epoch_seconds``), and, when the epoch is the trial's best so far, the test
accuracy of the model at that epoch and the seconds that evaluation took (``test_s``, the
harness's, no method's cost): the best config's test accuracy is then that of the model the
method trained, not of a retrained one. The first row of a trial carries its ``config``.

Run as a script, this file is Syne Tune's entry point (``LocalBackend`` starts one process
per trial with the config as ``--key value`` arguments).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # Syne Tune runs this file as a script, from anywhere

from search.outputs.study import METRIC  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Config keys that are the task's plumbing, not hyperparameters (Syne Tune passes them along).
TASK_FILE_KEY = "peer_task_file"

_DATA_CACHE: dict[str, Any] = {}


def load_task(path: str | os.PathLike) -> dict[str, Any]:
    """The task a peer trial runs: ``fixed`` settings, the ``dataset`` spec, the ``rows`` folder.

    Args:
        path: The JSON file :func:`peers.write_task` wrote.

    Returns:
        The task as a mapping.
    """
    return json.loads(Path(path).read_text(encoding="utf-8"))


def task_data(task: Mapping[str, Any]) -> Any:
    """The task's dataset, loaded once per process (the same split every method sees)."""
    from search.data import DatasetSpec, load_dataset

    key = json.dumps(task["dataset"], sort_keys=True)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_dataset(DatasetSpec(**task["dataset"]))
    return _DATA_CACHE[key]


class EpochRecorder:
    """Writes one row per trained epoch; evaluates the test split at the trial's best epochs.

    Args:
        task: The task (its ``rows`` folder).
        data: The dataset (its test split).
        trial: The trial's name in the rows.
    """

    def __init__(
        self,
        task: Mapping[str, Any],
        data: Any,
        trial: str,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.data = data
        self.trial = trial
        self.config = dict(config) if config is not None else None
        self.best: float | None = None
        rows = Path(task["rows"])
        rows.mkdir(parents=True, exist_ok=True)
        self.path = rows / f"{os.getpid()}.jsonl"

    def record(self, model: Any, epoch: int, value: float, fit_s: float) -> None:
        """Writes the epoch's row (flushed at once: a trial may be killed after it).

        Args:
            model: The model as the epoch left it.
            epoch: The epoch just trained (1-based).
            value: Its validation accuracy.
            fit_s: The seconds the epoch's training and validation took.
        """
        arrived = time.time()
        test_accuracy, test_s = None, 0.0
        if math.isfinite(value) and (self.best is None or value > self.best):
            self.best = value
            began = time.perf_counter()
            test_accuracy = evaluate_test(model, self.data)
            test_s = time.perf_counter() - began
        row = {
            "trial": self.trial,
            "epoch": int(epoch),
            METRIC: float(value),
            "t": arrived,
            "fit_s": fit_s,
            "test_s": test_s,
            "test_accuracy": test_accuracy,
        }
        if self.config is not None:
            row["config"], self.config = self.config, None
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")


def evaluate_test(model: Any, data: Any) -> float | None:
    """The model's accuracy on the test split (``None`` where the source has none)."""
    if data.x_test is None:
        return None
    from search.data.split import to_unit_float  # uint8 sources stay uint8 in the Dataset

    _, accuracy = model.evaluate(
        to_unit_float(data.x_test), data.y_test, batch_size=256, verbose=0
    )
    return float(accuracy)


def build(params: Mapping[str, Any], data: Any) -> tuple[Any, Any, Any]:
    """The run's model and its train/validation pipelines, through the project's runtime.

    Args:
        params: Fixed settings and the trial's config together.
        data: The dataset.

    Returns:
        ``(model, train pipeline, validation pipeline)``.
    """
    from search.trial import runtime

    runtime.prepare(params, gpu_fraction=float(params.get("gpus_per_trial", 0) or 0))
    model = runtime.build_compiled_model(params, data.input_shape, data.num_classes)
    train_ds, val_ds = runtime.make_pipelines(
        params, data.x_train, data.y_train, data.x_val, data.y_val, int(params["batch_size"])
    )
    return model, train_ds, val_ds


def train_epochs(
    config: Mapping[str, Any],
    task: Mapping[str, Any],
    report: Callable[[int, float], None],
    trial: str | None = None,
) -> float:
    """Trains one config for up to ``max_t`` epochs, one ``fit`` call per epoch.

    Args:
        config: The hyperparameters the method drew.
        task: The task (fixed settings, dataset, rows folder, ``max_t``).
        report: Called after every epoch with ``(epoch, val_accuracy)``; the method's own way
            of hearing about the epoch (it may raise to stop the trial, as Optuna's pruning
            does).
        trial: The trial's name in the rows (default: a fresh one).

    Returns:
        The last epoch's validation accuracy.
    """
    data = task_data(task)
    params = {**task["fixed"], **config}
    model, train_ds, val_ds = build(params, data)
    recorder = EpochRecorder(task, data, trial or uuid.uuid4().hex[:12], config)
    timer = epoch_timer()
    value = float("nan")
    for epoch in range(1, int(task["max_t"]) + 1):
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            initial_epoch=epoch - 1,
            epochs=epoch,
            verbose=0,
            shuffle=False,
            callbacks=[timer],
        )
        value = float(history.history[METRIC][-1])
        recorder.record(model, epoch, value, timer.seconds)
        report(epoch, value)
    return value


def epoch_timer() -> Any:
    """A Keras callback that times each epoch from its begin to its end (training and
    validation), where ``finetune-search``'s trial times its ``epoch_seconds``."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        seconds = 0.0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.began = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.seconds = time.perf_counter() - self.began

    return EpochTimer()


def keras_recorder(
    task: Mapping[str, Any], data: Any, config: Mapping[str, Any] | None = None
) -> Any:
    """A Keras callback that records every epoch of one ``fit`` (for Keras Tuner's trials).

    Keras Tuner calls ``fit`` itself; the callback times each epoch from its start to its end
    (training and validation) and writes the row.
    """
    import keras

    recorder = EpochRecorder(task, data, uuid.uuid4().hex[:12], config)

    class Recorder(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.began = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            fit_s = time.perf_counter() - self.began
            recorder.record(
                self.model, epoch + 1, float((logs or {}).get(METRIC, math.nan)), fit_s
            )

    return Recorder()


def read_rows(rows: str | os.PathLike) -> list[dict[str, Any]]:
    """Every row the trials of one run wrote, in the order they arrived."""
    out = []
    for path in sorted(Path(rows).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append(json.loads(line))
    return sorted(out, key=lambda r: r["t"])


def _syne_main(argv: list[str] | None = None) -> None:
    """Syne Tune's entry point: parse ``--key value``, train, report every epoch."""
    from syne_tune import Reporter

    parser = argparse.ArgumentParser()
    parser.add_argument(f"--{TASK_FILE_KEY}", required=True)
    args, rest = parser.parse_known_args(argv)
    task = load_task(getattr(args, TASK_FILE_KEY))
    for key, dist in task["space"].items():
        kind = next(iter(dist))
        if kind == "choice":
            values = dist["choice"]
            parser.add_argument(f"--{key}", type=type(values[0]))
        else:
            parser.add_argument(f"--{key}", type=int if kind == "int" else float)
    args, _ = parser.parse_known_args(argv)  # Syne Tune adds its own (st_checkpoint_dir)
    config = {key: getattr(args, key) for key in task["space"]}
    reporter = Reporter()
    train_epochs(config, task, lambda epoch, value: reporter(epoch=epoch, **{METRIC: value}))


if __name__ == "__main__":
    _syne_main()
