"""``finetune-search predict``: an exported model (or a retrained one) on image files.

Images are decoded exactly as the folder dataset decodes them
(:func:`search.data.sources.decode_image`: RGB, resized bilinearly to the model's input size,
then scaled to [0, 1]) and predicted in batches. The class names come from the
``class_names.json`` that export and retrain write beside the model. An image that cannot be
read is reported (one line each) and skipped; the others are still predicted.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from search import storage
from search._validate import echo, one_line
from search.errors import DataError, SpecError
from search.outputs.experiment import CLASS_NAMES_FILE, read_class_names

OUTPUT_FORMATS = (".csv", ".json")


@dataclass
class Prediction:
    """One image's top classes, most probable first."""

    path: str
    top: list[tuple[str, float]]


@dataclass
class PredictResult:
    """What ``predict_images`` found: the predictions, the skipped images and their reasons,
    and whether the class names came from ``class_names.json`` (else they are label ids)."""

    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    named_classes: bool = True


def collect_images(inputs: Sequence[str]) -> list[Path]:
    """The image files named by ``inputs``: files as given, folders searched recursively for
    ``.png``/``.jpg``/``.jpeg`` files (sorted).

    Raises:
        SpecError: When an input does not exist, or nothing at all is found.
    """
    from search.data.sources import IMAGE_EXTENSIONS

    found: list[Path] = []
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
        elif path.exists():
            found.append(path)
        else:
            raise SpecError(f"images: {echo(text)} does not exist", key="images")
    if not found:
        raise SpecError(
            f"images: no .png/.jpg/.jpeg file in {', '.join(map(echo, inputs))}", key="images"
        )
    return found


def check_model_file(model_path: str) -> None:
    """Raises ``SpecError`` when ``model_path`` is not a file (before anything slow runs)."""
    if not os.path.isfile(model_path):
        raise SpecError(
            f"model: {echo(model_path)} is not a file (expected the "
            f"best_model.keras of an export, or a retrain's model.keras)",
            key="model",
        )


def load_model(model_path: str) -> Any:
    """Loads a ``.keras`` model with plain Keras, as a deployment would.

    Raises:
        SpecError: When the file is missing or is not a Keras model with a fixed image size.
    """
    check_model_file(model_path)
    import keras

    try:
        model = keras.saving.load_model(model_path)
    except Exception as err:  # noqa: BLE001 - Keras raises many types for a bad file
        raise SpecError(
            f"model: cannot load {model_path} as a Keras model ({one_line(err)})", key="model"
        ) from None
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] != 3 or None in shape[1:3]:
        raise SpecError(
            f"model: {model_path} must take (height, width, 3) images of a fixed "
            f"size, got input shape {shape}",
            key="model",
        )
    return model


def _class_names(model_path: str, num_classes: int) -> tuple[list[str], bool]:
    names = read_class_names(os.path.dirname(os.path.abspath(model_path)))
    if names is None:
        return [str(i) for i in range(num_classes)], False
    if len(names) != num_classes:
        raise SpecError(
            f"{CLASS_NAMES_FILE}: names {len(names)} classes but the model "
            f"{model_path} outputs {num_classes}"
        )
    return names, True


def predict_images(
    model_path: str,
    inputs: Sequence[str],
    *,
    top: int = 3,
    batch_size: int = 64,
    on_skip: Callable[[str, str], None] | None = None,
) -> PredictResult:
    """Predicts the top classes of every readable image.

    Args:
        model_path: A ``.keras`` file (export's ``best_model.keras``, retrain's
            ``model.keras``).
        inputs: Image files and folders.
        top: How many classes to give per image (at most the model's number of classes).
        batch_size: Images decoded and predicted at once.
        on_skip: Called with (path, reason) for each image that cannot be read, as it happens.

    Returns:
        The predictions in input order, and the skipped images.

    Raises:
        SpecError: On a missing or unusable model, a missing input, or a bad ``top``.
    """
    from search.data.sources import decode_image
    from search.data.split import to_unit_float

    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise SpecError(f"top: must be an int >= 1, got {echo(top)}", key="top")
    check_model_file(model_path)
    files = collect_images(inputs)
    model = load_model(model_path)
    size = (int(model.input_shape[1]), int(model.input_shape[2]))
    num_classes = int(model.output_shape[-1])
    if top > num_classes:
        raise SpecError(f"top: must be <= the model's {num_classes} classes, got {top}", key="top")
    names, named = _class_names(model_path, num_classes)
    result = PredictResult(named_classes=named)
    for start in range(0, len(files), batch_size):
        images, paths = [], []
        for path in files[start : start + batch_size]:
            try:
                images.append(decode_image(path, str(path), size))
                paths.append(str(path))
            except DataError as err:
                result.skipped.append((str(path), str(err)))
                if on_skip is not None:
                    on_skip(str(path), str(err))
        if not images:
            continue
        probabilities = np.asarray(model.predict(to_unit_float(np.stack(images)), verbose=0))
        for shown, row in zip(paths, probabilities):
            best = np.argsort(-row, kind="stable")[:top]
            result.predictions.append(
                Prediction(path=shown, top=[(names[i], float(row[i])) for i in best])
            )
    if not result.predictions:
        raise SpecError(f"images: none of the {len(files)} images could be read", key="images")
    return result


def predictions_csv(result: PredictResult, top: int) -> str:
    """One row per image: ``path, class_1, probability_1, ..., class_K, probability_K``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["path", *[f"{kind}_{i}" for i in range(1, top + 1) for kind in ("class", "probability")]]
    )
    for prediction in result.predictions:
        writer.writerow(
            [
                prediction.path,
                *[
                    f"{v:.6f}" if isinstance(v, float) else v
                    for pair in prediction.top
                    for v in pair
                ],
            ]
        )
    return buffer.getvalue()


def predictions_json(result: PredictResult) -> str:
    """The predictions and the skipped images as JSON."""
    return (
        json.dumps(
            {
                "predictions": [
                    {"path": p.path, "top": [{"class": c, "probability": v} for c, v in p.top]}
                    for p in result.predictions
                ],
                "skipped": [{"path": path, "reason": reason} for path, reason in result.skipped],
            },
            indent=2,
        )
        + "\n"
    )


def check_output_path(out: str) -> str:
    """``out``'s format (``.csv`` or ``.json``), checked before any work is done.

    Raises:
        SpecError: When ``out`` has another suffix or is a folder.
    """
    suffix = os.path.splitext(out)[1].lower()
    if suffix not in OUTPUT_FORMATS:
        raise SpecError(
            f"out: must end in {' or '.join(OUTPUT_FORMATS)}, got {echo(out)}", key="out"
        )
    if os.path.isdir(out):
        raise SpecError(f"out: must be a file, got the folder {out}", key="out")
    return suffix


def write_predictions(result: PredictResult, out: str, top: int) -> None:
    """Writes the predictions to ``out`` (``.csv`` or ``.json``, atomically)."""
    suffix = check_output_path(out)
    text = predictions_json(result) if suffix == ".json" else predictions_csv(result, top)
    storage.write_atomic(os.path.abspath(out), text)
