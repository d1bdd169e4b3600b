"""Getting a search's result out: best configs, results tables and the best model.

``export_experiment`` reads an experiment folder (local or cloud, through pyarrow) and writes,
atomically, into one output folder:

- ``best_config.yaml``: a complete, runnable spec with every searched setting fixed to the best
  trial's value, with a metadata comment block; ``top_configs.yaml``: the K best, one YAML
  document each.
- ``trials.parquet`` / ``trials.csv``: one row per trial; ``history.parquet`` /
  ``history.csv``: one row per trial-epoch. Plain Arrow types, readable without this package.
- ``best_model.keras``: the best trial's model from its best checkpoint, loadable with plain
  ``keras.saving.load_model`` (standard Keras layers only), taking [0,1] images.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from typing import Any, cast

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

import search
from search import storage
from search._validate import echo
from search.errors import SpecError
from search.outputs.experiment import (
    CLASS_NAMES_FILE,
    load_experiment_spec,
    read_class_names,
    write_class_names,
)
from search.outputs.lock import is_running
from search.outputs.results import TrialRecord, load_trials, rank_trials
from search.outputs.study import METRIC, MODE, REBUILT_FROM_STUDY, TIME_ATTR
from search.spec import ExperimentSpec
from search.trial.checkpoint import KERAS_CONFIG_FILE, LEGACY_MODEL_FILE, MODEL_DIR, STATE_FILE
from search.trial.report import METRICS

CONFIG_COLUMNS_PREFIX = "config."
BEST_MODEL_FILE = "best_model.keras"


@dataclass
class ExportResult:
    """What ``export_experiment`` wrote."""

    out_dir: str
    files: list[str] = field(default_factory=list)
    best: TrialRecord | None = None
    tracked: str = ""  # where the files were logged (MLflow), when the spec tracks


def _write_text(out_dir: str, file_name: str, text: str) -> str:
    with (
        storage.atomic_path(storage.confined(out_dir, file_name)) as tmp,
        open(tmp, "w", encoding="utf-8") as handle,
    ):
        handle.write(text)
    return file_name


# --------------------------------------------------------------------------------------------
# configs


def fixed_spec(spec: ExperimentSpec, config: dict[str, Any]) -> dict[str, Any]:
    """The spec with every searched setting fixed to ``config``'s value: one runnable config.

    Conditional settings a trial never drew (``input_conv_filters`` with no input convs) fall
    back to the model's defaults, which had no effect on it either.
    """
    from model_zoo import MODEL_KEYS

    data = spec.to_dict()
    model, train = dict(data["model"]), dict(data["train"])
    for key, value in config.items():
        if key in MODEL_KEYS:
            model[key] = value
        else:
            train[key] = value
    data.update(model=model, train=train, space={})
    data.pop("tracking", None)  # a retrain of one config is not a search to track
    data["search"] = {**data["search"], "num_samples": 1, "baseline": False}
    return data


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"finetune-search": search.__version__}
    for package in ("tensorflow", "keras", "ray", "optuna"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def _metadata(
    spec: ExperimentSpec,
    trial: TrialRecord,
    rank: int,
    max_t: int,
    class_names: list[str] | None = None,
) -> dict:
    best = trial.best
    meta = {
        "experiment": spec.name,
        "trial_id": trial.trial_id,
        "rank": rank,
        "metric": METRIC,
        "mode": MODE,
        METRIC: best.get(METRIC),
        "epoch_of_best": best.get(TIME_ATTR),
        "epochs_run": trial.epochs_run,
        "max_t": max_t,
        "status": trial.status(max_t).value,
        "versions": _versions(),
    }
    if class_names is not None:
        meta["class_names"] = list(class_names)
    return meta


def config_document(
    spec: ExperimentSpec, trial: TrialRecord, rank: int, class_names: list[str] | None = None
) -> str:
    """One runnable spec as YAML, with its provenance (and the model's class names, in label
    order, when known) as a comment block."""
    meta = _metadata(spec, trial, rank, spec.max_t, class_names)
    header = "\n".join(
        f"# {line}"
        for line in yaml.safe_dump({"finetune_search_export": meta}, sort_keys=False).splitlines()
    )
    body = yaml.safe_dump(fixed_spec(spec, trial.config), sort_keys=False)
    return f"{header}\n{body}"


def read_metadata(config_text: str) -> dict[str, Any]:
    """The metadata comment block of an exported config."""
    lines = [line[2:] for line in config_text.splitlines() if line.startswith("# ")]
    data = yaml.safe_load("\n".join(lines)) if lines else None
    return (data or {}).get("finetune_search_export", {})


# --------------------------------------------------------------------------------------------
# tables


def _cell(value: Any) -> Any:
    """A value Arrow can hold in a plain column (nested values as JSON text)."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return value


