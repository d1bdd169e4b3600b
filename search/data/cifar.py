"""CIFAR-10 and CIFAR-100 in their published python format, read without trusting the pickles.

``path`` names the archive (``cifar-10-python.tar.gz``) or its extracted folder; without it,
Keras's cache (``$KERAS_HOME`` or ``~/.keras``, ``datasets/``) is searched, downloading there
through Keras only when it is absent. The pickles are read with an unpickler that only builds
NumPy arrays, never with plain ``pickle``.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, cast

import numpy as np

from model_zoo import keras_cache_dir
from search._validate import one_line
from search.data.sources import existing_path
from search.data.spec import DatasetSpec
from search.data.split import Pool, check_labels
from search.errors import DataError

try:  # NumPy >= 2 moved the array-pickling helpers to numpy._core.
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

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

KERAS_FALLBACK_HOME = "/tmp/.keras"  # Keras's choice when its cache folder is not writable
KERAS_DATASETS_SUBDIR = "datasets"
# What keras.datasets.cifar10/cifar100.load_data() (Keras 3) pass to keras.utils.get_file, so a
# download made here lands where Keras's own loader looks, and the other way round.
KERAS_CIFAR10_FNAME = "cifar-10-batches-py-target"
KERAS_CIFAR100_FNAME = "cifar-100-python-target"
KERAS_CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
KERAS_CIFAR100_SHA256 = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"
KERAS_ARCHIVE_SUFFIX = "_archive"


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
    "cifar10": _CifarLayout(
        CIFAR10_ARCHIVE,
        CIFAR10_FOLDER,
        CIFAR10_TRAIN_FILES,
        CIFAR10_TEST_FILE,
        CIFAR10_META_FILE,
        CIFAR10_URL,
        KERAS_CIFAR10_FNAME,
        KERAS_CIFAR10_SHA256,
    ),
    "cifar100": _CifarLayout(
        CIFAR100_ARCHIVE,
        CIFAR100_FOLDER,
        CIFAR100_TRAIN_FILES,
        CIFAR100_TEST_FILE,
        CIFAR100_META_FILE,
        CIFAR100_URL,
        KERAS_CIFAR100_FNAME,
        KERAS_CIFAR100_SHA256,
    ),
}


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(str, "latin1").
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, encoding)


def _empty_bytes() -> bytes:
    # Protocol 2 writes b"" as a call to bytes() with no arguments.
    return b""


class _ArrayGuard:
    """NumPy's array constructors, as one pickle may call them: plain dtypes only, and no
    array larger than the pickle itself.

    A real CIFAR array's bytes travel inside the pickle, so no honest array is larger than the
    file; without this bound a 30-byte pickle (``ndarray((2**34,), "b")``) allocates 16 GiB.
    Object dtypes are refused on every constructor (``dtype``, ``_reconstruct``, ``ndarray``,
    ``scalar``), and :meth:`check_loaded` refuses any that a ``__setstate__`` still produced.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def _plain(self, spec: Any) -> np.dtype:
        dtype = spec if isinstance(spec, np.dtype) else np.dtype(spec)
        if dtype.hasobject:  # object arrays could smuggle other objects in
            raise pickle.UnpicklingError(f"refused object dtype {dtype}")
        self._fits(dtype.itemsize)
        return dtype

    def _fits(self, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            raise pickle.UnpicklingError(
                f"refused an array of {nbytes} bytes from a "
                f"{self.max_bytes}-byte file (larger than the file "
                f"could hold)"
            )

    def _sized(self, shape: Any, dtype: np.dtype) -> None:
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        if any(not isinstance(d, int) or d < 0 for d in dims):
            raise pickle.UnpicklingError(f"refused array shape {shape!r}")
        count = 1
        for dim in dims:
            count *= dim  # Python ints: no overflow before the check
        self._fits(count * dtype.itemsize)

    def dtype(self, *args: Any) -> np.dtype:
        return self._plain(np.dtype(*args))

    def reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        # The pickle names numpy.ndarray, which find_class answered with self.ndarray.
        if subtype != self.ndarray:
            raise pickle.UnpicklingError(f"refused array subtype {subtype!r}")
        plain = self._plain(dtype)
        self._sized(shape, plain)
        return cast(np.ndarray, _multiarray._reconstruct(np.ndarray, shape, plain))

    def ndarray(self, shape: Any, dtype: Any = float, *args: Any) -> np.ndarray:
        plain = self._plain(dtype)
        self._sized(shape, plain)
        return np.ndarray(shape, plain, *args)

    def scalar(self, dtype: Any, *args: Any) -> Any:
        return _multiarray.scalar(self._plain(dtype), *args)

    def check_loaded(self, obj: Any, depth: int = 0) -> None:
        """Refuses object arrays and oversized arrays anywhere in the unpickled value."""
        if depth > 20:
            raise pickle.UnpicklingError("refused: nested too deeply for a CIFAR batch")
        if isinstance(obj, (np.ndarray, np.generic)):
            if obj.dtype.hasobject:
                raise pickle.UnpicklingError(f"refused object dtype {obj.dtype}")
            self._fits(obj.nbytes)
        elif isinstance(obj, dict):
            for key, value in obj.items():
                self.check_loaded(key, depth + 1)
                self.check_loaded(value, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                self.check_loaded(item, depth + 1)


# Everything a CIFAR batch needs: NumPy array reconstruction (NumPy 1 and 2 names, each bound
# to the one pickle's guard) and the helpers protocol 2 uses for bytes. Python 2 names
# (__builtin__) appear in the originals.
_ARRAY_GLOBALS: dict[tuple[str, str], str] = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy.core.multiarray", "scalar"): "scalar",
    ("numpy._core.multiarray", "scalar"): "scalar",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
}
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "bytes"): _empty_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches and nothing else: any other global is refused, never imported,
    and no array may be larger than the pickle's ``size`` in bytes."""

    def __init__(self, file: BinaryIO, source: str, size: int) -> None:
        # The originals come from Python 2's cPickle: its str (keys, names) arrive as bytes.
        super().__init__(file, encoding="bytes")
        self._source = source
        self.guard = _ArrayGuard(size)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ARRAY_GLOBALS:
            return getattr(self.guard, _ARRAY_GLOBALS[(module, name)])
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._source}: refused to unpickle {module}.{name}; a CIFAR batch "
                f"only holds NumPy arrays, so this file may run code when loaded "
                f"and was not loaded"
            ) from None


