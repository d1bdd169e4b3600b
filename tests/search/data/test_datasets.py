"""Datasets: every source through the user's path (spec mapping -> load_dataset), the safe
unpickler, the one-line errors, the stratified splits and the tf.data pipeline."""

from __future__ import annotations

import builtins
import gzip
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from search.data import (
    AUGMENT_CHOICES,
    Dataset,
    DatasetSpec,
    cifar,
    load_dataset,
    make_input_pipeline,
    pipeline,
)
from search.data.cifar import CIFAR10_URL
from search.errors import DataError, SpecError
from tests.search.data import factories as f

RED, BLUE, GREEN = (250, 10, 10), (10, 10, 250), (10, 250, 10)


def load(**mapping: Any) -> Dataset:
    """What a user's config goes through."""
    return load_dataset(DatasetSpec.from_mapping(mapping))


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def assert_dataset(
    data: Dataset,
    *,
    classes: int,
    image_shape: tuple[int, int, int] = (32, 32, 3),
    total: int | None = None,
) -> None:
    for x, y in ((data.x_train, data.y_train), (data.x_val, data.y_val)):
        assert x.dtype in (np.uint8, np.float32), x.dtype
        assert x.shape[1:] == image_shape and len(x) == len(y)
        assert x.dtype == np.uint8 or x.min() >= 0.0 and x.max() <= 1.0
        assert y.ndim == 1 and y.dtype == np.int32
        assert not x.flags.writeable
    assert data.num_classes == classes and data.input_shape == image_shape
    if total is not None:
        assert len(data.y_train) + len(data.y_val) == total


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load(name="digits")


# --------------------------------------------------------------------------------------------
# Spec


def test_spec_defaults_and_normalisation() -> None:
    spec = DatasetSpec.from_mapping({"name": "folder", "path": "/x", "image_size": [24, 20]})
    assert spec == DatasetSpec(name="folder", path="/x", image_size=(24, 20))
    assert (spec.val_fraction, spec.subset, spec.seed, spec.label_mode) == (0.1, None, 0, "fine")
    assert (spec.image_column, spec.label_column) == ("image", "label")


@pytest.mark.parametrize(
    ("mapping", "match"),
    [
        (
            {"name": "digits", "val_fracton": 0.2},
            r"^dataset: unknown key `val_fracton`; did you mean `val_fraction`\?$",
        ),
        ({"name": "digits", "zzz": 1}, r"^dataset: unknown key `zzz`; valid keys: name, path"),
        ({"path": "/x"}, r"^dataset\.name: is required, one of cifar10, cifar100, digits"),
        (
            {"name": "cifar-10"},
            r"^dataset\.name: must be one of .*got 'cifar-10' "
            r"\(did you mean 'cifar10'\?\)$",
        ),
        (
            {"name": "digits", "val_fraction": 1.5},
            r"^dataset\.val_fraction: must be a float in \(0, 1\), got 1\.5$",
        ),
        (
            {"name": "digits", "val_fraction": 0},
            r"val_fraction: must be a float in \(0, 1\), got 0",
        ),
        ({"name": "digits", "val_fraction": True}, r"val_fraction: .* got True"),
        ({"name": "digits", "val_fraction": "0.1"}, r"val_fraction: .* got '0\.1'"),
        (
            {"name": "digits", "subset": 0},
            r"^dataset\.subset: must be a positive int or null, got 0",
        ),
        ({"name": "digits", "subset": True}, r"subset: must be a positive int or null, got True"),
        ({"name": "digits", "subset": 10.0}, r"subset: .* got 10\.0"),
        (
            {"name": "digits", "seed": False},
            r"^dataset\.seed: must be an int in \[0, 2\*\*32\), "
            r"got False",
        ),
        ({"name": "digits", "seed": -1}, r"seed: .* got -1"),
        (
            {"name": "cifar100", "label_mode": "medium"},
            r"^dataset\.label_mode: must be one of fine, coarse, got 'medium'",
        ),
        (
            {"name": "cifar10", "label_mode": "coarse"},
            r"label_mode: only applies to cifar100, got 'coarse' for name 'cifar10'",
        ),
        (
            {"name": "folder", "path": "/x", "image_size": [32]},
            r"^dataset\.image_size: must be \[height, width\] with positive ints, got \[32\]",
        ),
        ({"name": "folder", "path": "/x", "image_size": [32, True]}, r"image_size: "),
        ({"name": "folder", "path": "/x", "image_size": "32x32"}, r"image_size: "),
        (
            {"name": "parquet", "path": "/x", "image_column": ""},
            r"^dataset\.image_column: must be",
        ),
        ({"name": "folder"}, r"^dataset\.path: is required for name 'folder'$"),
        ({"name": "npz", "path": ""}, r"^dataset\.path: must be a non-empty string"),
        ({"name": "digits", "path": "/x"}, r"^dataset\.path: digits is bundled with scikit-learn"),
    ],
)
def test_spec_errors_name_the_key_and_the_value(mapping: dict, match: str) -> None:
    with pytest.raises(SpecError, match=match) as excinfo:
        DatasetSpec.from_mapping(mapping)
    one_line(excinfo)


