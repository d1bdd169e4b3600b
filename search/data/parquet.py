"""Parquet datasets: a file, folder or URI (``s3://``, ``gs://``, ``file://``), through pyarrow.

An image column (encoded PNG/JPEG bytes, a Hugging Face ``{bytes, path}`` struct, nested or flat
pixel lists, or a fixed-shape tensor) and a label column (int ids or string names); an optional
``split`` column with values ``train`` / ``test`` gives the test split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from search import storage
from search._validate import one_line
from search.data.sources import as_nhwc3, decode_images, existing_path
from search.data.spec import DEFAULT_WHERE, DatasetSpec
from search.data.split import Pool
from search.errors import DataError

SPLIT_COLUMN = "split"
SPLIT_VALUES = ("train", "test")


def _read_parquet_table(spec: DatasetSpec) -> tuple[Any, str]:
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    location = spec.path or ""
    try:
        if storage.is_remote(location):
            filesystem, inner = pafs.FileSystem.from_uri(location)
        else:
            filesystem, inner = pafs.LocalFileSystem(), str(existing_path(location).resolve())
        if filesystem.get_file_info(inner).type == pafs.FileType.NotFound:
            raise DataError(f"{DEFAULT_WHERE}.path: {location} does not exist")
        dataset = pads.dataset(inner, filesystem=filesystem, format="parquet")
        columns = dataset.schema.names
        missing = [c for c in (spec.image_column, spec.label_column) if c not in columns]
        if missing:
            raise DataError(
                f"{location}: no column {missing[0]!r} (it has "
                f"{', '.join(columns) or 'no columns'}); set dataset.image_column / "
                f"dataset.label_column"
            )
        wanted = [spec.image_column, spec.label_column]
        if SPLIT_COLUMN in columns and SPLIT_COLUMN not in wanted:
            wanted.append(SPLIT_COLUMN)
        table = dataset.to_table(columns=wanted)
    except DataError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{location}: cannot read as Parquet ({one_line(exc)})") from exc
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
        return decode_images(encoded, sources, spec.image_size)
    if _is_list_type(kind):
        return _pixel_rows(_nested_to_numpy(array, source, name), spec, source)
    raise DataError(
        f"{source}: column {name!r} has type {kind}; expected encoded PNG/JPEG "
        f"bytes, lists of pixel values or a fixed-shape tensor"
    )


def _is_list_type(kind: Any) -> bool:
    import pyarrow as pa

    return (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    )


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
            raise DataError(
                f"{source}: column {column!r} has pixel lists of different lengths "
                f"({lengths.min()} to {lengths.max()}); every image needs the same "
                f"shape"
            )
        shape.append(int(lengths[0]) if len(lengths) else 0)
        array = array.flatten()
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
        raise DataError(
            f"{source}: column {column!r} holds {array.type} values; pixels must "
            f"be integers 0..255 or floats 0..1"
        )
    if array.null_count:
        raise DataError(f"{source}: column {column!r} has null pixel values")
    return array.to_numpy(zero_copy_only=False).reshape(shape)


def _pixel_rows(pixels: np.ndarray, spec: DatasetSpec, source: str) -> np.ndarray:
    height, width = spec.image_size
    if pixels.ndim == 2:
        # Flat rows are read with image_size, the only place their shape can come from.
        if pixels.shape[1] != height * width * 3:
            raise DataError(
                f"{source}: column {spec.image_column!r} holds flat pixel lists of "
                f"length {pixels.shape[1]}; dataset.image_size {[height, width]} "
                f"needs {height}*{width}*3 = {height * width * 3}"
            )
        pixels = pixels.reshape(-1, height, width, 3)
    return as_nhwc3(pixels, source, f"column {spec.image_column!r}")


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
            raise DataError(
                f"{source}: column {name!r} has negative label {int(y.min())}; "
                f"labels must be class ids 0, 1, ..."
            )
        return y, tuple(str(i) for i in range(int(y.max()) + 1))
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        values = np.asarray(array.to_pylist(), dtype=object)
        names, y = np.unique(values.astype(str), return_inverse=True)
        return y.astype(np.int64), tuple(str(n) for n in names)
    raise DataError(
        f"{source}: column {name!r} has type {array.type}; expected integer "
        f"class ids or string class names"
    )


def load_parquet(spec: DatasetSpec) -> Pool:
    table, source = _read_parquet_table(spec)
    # Labels and split first: they are cheap to check, decoding every image is not.
    y, names = _parquet_labels(table.column(spec.label_column), source, spec.label_column)
    is_test = None
    if SPLIT_COLUMN in table.column_names:
        split = table.column(SPLIT_COLUMN).to_pylist()
        unknown = sorted({str(s) for s in split} - set(SPLIT_VALUES))
        if unknown:
            raise DataError(
                f"{source}: column {SPLIT_COLUMN!r} must hold "
                f"{' or '.join(SPLIT_VALUES)}, got {unknown[0]!r}"
            )
        is_test = np.asarray([s == "test" for s in split])
        if is_test.all():
            raise DataError(f"{source}: every row has {SPLIT_COLUMN}=test; none left to train on")
    x = _parquet_images(table.column(spec.image_column), spec, source)
    if is_test is None:
        return Pool(x, y, None, None, names, source)
    x_test, y_test = (x[is_test], y[is_test]) if is_test.any() else (None, None)
    return Pool(x[~is_test], y[~is_test], x_test, y_test, names, source)
