"""Image-classification datasets, loaded once as NumPy arrays that every trial shares.

``DatasetSpec`` is the ``dataset:`` section of an experiment spec; :func:`load_dataset` turns it
into a :class:`Dataset` of NHWC images with 3 channels (uint8 0..255 where the source is uint8,
float32 in [0, 1] otherwise; the input pipeline scales uint8 to [0, 1]) and int32 labels, split
into train / validation (stratified, from ``seed``) and, where the source has one, test. The
driver hands the ``Dataset`` to ``tune.with_parameters``, which puts it in Ray's object store
once; workers then read the arrays zero-copy (read-only) instead of each holding a copy.
:func:`make_input_pipeline` builds a trial's ``tf.data`` pipeline over those shared arrays.

Sources (``name``): ``cifar10``/``cifar100`` (:mod:`search.data.cifar`), ``digits``, ``folder``
and ``npz`` (:mod:`search.data.sources`), ``parquet`` (:mod:`search.data.parquet`).
"""

from __future__ import annotations

from search.data.pipeline import AUGMENT_CHOICES, make_input_pipeline
from search.data.spec import DATASET_NAMES, DatasetSpec
from search.data.split import Dataset, split_pool

__all__ = [
    "AUGMENT_CHOICES",
    "DATASET_NAMES",
    "Dataset",
    "DatasetSpec",
    "load_dataset",
    "make_input_pipeline",
]


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
    from search.data import cifar, parquet, sources

    loaders = {
        "cifar10": cifar.load_cifar,
        "cifar100": cifar.load_cifar,
        "digits": sources.load_digits,
        "folder": sources.load_folder,
        "parquet": parquet.load_parquet,
        "npz": sources.load_npz,
    }
    return split_pool(loaders[spec.name](spec), spec)
