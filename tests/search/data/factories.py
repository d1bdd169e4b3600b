"""Small dataset files in the exact on-disk formats that `search.datasets` reads.

CIFAR batches follow the originals: dicts pickled with protocol 2 as Python 2 wrote them (keys
and names are Python 2 `str`, the array helper is `numpy.core.multiarray._reconstruct`);
archives hold the same members under the same top-level folder. Images are random, with labels
cycling through the classes so every class has examples.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

CIFAR10_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR100_COARSE = 20
CIFAR100_FINE = 100
ROW = 3 * 32 * 32


class _Python2Pickler(pickle._Pickler):  # the pure-Python pickler lets us swap one opcode
    """Writes bytes and str as Python 2 `str` (SHORT_BINSTRING / BINSTRING), as cPickle did."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, obj: bytes | str) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str
    dispatch[str] = save_python2_str


def cifar_pickle(obj: Any) -> bytes:
    """`obj` pickled the way the published CIFAR files are: by Python 2's cPickle, protocol 2.

    Strings are Python 2 `str` (they load as bytes), and the array helper is named
    `numpy.core.multiarray._reconstruct`, NumPy's module name when the files were written.
    """
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    # Protocol 2 spells globals as text ("c<module>\n<name>\n"), so renaming is a safe edit.
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_rows(n: int, seed: int) -> np.ndarray:
    """`n` random CIFAR rows: uint8 (n, 3072), each the R, G and B 32x32 planes in turn."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, ROW), dtype=np.uint8)


def cifar10_files(
    per_batch: int = 4, *, seed: int = 0, overrides: Mapping[str, bytes] | None = None
) -> dict[str, bytes]:
    """The members of a CIFAR-10 python folder, as bytes by file name."""
    files: dict[str, bytes] = {}
    for i in range(1, 6):
        files[f"data_batch_{i}"] = cifar_pickle(
            {
                b"batch_label": f"training batch {i} of 5".encode(),
                b"labels": [(i * per_batch + j) % 10 for j in range(per_batch)],
                b"data": cifar_rows(per_batch, seed + i),
                b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)],
            }
        )
    files["test_batch"] = cifar_pickle(
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": [j % 10 for j in range(per_batch)],
            b"data": cifar_rows(per_batch, seed + 99),
            b"filenames": [f"test_{j}.png".encode() for j in range(per_batch)],
        }
    )
    files["batches.meta"] = cifar_pickle(
        {
            b"num_cases_per_batch": per_batch,
            b"label_names": [n.encode() for n in CIFAR10_NAMES],
            b"num_vis": ROW,
        }
    )
    files.update(overrides or {})
    return files


def cifar100_files(
    n_train: int = 40,
    n_test: int = 10,
    *,
    seed: int = 0,
    overrides: Mapping[str, bytes] | None = None,
) -> dict[str, bytes]:
    """The members of a CIFAR-100 python folder; labels use fine classes 0..9 only."""

    def batch(n: int, label: bytes, offset: int) -> bytes:
        fine = [j % 10 for j in range(n)]
        return cifar_pickle(
            {
                b"filenames": [f"{label.decode()}_{j}.png".encode() for j in range(n)],
                b"batch_label": label,
                b"fine_labels": fine,
                b"coarse_labels": [f // 5 for f in fine],
                b"data": cifar_rows(n, seed + offset),
            }
        )

    files = {
        "train": batch(n_train, b"training batch 1 of 1", 1),
        "test": batch(n_test, b"testing batch 1 of 1", 2),
        "meta": cifar_pickle(
            {
                b"fine_label_names": [f"fine_{i}".encode() for i in range(CIFAR100_FINE)],
                b"coarse_label_names": [f"coarse_{i}".encode() for i in range(CIFAR100_COARSE)],
            }
        ),
    }
    files.update(overrides or {})
    return files


def write_folder(root: Path, files: Mapping[str, bytes]) -> Path:
    """Writes members as files under `root` (created); returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def write_archive(path: Path, folder: str, files: Mapping[str, bytes]) -> Path:
    """Writes members into a .tar.gz under `folder/`, like the published archives."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


class RunsCommand:
    """Unpickling this calls `func(*args)`: the attack a safe unpickler must refuse."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def call_pickle(func: Any, *args: Any) -> bytes:
    """The smallest protocol-2 pickle that calls `func(*args)` when loaded (memo stripped):
    how an attacker reaches NumPy's array constructors with arguments of their choosing."""
    return pickletools.optimize(pickle.dumps(RunsCommand(func, *args), protocol=2))


def solid_image(
    colour: Sequence[int], size: tuple[int, int] = (20, 30), mode: str = "RGB"
) -> Image.Image:
    """A one-colour image of (width, height) `size`."""
    return Image.new(mode, size, tuple(colour) if mode != "L" else colour[0])


def write_image_folder(
    root: Path,
    classes: Mapping[str, Sequence[int]],
    *,
    per_class: int = 3,
    formats: Sequence[str] = ("PNG", "JPEG"),
) -> Path:
    """`root/<class>/<i>.png|jpg`, each class in one colour, formats alternating."""
    for name, colour in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            fmt = formats[i % len(formats)]
            suffix = ".png" if fmt == "PNG" else ".jpg"
            solid_image(colour, size=(20 + i, 30)).save(root / name / f"{i}{suffix}", fmt)
    return root


def png_bytes(colour: Sequence[int], size: tuple[int, int] = (16, 16)) -> bytes:
    buffer = io.BytesIO()
    solid_image(colour, size).save(buffer, "PNG")
    return buffer.getvalue()


def write_parquet(path: Path, columns: Mapping[str, Any]) -> Path:
    """Writes a table of pyarrow arrays (or Python lists) to `path`."""
    table = pa.table(
        {
            k: v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v)
            for k, v in columns.items()
        }
    )
    pq.write_table(table, path)
    return path


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path