def test_spec_errors_use_the_callers_prefix() -> None:
    with pytest.raises(SpecError, match=r"^experiment\.data\.subset: "):
        DatasetSpec.from_mapping({"name": "digits", "subset": -3}, where="experiment.data")
    with pytest.raises(SpecError, match=r"^experiment\.data: must be a mapping"):
        DatasetSpec.from_mapping(["digits"], where="experiment.data")


def test_spec_checks_direct_construction_too() -> None:
    with pytest.raises(SpecError, match=r"val_fraction"):
        DatasetSpec(name="digits", val_fraction=2.0)


# --------------------------------------------------------------------------------------------
# digits (offline) and the splits


def test_digits_loads_offline_as_32x32_rgb(digits: Dataset) -> None:
    assert_dataset(digits, classes=10)
    assert digits.class_names == tuple(str(i) for i in range(10))
    assert digits.x_test is not None and digits.y_test is not None
    # 1797 images: ceil(20%) held out for test, then ceil(10%) of the rest for validation.
    assert (len(digits.y_test), len(digits.y_val), len(digits.y_train)) == (360, 144, 1293)
    assert digits.x_train.max() == 1.0
    # Grey repeated to 3 channels, each 8x8 pixel a 4x4 block (nearest neighbour).
    image = digits.x_train[0]
    assert np.array_equal(image[..., 0], image[..., 2])
    assert np.array_equal(image[::4, ::4], image[3::4, 3::4])


def test_digits_split_is_deterministic_per_seed_and_stratified(digits: Dataset) -> None:
    again, other = load(name="digits"), load(name="digits", seed=1)
    assert np.array_equal(again.x_val, digits.x_val) and np.array_equal(again.y_val, digits.y_val)
    assert not np.array_equal(other.x_val, digits.x_val)
    # The test split does not move with the seed: it is what retrained models are compared on.
    assert np.array_equal(other.x_test, digits.x_test)
    for split in (digits.y_train, digits.y_val, digits.y_test):
        share = np.bincount(split, minlength=10) / len(split)
        overall = np.bincount(np.concatenate([digits.y_train, digits.y_val, digits.y_test]))
        assert np.abs(share - overall / overall.sum()).max() < 0.01


def test_digits_subset_caps_train_plus_val_and_keeps_every_class() -> None:
    data = load(name="digits", subset=200, val_fraction=0.25)
    assert_dataset(data, classes=10, total=200)
    assert len(data.y_val) == 50 and len(data.y_test) == 360
    assert np.bincount(data.y_val).tolist() == [5] * 10
    assert np.bincount(data.y_train).tolist() == [15] * 10
    assert np.array_equal(load(name="digits", subset=200, val_fraction=0.25).x_train, data.x_train)
    assert not np.array_equal(
        load(name="digits", subset=200, val_fraction=0.25, seed=9).x_train, data.x_train
    )


def test_subset_too_small_for_a_stratified_split_says_how_many() -> None:
    with pytest.raises(
        SpecError,
        match=r"dataset\.subset: must keep 2 examples of each of the "
        r"10 classes .* at least 20, got 15",
    ) as excinfo:
        load(name="digits", subset=15)
    one_line(excinfo)


def test_val_fraction_too_small_for_one_per_class() -> None:
    with pytest.raises(
        SpecError,
        match=r"val_fraction: 0\.01 of 100 training examples is 1 for "
        r"validation, fewer than the 10 classes",
    ):
        load(name="digits", subset=100, val_fraction=0.01)


def test_dataset_pickles_as_plain_arrays(digits: Dataset) -> None:
    payload = pickle.dumps(digits, protocol=5)
    assert len(payload) < digits.nbytes * 1.01 + 10_000
    back = pickle.loads(payload)
    assert np.array_equal(back.x_val, digits.x_val) and back.class_names == digits.class_names
    assert "train=(1293, 32, 32, 3)" in repr(digits)


# --------------------------------------------------------------------------------------------
# CIFAR in the exact published formats


@pytest.fixture(params=["archive", "folder", "parent"])
def cifar10_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    files = f.cifar10_files()
    if request.param == "archive":
        return f.write_archive(tmp_path / cifar.CIFAR10_ARCHIVE, cifar.CIFAR10_FOLDER, files)
    folder = f.write_folder(tmp_path / cifar.CIFAR10_FOLDER, files)
    return folder if request.param == "folder" else tmp_path


def test_cifar10_python_format_loads(cifar10_path: Path) -> None:
    data = load(name="cifar10", path=str(cifar10_path), val_fraction=0.5)
    assert_dataset(data, classes=10, total=20)
    assert data.class_names == f.CIFAR10_NAMES
    assert np.bincount(data.y_val).tolist() == [1] * 10
    # test_batch is kept whole and in order; rows are CHW planes, the arrays are HWC.
    row = f.cifar_rows(4, seed=99)[1]
    # uint8 end to end: the source's bytes, unscaled (the input pipeline scales them).
    assert data.x_test.dtype == data.x_train.dtype == np.uint8
    assert np.array_equal(data.x_test[1], row.reshape(3, 32, 32).transpose(1, 2, 0))
    assert data.x_test[1, 0, 1, 2] == row[2 * 1024 + 0 * 32 + 1]
    assert data.y_test.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("layout", ["archive", "folder"])
