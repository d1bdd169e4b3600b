"""The NumPy input pipeline of the JAX and PyTorch backends, against the ``tf.data`` one.

The two cannot give bit-identical training batches: ``tf.data`` shuffles and augments with
TensorFlow's Philox generator, this pipeline with NumPy's. What must match: evaluation batches
exactly; in training, every epoch is a permutation of the same examples in batches of the same
sizes, and every augmented image is one of the same set of transforms of its source (a
horizontal flip and/or a reflect-padded crop) that ``tf.data`` draws from.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from search.data import make_input_pipeline
from search.data.batches import make_batches
from search.data.pipeline import CROP_PADDING
from search.errors import SpecError


def numpy_epoch(dataset: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """One epoch of a ``PyDataset``, as Keras reads it: batches by index, then the epoch ends."""
    out = [dataset[i] for i in range(len(dataset))]
    dataset.on_epoch_end()
    return out


def tf_epoch(pipeline: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in pipeline]


def images(n: int = 10, shape: tuple[int, int, int] = (7, 6, 3)) -> np.ndarray:
    return np.random.default_rng(0).random((n, *shape), dtype=np.float32)


def transforms(image: np.ndarray, augment: str) -> set[bytes]:
    """Every image the augmentation can make of ``image`` (as bytes)."""
    height, width = image.shape[:2]
    pad = min(CROP_PADDING, height - 1, width - 1) if "crop" in augment else 0
    source = np.pad(image, [(pad, pad), (pad, pad), (0, 0)], mode="reflect")
    flips = [source, source[:, ::-1]] if "flip" in augment else [source]
    return {
        np.ascontiguousarray(f[i : i + height, j : j + width]).tobytes()
        for f in flips
        for i in range(2 * pad + 1)
        for j in range(2 * pad + 1)
    }


def test_evaluation_batches_equal_tf_data_s():
    x, y = images(), np.arange(10, dtype=np.int32)
    ours = numpy_epoch(make_batches(x, y, batch_size=4, training=False, seed=0, augment="flip"))
    theirs = tf_epoch(make_input_pipeline(x, y, batch_size=4, training=False, seed=0))
    assert len(ours) == len(theirs) == 3
    for (a, la), (b, lb) in zip(ours, theirs):
        assert a.dtype == np.float32 and np.array_equal(a, b) and np.array_equal(la, lb)


def test_uint8_images_are_scaled_to_the_unit_interval():
    x = np.random.default_rng(1).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    ((batch, _),) = numpy_epoch(
        make_batches(x, np.zeros(5, np.int32), batch_size=8, training=False, seed=0)
    )
    assert batch.dtype == np.float32
    np.testing.assert_allclose(batch, x.astype(np.float32) / 255, rtol=1e-6)


def test_training_epochs_are_permutations_in_tf_data_s_batch_sizes_and_repeat_for_a_seed():
    x, y = images(), np.arange(10, dtype=np.int32)  # labels = indices

    def labels(seed: int) -> list[list[np.ndarray]]:
        dataset = make_batches(x, y, batch_size=4, training=True, seed=seed)
        return [[b for _, b in numpy_epoch(dataset)] for _ in range(2)]

    first, again, other = labels(7), labels(7), labels(8)
    theirs = [
        b for _, b in tf_epoch(make_input_pipeline(x, y, batch_size=4, training=True, seed=7))
    ]
    assert [len(b) for b in first[0]] == [len(b) for b in theirs] == [4, 4, 2]
    assert sorted(np.concatenate(first[0]).tolist()) == sorted(np.concatenate(theirs).tolist())
    assert not np.array_equal(np.concatenate(first[0]), np.concatenate(first[1]))
    assert all(np.array_equal(a, b) for e, f in zip(first, again) for a, b in zip(e, f))
    assert not np.array_equal(np.concatenate(first[0]), np.concatenate(other[0]))
    for batch_images, batch_labels in numpy_epoch(
        make_batches(x, y, batch_size=4, training=True, seed=7)
    ):
        assert np.array_equal(batch_images, x[batch_labels])  # no augmentation asked


@pytest.mark.parametrize("augment", ["flip", "crop", "flip+crop"])
def test_augmented_images_are_among_the_transforms_tf_data_draws_from(augment):
    x, y = images(), np.arange(10, dtype=np.int32)
    ours = numpy_epoch(make_batches(x, y, batch_size=4, training=True, seed=3, augment=augment))
    theirs = tf_epoch(
        make_input_pipeline(x, y, batch_size=4, training=True, seed=3, augment=augment)
    )
    for name, epoch in (("batches", ours), ("tf.data", theirs)):
        changed = 0
        for batch_images, batch_labels in epoch:
            for image, label in zip(batch_images, batch_labels):
                assert image.tobytes() in transforms(x[label], augment), name
                changed += not np.array_equal(image, x[label])
        assert changed > 0, name  # the augmentation did something
    again = numpy_epoch(make_batches(x, y, batch_size=4, training=True, seed=3, augment=augment))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(ours, again))


def test_batches_reject_unknown_augment_and_batch_size():
    x, y = images(), np.arange(10, dtype=np.int32)
    with pytest.raises(
        SpecError,
        match=r"^augment: must be one of none, flip, crop, "
        r"flip\+crop, got 'mixup'$",
    ):
        make_batches(x, y, batch_size=4, training=True, seed=0, augment="mixup")
    with pytest.raises(SpecError, match=r"^batch_size: must be a positive int, got 0$"):
        make_batches(x, y, batch_size=0, training=True, seed=0)
