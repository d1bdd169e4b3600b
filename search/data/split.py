"""Splitting a source's images: the stratified, deterministic train / validation split, and
the :class:`Dataset` every trial shares."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from search.data.spec import DEFAULT_WHERE, DatasetSpec
from search.errors import DataError, SpecError

# Separate random streams, so that e.g. changing `subset` leaves the test carve-out alone.
STREAM_TEST, STREAM_SUBSET, STREAM_VAL = 0, 1, 2


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images and labels ready for training; plain NumPy so it pickles cheaply.

    Images are NHWC with 3 channels: uint8 0..255 where the source is uint8 (CIFAR, folders,
    Parquet and npz of integer pixels; a quarter of float32's bytes in the object store, scaled
    to [0, 1] batch by batch in the input pipeline), otherwise float32 in [0, 1]; labels are
    int32 class ids, 1-D. The arrays are read-only, as they are in Ray workers that read them
    from the object store.

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
        return (
            f"Dataset(train={self.x_train.shape}, val={self.x_val.shape}, test={test}, "
            f"num_classes={self.num_classes})"
        )


class Pool(NamedTuple):
    """A source's images before subsetting and the validation split."""

    x: np.ndarray  # NHWC, 3 channels: uint8 0..255 or float32 in [0, 1]
    y: np.ndarray  # int class ids
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: tuple[str, ...]
    source: str  # names the file in error messages


def split_pool(pool: Pool, spec: DatasetSpec) -> Dataset:
    k = len(pool.class_names)
    check_labels(pool.y, k, pool.source, "training")
    if pool.y_test is not None:
        check_labels(pool.y_test, k, pool.source, "test")
    y = pool.y
    keep = np.arange(len(y))
    if spec.subset is not None and spec.subset < len(y):
        _, counts = np.unique(y, return_counts=True)
        # Two per class, so that the validation split below can still take one of each.
        need = int(np.minimum(counts, 2).sum())
        if spec.subset < need:
            raise SpecError(
                f"{DEFAULT_WHERE}.subset: must keep 2 examples of each of the "
                f"{len(counts)} classes present for a stratified validation split, "
                f"so at least {need}, got {spec.subset}"
            )
        keep, _ = stratified_split(
            y,
            spec.subset,
            low=np.minimum(counts, 2),
            keep_in_rest=0,
            rng=stream_rng(spec.seed, STREAM_SUBSET),
        )
        y = y[keep]

    classes, counts = np.unique(y, return_counts=True)
    if (counts < 2).any():
        label = int(classes[np.argmax(counts < 2)])
        raise DataError(
            f"{pool.source}: class {pool.class_names[label]!r} (label {label}) has "
            f"1 training example; a stratified validation split needs at least 2 "
            f"per class (one to train on, one to validate)"
        )
    n = len(y)
    n_val = math.ceil(spec.val_fraction * n)
    if n_val < len(classes):
        raise SpecError(
            f"{DEFAULT_WHERE}.val_fraction: {spec.val_fraction} of {n} training "
            f"examples is {n_val} for validation, fewer than the {len(classes)} "
            f"classes; a stratified split needs one of each, so raise val_fraction"
            + (" or subset" if spec.subset is not None else "")
        )
    if n - n_val < len(classes):
        raise SpecError(
            f"{DEFAULT_WHERE}.val_fraction: {spec.val_fraction} of {n} training "
            f"examples leaves {n - n_val} to train on, fewer than the "
            f"{len(classes)} classes; lower val_fraction"
        )
    val_local, train_local = stratified_split(
        y, n_val, low=np.ones_like(counts), keep_in_rest=1, rng=stream_rng(spec.seed, STREAM_VAL)
    )
    train_idx, val_idx = keep[train_local], keep[val_local]
    has_test = pool.x_test is not None and pool.y_test is not None
    return Dataset(
        x_train=frozen(stored_pixels(pool.x[train_idx])),
        y_train=frozen(pool.y[train_idx].astype(np.int32)),
        x_val=frozen(stored_pixels(pool.x[val_idx])),
        y_val=frozen(pool.y[val_idx].astype(np.int32)),
        x_test=frozen(stored_pixels(np.asarray(pool.x_test))) if has_test else None,
        y_test=frozen(np.asarray(pool.y_test).astype(np.int32)) if has_test else None,
        class_names=tuple(pool.class_names),
    )


def stream_rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.flags.writeable = False
    return array


def stored_pixels(x: np.ndarray) -> np.ndarray:
    """Pixels as the object store keeps them: uint8 stays uint8, floats become float32."""
    return x if x.dtype == np.uint8 else to_unit_float(x)


def to_unit_float(x: np.ndarray) -> np.ndarray:
    """Pixels as float32 in [0, 1] (uint8 divided by 255, as the input pipeline does)."""
    if x.dtype == np.float32:
        return x
    if x.dtype.kind == "f":
        return x.astype(np.float32)
    out = np.empty(x.shape, dtype=np.float32)
    # A float32 divide keeps 255 -> exactly 1.0 (multiplying by 1/255 can overshoot).
    np.divide(x, np.float32(255), out=out, dtype=np.float32)
    return out


def check_labels(y: np.ndarray, num_classes: int, source: str, split: str) -> None:
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(
            f"{source}: {split} labels must be 1-D integer class ids, "
            f"got {y.dtype} with shape {y.shape}"
        )
    if len(y) == 0:
        raise DataError(f"{source}: has no {split} examples")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        index = int(np.argmax(bad))
        raise DataError(
            f"{source}: {split} label {int(y[index])} at index {index} is out of "
            f"range; labels must be in [0, {num_classes}) for {num_classes} classes"
        )


def stratified_split(
    y: np.ndarray, n_first: int, *, low: np.ndarray, keep_in_rest: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices of `y` into `n_first` and the rest, keeping class proportions.

    Each class gives the first part at least `low[c]` and leaves at least `keep_in_rest`;
    the caller checks that `n_first` fits those bounds. Both parts come back sorted.
    """
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    alloc = apportion(counts, n_first, low=low, high=counts - keep_in_rest)
    order = rng.permutation(len(y))
    by_class = order[np.argsort(inverse[order], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(y)) - starts[inverse[by_class]]
    first = rank < alloc[inverse[by_class]]
    return np.sort(by_class[first]), np.sort(by_class[~first])


def apportion(counts: np.ndarray, total: int, *, low: np.ndarray, high: np.ndarray) -> np.ndarray:
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