@pytest.mark.parametrize(("mode", "classes"), [("fine", 100), ("coarse", 20)])
def test_cifar100_python_format_loads(
    tmp_path: Path, layout: str, mode: str, classes: int
) -> None:
    files = f.cifar100_files()
    if layout == "archive":
        path = f.write_archive(tmp_path / cifar.CIFAR100_ARCHIVE, cifar.CIFAR100_FOLDER, files)
    else:
        path = f.write_folder(tmp_path / cifar.CIFAR100_FOLDER, files)
    data = load(name="cifar100", path=str(path), label_mode=mode, val_fraction=0.25)
    assert_dataset(data, classes=classes, total=40)
    assert data.class_names[1] == f"{mode}_1" and len(data.y_test) == 10
    expected = [j % 10 if mode == "fine" else j % 10 // 5 for j in range(10)]
    assert data.y_test.tolist() == expected


def test_cifar10_reads_python3_numpy2_pickles_too(tmp_path: Path) -> None:
    # Re-pickled by Python 3 + NumPy 2: bytes become _codecs.encode(...), numpy._core names.
    files = {
        name: pickle.dumps(pickle.loads(data, encoding="bytes"), protocol=2)
        for name, data in f.cifar10_files().items()
    }
    assert b"_codecs" in files["data_batch_1"] and b"numpy._core" in files["data_batch_1"]
    data = load(name="cifar10", path=str(f.write_folder(tmp_path / "c", files)), val_fraction=0.5)
    assert len(data.y_test) == 4


@pytest.mark.parametrize("where", ["keras3", "keras2", "archive"])
def test_cifar10_without_path_uses_the_keras_cache(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(cifar, "fetch_with_keras", pytest.fail)
    cache = tmp_path / "datasets"
    files = f.cifar10_files()
    if where == "keras3":
        f.write_folder(cache / cifar.KERAS_CIFAR10_FNAME / cifar.CIFAR10_FOLDER, files)
    elif where == "keras2":
        f.write_folder(cache / cifar.CIFAR10_FOLDER, files)
    else:
        cache.mkdir()
        f.write_archive(cache / cifar.CIFAR10_ARCHIVE, cifar.CIFAR10_FOLDER, files)
    assert len(load(name="cifar10", val_fraction=0.5).y_test) == 4


def test_cifar10_offline_and_uncached_says_what_to_download_and_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(layout: Any) -> Path:  # what keras.utils.get_file raises without a network
        raise Exception(
            f"URL fetch failure on {layout.url}: None -- [Errno -3] Temporary "
            f"failure in name resolution"
        )

    monkeypatch.setattr(cifar, "fetch_with_keras", offline)
    with pytest.raises(DataError) as excinfo:
        load(name="cifar10")
    message = one_line(excinfo)
    assert message.startswith("cifar10: not in the Keras cache and the download failed")
    assert f"download {CIFAR10_URL} and set dataset.path to it" in message
    assert str(tmp_path / "datasets" / "cifar-10-python.tar.gz") in message


@pytest.mark.parametrize("attack", ["os.system", "builtins.exec", "nested"])
def test_pickle_that_would_run_code_is_refused_without_running_it(
    tmp_path: Path, attack: str
) -> None:
    marker = tmp_path / "pwned"
    if attack == "os.system":
        payload = f.RunsCommand(os.system, f"touch {marker}")
    elif attack == "builtins.exec":
        payload = f.RunsCommand(builtins.exec, f"open({str(marker)!r}, 'w').close()")
    else:  # hidden inside an otherwise well-formed batch
        payload = {b"data": f.RunsCommand(os.system, f"touch {marker}"), b"labels": [0]}
    files = f.cifar10_files(overrides={"data_batch_1": pickle.dumps(payload, protocol=2)})
    archive = f.write_archive(tmp_path / "evil.tar.gz", cifar.CIFAR10_FOLDER, files)
    refused = r"refused to unpickle (posix|os|__builtin__)\.(system|exec)"
    with pytest.raises(
        DataError,
        match=rf"evil\.tar\.gz:cifar-10-batches-py/data_batch_1: "
        rf"{refused}",
    ) as excinfo:
        load(name="cifar10", path=str(archive))
    one_line(excinfo)
    assert not marker.exists()


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


@pytest.mark.parametrize("path", ["dtype", "ndarray", "_reconstruct"])
def test_object_arrays_in_a_pickle_are_refused_on_every_constructor_path(
    tmp_path: Path, path: str
) -> None:
    if path == "dtype":  # a plain pickle of an object array: numpy.dtype("O") + __setstate__
        payload = pickle.dumps(
            {b"data": np.array([object()] * 2, dtype=object), b"labels": [0, 1]}, protocol=2
        )
    elif path == "ndarray":  # numpy.ndarray((2,), "O"): no dtype global involved
        payload = f.call_pickle(np.ndarray, (2,), "O")
    else:  # _reconstruct(ndarray, (2,), b"O") with no __setstate__ after it
        payload = f.call_pickle(_numpy_reconstruct(), np.ndarray, (2,), b"O")
    files = f.cifar10_files(overrides={"data_batch_2": payload})
    with pytest.raises(
        DataError,
        match=r"data_batch_2: not a readable CIFAR pickle "
        r"\(UnpicklingError: refused object dtype object\)",
    ):
        load(name="cifar10", path=str(f.write_folder(tmp_path / "c", files)))


@pytest.mark.parametrize("layout", ["archive", "folder"])
@pytest.mark.parametrize("constructor", ["ndarray", "_reconstruct"])
def test_tiny_pickle_asking_for_a_16_gib_array_is_refused_before_allocating(
    tmp_path: Path, layout: str, constructor: str
) -> None:
    sixteen_gib = 2**34
    if constructor == "ndarray":
        payload = f.call_pickle(np.ndarray, (sixteen_gib,), "b")
        assert len(payload) < 40  # the attack is a few bytes
    else:
        payload = f.call_pickle(_numpy_reconstruct(), np.ndarray, (sixteen_gib,), b"b")
    files = f.cifar10_files(overrides={"test_batch": payload})
    if layout == "archive":
        path = f.write_archive(tmp_path / "c.tar.gz", cifar.CIFAR10_FOLDER, files)
    else:
        path = f.write_folder(tmp_path / "c", files)
    with pytest.raises(
        DataError,
        match=rf"test_batch: not a readable CIFAR pickle "
        rf"\(UnpicklingError: refused an array of {sixteen_gib} "
        rf"bytes from a {len(payload)}-byte file",
    ) as excinfo:
        load(name="cifar10", path=str(path))
    one_line(excinfo)


def test_truncated_archive_is_a_data_error(tmp_path: Path) -> None:
    archive = f.write_archive(tmp_path / "c.tar.gz", cifar.CIFAR10_FOLDER, f.cifar10_files())
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match=r"c\.tar\.gz: not a readable CIFAR archive") as excinfo:
        load(name="cifar10", path=str(archive))
    one_line(excinfo)


def test_not_an_archive_is_a_data_error(tmp_path: Path) -> None:
    junk = tmp_path / "cifar-10-python.tar.gz"
    junk.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(DataError, match=r"not a readable CIFAR archive"):
        load(name="cifar10", path=str(junk))


def test_truncated_pickle_inside_a_valid_archive_names_the_member(tmp_path: Path) -> None:
    files = f.cifar10_files()
    files["data_batch_4"] = files["data_batch_4"][:500]
    archive = f.write_archive(tmp_path / "c.tar.gz", cifar.CIFAR10_FOLDER, files)
    with pytest.raises(
        DataError,
        match=r"c\.tar\.gz:cifar-10-batches-py/data_batch_4: not a "
        r"readable CIFAR pickle \((EOFError|UnpicklingError)",
    ):
        load(name="cifar10", path=str(archive))


def test_gzipped_garbage_pickle_in_a_folder_names_the_file(tmp_path: Path) -> None:
    files = f.cifar10_files(overrides={"test_batch": gzip.compress(b"\x80\x02garbage")})
    with pytest.raises(DataError, match=r"test_batch: not a readable CIFAR pickle"):
        load(name="cifar10", path=str(f.write_folder(tmp_path / "c", files)))


@pytest.mark.parametrize("layout", ["archive", "folder"])
def test_missing_batch_file_is_named(tmp_path: Path, layout: str) -> None:
    files = f.cifar10_files()
    del files["data_batch_3"]
    if layout == "archive":
        path = f.write_archive(tmp_path / "c.tar.gz", cifar.CIFAR10_FOLDER, files)
    else:
        path = f.write_folder(tmp_path / "c", files)
    with pytest.raises(
        DataError,
        match=r"no (cifar-10-batches-py/)?data_batch_3.*a CIFAR-10 "
        r"(archive|folder) holds data_batch_1",
    ):
        load(name="cifar10", path=str(path))


def test_wrong_row_length_is_a_data_error(tmp_path: Path) -> None:
    batch = f.cifar_pickle({b"data": np.zeros((4, 1024), np.uint8), b"labels": [0, 1, 2, 3]})
    path = f.write_folder(tmp_path / "c", f.cifar10_files(overrides={"data_batch_5": batch}))
    with pytest.raises(
        DataError,
        match=r"data_batch_5: 'data' must be a uint8 array of shape "
        r"\(N, 3072\), got uint8 \(4, 1024\)",
    ):
        load(name="cifar10", path=str(path))


def test_cifar_label_out_of_range_is_a_data_error(tmp_path: Path) -> None:
    batch = f.cifar_pickle({b"data": f.cifar_rows(2, 0), b"labels": [3, 10]})
    path = f.write_folder(tmp_path / "c", f.cifar10_files(overrides={"test_batch": batch}))
    with pytest.raises(
        DataError,
        match=r"c:test_batch: test label 10 at index 1 is out of "
        r"range; labels must be in \[0, 10\) for 10 classes",
    ):
        load(name="cifar10", path=str(path))


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "folder", "parquet", "npz"])
def test_missing_path_is_a_data_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match=r"^dataset\.path: .*nowhere does not exist$"):
        load(name=name, path=str(tmp_path / "nowhere"))


