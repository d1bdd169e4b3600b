"""Image-classification datasets, loaded once as plain NumPy arrays that every trial shares.

``DatasetSpec`` is the ``dataset:`` section of an experiment spec; ``load_dataset`` turns it into
a :class:`Dataset` of float32 NHWC images in [0, 1] with 3 channels and int32 labels, split into
train / validation (stratified, from ``seed``) and, where the source has one, test. The driver
hands the ``Dataset`` to ``tune.with_parameters``, which puts it in Ray's object store once;
workers then read the arrays zero-copy (read-only) instead of each holding a copy.
``make_input_pipeline`` builds a trial's ``tf.data`` pipeline over those shared arrays without
copying them whole.

Sources (``name``):

* ``cifar10`` / ``cifar100``: the python-format archive (``cifar-10-python.tar.gz``) or its
  extracted folder at ``path``; without ``path``, Keras's cache (``$KERAS_HOME`` or
  ``~/.keras``, ``datasets/``), downloading there only when it is absent. The pickles are read
  with an unpickler that only builds NumPy arrays, never with plain ``pickle``.
* ``digits``: scikit-learn's bundled 8x8 digits (offline), upscaled to 32x32 by nearest
  neighbour, with a fixed stratified 20% test split.
* ``folder``: ``path/<class_name>/*.png|jpg|jpeg``, or ``path/train/<class_name>/...`` plus an
  optional ``path/test/<class_name>/...`` for a test split. Images are resized to
  ``image_size``; grayscale images are refused.
* ``parquet``: a file, folder or URI (``s3://``, ``gs://``, ``file://``) with an image column
  (encoded PNG/JPEG bytes, a Hugging Face ``{bytes, path}`` struct, nested or flat pixel lists,
  or a fixed-shape tensor) and a label column (int ids or string names); an optional ``split``
  column with values ``train`` / ``test`` gives the test split.
* ``npz``: arrays ``x_train``, ``y_train``, optional ``x_test``/``y_test`` and ``class_names``;
  grayscale images are repeated to 3 channels.
"""

from __future__ import annotations

import codecs
import difflib
import io
import math
import os
import pickle
import tarfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from search.errors import DataError, SpecError

try:  # NumPy >= 2 moved the array-pickling helpers to numpy._core.
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core import multiarray as _multiarray

DATASET_NAMES = ("cifar10", "cifar100", "digits", "folder", "parquet", "npz")
LABEL_MODES = ("fine", "coarse")
AUGMENT_CHOICES = ("none", "flip", "crop", "flip+crop")
DEFAULT_WHERE = "dataset"

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
FOLDER_TRAIN_DIR = "train"
FOLDER_TEST_DIR = "test"
SPLIT_COLUMN = "split"
SPLIT_VALUES = ("train", "test")
NPZ_REQUIRED = ("x_train", "y_train")
NPZ_TEST = ("x_test", "y_test")
NPZ_CLASS_NAMES = "class_names"
# Pillow modes without colour. Converting them would quietly train an RGB model on gray
# copies, so they are refused with a hint instead.
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

DIGITS_IMAGE_SIZE = 32
DIGITS_MAX_VALUE = 16.0
DIGITS_TEST_FRACTION = 0.2
# The digits test split ignores `seed` on purpose: changing the validation split must not
# change the held-out images that retrained models are compared on.
DIGITS_TEST_SEED = 0

CROP_PADDING = 4
PIPELINE_PARALLELISM = 2  # batches gathered/augmented at once
PIPELINE_PREFETCH = 2  # batches ready ahead of the device
CIFAR_IMAGE_SHAPE = (3, 32, 32)  # each row of a CIFAR batch is CHW
CIFAR_ROW_LENGTH = 3 * 32 * 32

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_META_FILE = "batches.meta"
CIFAR100_TRAIN_FILES = ("train",)
CIFAR100_TEST_FILE = "test"
CIFAR100_META_FILE = "meta"

KERAS_HOME_ENV = "KERAS_HOME"
KERAS_DEFAULT_HOME = "~/.keras"
KERAS_FALLBACK_HOME = "/tmp/.keras"  # Keras's choice when the home folder is not writable
KERAS_DATASETS_SUBDIR = "datasets"
# What keras.datasets.cifar10/cifar100.load_data() (Keras 3) pass to keras.utils.get_file, so a
# download made here lands where Keras's own loader looks, and the other way round.
KERAS_CIFAR10_FNAME = "cifar-10-batches-py-target"
KERAS_CIFAR100_FNAME = "cifar-100-python-target"
KERAS_CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
KERAS_CIFAR100_SHA256 = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"
KERAS_ARCHIVE_SUFFIX = "_archive"

# Separate random streams, so that e.g. changing `subset` leaves the test carve-out alone.
_STREAM_TEST, _STREAM_SUBSET, _STREAM_VAL = 0, 1, 2


# --------------------------------------------------------------------------------------------
# Spec


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
        values = _check_spec_values({f.name: getattr(self, f.name) for f in fields(self)},
                                    DEFAULT_WHERE)
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
            raise SpecError(f"{where}: must be a mapping such as {{name: digits}}, "
                            f"got {type(mapping).__name__}")
        valid = [f.name for f in fields(cls)]
        for key in mapping:
            if key not in valid:
                close = difflib.get_close_matches(str(key), valid, n=1)
                hint = (f"did you mean {close[0]!r}?" if close
                        else f"valid keys: {', '.join(valid)}")
                raise SpecError(f"{where}.{key}: unknown key ({hint})")
        if "name" not in mapping:
            raise SpecError(f"{where}.name: is required, one of {', '.join(DATASET_NAMES)}")
        defaults = {f.name: f.default for f in fields(cls) if f.name != "name"}
        return cls(**_check_spec_values({**defaults, **mapping}, where))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, (float, np.floating)) and math.isfinite(value))