def trials_table(trials: list[TrialRecord], max_t: int) -> pa.Table:
    """One row per trial: config columns, final and best metrics, status, costs."""
    keys = sorted({k for t in trials for k in t.config})
    rows = []
    for trial in trials:
        final, best = trial.final, trial.best
        row = {
            "trial_id": trial.trial_id,
            "round": trial.round,
            "status": trial.status(max_t).value,
            "stop_reason": trial.stop_reason(max_t),
            "epochs_run": trial.epochs_run,
            **{f"final_{m}": final.get(m) for m in METRICS},
            **{f"best_{m}": best.get(m) for m in METRICS},
            "best_epoch": best.get(TIME_ATTR),
            "wall_seconds": trial.wall_seconds,
            "gpu_seconds": trial.gpu_seconds,
            "oom_retried": any(bool(r.get("oom_retried")) for r in trial.history),
            "batch_size": int(final.get("batch_size", 0) or 0) or None,
            "backend": final.get("backend") or None,  # the Keras backend it trained on
        }
        for key in keys:
            row[CONFIG_COLUMNS_PREFIX + key] = _cell(trial.config.get(key))
        rows.append(row)
    return _table(rows)


def history_table(trials: list[TrialRecord]) -> pa.Table:
    """One row per trial-epoch."""
    rows = []
    for trial in trials:
        for row in trial.history:
            rows.append(
                {
                    "trial_id": trial.trial_id,
                    "epoch": int(row.get(TIME_ATTR, 0)),
                    **{m: row.get(m) for m in METRICS},
                    "images_per_s": row.get("images_per_s"),
                    "wall_seconds": row.get("wall_seconds"),
                    "gpu_seconds": row.get("gpu_seconds"),
                    "trial_failed": bool(row.get("trial_failed", False)),
                    "backend": row.get("backend") or None,
                    "timestamp": row.get("timestamp"),
                }
            )
    return _table(rows)


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    if not rows:
        return pa.table({})
    columns = list(dict.fromkeys(k for row in rows for k in row))
    # Mixed int/float columns become float so Arrow keeps one type per column.
    data = {}
    for column in columns:
        values = [row.get(column) for row in rows]
        if any(isinstance(v, float) for v in values) and all(
            v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        ):
            values = [None if v is None else float(v) for v in values]
        data[column] = values
    return pa.table(data)


def _write_table(out_dir: str, stem: str, table: pa.Table) -> list[str]:
    with storage.atomic_path(storage.confined(out_dir, f"{stem}.parquet")) as tmp:
        pq.write_table(table, tmp)
    with storage.atomic_path(storage.confined(out_dir, f"{stem}.csv")) as tmp:
        pacsv.write_csv(table, tmp)
    return [f"{stem}.parquet", f"{stem}.csv"]


# --------------------------------------------------------------------------------------------
# the best model


def best_checkpoint(trial: TrialRecord, fs: storage.pafs.FileSystem | None = None) -> str | None:
    """The trial's checkpoint folder with the best metric (Ray keeps the best and the
    latest).

    Args:
        trial: A trial record; its ``path`` is a path on ``fs``.
        fs: The experiment's filesystem (a cloud experiment's paths carry no scheme, so
            they cannot tell it); ``None`` for a local experiment.
    """
    if fs is None:
        fs, _ = storage.filesystem(trial.path)
    best_path, best_value = None, None
    for info in storage.list_dir(fs, trial.path):
        if not info.base_name.startswith("checkpoint_"):
            continue
        state_path = storage.join(info.path, STATE_FILE)
        if not storage.exists(fs, state_path):
            continue
        state = json.loads(storage.read_text(fs, state_path))
        value = state.get("last_metrics", {}).get(METRIC)
        if value is not None and (
            best_value is None or (value > best_value if MODE == "max" else value < best_value)
        ):
            best_path, best_value = info.path, value
    return best_path


def _copy_model(trial: TrialRecord, experiment_dir: str, out_dir: str) -> str:
    fs, _ = storage.filesystem(experiment_dir)
    checkpoint = best_checkpoint(trial, fs)
    if checkpoint is None:
        lost = any(row.get(REBUILT_FROM_STUDY) for row in trial.history)
        why = (
            (
                " (its results were rebuilt from the study after its driver was killed; its "
                "checkpoints were lost): retrain its config from best_config.yaml, or export "
                "with --no-model"
            )
            if lost
            else ""
        )
        raise SpecError(
            f"{experiment_dir}: trial {trial.trial_id} has no checkpoint to export{why}"
        )
    with storage.atomic_path(storage.confined(out_dir, BEST_MODEL_FILE)) as tmp:
        write_keras_file(fs, checkpoint, tmp)
    return BEST_MODEL_FILE