# --------------------------------------------------------------------------------------------
# Image folders


def test_folder_of_png_and_jpeg_loads_resized_with_sorted_classes(tmp_path: Path) -> None:
    root = f.write_image_folder(
        tmp_path / "imgs", {"red": RED, "blue": BLUE, "green": GREEN}, per_class=4
    )
    (root / "red" / "notes.txt").write_text("ignored")
    f.solid_image(RED, mode="RGBA").save(root / "red" / "alpha.PNG")
    data = load(name="folder", path=str(root), image_size=[24, 20], val_fraction=0.25)
    assert_dataset(data, classes=3, image_shape=(24, 20, 3), total=13)
    assert data.class_names == ("blue", "green", "red") and data.x_test is None
    x = np.concatenate([data.x_train, data.x_val])
    y = np.concatenate([data.y_train, data.y_val])
    for label, colour in enumerate((BLUE, GREEN, RED)):
        mean = x[y == label].mean(axis=(0, 1, 2))  # uint8 0..255
        assert np.abs(mean - colour).max() < 8


def test_folder_with_train_and_test_subfolders_has_a_test_split(tmp_path: Path) -> None:
    f.write_image_folder(tmp_path / "train", {"a": RED, "b": BLUE})
    f.write_image_folder(tmp_path / "test", {"b": BLUE}, per_class=2)
    data = load(name="folder", path=str(tmp_path), val_fraction=0.4)
    assert data.class_names == ("a", "b") and data.y_test.tolist() == [1, 1]
    assert data.x_test.shape == (2, 32, 32, 3)