def _check_spec_values(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Checks and normalises a full set of DatasetSpec values; error keys start with `where`."""
    out = dict(values)
    name = values["name"]
    if not isinstance(name, str) or name not in DATASET_NAMES:
        close = difflib.get_close_matches(str(name), DATASET_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(f"{where}.name: must be one of {', '.join(DATASET_NAMES)}, "
                        f"got {name!r}{hint}")

    path = values["path"]
    if isinstance(path, os.PathLike):
        path = out["path"] = os.fspath(path)
    if path is not None and (not isinstance(path, str) or not path.strip()):
        raise SpecError(f"{where}.path: must be a non-empty string, got {path!r}")
    if path is None and name in ("folder", "parquet", "npz"):
        raise SpecError(f"{where}.path: is required for name {name!r}")
    if path is not None and name == "digits":
        raise SpecError(f"{where}.path: digits is bundled with scikit-learn and takes no path, "
                        f"got {path!r}")

    fraction = values["val_fraction"]
    if not _is_real(fraction) or not 0 < fraction < 1:
        raise SpecError(f"{where}.val_fraction: must be a float in (0, 1), got {fraction!r}")
    out["val_fraction"] = float(fraction)

    subset = values["subset"]
    if subset is not None and (not _is_int(subset) or subset < 1):
        raise SpecError(f"{where}.subset: must be a positive int or null, got {subset!r}")
    out["subset"] = None if subset is None else int(subset)

    seed = values["seed"]
    if not _is_int(seed) or not 0 <= seed < 2**32:
        raise SpecError(f"{where}.seed: must be an int in [0, 2**32), got {seed!r}")
    out["seed"] = int(seed)

    mode = values["label_mode"]
    if mode not in LABEL_MODES:
        raise SpecError(f"{where}.label_mode: must be one of {', '.join(LABEL_MODES)}, "
                        f"got {mode!r}")
    if mode != "fine" and name != "cifar100":
        raise SpecError(f"{where}.label_mode: only applies to cifar100, got {mode!r} "
                        f"for name {name!r}")

    size = values["image_size"]
    if (not isinstance(size, Sequence) or isinstance(size, str) or len(size) != 2
            or not all(_is_int(v) and v > 0 for v in size)):
        raise SpecError(f"{where}.image_size: must be [height, width] with positive ints, "
                        f"got {size!r}")
    out["image_size"] = (int(size[0]), int(size[1]))

    for key in ("image_column", "label_column"):
        if not isinstance(values[key], str) or not values[key]:
            raise SpecError(f"{where}.{key}: must be a non-empty string, got {values[key]!r}")
    return out


# --------------------------------------------------------------------------------------------
# Dataset


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images and labels ready for training; plain NumPy so it pickles cheaply.

    Images are float32 NHWC in [0, 1] with 3 channels; labels are int32 class ids, 1-D. The
    arrays are read-only, as they are in Ray workers that read them from the object store.

    Attributes:
        x_train: Training images.
        y_train: Training labels.
        x_val: Validation images (stratified from the training pool).
        y_val: Validation labels.
        x_test: Test images, or ``None`` where the source has no test split.
        y_test: Test labels, or ``None``.
        class_names: Name of each class id.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)`` of one image."""
        return tuple(int(d) for d in self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        """Number of classes (some may have no examples in a subset)."""
        return len(self.class_names)

    @property
    def nbytes(self) -> int:
        """Bytes held by all arrays together."""
        arrays = (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test)
        return sum(a.nbytes for a in arrays if a is not None)

    def __repr__(self) -> str:
        test = None if self.x_test is None else self.x_test.shape
        return (f"Dataset(train={self.x_train.shape}, val={self.x_val.shape}, test={test}, "
                f"num_classes={self.num_classes})")


class _Pool(NamedTuple):
    """A source's images before subsetting and the validation split."""

    x: np.ndarray  # NHWC, 3 channels: uint8 0..255 or float32 in [0, 1]
    y: np.ndarray  # int class ids
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: tuple[str, ...]
    source: str  # names the file in error messages


def load_dataset(spec: DatasetSpec) -> Dataset:
    """Loads and splits the images a spec names.

    Args:
        spec: The dataset spec.

    Returns:
        The dataset: stratified train / validation split from ``spec.seed`` (after
        ``spec.subset``), plus the source's test split, which is never mixed into either.

    Raises:
        DataError: When a file is missing, corrupt, unsafe or shaped wrongly, labels are out of
            range, or a class has too few examples to split.
        SpecError: When ``subset`` or ``val_fraction`` leave a class without examples.
    """
    loaders = {"cifar10": _load_cifar, "cifar100": _load_cifar, "digits": _load_digits,
               "folder": _load_folder, "parquet": _load_parquet, "npz": _load_npz}
    return _split(loaders[spec.name](spec), spec)


def _split(pool: _Pool, spec: DatasetSpec) -> Dataset:
    k = len(pool.class_names)
    _check_labels(pool.y, k, pool.source, "training")
    if pool.y_test is not None:
        _check_labels(pool.y_test, k, pool.source, "test")
    y = pool.y
    keep = np.arange(len(y))
    if spec.subset is not None and spec.subset < len(y):
        _, counts = np.unique(y, return_counts=True)
        # Two per class, so that the validation split below can still take one of each.
        need = int(np.minimum(counts, 2).sum())
        if spec.subset < need:
            raise SpecError(f"{DEFAULT_WHERE}.subset: must keep 2 examples of each of the "
                            f"{len(counts)} classes present for a stratified validation split, "
                            f"so at least {need}, got {spec.subset}")
        keep, _ = _stratified_split(y, spec.subset, low=np.minimum(counts, 2), keep_in_rest=0,
                                    rng=_rng(spec.seed, _STREAM_SUBSET))
        y = y[keep]

    classes, counts = np.unique(y, return_counts=True)
    if (counts < 2).any():
        label = int(classes[np.argmax(counts < 2)])
        raise DataError(f"{pool.source}: class {pool.class_names[label]!r} (label {label}) has "
                        f"1 training example; a stratified validation split needs at least 2 "
                        f"per class (one to train on, one to validate)")
    n = len(y)
    n_val = math.ceil(spec.val_fraction * n)
    if n_val < len(classes):
        raise SpecError(f"{DEFAULT_WHERE}.val_fraction: {spec.val_fraction} of {n} training "
                        f"examples is {n_val} for validation, fewer than the {len(classes)} "
                        f"classes; a stratified split needs one of each, so raise val_fraction"
                        + (" or subset" if spec.subset is not None else ""))
    if n - n_val < len(classes):
        raise SpecError(f"{DEFAULT_WHERE}.val_fraction: {spec.val_fraction} of {n} training "
                        f"examples leaves {n - n_val} to train on, fewer than the "
                        f"{len(classes)} classes; lower val_fraction")
    val_local, train_local = _stratified_split(y, n_val, low=np.ones_like(counts),
                                               keep_in_rest=1, rng=_rng(spec.seed, _STREAM_VAL))
    train_idx, val_idx = keep[train_local], keep[val_local]
    has_test = pool.x_test is not None and pool.y_test is not None
    return Dataset(
        x_train=_frozen(_to_unit_float(pool.x[train_idx])),
        y_train=_frozen(pool.y[train_idx].astype(np.int32)),
        x_val=_frozen(_to_unit_float(pool.x[val_idx])),
        y_val=_frozen(pool.y[val_idx].astype(np.int32)),
        x_test=_frozen(_to_unit_float(pool.x_test)) if has_test else None,
        y_test=_frozen(np.asarray(pool.y_test).astype(np.int32)) if has_test else None,
        class_names=tuple(pool.class_names),
    )


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.flags.writeable = False
    return array


def _to_unit_float(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.float32:
        return x
    if x.dtype.kind == "f":
        return x.astype(np.float32)
    out = np.empty(x.shape, dtype=np.float32)
    # A float32 divide keeps 255 -> exactly 1.0 (multiplying by 1/255 can overshoot).
    np.divide(x, np.float32(255), out=out, dtype=np.float32)
    return out


def _check_labels(y: np.ndarray, num_classes: int, source: str, split: str) -> None:
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{source}: {split} labels must be 1-D integer class ids, "
                        f"got {y.dtype} with shape {y.shape}")
    if len(y) == 0:
        raise DataError(f"{source}: has no {split} examples")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        index = int(np.argmax(bad))
        raise DataError(f"{source}: {split} label {int(y[index])} at index {index} is out of "
                        f"range; labels must be in [0, {num_classes}) for {num_classes} classes")


def _stratified_split(y: np.ndarray, n_first: int, *, low: np.ndarray, keep_in_rest: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices of `y` into `n_first` and the rest, keeping class proportions.

    Each class gives the first part at least `low[c]` and leaves at least `keep_in_rest`;
    the caller checks that `n_first` fits those bounds. Both parts come back sorted.
    """
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    alloc = _apportion(counts, n_first, low=low, high=counts - keep_in_rest)
    order = rng.permutation(len(y))
    by_class = order[np.argsort(inverse[order], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(y)) - starts[inverse[by_class]]
    first = rank < alloc[inverse[by_class]]
    return np.sort(by_class[first]), np.sort(by_class[~first])


def _apportion(counts: np.ndarray, total: int, *, low: np.ndarray,
               high: np.ndarray) -> np.ndarray:
    """Largest-remainder apportionment of `total` in proportion to `counts`, within bounds."""
    quota = counts * (total / counts.sum())
    alloc = np.clip(np.floor(quota).astype(np.int64), low, high)
    # One at a time to the class the rounding treated worst; ends because the caller checked
    # sum(low) <= total <= sum(high).
    while (gap := total - int(alloc.sum())) != 0:
        if gap > 0:
            alloc[np.argmax(np.where(alloc < high, quota - alloc, -np.inf))] += 1
        else:
            alloc[np.argmin(np.where(alloc > low, quota - alloc, np.inf))] -= 1
    return alloc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _existing_path(path: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise DataError(f"{DEFAULT_WHERE}.path: {path} does not exist")
    return resolved


# --------------------------------------------------------------------------------------------
# Pixels and images


def _as_nhwc3(x: np.ndarray, source: str, key: str) -> np.ndarray:
    """Checks an image array's shape and values; grayscale is repeated to 3 channels."""
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim == 4 and x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):
        raise DataError(f"{source}: {key} looks channels-first with shape {x.shape}; "
                        f"store it as (N, H, W, 3)")
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or min(x.shape[1:3], default=0) < 1:
        raise DataError(f"{source}: {key} must have shape (N, H, W, 3), (N, H, W, 1) or "
                        f"(N, H, W), got {x.shape}")
    if len(x) == 0:
        raise DataError(f"{source}: {key} holds no images")
    x = _check_pixels(x, source, key)
    if x.shape[-1] == 1:
        # A broadcast view: the split below copies only the rows it keeps.
        x = np.broadcast_to(x, (*x.shape[:3], 3))
    return x


def _check_pixels(x: np.ndarray, source: str, key: str) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind in "iu":
        low, high = int(x.min()), int(x.max())
        if low < 0 or high > 255:
            raise DataError(f"{source}: {key} integer pixels must be in [0, 255], "
                            f"got [{low}, {high}]")
        return x.astype(np.uint8)
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise DataError(f"{source}: {key} has NaN or infinite pixels")
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 1:
            hint = "; divide by 255 or store uint8" if high > 1 else ""
            raise DataError(f"{source}: {key} float pixels must be in [0, 1], "
                            f"got [{low:g}, {high:g}]{hint}")
        return x.astype(np.float32, copy=False)
    raise DataError(f"{source}: {key} must hold uint8 (0..255) or float (0..1) pixels, "
                    f"got {x.dtype}")


def _decode_image(data: Path | bytes, source: str, size: tuple[int, int]) -> np.ndarray:
    """Decodes one PNG/JPEG to uint8 (height, width, 3), resized bilinearly to `size`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as image:
            image.load()  # decode now, so a truncated file fails here and is named
            if image.mode in GRAYSCALE_MODES:
                raise DataError(f"{source}: grayscale image (mode {image.mode}); convert the "
                                f"images to RGB first, e.g. Image.open(p).convert('RGB').save(p)")
            rgb = image.convert("RGB")
            height, width = size
            if rgb.size != (width, height):
                rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except DataError:
        raise
    except UnidentifiedImageError as exc:  # its text is a BytesIO repr for in-memory images
        raise DataError(f"{source}: cannot decode image (not a format Pillow recognises; "
                        f"expected PNG or JPEG)") from exc
    except (Image.DecompressionBombError, OSError, ValueError,
            SyntaxError) as exc:  # PIL reports some broken PNGs as SyntaxError
        raise DataError(f"{source}: cannot decode image ({_one_line(exc)})") from exc


def _decode_images(items: Sequence[Path | bytes], sources: Sequence[str],
                   size: tuple[int, int]) -> np.ndarray:
    out = np.empty((len(items), *size, 3), dtype=np.uint8)
    for i, (item, source) in enumerate(zip(items, sources)):
        out[i] = _decode_image(item, source, size)
    return out


# --------------------------------------------------------------------------------------------
# CIFAR


class _CifarLayout(NamedTuple):
    archive: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    url: str
    keras_fname: str
    keras_sha256: str


_CIFAR = {
    "cifar10": _CifarLayout(CIFAR10_ARCHIVE, CIFAR10_FOLDER, CIFAR10_TRAIN_FILES,
                            CIFAR10_TEST_FILE, CIFAR10_META_FILE, CIFAR10_URL,
                            KERAS_CIFAR10_FNAME, KERAS_CIFAR10_SHA256),
    "cifar100": _CifarLayout(CIFAR100_ARCHIVE, CIFAR100_FOLDER, CIFAR100_TRAIN_FILES,
                             CIFAR100_TEST_FILE, CIFAR100_META_FILE, CIFAR100_URL,
                             KERAS_CIFAR100_FNAME, KERAS_CIFAR100_SHA256),
}


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(str, "latin1").
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, encoding)


def _empty_bytes() -> bytes:
    # Protocol 2 writes b"" as a call to bytes() with no arguments.
    return b""


def _plain_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:  # object arrays could smuggle other objects in
        raise pickle.UnpicklingError(f"refused object dtype {dtype}")
    return dtype


# Everything a CIFAR batch needs: NumPy array reconstruction (NumPy 1 and 2 names) and the
# helpers protocol 2 uses for bytes. Python 2 names (__builtin__) appear in the originals.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "bytes"): _empty_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches and nothing else: any other global is refused, never imported."""

    def __init__(self, file: BinaryIO, source: str) -> None:
        # The originals come from Python 2's cPickle: its str (keys, names) arrive as bytes.
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(f"{self._source}: refused to unpickle {module}.{name}; a CIFAR batch "
                            f"only holds NumPy arrays, so this file may run code when loaded "
                            f"and was not loaded") from None


def _unpickle(file: BinaryIO, source: str) -> Any:
    try:
        return _CifarUnpickler(file, source).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, OverflowError, MemoryError, RecursionError) as exc:
        raise DataError(f"{source}: not a readable CIFAR pickle "
                        f"({type(exc).__name__}: {_one_line(exc)})") from exc


def _str_keys(obj: Any, source: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"{source}: a CIFAR file must hold a dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _cifar_batch(obj: Any, source: str, label_key: str, num_classes: int,
                 split: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _str_keys(obj, source)
    for key in ("data", label_key):
        if key not in batch:
            raise DataError(f"{source}: no {key!r} entry; it has {sorted(batch)}")
    data = batch["data"]
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != CIFAR_ROW_LENGTH):
        got = (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray)
               else type(data).__name__)
        raise DataError(f"{source}: 'data' must be a uint8 array of shape (N, "
                        f"{CIFAR_ROW_LENGTH}), got {got}")
    labels = np.asarray(batch[label_key])
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise DataError(f"{source}: {label_key!r} must be {len(data)} integer labels, one per "
                        f"row of 'data', got {labels.dtype} with shape {labels.shape}")
    _check_labels(labels, num_classes, source, split)  # here, to name the batch file
    # Rows are CHW planes (all red, then green, then blue); Keras and our models want NHWC.
    # A view; the split copies only the rows it keeps.
    return data.reshape(-1, *CIFAR_IMAGE_SHAPE).transpose(0, 2, 3, 1), labels.astype(np.int64)


