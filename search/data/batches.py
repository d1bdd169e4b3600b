"""A trial's input pipeline for every Keras backend: NumPy batches in a prefetching ``PyDataset``.

The JAX and PyTorch backends train from this (``train.backend: tensorflow`` keeps the
``tf.data`` pipeline of :mod:`search.data.pipeline`); it needs no TensorFlow. Like ``tf.data``
it never copies the shared arrays: each batch gathers its own rows, converts them to float32
(uint8 images scaled by 1/255) and augments them in NumPy, on ``PIPELINE_PARALLELISM`` threads
that keep ``PIPELINE_PREFETCH`` batches ready ahead of the device.

Randomness is a pure function of (seed, epoch, batch): the order of epoch ``e`` is a
permutation drawn from ``(seed, e)``, batch ``b``'s augmentation from ``(seed, e, b)``, so the
same seed gives the same batches whatever order the threads finish in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from search.data.pipeline import (
    CROP_PADDING,
    PIPELINE_PARALLELISM,
    PIPELINE_PREFETCH,
    check_pipeline_args,
)

UINT8_SCALE = np.float32(1 / 255)


def to_float_images(images: np.ndarray) -> np.ndarray:
    """Float32 images in [0, 1]: uint8 scaled by 1/255, float input passed through as float32."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) * UINT8_SCALE
    return images.astype(np.float32, copy=False)


def flip_images(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image mirrored left-right with probability 1/2."""
    flip = rng.random(len(images)) < 0.5
    out = images.copy()
    out[flip] = images[flip, :, ::-1]
    return out


def crop_images(
    images: np.ndarray, rng: np.random.Generator, padding: int = CROP_PADDING
) -> np.ndarray:
    """Each image reflect-padded by ``padding`` pixels and cropped back to size at a random
    offset (as the ``tf.data`` pipeline's ``crop``)."""
    height, width = images.shape[1], images.shape[2]
    pad = min(padding, height - 1, width - 1)  # reflection needs pad < size
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    offsets = rng.integers(0, 2 * pad + 1, size=(len(images), 2))
    # One slice per image: about 3x faster than one fancy-indexed gather of the whole batch.
    out = np.empty_like(images)
    for k, (top, left) in enumerate(offsets):
        out[k] = padded[k, top : top + height, left : left + width]
    return out


def make_batches(
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    training: bool,
    seed: int,
    augment: str | None = None,
) -> Any:
    """Builds a trial's ``keras.utils.PyDataset`` over (possibly shared, read-only) arrays.

    Args:
        x: Images NHWC, float32 in [0, 1] or uint8 (scaled by 1/255 here).
        y: Labels, 1-D.
        batch_size: Examples per batch (the last batch may be smaller).
        training: Shuffle every epoch and augment; ``False`` keeps the order, no augmentation.
        seed: Seeds the shuffle and the augmentation: the same seed gives the same batches.
        augment: One of ``AUGMENT_CHOICES`` (as :func:`search.data.make_input_pipeline`).

    Returns:
        A ``PyDataset`` of ``(float32 images, labels)`` batches.

    Raises:
        SpecError: For an unknown ``augment`` or a ``batch_size`` below 1.
    """
    augment = check_pipeline_args(x, y, batch_size, augment)
    import keras

    ops = augment.split("+") if training and augment != "none" else []

    class NumpyBatches(keras.utils.PyDataset):
        """Batch ``index`` of the current epoch; the epoch advances at each epoch's end."""

        def __init__(self) -> None:
            super().__init__(
                workers=PIPELINE_PARALLELISM,
                use_multiprocessing=False,
                max_queue_size=PIPELINE_PREFETCH,
            )
            self.epoch = 0
            self._order: tuple[int, np.ndarray] | None = None

        def __len__(self) -> int:
            return -(-len(y) // batch_size)

        def order(self) -> np.ndarray:
            if not training:
                return np.arange(len(y))
            epoch = self.epoch
            cached = self._order  # threads may race here: both compute the same permutation
            if cached is None or cached[0] != epoch:
                cached = (epoch, np.random.default_rng([seed, epoch]).permutation(len(y)))
                self._order = cached
            return cached[1]

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            rows = self.order()[index * batch_size : (index + 1) * batch_size]
            images, labels = to_float_images(x[rows]), y[rows]
            if ops:
                rng = np.random.default_rng([seed, self.epoch, index])
                if "flip" in ops:
                    images = flip_images(images, rng)
                if "crop" in ops:
                    images = crop_images(images, rng)
            return images, labels

        def on_epoch_end(self) -> None:
            self.epoch += 1

    return NumpyBatches()