def write_keras_file(fs: storage.pafs.FileSystem, checkpoint: str, target: str) -> None:
    """Writes a checkpoint's model as one ``.keras`` file at the local path ``target``."""
    model_dir = storage.join(checkpoint, MODEL_DIR)
    if storage.exists(fs, storage.join(model_dir, KERAS_CONFIG_FILE)):
        zip_keras_folder(fs, model_dir, target)
        return
    # A checkpoint written before 2026-11-30 holds the .keras file itself.
    with (
        fs.open_input_stream(storage.join(checkpoint, LEGACY_MODEL_FILE)) as src,
        open(target, "wb") as dst,
    ):
        shutil.copyfileobj(src, dst)


def zip_keras_folder(fs: storage.pafs.FileSystem, model_dir: str, target: str) -> None:
    """Writes a model saved in Keras's unzipped format as a ``.keras`` file: the same files,
    stored (not compressed) at the archive's root, as ``model.save`` lays them out."""
    selector = storage.pafs.FileSelector(model_dir, recursive=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
        for info in sorted(fs.get_file_info(selector), key=lambda i: i.path):
            if info.type != storage.FileType.File:
                continue
            name = info.path[len(model_dir.rstrip("/")) + 1 :]
            with fs.open_input_stream(info.path) as src, archive.open(name, "w") as dst:
                shutil.copyfileobj(src, dst)


# --------------------------------------------------------------------------------------------


def load_experiment(experiment_dir: str) -> tuple[ExperimentSpec, list[TrialRecord]]:
    """The spec and trials of a finished experiment folder.

    Raises:
        SpecError: When the folder is missing, empty, not ours, still running, or holds no
            trial with a result.
    """
    spec = load_experiment_spec(experiment_dir)
    if is_running(experiment_dir):
        raise SpecError(
            f"{experiment_dir}: the search is still running; export it when it "
            f"ends (or stop it with Ctrl-C)"
        )
    trials = load_trials(experiment_dir)
    if not trials:
        raise SpecError(f"{experiment_dir}: no trial has started yet; nothing to export")
    return spec, trials


def export_experiment(
    experiment_dir: str, out_dir: str | None = None, top: int = 5, with_model: bool = True
) -> ExportResult:
    """Exports an experiment's best configs, its results tables and its best model.

    Args:
        experiment_dir: The experiment folder (local path or URI).
        out_dir: Where to write (a local folder); default ``<experiment_dir>/export`` for a
            local experiment, ``./<name>-export`` for one on cloud storage.
        top: How many configs ``top_configs.yaml`` holds.
        with_model: Also write ``best_model.keras``.

    Returns:
        What was written.

    Raises:
        SpecError: On a missing/empty/running experiment, or a bad ``top``.
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise SpecError(f"top: must be an int >= 1, got {echo(top)}", key="top")
    spec, trials = load_experiment(experiment_dir)
    if out_dir is None:
        out_dir = (
            os.path.abspath(f"{spec.name}-export")
            if storage.is_remote(experiment_dir)
            else os.path.join(experiment_dir, "export")
        )
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SpecError(f"out_dir: must be a folder, got the file {out_dir}", key="out_dir")
    os.makedirs(out_dir, exist_ok=True)

    ranked = rank_trials(trials)
    result = ExportResult(out_dir=out_dir, best=ranked[0] if ranked else None)
    result.files += _write_table(out_dir, "trials", trials_table(trials, spec.max_t))
    result.files += _write_table(out_dir, "history", history_table(trials))
    if not ranked:
        return result
    class_names = read_class_names(experiment_dir)
    result.files.append(
        _write_text(out_dir, "best_config.yaml", config_document(spec, ranked[0], 1, class_names))
    )
    documents = [config_document(spec, t, i + 1, class_names) for i, t in enumerate(ranked[:top])]
    result.files.append(_write_text(out_dir, "top_configs.yaml", "---\n".join(documents)))
    if with_model:
        result.files.append(_copy_model(ranked[0], experiment_dir, out_dir))
        if class_names is not None:
            # Beside the model, so `predict` names its outputs wherever the folder goes.
            write_class_names(out_dir, class_names)
            result.files.append(CLASS_NAMES_FILE)
    if spec.tracking is not None:
        from search.outputs.tracking import log_export

        logged = [f for f in result.files if f.endswith((".keras", ".yaml", ".json"))]
        result.tracked = log_export(
            spec,
            experiment_dir,
            out_dir,
            logged,
            ranked[0].trial_id,
            cast(float, ranked[0].best_value),
        )
    return result
