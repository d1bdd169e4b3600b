"""The one filesystem layer: local paths and URIs joined, split and written the same way."""

from __future__ import annotations

import os

import pytest

from search import storage
from search.errors import SpecError


@pytest.mark.parametrize(
    ("path", "remote"),
    [
        ("/tmp/results", False),
        ("results", False),
        ("s3://bucket/a", True),
        ("gs://bucket", True),
        ("file:///tmp/x", True),
    ],
)
def test_is_remote_means_a_uri(path, remote):
    assert storage.is_remote(path) is remote


def test_join_and_split_name_round_trip_for_paths_and_uris(tmp_path):
    local = storage.join(str(tmp_path), "exp")
    assert local == os.path.join(str(tmp_path), "exp")
    assert storage.split_name(local) == (str(tmp_path), "exp")
    uri = storage.join("s3://bucket/prefix/", "exp")
    assert uri == "s3://bucket/prefix/exp"
    assert storage.split_name(uri + "/") == ("s3://bucket/prefix", "exp")


def test_absolute_expands_local_paths_and_leaves_uris_alone(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("results") == str(tmp_path / "results")
    assert storage.absolute("s3://bucket/x") == "s3://bucket/x"


@pytest.mark.parametrize("as_uri", [False, True])
def test_write_atomic_writes_whole_files_and_leaves_no_temp_files(tmp_path, as_uri):
    target = tmp_path / "sub" / "spec.yaml"
    path = f"file://{target}" if as_uri else str(target)
    storage.write_atomic(path, "a: 1\n")
    storage.write_atomic(path, b"a: 2\n")
    assert target.read_text() == "a: 2\n"
    assert os.listdir(target.parent) == ["spec.yaml"]


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "model.keras"
    target.write_text("old")
    with pytest.raises(RuntimeError), storage.atomic_path(str(target)) as tmp:
        assert tmp.endswith(".keras")  # Keras insists on the suffix
        with open(tmp, "w") as handle:
            handle.write("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["model.keras"]


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/passwd", "a/../../b"])
def test_confined_refuses_names_outside_the_folder(tmp_path, name):
    with pytest.raises(SpecError, match=r"^out_dir: refusing to write .* outside ") as caught:
        storage.confined(str(tmp_path), name)
    assert caught.value.key == "out_dir"


def test_reading_helpers_agree_on_a_local_folder(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "d").mkdir()
    fs, root = storage.filesystem(str(tmp_path))
    assert storage.read_text(fs, storage.join(root, "a.txt")) == "hello"
    assert storage.read_bytes(fs, storage.join(root, "a.txt")) == b"hello"
    assert storage.is_dir(fs, storage.join(root, "d"))
    assert sorted(i.base_name for i in storage.list_dir(fs, root)) == ["a.txt", "d"]
    assert storage.list_dir(fs, storage.join(root, "missing")) == []
    assert storage.path_exists(str(tmp_path / "a.txt"))
    assert not storage.path_exists(str(tmp_path / "nope"))


def test_unknown_storage_scheme_is_a_one_line_error():
    with pytest.raises(SpecError, match=r"^nosuch://x: cannot open storage"):
        storage.filesystem("nosuch://x")