def _unpickle(data: bytes, source: str) -> Any:
    try:
        unpickler = _CifarUnpickler(io.BytesIO(data), source, len(data))
        loaded = unpickler.load()
        unpickler.guard.check_loaded(loaded)
        return loaded
    except DataError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        MemoryError,
        RecursionError,
    ) as exc:
        raise DataError(
            f"{source}: not a readable CIFAR pickle ({type(exc).__name__}: {one_line(exc)})"
        ) from exc


def _str_keys(obj: Any, source: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"{source}: a CIFAR file must hold a dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _cifar_batch(
    obj: Any, source: str, label_key: str, num_classes: int, split: str
) -> tuple[np.ndarray, np.ndarray]:
    batch = _str_keys(obj, source)
    for key in ("data", label_key):
        if key not in batch:
            raise DataError(f"{source}: no {key!r} entry; it has {sorted(batch)}")
    data = batch["data"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != CIFAR_ROW_LENGTH
    ):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(
            f"{source}: 'data' must be a uint8 array of shape (N, {CIFAR_ROW_LENGTH}), got {got}"
        )
    labels = np.asarray(batch[label_key])
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise DataError(
            f"{source}: {label_key!r} must be {len(data)} integer labels, one per "
            f"row of 'data', got {labels.dtype} with shape {labels.shape}"
        )
    check_labels(labels, num_classes, source, split)  # here, to name the batch file
    # Rows are CHW planes (all red, then green, then blue); Keras and our models want NHWC.
    # A view; the split copies only the rows it keeps.
    return data.reshape(-1, *CIFAR_IMAGE_SHAPE).transpose(0, 2, 3, 1), labels.astype(np.int64)


