"""Image sources read from local files: digits, folders of images and ``.npz`` archives, plus
the pixel checks and image decoding every source shares.

* ``digits``: scikit-learn's bundled 8x8 digits (offline), upscaled to 32x32 by nearest
  neighbour, with a fixed stratified 20% test split.
* ``folder``: ``path/<class_name>/*.png|jpg|jpeg``, or ``path/train/<class_name>/...`` plus an
  optional ``path/test/<class_name>/...`` for a test split. Images are resized to
  ``image_size``; grayscale images are refused.
* ``npz``: arrays ``x_train``, ``y_train``, optional ``x_test``/``y_test`` and ``class_names``;
  grayscale images are repeated to 3 channels.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from search._validate import one_line
from search.data.spec import DEFAULT_WHERE, DatasetSpec
from search.data.split import STREAM_TEST, Pool, stratified_split, stream_rng
from search.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
FOLDER_TRAIN_DIR = "train"
FOLDER_TEST_DIR = "test"
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


def existing_path(path: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise DataError(f"{DEFAULT_WHERE}.path: {path} does not exist")
    return resolved


# --------------------------------------------------------------------------------------------
# Pixels and images


def as_nhwc3(x: np.ndarray, source: str, key: str) -> np.ndarray:
    """Checks an image array's shape and values; grayscale is repeated to 3 channels."""
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim == 4 and x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):
        raise DataError(
            f"{source}: {key} looks channels-first with shape {x.shape}; store it as (N, H, W, 3)"
        )
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or min(x.shape[1:3], default=0) < 1:
        raise DataError(
            f"{source}: {key} must have shape (N, H, W, 3), (N, H, W, 1) or "
            f"(N, H, W), got {x.shape}"
        )
    if len(x) == 0:
        raise DataError(f"{source}: {key} holds no images")
    x = check_pixels(x, source, key)
    if x.shape[-1] == 1:
        # A broadcast view: the split below copies only the rows it keeps.
        x = np.broadcast_to(x, (*x.shape[:3], 3))
    return x


def check_pixels(x: np.ndarray, source: str, key: str) -> np.ndarray:
    low: float  # an int for integer pixels, a float for float ones (as the messages show)
    high: float
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind in "iu":
        low, high = int(x.min()), int(x.max())
        if low < 0 or high > 255:
            raise DataError(
                f"{source}: {key} integer pixels must be in [0, 255], got [{low}, {high}]"
            )
        return x.astype(np.uint8)
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise DataError(f"{source}: {key} has NaN or infinite pixels")
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 1:
            hint = "; divide by 255 or store uint8" if high > 1 else ""
            raise DataError(
                f"{source}: {key} float pixels must be in [0, 1], got [{low:g}, {high:g}]{hint}"
            )
        return x.astype(np.float32, copy=False)
    raise DataError(
        f"{source}: {key} must hold uint8 (0..255) or float (0..1) pixels, got {x.dtype}"
    )