@pytest.mark.parametrize(
    ("fault", "match"),
    [
        ("empty folder", r"imgs: no class folders; put the images in .*imgs/<class_name>/"),
        ("class without images", r"imgs/b: class folder 'b' has no \.png/\.jpg/\.jpeg images"),
        (
            "grayscale image",
            r"imgs/a/0\.png: grayscale image \(mode L\); convert the images to RGB",
        ),
        (
            "undecodable image",
            r"imgs/a/notes\.jpg: cannot decode image \(not a format Pillow "
            r"recognises; expected PNG or JPEG\)$",
        ),
        ("broken png", r"imgs/a/broken\.png: cannot decode image \(Truncated File Read\)$"),
        ("truncated jpeg", r"imgs/a/cut\.jpg: cannot decode image"),
        ("unknown test class", r"test: class folder 'zebra' is not among the training classes a"),
        ("a file, not a folder", r"imgs: not a folder"),
    ],
)
def test_folder_faults_are_one_line_data_errors(tmp_path: Path, fault: str, match: str) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    if fault == "class without images":
        f.write_image_folder(root, {"a": RED})
        (root / "b").mkdir()
        (root / "b" / "readme.txt").write_text("no images")
    elif fault == "grayscale image":
        (root / "a").mkdir()
        f.solid_image((128,), mode="L").save(root / "a" / "0.png")
    elif fault == "undecodable image":
        f.write_image_folder(root, {"a": RED})
        (root / "a" / "notes.jpg").write_text("not an image at all")
    elif fault == "broken png":
        f.write_image_folder(root, {"a": RED})
        (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    elif fault == "truncated jpeg":
        f.write_image_folder(root, {"a": RED})
        f.solid_image(RED, size=(64, 64)).save(root / "a" / "cut.jpg", "JPEG")
        data = (root / "a" / "cut.jpg").read_bytes()
        (root / "a" / "cut.jpg").write_bytes(data[: len(data) // 2])
    elif fault == "unknown test class":
        f.write_image_folder(root / "train", {"a": RED})
        f.write_image_folder(root / "test", {"zebra": RED})
    elif fault == "a file, not a folder":
        root.rmdir()
        root.write_text("x")
    with pytest.raises(DataError, match=match) as excinfo:
        load(name="folder", path=str(root))
    one_line(excinfo)


def test_class_with_one_example_says_which_class_and_what_is_needed(tmp_path: Path) -> None:
    f.write_image_folder(tmp_path, {"many": RED})
    f.write_image_folder(tmp_path, {"lonely": BLUE}, per_class=1)
    with pytest.raises(
        DataError,
        match=r"class 'lonely' \(label 0\) has 1 training example; a "
        r"stratified validation split needs at least 2 per "
        r"class",
    ) as excinfo:
        load(name="folder", path=str(tmp_path), val_fraction=0.5)
    one_line(excinfo)


# --------------------------------------------------------------------------------------------
# Parquet


def test_parquet_encoded_images_with_int_labels(tmp_path: Path) -> None:
    colours = [RED, BLUE] * 4
    path = f.write_parquet(
        tmp_path / "d.parquet",
        {
            "image": pa.array([f.png_bytes(c) for c in colours], pa.binary()),
            "label": [0, 1] * 4,
        },
    )
    data = load(name="parquet", path=str(path), val_fraction=0.25, image_size=[8, 8])
    assert_dataset(data, classes=2, image_shape=(8, 8, 3), total=8)
    assert np.abs(data.x_train[data.y_train == 1].mean(axis=(0, 1, 2)) - BLUE).max() < 2


def test_parquet_hugging_face_image_structs_with_a_split_column(tmp_path: Path) -> None:
    structs = [{"bytes": f.png_bytes(c), "path": None} for c in [RED, BLUE] * 3]
    path = f.write_parquet(
        tmp_path / "hf.parquet",
        {
            "img": structs,
            "fine": ["cat", "ant"] * 3,
            "split": ["train"] * 4 + ["test"] * 2,
        },
    )
    data = load(
        name="parquet",
        path=f"file://{path}",
        image_column="img",
        label_column="fine",
        val_fraction=0.5,
    )
    assert data.class_names == ("ant", "cat")
    assert data.y_test.tolist() == [1, 0] and len(data.y_train) + len(data.y_val) == 4


def test_parquet_folder_of_files_reads_every_file(tmp_path: Path) -> None:
    for part, colour in enumerate((RED, BLUE)):
        f.write_parquet(
            tmp_path / f"part-{part}.parquet",
            {"image": pa.array([f.png_bytes(colour)] * 3, pa.binary()), "label": [part] * 3},
        )
    data = load(name="parquet", path=str(tmp_path), val_fraction=0.34, image_size=[4, 4])
    assert_dataset(data, classes=2, image_shape=(4, 4, 3), total=6)


@pytest.mark.parametrize("layout", ["flat uint8", "nested float", "fixed-shape tensor"])
def test_parquet_pixel_arrays(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 4, 5, 3), dtype=np.uint8)
    if layout == "flat uint8":
        column = pa.array(list(pixels.reshape(6, -1)), pa.list_(pa.uint8()))
    elif layout == "nested float":
        column = pa.array((pixels / 255).tolist(), pa.list_(pa.list_(pa.list_(pa.float32()))))
    else:
        storage = pa.FixedSizeListArray.from_arrays(pa.array(pixels.ravel()), 60)
        column = pa.ExtensionArray.from_storage(
            pa.fixed_shape_tensor(pa.uint8(), (4, 5, 3)), storage
        )
    path = f.write_parquet(
        tmp_path / "p.parquet",
        {"image": column, "label": ["x", "y"] * 3, "split": ["train"] * 4 + ["test"] * 2},
    )
    data = load(name="parquet", path=str(path), image_size=[4, 5], val_fraction=0.5)
    assert data.x_test.shape == (2, 4, 5, 3)
    scale = 1 if data.x_test.dtype == np.uint8 else 255  # uint8 columns stay uint8
    assert (data.x_test.dtype == np.uint8) == (layout != "nested float")
    assert np.allclose(data.x_test * scale, pixels[4:], atol=1e-3)


@pytest.mark.parametrize(
    ("fault", "match"),
    [
        (
            "missing column",
            r"d\.parquet: no column 'label' \(it has image, target\); set "
            r"dataset\.image_column / dataset\.label_column",
        ),
        ("corrupt file", r"d\.parquet: cannot read as Parquet"),
        (
            "float out of range",
            r"column 'image' float pixels must be in \[0, 1\], got \[0, 255\]; "
            r"divide by 255",
        ),
        (
            "wrong flat length",
            r"flat pixel lists of length 9; dataset\.image_size \[2, 2\] needs "
            r"2\*2\*3 = 12",
        ),
        ("ragged lists", r"pixel lists of different lengths"),
        ("bad split value", r"column 'split' must hold train or test, got 'validation'"),
        ("negative label", r"column 'target' has negative label -1"),
        ("missing file", r"^dataset\.path: .*d\.parquet does not exist$"),
    ],
)
def test_parquet_faults_are_one_line_data_errors(tmp_path: Path, fault: str, match: str) -> None:
    path = tmp_path / "d.parquet"
    image = pa.array([[0.0] * 12, [255.0] * 12], pa.list_(pa.float32()))
    columns: dict[str, Any] = {"image": image, "target": [0, 1]}
    if fault == "corrupt file":
        f.write_parquet(path, columns)
        path.write_bytes(path.read_bytes()[:-30])
    elif fault == "float out of range":
        f.write_parquet(path, {"image": image, "target": [0, 1]})
    elif fault == "wrong flat length":
        f.write_parquet(
            path, {"image": pa.array([[1] * 9] * 2, pa.list_(pa.uint8())), "target": [0, 1]}
        )
    elif fault == "ragged lists":
        f.write_parquet(
            path, {"image": pa.array([[1] * 12, [1] * 9], pa.list_(pa.uint8())), "target": [0, 1]}
        )
    elif fault == "bad split value":
        f.write_parquet(path, {**columns, "split": ["train", "validation"]})
    elif fault == "negative label":
        f.write_parquet(path, {"image": pa.array([b"x", b"y"]), "target": [0, -1]})
    elif fault != "missing file":
        f.write_parquet(path, columns)
    label = "label" if fault == "missing column" else "target"
    with pytest.raises(DataError, match=match) as excinfo:
        load(name="parquet", path=str(path), label_column=label, image_size=[2, 2])
    one_line(excinfo)


# --------------------------------------------------------------------------------------------
# npz


def test_npz_uint8_with_test_split_and_class_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = f.write_npz(
        tmp_path / "d.npz",
        x_train=rng.integers(0, 256, (12, 6, 7, 3), dtype=np.uint8),
        y_train=np.arange(12) % 3,
        x_test=np.full((2, 6, 7, 3), 255, np.uint8),
        y_test=np.array([[2], [0]]),
        class_names=np.array(["a", "b", "c"]),
    )
    data = load(name="npz", path=str(path), val_fraction=0.25)
    assert_dataset(data, classes=3, image_shape=(6, 7, 3), total=12)
    assert data.class_names == ("a", "b", "c") and data.y_test.tolist() == [2, 0]
    assert data.x_test.dtype == np.uint8 and data.x_test.max() == 255


def test_npz_grayscale_floats_repeat_to_three_channels_and_no_test(tmp_path: Path) -> None:
    gray = np.random.default_rng(0).random((10, 5, 5), dtype=np.float32)
    path = f.write_npz(tmp_path / "g.npz", x_train=gray, y_train=np.arange(10) % 2)
    data = load(name="npz", path=str(path), val_fraction=0.2)
    assert data.x_test is None and data.y_test is None and data.class_names == ("0", "1")
    assert data.x_train.shape[1:] == (5, 5, 3)
    assert np.array_equal(data.x_train[..., 0], data.x_train[..., 2])
    assert data.x_train.flags.c_contiguous


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        (
            {"x_train": np.zeros((4, 3, 8, 8), np.uint8), "y_train": np.arange(4)},
            r"x_train looks channels-first with shape \(4, 3, 8, 8\); store it as \(N, H, W, 3\)",
        ),
        (
            {"x_train": np.zeros((4, 8, 8, 3, 1), np.uint8), "y_train": np.arange(4)},
            r"x_train must have shape \(N, H, W, 3\), \(N, H, W, 1\) or \(N, H, W\), got",
        ),
        (
            {"x_train": np.zeros((4, 8, 8, 3), np.uint8), "y_train": np.arange(3)},
            r"y_train has 3 labels for 4 images",
        ),
        (
            {"x_train": np.zeros((4, 8, 8, 3), np.uint8), "y_train": np.array([0, 1, -1, 0])},
            r"training label -1 at index 2 is out of range",
        ),
        (
            {
                "x_train": np.zeros((4, 8, 8, 3), np.uint8),
                "y_train": np.array([0, 1, 2, 0]),
                "class_names": np.array(["a", "b"]),
            },
            r"training label 2 at index 2 is out of range; "
            r"labels must be in \[0, 2\) for 2 classes",
        ),
        (
            {"x_train": np.zeros((4, 8, 8, 3), np.uint8), "y_train": np.array([0.0, 1, 0, 1])},
            r"y_train must be 1-D integer class ids, got float64",
        ),
        (
            {"x_train": np.full((4, 8, 8, 3), 2.0), "y_train": np.arange(4) % 2},
            r"x_train float pixels must be in \[0, 1\], got \[2, 2\]; divide by 255",
        ),
        (
            {"x_train": np.zeros((4, 8, 8, 3), np.int16) - 1, "y_train": np.arange(4) % 2},
            r"x_train integer pixels must be in \[0, 255\], got \[-1, -1\]",
        ),
        ({"images": np.zeros((4, 8, 8, 3), np.uint8)}, r"no array 'x_train' \(it has images\)"),
        (
            {
                "x_train": np.zeros((4, 8, 8, 3), np.uint8),
                "y_train": np.arange(4),
                "x_test": np.zeros(1),
            },
            r"has only one of x_test and y_test",
        ),
        (
            {
                "x_train": np.zeros((4, 8, 8, 3), np.uint8),
                "y_train": np.arange(4) % 2,
                "x_test": np.zeros((1, 9, 9, 3), np.uint8),
                "y_test": np.zeros(1, int),
            },
            r"x_test images are \(9, 9, 3\) but x_train images are \(8, 8, 3\)",
        ),
    ],
)
def test_npz_shape_and_label_faults(tmp_path: Path, arrays: dict, match: str) -> None:
    path = f.write_npz(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=match) as excinfo:
        load(name="npz", path=str(path), val_fraction=0.5)
    one_line(excinfo)