def _cifar_names(obj: Any, source: str, names_key: str) -> tuple[str, ...]:
    meta = _str_keys(obj, source)
    names = meta.get(names_key)
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(f"{source}: no {names_key!r} list of class names; it has {sorted(meta)}")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def _cifar_members_from_archive(
    archive: Path, layout: _CifarLayout, wanted: Sequence[str]
) -> dict[str, Any]:
    found: dict[str, Any] = {}
    try:
        # Streaming ("r|*") reads the archive once and never extracts to disk, so member
        # paths cannot escape anywhere.
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                base = name.rsplit("/", 1)[-1]
                if (
                    not member.isfile()
                    or base not in wanted
                    or base in found
                    or name not in (base, f"{layout.folder}/{base}")
                ):
                    continue
                file = tar.extractfile(member)
                if file is not None:
                    found[base] = _unpickle(file.read(), f"{archive}:{name}")
    except DataError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{archive}: not a readable CIFAR archive ({one_line(exc)})") from exc
    missing = [f for f in wanted if f not in found]
    if missing:
        raise DataError(
            f"{archive}: no {layout.folder}/{missing[0]} in the archive; a "
            f"{_cifar_title(layout)} archive holds {', '.join(wanted)}"
        )
    return found


def _cifar_members_from_folder(
    folder: Path, layout: _CifarLayout, wanted: Sequence[str]
) -> dict[str, Any]:
    found = {}
    for base in wanted:
        file = folder / base
        if not file.is_file():
            raise DataError(
                f"{folder}: no {base}; a {_cifar_title(layout)} folder holds {', '.join(wanted)}"
            )
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise DataError(f"{file}: cannot read ({one_line(exc)})") from exc
        found[base] = _unpickle(data, str(file))
    return found


def _cifar_title(layout: _CifarLayout) -> str:
    return "CIFAR-10" if layout.folder == CIFAR10_FOLDER else "CIFAR-100"


def _keras_home() -> Path:
    # The same folder model_zoo finds the ImageNet weights under.
    return Path(keras_cache_dir()).expanduser()


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


def fetch_with_keras(layout: _CifarLayout) -> Path:
    """Downloads through Keras (hash-checked) into its cache; returns the extracted folder."""
    from keras.utils import get_file  # imports TensorFlow: only on this rare path

    extracted = get_file(
        fname=layout.keras_fname,
        origin=layout.url,
        extract=True,
        file_hash=layout.keras_sha256,
        cache_dir=str(_keras_home()),
    )
    return Path(extracted) / layout.folder


def _locate_cifar(spec: DatasetSpec, layout: _CifarLayout) -> Path:
    if spec.path is not None:
        return existing_path(spec.path)
    for candidate in _keras_cache_candidates(layout):
        if candidate.exists():
            return candidate
    target = _keras_home() / KERAS_DATASETS_SUBDIR / layout.archive
    try:
        return fetch_with_keras(layout)
    except Exception as exc:  # noqa: BLE001 - get_file raises bare Exception on network errors
        raise DataError(
            f"{spec.name}: not in the Keras cache and the download failed "
            f"({one_line(exc)}); download {layout.url} and set dataset.path to it, "
            f"or put it at {target}"
        ) from exc


def load_cifar(spec: DatasetSpec) -> Pool:
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
            raise DataError(
                f"{location}: neither a {_cifar_title(layout)} folder (with "
                f"{layout.meta_file}) nor one containing {layout.folder}/"
            )
        members = _cifar_members_from_folder(folder, layout, wanted)
        source = str(folder)
    else:
        members = _cifar_members_from_archive(location, layout, wanted)
        source = str(location)
    names = _cifar_names(members[layout.meta_file], f"{source}:{layout.meta_file}", names_key)
    parts = [
        _cifar_batch(members[f], f"{source}:{f}", label_key, len(names), "training")
        for f in layout.train_files
    ]
    x_test, y_test = _cifar_batch(
        members[layout.test_file], f"{source}:{layout.test_file}", label_key, len(names), "test"
    )
    x = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    y = np.concatenate([p[1] for p in parts])
    return Pool(x, y, x_test, y_test, names, source)