def decode_image(data: Path | bytes, source: str, size: tuple[int, int]) -> np.ndarray:
    """Decodes one PNG/JPEG to uint8 (height, width, 3), resized bilinearly to `size`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as image:
            image.load()  # decode now, so a truncated file fails here and is named
            if image.mode in GRAYSCALE_MODES:
                raise DataError(
                    f"{source}: grayscale image (mode {image.mode}); convert the "
                    f"images to RGB first, e.g. Image.open(p).convert('RGB').save(p)"
                )
            rgb = image.convert("RGB")
            height, width = size
            if rgb.size != (width, height):
                rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except DataError:
        raise
    except UnidentifiedImageError as exc:  # its text is a BytesIO repr for in-memory images
        raise DataError(
            f"{source}: cannot decode image (not a format Pillow recognises; expected PNG or JPEG)"
        ) from exc
    except (
        Image.DecompressionBombError,
        OSError,
        ValueError,
        SyntaxError,
    ) as exc:  # PIL reports some broken PNGs as SyntaxError
        raise DataError(f"{source}: cannot decode image ({one_line(exc)})") from exc


def decode_images(
    items: Sequence[Path | bytes], sources: Sequence[str], size: tuple[int, int]
) -> np.ndarray:
    out = np.empty((len(items), *size, 3), dtype=np.uint8)
    for i, (item, source) in enumerate(zip(items, sources)):
        out[i] = decode_image(item, source, size)
    return out


# --------------------------------------------------------------------------------------------
# digits


def load_digits(spec: DatasetSpec) -> Pool:
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
    test, pool = stratified_split(
        y,
        n_test,
        low=np.ones_like(counts),
        keep_in_rest=2,
        rng=stream_rng(DIGITS_TEST_SEED, STREAM_TEST),
    )
    names = tuple(str(n) for n in bunch.target_names)
    return Pool(x[pool], y[pool], x[test], y[test], names, "digits")


# --------------------------------------------------------------------------------------------
# folder


def _class_dirs(root: Path) -> list[Path]:
    return sorted(
        (d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: d.name,
    )


def _images_in(class_dir: Path) -> list[Path]:
    return sorted(
        p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _read_class_folders(
    root: Path, class_names: Sequence[str], size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for class_dir in _class_dirs(root):
        images = _images_in(class_dir)
        if not images:
            raise DataError(
                f"{class_dir}: class folder {class_dir.name!r} has no "
                f"{'/'.join(IMAGE_EXTENSIONS)} images"
            )
        files.extend(images)
        labels.extend([class_names.index(class_dir.name)] * len(images))
    x = decode_images(files, [str(f) for f in files], size)
    return x, np.asarray(labels, dtype=np.int64)


def load_folder(spec: DatasetSpec) -> Pool:
    root = existing_path(spec.path or "")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected {root}/<class_name>/*.png")
    train_root = root / FOLDER_TRAIN_DIR if (root / FOLDER_TRAIN_DIR).is_dir() else root
    class_names = tuple(d.name for d in _class_dirs(train_root))
    if not class_names:
        raise DataError(
            f"{train_root}: no class folders; put the images in "
            f"{train_root}/<class_name>/ (png, jpg or jpeg)"
        )
    x, y = _read_class_folders(train_root, class_names, spec.image_size)
    x_test = y_test = None
    test_root = root / FOLDER_TEST_DIR
    if train_root is not root and test_root.is_dir():
        unknown = [d.name for d in _class_dirs(test_root) if d.name not in class_names]
        if unknown:
            raise DataError(
                f"{test_root}: class folder {unknown[0]!r} is not among the "
                f"training classes {', '.join(class_names)}"
            )
        x_test, y_test = _read_class_folders(test_root, class_names, spec.image_size)
    return Pool(x, y, x_test, y_test, class_names, str(root))


# --------------------------------------------------------------------------------------------
# npz


def load_npz(spec: DatasetSpec) -> Pool:
    path = existing_path(spec.path or "")
    source = str(path)
    try:
        # allow_pickle=False: an .npz is a zip of .npy files and must not carry pickles.
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            missing = [k for k in NPZ_REQUIRED if k not in keys]
            if missing:
                raise DataError(
                    f"{source}: no array {missing[0]!r} (it has "
                    f"{', '.join(sorted(keys)) or 'none'})"
                )
            if (NPZ_TEST[0] in keys) != (NPZ_TEST[1] in keys):
                raise DataError(
                    f"{source}: has only one of {NPZ_TEST[0]} and {NPZ_TEST[1]}; "
                    f"give both or neither"
                )
            arrays = {
                k: archive[k] for k in (*NPZ_REQUIRED, *NPZ_TEST, NPZ_CLASS_NAMES) if k in keys
            }
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{source}: not a readable .npz archive ({one_line(exc)})") from exc
    except TypeError:  # np.load returned a bare array, which is no context manager
        raise DataError(
            f"{source}: is a single array, not an .npz archive; save with "
            f"np.savez(path, x_train=..., y_train=...)"
        ) from None

    x = as_nhwc3(arrays["x_train"], source, "x_train")
    y = _npz_labels(arrays["y_train"], len(x), source, "y_train")
    x_test = y_test = None
    if NPZ_TEST[0] in arrays:
        x_test = as_nhwc3(arrays["x_test"], source, "x_test")
        y_test = _npz_labels(arrays["y_test"], len(x_test), source, "y_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(
                f"{source}: x_test images are {x_test.shape[1:]} but x_train "
                f"images are {x.shape[1:]}"
            )
    if NPZ_CLASS_NAMES in arrays:
        names_array = arrays[NPZ_CLASS_NAMES]
        if names_array.ndim != 1 or names_array.dtype.kind not in "US":
            raise DataError(
                f"{source}: class_names must be a 1-D string array, got "
                f"{names_array.dtype} with shape {names_array.shape}"
            )
        names = tuple(
            n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names_array.tolist()
        )
    else:
        top = max(int(y.max()), int(y_test.max()) if y_test is not None else 0)
        names = tuple(str(i) for i in range(max(top, 0) + 1))
    return Pool(x, y, x_test, y_test, names, source)


def _npz_labels(y: np.ndarray, n: int, source: str, key: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # Keras's own loaders return (N, 1)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(
            f"{source}: {key} must be 1-D integer class ids, got {y.dtype} with shape {y.shape}"
        )
    if len(y) != n:
        raise DataError(f"{source}: {key} has {len(y)} labels for {n} images")
    return y.astype(np.int64)
