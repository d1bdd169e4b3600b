"""The spec's ``dataset:`` section: which images to train on and how to split them."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from search._validate import check_keys, echo, is_finite, is_int
from search.errors import SpecError

DATASET_NAMES = ("cifar10", "cifar100", "digits", "folder", "parquet", "npz")
LABEL_MODES = ("fine", "coarse")
DEFAULT_WHERE = "dataset"


@dataclass(frozen=True)
class DatasetSpec:
    """Which images to train on and how to split them (the spec's ``dataset:`` section).

    Attributes:
        name: One of ``DATASET_NAMES``.
        path: A file, folder or URI; required for folder, parquet and npz, optional for CIFAR
            (Keras's cache is used without it), refused for digits.
        val_fraction: Share of the training pool held out for validation, in (0, 1).
        subset: Keep at most this many examples of the training pool (before the validation
            split), stratified; ``None`` keeps all. For quick runs.
        seed: Seeds the subset and the validation split.
        label_mode: ``fine`` (100 classes) or ``coarse`` (20); cifar100 only.
        image_size: ``(height, width)`` that folder images and encoded Parquet images are
            resized to; flat Parquet pixel lists are read with this shape.
        image_column: Parquet column holding the images.
        label_column: Parquet column holding the labels.
    """

    name: str
    path: str | None = None
    val_fraction: float = 0.1
    subset: int | None = None
    seed: int = 0
    label_mode: str = "fine"
    image_size: tuple[int, int] = (32, 32)
    image_column: str = "image"
    label_column: str = "label"

    def __post_init__(self) -> None:
        # Direct construction gets the same checks as a config file.
        values = _check_spec_values(
            {f.name: getattr(self, f.name) for f in fields(self)}, DEFAULT_WHERE
        )
        for key, value in values.items():
            object.__setattr__(self, key, value)

    @classmethod
    def from_mapping(cls, mapping: Any, where: str = DEFAULT_WHERE) -> DatasetSpec:
        """Builds a spec from a config mapping, checking every key and value.

        Args:
            mapping: The ``dataset:`` section, e.g. ``{"name": "digits", "subset": 500}``.
            where: Prefix for error messages (the section's place in the config).

        Returns:
            The validated spec.

        Raises:
            SpecError: For an unknown key (the closest valid key is suggested), a missing
                ``name``, or a value of the wrong type or range.
        """
        if not isinstance(mapping, Mapping):
            raise SpecError(
                f"{where}: must be a mapping such as {{name: digits}}, "
                f"got {type(mapping).__name__}"
            )
        check_keys(mapping, [f.name for f in fields(cls)], where)
        if "name" not in mapping:
            raise SpecError(f"{where}.name: is required, one of {', '.join(DATASET_NAMES)}")
        defaults = {f.name: f.default for f in fields(cls) if f.name != "name"}
        return cls(**_check_spec_values({**defaults, **mapping}, where))


def _check_spec_values(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Checks and normalises a full set of DatasetSpec values; error keys start with `where`."""
    out = dict(values)
    name = values["name"]
    if not isinstance(name, str) or name not in DATASET_NAMES:
        close = difflib.get_close_matches(str(name), DATASET_NAMES, n=1)
        hint = f" (did you mean {echo(close[0])}?)" if close else ""
        raise SpecError(
            f"{where}.name: must be one of {', '.join(DATASET_NAMES)}, got {echo(name)}{hint}"
        )

    path = values["path"]
    if isinstance(path, os.PathLike):
        path = out["path"] = os.fspath(path)
    if path is not None and (not isinstance(path, str) or not path.strip()):
        raise SpecError(f"{where}.path: must be a non-empty string, got {echo(path)}")
    if path is None and name in ("folder", "parquet", "npz"):
        raise SpecError(f"{where}.path: is required for name {echo(name)}")
    if path is not None and name == "digits":
        raise SpecError(
            f"{where}.path: digits is bundled with scikit-learn and takes no path, "
            f"got {echo(path)}"
        )

    fraction = values["val_fraction"]
    if not is_finite(fraction) or not 0 < fraction < 1:
        raise SpecError(f"{where}.val_fraction: must be a float in (0, 1), got {echo(fraction)}")
    out["val_fraction"] = float(fraction)

    subset = values["subset"]
    if subset is not None and (not is_int(subset) or subset < 1):
        raise SpecError(f"{where}.subset: must be a positive int or null, got {echo(subset)}")
    out["subset"] = None if subset is None else int(subset)

    seed = values["seed"]
    if not is_int(seed) or not 0 <= seed < 2**32:
        raise SpecError(f"{where}.seed: must be an int in [0, 2**32), got {echo(seed)}")
    out["seed"] = int(seed)

    mode = values["label_mode"]
    if mode not in LABEL_MODES:
        raise SpecError(
            f"{where}.label_mode: must be one of {', '.join(LABEL_MODES)}, got {echo(mode)}"
        )
    if mode != "fine" and name != "cifar100":
        raise SpecError(
            f"{where}.label_mode: only applies to cifar100, got {echo(mode)} for name {echo(name)}"
        )

    size = values["image_size"]
    if (
        not isinstance(size, Sequence)
        or isinstance(size, str)
        or len(size) != 2
        or not all(is_int(v) and v > 0 for v in size)
    ):
        raise SpecError(
            f"{where}.image_size: must be [height, width] with positive ints, got {echo(size)}"
        )
    out["image_size"] = (int(size[0]), int(size[1]))

    for key in ("image_column", "label_column"):
        if not isinstance(values[key], str) or not values[key]:
            raise SpecError(f"{where}.{key}: must be a non-empty string, got {echo(values[key])}")
    return out