@pytest.mark.parametrize(
    ("fault", "match"),
    [
        ("truncated", r"d\.npz: not a readable \.npz archive"),
        ("object array", r"d\.npz: not a readable \.npz archive \(Object arrays cannot be loaded"),
        ("pickle file", r"d\.npz: not a readable \.npz archive"),
        ("single array", r"d\.npz: is a single array, not an \.npz archive"),
    ],
)
def test_npz_unreadable_files(tmp_path: Path, fault: str, match: str) -> None:
    path = tmp_path / "d.npz"
    if fault == "truncated":
        f.write_npz(path, x_train=np.zeros((50, 8, 8, 3)), y_train=np.arange(50))
        path.write_bytes(path.read_bytes()[:3000])
    elif fault == "object array":
        f.write_npz(path, x_train=np.zeros((2, 8, 8, 3)), y_train=np.array([0, "a"], object))
    elif fault == "pickle file":
        path.write_bytes(pickle.dumps({"x_train": 1}))
    else:
        with path.open("wb") as handle:
            np.save(handle, np.zeros(3))
    with pytest.raises(DataError, match=match) as excinfo:
        load(name="npz", path=str(path))
    one_line(excinfo)


# --------------------------------------------------------------------------------------------
# tf.data pipeline


def batches(pipeline: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in pipeline]