def _cifar_names(obj: Any, source: str, names_key: str) -> tuple[str, ...]:
    meta = _str_keys(obj, source)
    names = meta.get(names_key)
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(f"{source}: no {names_key!r} list of class names; "
                        f"it has {sorted(meta)}")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def _cifar_members_from_archive(archive: Path, layout: _CifarLayout,
                                wanted: Sequence[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    try:
        # Streaming ("r|*") reads the archive once and never extracts to disk, so member
        # paths cannot escape anywhere.
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                base = name.rsplit("/", 1)[-1]
                if (not member.isfile() or base not in wanted or base in found
                        or name not in (base, f"{layout.folder}/{base}")):
                    continue
                file = tar.extractfile(member)
                if file is not None:
                    found[base] = _unpickle(io.BytesIO(file.read()), f"{archive}:{name}")
    except DataError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{archive}: not a readable CIFAR archive ({_one_line(exc)})") from exc
    missing = [f for f in wanted if f not in found]
    if missing:
        raise DataError(f"{archive}: no {layout.folder}/{missing[0]} in the archive; a "
                        f"{_cifar_title(layout)} archive holds {', '.join(wanted)}")
    return found


def _cifar_members_from_folder(folder: Path, layout: _CifarLayout,
                               wanted: Sequence[str]) -> dict[str, Any]:
    found = {}
    for base in wanted:
        file = folder / base
        if not file.is_file():
            raise DataError(f"{folder}: no {base}; a {_cifar_title(layout)} folder holds "
                            f"{', '.join(wanted)}")
        try:
            with file.open("rb") as handle:
                found[base] = _unpickle(handle, str(file))
        except OSError as exc:
            raise DataError(f"{file}: cannot read ({_one_line(exc)})") from exc
    return found


def _cifar_title(layout: _CifarLayout) -> str:
    return "CIFAR-10" if layout.folder == CIFAR10_FOLDER else "CIFAR-100"


def _keras_home() -> Path:
    return Path(os.environ.get(KERAS_HOME_ENV, KERAS_DEFAULT_HOME)).expanduser()


def _keras_cache_candidates(layout: _CifarLayout) -> Iterator[Path]:
    homes = [_keras_home()]
    if not os.access(homes[0], os.W_OK):
        homes.append(Path(KERAS_FALLBACK_HOME))
    for home in homes:
        cache = home / KERAS_DATASETS_SUBDIR
        yield cache / layout.keras_fname / layout.folder  # Keras 3 get_file(extract=True)
        yield cache / layout.folder  # Keras 2 / tf.keras
        yield cache / layout.archive  # where our error message tells people to put it
        yield cache / f"{layout.keras_fname}{KERAS_ARCHIVE_SUFFIX}"  # Keras 3, not extracted


def _fetch_cifar_with_keras(layout: _CifarLayout) -> Path:
    """Downloads through Keras (hash-checked) into its cache; returns the extracted folder."""
    from keras.utils import get_file  # imports TensorFlow: only on this rare path

    extracted = get_file(fname=layout.keras_fname, origin=layout.url, extract=True,
                         file_hash=layout.keras_sha256, cache_dir=str(_keras_home()))
    return Path(extracted) / layout.folder


def _locate_cifar(spec: DatasetSpec, layout: _CifarLayout) -> Path:
    if spec.path is not None:
        return _existing_path(spec.path)
    for candidate in _keras_cache_candidates(layout):
        if candidate.exists():
            return candidate
    target = _keras_home() / KERAS_DATASETS_SUBDIR / layout.archive
    try:
        return _fetch_cifar_with_keras(layout)
    except Exception as exc:  # noqa: BLE001 - get_file raises bare Exception on network errors
        raise DataError(f"{spec.name}: not in the Keras cache and the download failed "
                        f"({_one_line(exc)}); download {layout.url} and set dataset.path to it, "
                        f"or put it at {target}") from exc


def _load_cifar(spec: DatasetSpec) -> _Pool:
    layout = _CIFAR[spec.name]
    if spec.name == "cifar10":
        label_key, names_key = "labels", "label_names"
    else:
        label_key, names_key = f"{spec.label_mode}_labels", f"{spec.label_mode}_label_names"
    wanted = (*layout.train_files, layout.test_file, layout.meta_file)
    location = _locate_cifar(spec, layout)
    if location.is_dir():
        # Accept both the batches folder itself and a folder that contains it.
        folder = location if (location / layout.meta_file).exists() else location / layout.folder
        if not folder.is_dir():
            raise DataError(f"{location}: neither a {_cifar_title(layout)} folder (with "
                            f"{layout.meta_file}) nor one containing {layout.folder}/")
        members = _cifar_members_from_folder(folder, layout, wanted)
        source = str(folder)
    else:
        members = _cifar_members_from_archive(location, layout, wanted)
        source = str(location)
    names = _cifar_names(members[layout.meta_file], f"{source}:{layout.meta_file}", names_key)
    parts = [_cifar_batch(members[f], f"{source}:{f}", label_key, len(names), "training")
             for f in layout.train_files]
    x_test, y_test = _cifar_batch(members[layout.test_file], f"{source}:{layout.test_file}",
                                  label_key, len(names), "test")
    x = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    y = np.concatenate([p[1] for p in parts])
    return _Pool(x, y, x_test, y_test, names, source)


# --------------------------------------------------------------------------------------------
# digits


def _load_digits(spec: DatasetSpec) -> _Pool:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    scale = DIGITS_IMAGE_SIZE // bunch.images.shape[1]
    # Nearest neighbour: each pixel becomes a scale x scale block, which keeps the 8x8 strokes
    # crisp (bilinear would blur them); the grey level is then copied to 3 channels.
    images = (bunch.images / DIGITS_MAX_VALUE).astype(np.float32)
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    x = np.repeat(images[..., np.newaxis], 3, axis=-1)
    y = bunch.target.astype(np.int64)
    _, counts = np.unique(y, return_counts=True)
    n_test = math.ceil(DIGITS_TEST_FRACTION * len(y))
    test, pool = _stratified_split(y, n_test, low=np.ones_like(counts), keep_in_rest=2,
                                   rng=_rng(DIGITS_TEST_SEED, _STREAM_TEST))
    names = tuple(str(n) for n in bunch.target_names)
    return _Pool(x[pool], y[pool], x[test], y[test], names, "digits")


# --------------------------------------------------------------------------------------------
# folder


def _class_dirs(root: Path) -> list[Path]:
    return sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: d.name)


def _images_in(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _read_class_folders(root: Path, class_names: Sequence[str],
                        size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for class_dir in _class_dirs(root):
        images = _images_in(class_dir)
        if not images:
            raise DataError(f"{class_dir}: class folder {class_dir.name!r} has no "
                            f"{'/'.join(IMAGE_EXTENSIONS)} images")
        files.extend(images)
        labels.extend([class_names.index(class_dir.name)] * len(images))
    x = _decode_images(files, [str(f) for f in files], size)
    return x, np.asarray(labels, dtype=np.int64)


def _load_folder(spec: DatasetSpec) -> _Pool:
    root = _existing_path(spec.path or "")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected {root}/<class_name>/*.png")
    train_root = root / FOLDER_TRAIN_DIR if (root / FOLDER_TRAIN_DIR).is_dir() else root
    class_names = tuple(d.name for d in _class_dirs(train_root))
    if not class_names:
        raise DataError(f"{train_root}: no class folders; put the images in "
                        f"{train_root}/<class_name>/ (png, jpg or jpeg)")
    x, y = _read_class_folders(train_root, class_names, spec.image_size)
    x_test = y_test = None
    test_root = root / FOLDER_TEST_DIR
    if train_root is not root and test_root.is_dir():
        unknown = [d.name for d in _class_dirs(test_root) if d.name not in class_names]
        if unknown:
            raise DataError(f"{test_root}: class folder {unknown[0]!r} is not among the "
                            f"training classes {', '.join(class_names)}")
        x_test, y_test = _read_class_folders(test_root, class_names, spec.image_size)
    return _Pool(x, y, x_test, y_test, class_names, str(root))


# --------------------------------------------------------------------------------------------
# Parquet


def _read_parquet_table(spec: DatasetSpec) -> tuple[Any, str]:
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    location = spec.path or ""
    try:
        if "://" in location:
            filesystem, inner = pafs.FileSystem.from_uri(location)
        else:
            filesystem, inner = pafs.LocalFileSystem(), str(_existing_path(location).resolve())
        if filesystem.get_file_info(inner).type == pafs.FileType.NotFound:
            raise DataError(f"{DEFAULT_WHERE}.path: {location} does not exist")
        dataset = pads.dataset(inner, filesystem=filesystem, format="parquet")
        columns = dataset.schema.names
        missing = [c for c in (spec.image_column, spec.label_column) if c not in columns]
        if missing:
            raise DataError(f"{location}: no column {missing[0]!r} (it has "
                            f"{', '.join(columns) or 'no columns'}); set dataset.image_column / "
                            f"dataset.label_column")
        wanted = [spec.image_column, spec.label_column]
        if SPLIT_COLUMN in columns and SPLIT_COLUMN not in wanted:
            wanted.append(SPLIT_COLUMN)
        table = dataset.to_table(columns=wanted)
    except DataError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{location}: cannot read as Parquet ({_one_line(exc)})") from exc
    if table.num_rows == 0:
        raise DataError(f"{location}: has no rows")
    return table, location


def _parquet_images(column: Any, spec: DatasetSpec, source: str) -> np.ndarray:
    import pyarrow as pa

    name = spec.image_column
    array = column.combine_chunks()
    kind = array.type
    if isinstance(kind, pa.FixedShapeTensorType):
        if array.null_count:
            raise DataError(f"{source}: column {name!r} has {array.null_count} null image(s)")
        pixels = array.to_numpy_ndarray()
        return _pixel_rows(pixels, spec, source)
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        array = array.field("bytes")  # Hugging Face's Image feature: {bytes, path}
        kind = array.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        if array.null_count:
            raise DataError(f"{source}: column {name!r} has {array.null_count} null image(s)")
        encoded = array.to_pylist()
        sources = [f"{source} row {i} column {name!r}" for i in range(len(encoded))]
        return _decode_images(encoded, sources, spec.image_size)
    if _is_list_type(kind):
        return _pixel_rows(_nested_to_numpy(array, source, name), spec, source)
    raise DataError(f"{source}: column {name!r} has type {kind}; expected encoded PNG/JPEG "
                    f"bytes, lists of pixel values or a fixed-shape tensor")


def _is_list_type(kind: Any) -> bool:
    import pyarrow as pa

    return (pa.types.is_list(kind) or pa.types.is_large_list(kind)
            or pa.types.is_fixed_size_list(kind))


def _nested_to_numpy(array: Any, source: str, column: str) -> np.ndarray:
    """Nested equal-length lists of numbers -> one ndarray (N, d1, d2, ...)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    shape = [len(array)]
    while _is_list_type(array.type):
        if array.null_count:
            raise DataError(f"{source}: column {column!r} has null pixel lists")
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            raise DataError(f"{source}: column {column!r} has pixel lists of different lengths "
                            f"({lengths.min()} to {lengths.max()}); every image needs the same "
                            f"shape")
        shape.append(int(lengths[0]) if len(lengths) else 0)
        array = array.flatten()
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
        raise DataError(f"{source}: column {column!r} holds {array.type} values; pixels must "
                        f"be integers 0..255 or floats 0..1")
    if array.null_count:
        raise DataError(f"{source}: column {column!r} has null pixel values")
    return array.to_numpy(zero_copy_only=False).reshape(shape)


def _pixel_rows(pixels: np.ndarray, spec: DatasetSpec, source: str) -> np.ndarray:
    height, width = spec.image_size
    if pixels.ndim == 2:
        # Flat rows are read with image_size, the only place their shape can come from.
        if pixels.shape[1] != height * width * 3:
            raise DataError(f"{source}: column {spec.image_column!r} holds flat pixel lists of "
                            f"length {pixels.shape[1]}; dataset.image_size {[height, width]} "
                            f"needs {height}*{width}*3 = {height * width * 3}")
        pixels = pixels.reshape(-1, height, width, 3)
    return _as_nhwc3(pixels, source, f"column {spec.image_column!r}")


def _parquet_labels(column: Any, source: str, name: str) -> tuple[np.ndarray, tuple[str, ...]]:
    import pyarrow as pa

    array = column.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if array.null_count:
        raise DataError(f"{source}: column {name!r} has {array.null_count} null label(s)")
    if pa.types.is_integer(array.type):
        y = array.to_numpy(zero_copy_only=False).astype(np.int64)
        if (y < 0).any():
            raise DataError(f"{source}: column {name!r} has negative label {int(y.min())}; "
                            f"labels must be class ids 0, 1, ...")
        return y, tuple(str(i) for i in range(int(y.max()) + 1))
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        values = np.asarray(array.to_pylist(), dtype=object)
        names, y = np.unique(values.astype(str), return_inverse=True)
        return y.astype(np.int64), tuple(str(n) for n in names)
    raise DataError(f"{source}: column {name!r} has type {array.type}; expected integer "
                    f"class ids or string class names")


def _load_parquet(spec: DatasetSpec) -> _Pool:
    table, source = _read_parquet_table(spec)
    # Labels and split first: they are cheap to check, decoding every image is not.
    y, names = _parquet_labels(table.column(spec.label_column), source, spec.label_column)
    is_test = None
    if SPLIT_COLUMN in table.column_names:
        split = table.column(SPLIT_COLUMN).to_pylist()
        unknown = sorted({str(s) for s in split} - set(SPLIT_VALUES))
        if unknown:
            raise DataError(f"{source}: column {SPLIT_COLUMN!r} must hold "
                            f"{' or '.join(SPLIT_VALUES)}, got {unknown[0]!r}")
        is_test = np.asarray([s == "test" for s in split])
        if is_test.all():
            raise DataError(f"{source}: every row has {SPLIT_COLUMN}=test; none left to train "
                            f"on")
    x = _parquet_images(table.column(spec.image_column), spec, source)
    if is_test is None:
        return _Pool(x, y, None, None, names, source)
    x_test, y_test = (x[is_test], y[is_test]) if is_test.any() else (None, None)
    return _Pool(x[~is_test], y[~is_test], x_test, y_test, names, source)


# --------------------------------------------------------------------------------------------
# npz


def _load_npz(spec: DatasetSpec) -> _Pool:
    path = _existing_path(spec.path or "")
    source = str(path)
    try:
        # allow_pickle=False: an .npz is a zip of .npy files and must not carry pickles.
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            missing = [k for k in NPZ_REQUIRED if k not in keys]
            if missing:
                raise DataError(f"{source}: no array {missing[0]!r} (it has "
                                f"{', '.join(sorted(keys)) or 'none'})")
            if (NPZ_TEST[0] in keys) != (NPZ_TEST[1] in keys):
                raise DataError(f"{source}: has only one of {NPZ_TEST[0]} and {NPZ_TEST[1]}; "
                                f"give both or neither")
            arrays = {k: archive[k] for k in (*NPZ_REQUIRED, *NPZ_TEST, NPZ_CLASS_NAMES)
                      if k in keys}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{source}: not a readable .npz archive ({_one_line(exc)})") from exc
    except TypeError:  # np.load returned a bare array, which is no context manager
        raise DataError(f"{source}: is a single array, not an .npz archive; save with "
                        f"np.savez(path, x_train=..., y_train=...)") from None

    x = _as_nhwc3(arrays["x_train"], source, "x_train")
    y = _npz_labels(arrays["y_train"], len(x), source, "y_train")
    x_test = y_test = None
    if NPZ_TEST[0] in arrays:
        x_test = _as_nhwc3(arrays["x_test"], source, "x_test")
        y_test = _npz_labels(arrays["y_test"], len(x_test), source, "y_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"{source}: x_test images are {x_test.shape[1:]} but x_train "
                            f"images are {x.shape[1:]}")
    if NPZ_CLASS_NAMES in arrays:
        names_array = arrays[NPZ_CLASS_NAMES]
        if names_array.ndim != 1 or names_array.dtype.kind not in "US":
            raise DataError(f"{source}: class_names must be a 1-D string array, got "
                            f"{names_array.dtype} with shape {names_array.shape}")
        names = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n)
                      for n in names_array.tolist())
    else:
        top = max(int(y.max()), int(y_test.max()) if y_test is not None else 0)
        names = tuple(str(i) for i in range(max(top, 0) + 1))
    return _Pool(x, y, x_test, y_test, names, source)


def _npz_labels(y: np.ndarray, n: int, source: str, key: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # Keras's own loaders return (N, 1)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{source}: {key} must be 1-D integer class ids, got {y.dtype} with "
                        f"shape {y.shape}")
    if len(y) != n:
        raise DataError(f"{source}: {key} has {len(y)} labels for {n} images")
    return y.astype(np.int64)


# --------------------------------------------------------------------------------------------
# tf.data


def _check_augment(augment: str | None) -> str:
    augment = "none" if augment is None else augment
    if augment not in AUGMENT_CHOICES:
        raise SpecError(f"augment: must be one of {', '.join(AUGMENT_CHOICES)}, got {augment!r}")
    return augment


def make_input_pipeline(x: np.ndarray, y: np.ndarray, *, batch_size: int, training: bool,
                        seed: int, augment: str | None = None) -> Any:
    """Builds a trial's ``tf.data`` pipeline over (possibly shared, read-only) arrays.

    The arrays are never converted to one big tensor: the pipeline shuffles indices and
    gathers one batch at a time, so a trial does not copy the dataset it reads from Ray's
    object store (``from_tensor_slices`` would).

    Args:
        x: Images, float32 NHWC.
        y: Labels, 1-D.
        batch_size: Examples per batch (the last batch may be smaller).
        training: Shuffle every epoch and augment; ``False`` keeps the order, no augmentation.
        seed: Seeds the shuffle and the augmentation: the same seed gives the same batches.
        augment: One of ``AUGMENT_CHOICES``: ``flip`` (random horizontal flip), ``crop``
            (reflect-pad 4 px, random crop back to size), ``flip+crop``; ``None`` = ``none``.

    Returns:
        A ``tf.data.Dataset`` of ``(images, labels)`` batches, prefetched.

    Raises:
        SpecError: For an unknown ``augment`` or a ``batch_size`` below 1.
    """
    augment = _check_augment(augment)
    if not _is_int(batch_size) or batch_size < 1:
        raise SpecError(f"batch_size: must be a positive int, got {batch_size!r}")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} != {len(y)}")

    import tensorflow as tf

    image_shape = tuple(int(d) for d in x.shape[1:])
    x_dtype, y_dtype = tf.as_dtype(x.dtype), tf.as_dtype(y.dtype)

    def gather(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x[indices], y[indices]

    def load(indices: Any) -> tuple[Any, Any]:
        images, labels = tf.numpy_function(gather, [indices], (x_dtype, y_dtype),
                                           stateful=False)
        images.set_shape((None, *image_shape))
        labels.set_shape((None,))
        return images, labels

    pipeline = tf.data.Dataset.range(len(y))
    if training:
        pipeline = pipeline.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    pipeline = pipeline.batch(batch_size).map(load, num_parallel_calls=PIPELINE_PARALLELISM,
                                              deterministic=True)
    if training and augment != "none":
        # One stateless seed per batch, new each epoch, repeatable from `seed`.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(
            2, drop_remainder=True)
        ops = augment.split("+")
        pipeline = tf.data.Dataset.zip((pipeline, seeds)).map(
            lambda batch, batch_seed: (_augment(tf, batch[0], batch_seed, ops), batch[1]),
            num_parallel_calls=PIPELINE_PARALLELISM, deterministic=True)
    # tf.data's autotuner stalled the first batch of about half the epochs by ~2.3 s with the
    # CPU idle (benchmarks/run.py, overhead section); fixed parallelism and a fixed prefetch
    # keep the device fed without it.
    options = tf.data.Options()
    options.autotune.enabled = False
    return pipeline.prefetch(PIPELINE_PREFETCH).with_options(options)


def _augment(tf: Any, images: Any, seed: Any, ops: Sequence[str]) -> Any:
    flip_seed, crop_seed = tf.unstack(tf.random.split(seed, num=2))
    if "flip" in ops:
        images = tf.image.stateless_random_flip_left_right(images, flip_seed)  # per image
    if "crop" in ops:
        height, width = images.shape[1], images.shape[2]
        pad = min(CROP_PADDING, height - 1, width - 1)  # REFLECT needs pad < size
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        offsets = tf.random.stateless_uniform((tf.shape(images)[0], 2), crop_seed, minval=0,
                                              maxval=2 * pad + 1, dtype=tf.int32)
        # Each image gets its own window: gather its rows, then its columns.
        rows = offsets[:, :1] + tf.range(height)[tf.newaxis, :]
        cols = offsets[:, 1:] + tf.range(width)[tf.newaxis, :]
        images = tf.gather(padded, rows, axis=1, batch_dims=1)
        images = tf.gather(images, cols, axis=2, batch_dims=1)
    return images
