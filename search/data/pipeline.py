"""A trial's input pipeline over the shared, read-only arrays: shuffled, augmented, prefetched."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from search._validate import is_int
from search.errors import SpecError

AUGMENT_CHOICES = ("none", "flip", "crop", "flip+crop")
CROP_PADDING = 4
PIPELINE_PARALLELISM = 2  # batches gathered/augmented at once
PIPELINE_PREFETCH = 2  # batches ready ahead of the device


def check_pipeline_args(x: np.ndarray, y: np.ndarray, batch_size: int, augment: str | None) -> str:
    """Checks a pipeline's arguments (every backend's); returns ``augment`` (``none`` for
    ``None``)."""
    augment = "none" if augment is None else augment
    if augment not in AUGMENT_CHOICES:
        raise SpecError(f"augment: must be one of {', '.join(AUGMENT_CHOICES)}, got {augment!r}")
    if not is_int(batch_size) or batch_size < 1:
        raise SpecError(f"batch_size: must be a positive int, got {batch_size!r}")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} != {len(y)}")
    return augment


def scale_to_unit(tf: Any, images: Any) -> Any:
    """A batch of images as float32 in [0, 1]: uint8 (0..255, how uint8 sources stay in the
    object store, a quarter of float32's bytes) divided by 255; float images are already
    [0, 1] and pass as they are.

    The same float32 division as :func:`search.data.split.to_unit_float` (IEEE division is
    correctly rounded, so 255 -> exactly 1.0 and each value is bit-identical to scaling the
    array in NumPy first): a model sees the same inputs whichever way the data came.
    """
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / tf.constant(255, tf.float32)
    return images


def make_input_pipeline(
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    training: bool,
    seed: int,
    augment: str | None = None,
) -> Any:
    """Builds a trial's ``tf.data`` pipeline over (possibly shared, read-only) arrays.

    The arrays are never converted to one big tensor: the pipeline shuffles indices and
    gathers one batch at a time, so a trial does not copy the dataset it reads from Ray's
    object store (``from_tensor_slices`` would).

    Args:
        x: Images NHWC: uint8 0..255 (scaled to [0, 1] float32 batch by batch, by
            :func:`scale_to_unit`) or float32 in [0, 1].
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
    augment = check_pipeline_args(x, y, batch_size, augment)

    import tensorflow as tf

    image_shape = tuple(int(d) for d in x.shape[1:])
    x_dtype, y_dtype = tf.as_dtype(x.dtype), tf.as_dtype(y.dtype)

    def gather(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x[indices], y[indices]

    def load(indices: Any) -> tuple[Any, Any]:
        images, labels = tf.numpy_function(gather, [indices], (x_dtype, y_dtype), stateful=False)
        images.set_shape((None, *image_shape))
        labels.set_shape((None,))
        return scale_to_unit(tf, images), labels

    pipeline = tf.data.Dataset.range(len(y))
    if training:
        pipeline = pipeline.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    pipeline = pipeline.batch(batch_size).map(
        load, num_parallel_calls=PIPELINE_PARALLELISM, deterministic=True
    )
    if training and augment != "none":
        # One stateless seed per batch, new each epoch, repeatable from `seed`.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(
            2, drop_remainder=True
        )
        ops = augment.split("+")
        pipeline = tf.data.Dataset.zip((pipeline, seeds)).map(
            lambda batch, batch_seed: (_augment(tf, batch[0], batch_seed, ops), batch[1]),
            num_parallel_calls=PIPELINE_PARALLELISM,
            deterministic=True,
        )
    # tf.data's autotuner stalled the first batch of about half the epochs by ~2.3 s with the
    # CPU idle (benchmarks/overhead/overhead.py); fixed parallelism and a fixed prefetch
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
        offsets = tf.random.stateless_uniform(
            (tf.shape(images)[0], 2), crop_seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32
        )
        # Each image gets its own window: gather its rows, then its columns.
        rows = offsets[:, :1] + tf.range(height)[tf.newaxis, :]
        cols = offsets[:, 1:] + tf.range(width)[tf.newaxis, :]
        images = tf.gather(padded, rows, axis=1, batch_dims=1)
        images = tf.gather(images, cols, axis=2, batch_dims=1)
    return images