def test_eval_pipeline_keeps_order_and_shapes(digits: Dataset) -> None:
    out = batches(
        make_input_pipeline(
            digits.x_val, digits.y_val, batch_size=50, training=False, seed=0, augment="flip+crop"
        )
    )
    assert [len(y) for _, y in out] == [50, 50, 44]
    assert out[0][0].shape == (50, 32, 32, 3) and out[0][0].dtype == np.float32
    assert np.array_equal(np.concatenate([x for x, _ in out]), digits.x_val)
    assert np.array_equal(np.concatenate([y for _, y in out]), digits.y_val)


def test_training_pipeline_reshuffles_each_epoch_and_repeats_for_a_seed(digits: Dataset) -> None:
    x, y = digits.x_val, np.arange(len(digits.y_val), dtype=np.int32)  # labels = indices

    def epochs(seed: int) -> list[np.ndarray]:
        pipeline = make_input_pipeline(x, y, batch_size=32, training=True, seed=seed)
        return [np.concatenate([b for _, b in batches(pipeline)]) for _ in range(2)]

    first, again, other = epochs(7), epochs(7), epochs(8)
    assert sorted(first[0].tolist()) == list(range(len(y)))  # a permutation each epoch
    assert not np.array_equal(first[0], first[1])
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize("augment", ["flip", "crop", "flip+crop"])
def test_augmentations_move_pixels_only_and_repeat_for_a_seed(augment: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((6, 12, 10, 3), dtype=np.float32)
    y = np.arange(6, dtype=np.int32)

    def run() -> list[tuple[np.ndarray, np.ndarray]]:
        return batches(
            make_input_pipeline(x, y, batch_size=4, training=True, seed=3, augment=augment)
        )

    out = run()
    assert [b.shape for b, _ in out] == [(4, 12, 10, 3), (2, 12, 10, 3)]
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(out, run()))
    pad = pipeline.CROP_PADDING if "crop" in augment else 0
    changed = 0
    for images, labels in out:
        for image, label in zip(images, labels):
            source = np.pad(x[label], [(pad, pad), (pad, pad), (0, 0)], mode="reflect")
            candidates = [source, source[:, ::-1]] if "flip" in augment else [source]
            windows = [
                c[i : i + 12, j : j + 10]
                for c in candidates
                for i in range(2 * pad + 1)
                for j in range(2 * pad + 1)
            ]
            assert any(np.array_equal(image, w) for w in windows)  # a (flipped) crop, nothing else
            changed += not np.array_equal(image, x[label])
    assert changed > 0


