"""One trial: build the model through ``model_zoo``, train it in one ``fit``, report each epoch.

Thin on purpose. TensorFlow is imported inside the trial (the driver never pays for it and the
GPU environment is settled first, by :func:`search.trial.runtime.prepare`); the dataset arrives
once through Ray's object store (``tune.with_parameters``); all remaining epochs train in one
``model.fit`` call (one per attempt; an OOM retry starts another), and every epoch ends in
exactly one ``tune.report`` from a Keras callback, so ``training_iteration`` equals the epoch;
the report itself (Ray's copy of a checkpoint into storage, the driver's answer) runs in a
thread of its own while the next epoch trains.
A checkpoint (weights and optimizer state) goes with the reports the policy picks
(:mod:`search.checkpoint_policy`: ASHA's rungs, the last epoch, every ``checkpoint_minutes``),
and a restarted trial continues from the last one.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from collections.abc import Mapping
from typing import Any, cast

from ray import tune

from search.checkpoint_policy import CheckpointPolicy
from search.errors import TrialFailure
from search.trial import runtime
from search.trial.backends import active_backend
from search.trial.checkpoint import (
    ModelWrite,
    TrainingState,
    model_path,
    read_state,
    remove_temp_folders_of_dead_processes,
    restore_to_temp,
    write_checkpoint,
)
from search.trial.report import METRICS, EpochReport

# How long Ray waits for a stopped trial's thread to end before it reuses the process for the
# next trial (its default: 2 s). A trial Ray stops has already begun its next epoch (its report
# runs beside it) and ends at that epoch's next step, which on a slow device or a large batch
# can take longer; a reuse that times out fails the *next* trial.
RAY_THREAD_TIMEOUT_ENV = "TUNE_FUNCTION_THREAD_TIMEOUT_S"
THREAD_TIMEOUT_S = 120


def allow_the_step_in_progress_to_end() -> None:
    """Lets Ray wait up to :data:`THREAD_TIMEOUT_S` for a stopped trial's step in progress
    (Ray reads the setting in this process when it next reuses it); a value the user set
    stays."""
    os.environ.setdefault(RAY_THREAD_TIMEOUT_ENV, str(THREAD_TIMEOUT_S))


def assigned_gpu_ids() -> list[str]:
    """The GPU ids Ray gave this trial ([] for a trial that asked for none)."""
    import ray

    return [str(i) for i in ray.get_gpu_ids()]


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


class _Attempt:
    """Where this attempt runs and what it has done: the fields every report repeats."""

    def __init__(
        self,
        state: TrainingState,
        gpu_ids: list[str],
        precision: str,
        *,
        gpu_count: float,
        began: float,
    ) -> None:
        self.state = state
        self.gpu_ids = gpu_ids
        self.precision = precision
        self.started_at = time.time()
        self.gpu_count = gpu_count
        self.began = began
        # What earlier attempts held (from the checkpoint this one started from).
        self.carried = (state.wall_seconds, state.gpu_seconds)

    def count_held_time(self) -> None:
        """Brings the state's times up to now: everything since the attempt began (devices,
        model build, training, validation, checkpoints), after what earlier attempts held."""
        held = time.perf_counter() - self.began
        self.state.wall_seconds = self.carried[0] + held
        self.state.gpu_seconds = self.carried[1] + held * self.gpu_count

    def report(self, **fields: Any) -> EpochReport:
        state = self.state
        return EpochReport(
            gpu_seconds=state.gpu_seconds,
            wall_seconds=state.wall_seconds,
            batch_size=state.batch_size,
            learning_rate_used=state.learning_rate,
            oom_retried=state.oom_retried,
            gpu_ids=",".join(self.gpu_ids),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
            node_id=_node_id(),
            precision=self.precision,
            backend=active_backend(),
            attempt_started_at=self.started_at,
            **fields,
        )

    def fail(self, reason: str, message: str) -> None:
        """Ends the trial as failed, without a retry: Ray's retries cannot fix a NaN or an
        OOM."""
        last = self.state.last_metrics
        self.count_held_time()
        tune.report(
            self.report(
                epoch=max(self.state.epoch, 1),
                trial_failed=True,
                failure_reason=str(TrialFailure(reason, message)),
                **{m: last.get(m, float("nan")) for m in METRICS},
            ).as_dict()
        )


class _LocalCheckpoints:
    """The trial's local checkpoint copies, all removed when the trial's function ends
    (normally, by an error, a NaN, an OOM or ASHA's stop): each is a whole model with its
    optimizer state, and a long search would otherwise fill the node's temp folder.

    Attributes:
        restored: The copy of Ray's checkpoint this attempt started from (``None``: a new
            trial).
        latest: The last checkpoint this attempt wrote, kept until the next one so an OOM
            retry can continue from it.
    """

    def __init__(self, restored: str | None) -> None:
        self.restored = restored
        self.latest: str | None = None

    @property
    def last_completed(self) -> str | None:
        """The folder of the last checkpoint (weights, optimizer state, state.json)."""
        return self.latest or self.restored

    def replace_latest(self, checkpoint_dir: str) -> None:
        if self.latest is not None:
            shutil.rmtree(self.latest, ignore_errors=True)
        self.latest = checkpoint_dir

    def remove_all(self) -> None:
        for folder in (self.restored, self.latest):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        self.restored = self.latest = None


def train_trial(config: dict[str, Any], *, data: Any, fixed: Mapping[str, Any]) -> None:
    """Trains one configuration and reports every epoch to Ray Tune.

    Args:
        config: The searched settings Optuna drew for this trial.
        data: A :class:`search.data.Dataset` (from the object store).
        fixed: The settings every trial shares (``ExperimentSpec.fixed_config()``), including
            ``epochs``, ``batch_size``, ``seed`` and, from the driver, ``gpus_per_trial``.
    """
    attempt_began = time.perf_counter()  # the trial holds its devices from here
    allow_the_step_in_progress_to_end()
    params = {**fixed, **config}
    gpu_count = float(params.get("gpus_per_trial", 0) or 0)
    gpu_ids = assigned_gpu_ids()
    run = runtime.prepare(params, gpu_fraction=gpu_count, gpu_ids=gpu_ids)
    remove_temp_folders_of_dead_processes()  # a SIGKILLed trial's copies, on this node
    checkpoints = _LocalCheckpoints(restore_to_temp(tune.get_checkpoint()))
    try:
        _train(run, params, data, gpu_count, gpu_ids, checkpoints, attempt_began)
    finally:
        checkpoints.remove_all()


def _train(
    run: runtime.Runtime,
    params: dict[str, Any],
    data: Any,
    gpu_count: float,
    gpu_ids: list[str],
    checkpoints: _LocalCheckpoints,
    attempt_began: float,
) -> None:
    keras = run.keras
    restored = checkpoints.restored
    state = TrainingState.from_json(
        read_state(restored) if restored else {},
        batch_size=int(params["batch_size"]),
        learning_rate=float(params["learning_rate"]),
    )
    attempt = _Attempt(state, gpu_ids, run.precision, gpu_count=gpu_count, began=attempt_began)
    missing = runtime.missing_gpu_message(gpu_ids, run.gpus, run.backend.name)
    if missing is not None:
        attempt.fail("no_gpu", missing)
        return

    def build() -> tuple[Any, Any, Any]:
        # From the last checkpoint's weights and optimizer state when there is one.
        source = checkpoints.last_completed
        if source is not None:
            model = keras.saving.load_model(model_path(source))
        else:
            run_params = {
                **params,
                "batch_size": state.batch_size,
                "learning_rate": state.learning_rate,
            }
            model = runtime.build_compiled_model(run_params, data.input_shape, data.num_classes)
        train_ds, val_ds = runtime.make_pipelines(
            params, data.x_train, data.y_train, data.x_val, data.y_val, state.batch_size
        )
        return model, train_ds, val_ds

    reporter = _EpochReporter(
        keras,
        attempt,
        checkpoints,
        CheckpointPolicy.from_settings(params),
        len(data.x_train),
        save_during_validation=run.backend.saves_during_validation,
        # The host's cores are idle while a GPU trains (ModelWrite).
        write_beside_training=bool(run.gpus),
    )
    model, train_ds, val_ds = build()
    epochs = int(params["epochs"])
    try:
        while state.epoch < epochs and not reporter.failed:
            try:
                # One fit for every remaining epoch: each epoch's end reports (and checkpoints
                # when the policy says so) from inside it, through the reporter.
                model.fit(
                    train_ds,
                    validation_data=val_ds,
                    initial_epoch=state.epoch,
                    epochs=epochs,
                    verbose=0,
                    shuffle=False,
                    callbacks=[keras.callbacks.TerminateOnNaN(), reporter.callback],
                )
            except Exception as err:  # noqa: BLE001 - only device OOM is handled, rest re-raised
                reporter.discard_model_write()  # the epoch failed before its report
                # The report in flight first: when Ray stopped the trial (SystemExit) or the
                # report failed, that ends the trial, not what the epoch after it did.
                reporter.settle()
                if not run.backend.is_out_of_memory(err):
                    raise
                if state.oom_retried or state.batch_size < 2:
                    attempt.fail(
                        "oom",
                        f"out of device memory at batch_size="
                        f"{state.batch_size}: {str(err).splitlines()[0][:200]}",
                    )
                    return
                # Retry once with half the batch; the learning rate follows linearly so the
                # update size per example stays the same. The failed epoch may have changed
                # some weights before running out of memory: continue from the last checkpoint
                # (its weights, optimizer state and epoch), not from the model in memory; the
                # epochs since it are trained again.
                source = checkpoints.last_completed
                saved = TrainingState.from_json(read_state(source)) if source else TrainingState()
                state.epoch, state.last_metrics = saved.epoch, saved.last_metrics
                state.oom_retried = True
                state.batch_size //= 2
                state.learning_rate /= 2
                del model
                keras.backend.clear_session()
                model, train_ds, val_ds = build()
                model.optimizer.learning_rate.assign(state.learning_rate)
        reporter.settle()  # the last epoch's report
    finally:
        # Never leave a report reading a checkpoint folder that is about to be removed.
        reporter.join()


class _EpochReporter:
    """Reports each epoch of a ``fit`` to Ray Tune from Keras's ``on_epoch_end``, writing a
    checkpoint (weights and optimizer state) when the policy says so, and ends the trial on a
    NaN/inf loss.

    A checkpoint's model is written in a background thread from the start of the epoch's
    validation (the variables are final for the epoch by then), where the backend allows it;
    on a GPU the epoch's end waits only for the variables' copy to host memory and the
    writing goes on beside the next epoch, on the CPU it waits for the whole write
    (:class:`ModelWrite`).

    ``tune.report`` runs in a thread of its own while the next epoch trains, after the
    checkpoint's writing (on a GPU): that, Ray's copy of the checkpoint into storage (an
    upload on a cluster) and the driver's answer no longer hold up the device. One report is
    in flight at a time; the next epoch's end, the end of ``fit`` and any error wait for it
    first. When ASHA stops the trial, Ray ends that call with
    ``SystemExit``: the reporter then stops ``fit`` at its next step and raises
    ``SystemExit`` in the trial's thread, which leaves ``fit`` and the trial (the epoch begun
    meanwhile is dropped, never reported). Any other error of the report is raised the same
    way.
    """

    def __init__(
        self,
        keras: Any,
        attempt: _Attempt,
        checkpoints: _LocalCheckpoints,
        policy: CheckpointPolicy,
        train_images: int,
        *,
        save_during_validation: bool = True,
        write_beside_training: bool = False,
    ) -> None:
        self.failed = False
        self.epoch_began = self.train_seconds = 0.0
        self.last_checkpoint_at = attempt.began  # the attempt's start counts as one
        self.model_write: ModelWrite | None = None
        self.save_during_validation = save_during_validation
        self.write_beside_training = write_beside_training
        self._in_flight: threading.Thread | None = None
        self._report_error: BaseException | None = None
        reporter = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                reporter.epoch_began = time.perf_counter()
                reporter.train_seconds = 0.0

            def on_test_begin(self, logs: Any = None) -> None:
                # Not a validation for an epoch that will never be reported.
                reporter.raise_if_report_failed()
                # Validation starts: the epoch's training part ends (for images_per_s).
                if not reporter.train_seconds:
                    reporter.train_seconds = time.perf_counter() - reporter.epoch_began
                    reporter.validation_began(self.model)

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                reporter.epoch_end(self.model, dict(logs or {}))

        self.callback = Callback()
        self.attempt, self.checkpoints, self.policy = attempt, checkpoints, policy
        self.train_images = train_images

    def checkpoint_due(self, epoch: int) -> bool:
        return self.policy.due(epoch, time.perf_counter() - self.last_checkpoint_at)

    def validation_began(self, model: Any) -> None:
        """Starts writing the model when this epoch will report a checkpoint."""
        if (
            self.save_during_validation
            and self.model_write is None
            and self.checkpoint_due(self.attempt.state.epoch + 1)
        ):
            self.model_write = self._model_write(model)

    def _model_write(self, model: Any) -> ModelWrite:
        return ModelWrite(model, beside_training=self.write_beside_training)

    def discard_model_write(self) -> None:
        """Drops a model write begun for an epoch that will not report it."""
        if self.model_write is not None:
            self.model_write.discard()
            self.model_write = None

    def epoch_end(self, model: Any, logs: dict[str, Any]) -> None:
        state, attempt = self.attempt.state, self.attempt
        elapsed = time.perf_counter() - self.epoch_began
        # The last report first: it may have ended the trial, and only one is in flight.
        try:
            self.settle()
        except BaseException:
            self.discard_model_write()  # this epoch will not be reported
            raise
        state.epoch += 1
        metrics = {m: float(logs.get(m, float("nan"))) for m in METRICS}
        if not all(math.isfinite(metrics[k]) for k in ("loss", "val_loss")):
            self.discard_model_write()
            self.failed = True
            model.stop_training = True
            attempt.fail("nan_loss", f"loss became {metrics['loss']} at epoch {state.epoch}")
            return
        state.last_metrics = metrics
        attempt.count_held_time()
        checkpoint_write = None
        waited = 0.0
        if self.model_write is not None or self.checkpoint_due(state.epoch):
            began = time.perf_counter()
            checkpoint_write = self.model_write or self._model_write(model)
            self.model_write = None
            # The next epoch may change the variables once the write has them; the rest of
            # the writing (beside the next epoch, on a GPU) the report waits for.
            checkpoint_write.wait_until_copied()
            self.last_checkpoint_at = time.perf_counter()
            waited = self.last_checkpoint_at - began
            attempt.count_held_time()  # the report counts the wait for the copy too
        report = attempt.report(
            epoch=state.epoch,
            **metrics,
            epoch_seconds=elapsed,
            checkpoint_seconds=waited,
            images_per_s=self.train_images / max(self.train_seconds or elapsed, 1e-9),
        )
        # The state as of this epoch: the next one changes ``state`` while the report runs.
        self._send(
            model, report.as_dict(), checkpoint_write, TrainingState.from_json(state.to_json())
        )

    def _send(
        self,
        model: Any,
        metrics: dict[str, Any],
        checkpoint_write: ModelWrite | None,
        saved_state: TrainingState,
    ) -> None:
        """Starts ``tune.report`` in a background thread (see the class docs), after the
        epoch's checkpoint, if any, is written."""

        def deliver() -> None:
            try:
                checkpoint = None
                if checkpoint_write is not None:
                    self.checkpoints.replace_latest(
                        write_checkpoint(model, saved_state, started=checkpoint_write)
                    )
                    checkpoint = tune.Checkpoint.from_directory(cast(str, self.checkpoints.latest))
                tune.report(metrics, checkpoint=checkpoint)
            except BaseException as err:  # noqa: BLE001 - raised in the trial's thread by settle()
                self._report_error = err
                # Ray stopped the trial (SystemExit) or the report failed: this attempt is over
                # (a retry restores from storage), and Ray may end the process before the
                # epoch in progress reaches its next step, so the local copies go now; the
                # trial's thread touches them only after waiting for this one.
                self.checkpoints.remove_all()
                # The epoch that is training now will never be reported: leave fit at its
                # next step.
                model.stop_training = True
                model.stop_evaluating = True

        self._in_flight = threading.Thread(target=deliver, name="trial-report", daemon=True)
        self._in_flight.start()

    def settle(self) -> None:
        """Waits for the report in flight, if any; raises what it raised (``SystemExit``
        when Ray stopped the trial)."""
        self.join()
        error, self._report_error = self._report_error, None
        if error is not None:
            raise error

    def raise_if_report_failed(self) -> None:
        """Raises what the last report raised once it has ended; never waits."""
        if self._in_flight is None or not self._in_flight.is_alive():
            self.settle()

    def join(self) -> None:
        """Waits for the report in flight, if any, without raising."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.join()