def test_pipeline_rejects_unknown_augment_and_batch_size(digits: Dataset) -> None:
    assert AUGMENT_CHOICES == ("none", "flip", "crop", "flip+crop")
    with pytest.raises(
        SpecError,
        match=r"^augment: must be one of none, flip, crop, flip\+crop, "
        r"got 'mixup'$",
    ):
        make_input_pipeline(
            digits.x_val, digits.y_val, batch_size=8, training=True, seed=0, augment="mixup"
        )
    with pytest.raises(SpecError, match=r"^batch_size: must be a positive int, got 0$"):
        make_input_pipeline(digits.x_val, digits.y_val, batch_size=0, training=True, seed=0)


@pytest.mark.parametrize("training, augment", [(False, "none"), (True, "flip+crop")])
def test_uint8_images_scaled_in_the_pipeline_are_bit_identical_to_float_images(
    training: bool, augment: str
) -> None:
    from search.data.split import to_unit_float

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 6, 5, 3), dtype=np.uint8)
    x[0], x[1] = 255, 0
    y = np.arange(20) % 3

    def batches(images: np.ndarray) -> list[np.ndarray]:
        pipeline = make_input_pipeline(
            images, y, batch_size=8, training=training, seed=1, augment=augment
        )
        return [batch.numpy() for batch, _ in pipeline]

    from_uint8, from_float = batches(x), batches(to_unit_float(x))
    assert [b.dtype for b in from_uint8] == [np.float32] * 3
    for scaled, float_input in zip(from_uint8, from_float, strict=True):
        np.testing.assert_array_equal(scaled, float_input)
    assert max(b.max() for b in from_uint8) == 1.0 and min(b.min() for b in from_uint8) == 0.0
