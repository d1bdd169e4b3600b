"""The one filesystem layer: a local path or a URI (``s3://``, ``gs://``, ``file://``), read and
written the same way through pyarrow's filesystems.

Every module that touches an experiment folder, an export or a dataset location goes through
here, so "is this remote?", "how do I join it?" and "how do I write it so no reader ever sees
half a file?" each have one answer.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
from collections.abc import Iterator

import pyarrow.fs as pafs

from search.errors import SpecError, WriteFailed, disk_error

FileInfo = pafs.FileInfo
FileType = pafs.FileType


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URI (``s3://...``, ``gs://...``, ``file://...``)."""
    return "://" in path


def absolute(path: str) -> str:
    """A local path made absolute (``~`` expanded); a URI unchanged."""
    return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    """Joins path parts onto a local path or a URI."""
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def split_name(path: str) -> tuple[str, str]:
    """``(parent, name)`` of a local path or a URI (trailing slashes ignored)."""
    path = path.rstrip("/")
    if is_remote(path):
        parent, _, name = path.rpartition("/")
        return parent, name
    return os.path.dirname(path), os.path.basename(path)


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for a local path or a URI.

    Raises:
        SpecError: When a URI names storage pyarrow cannot open.
    """
    if is_remote(path):
        try:
            return pafs.FileSystem.from_uri(path)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for bad URIs
            raise SpecError(f"{path}: cannot open storage ({err})") from None
    return pafs.LocalFileSystem(), path


def is_local_fs(fs: pafs.FileSystem) -> bool:
    """Whether ``fs`` is this machine's own filesystem."""
    return isinstance(fs, pafs.LocalFileSystem)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    """Whether ``path`` exists in ``fs`` (a file or a folder)."""
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(fs: pafs.FileSystem, path: str) -> bool:
    """Whether ``path`` is a folder in ``fs``."""
    return fs.get_file_info(path).type == pafs.FileType.Directory


def list_dir(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    """The entries directly inside ``path`` ([] when it does not exist)."""
    return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))


def read_text(fs: pafs.FileSystem, path: str) -> str:
    """A whole file as UTF-8 text."""
    with fs.open_input_stream(path) as stream:
        return stream.read().decode("utf-8")


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """A whole file as bytes."""
    with fs.open_input_stream(path) as stream:
        return stream.read()


def tree_bytes(fs: pafs.FileSystem, path: str) -> int:
    """Bytes of every file under ``path`` (0 when it does not exist)."""
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    return sum(
        info.size or 0 for info in fs.get_file_info(selector) if info.type == pafs.FileType.File
    )


def remove_tree(fs: pafs.FileSystem, path: str) -> None:
    """Deletes a folder and everything in it (local or in object storage); gone already is
    fine."""
    with contextlib.suppress(FileNotFoundError):
        fs.delete_dir(path)


def path_exists(path: str) -> bool:
    """Whether a local path or URI exists."""
    fs, inner = filesystem(path)
    return exists(fs, inner)


def confined(out_dir: str, file_name: str) -> str:
    """``out_dir/file_name``, refusing a name that would land outside ``out_dir``.

    Raises:
        SpecError: When ``file_name`` climbs out of ``out_dir`` (``..``, an absolute path, a
            link pointing elsewhere).
    """
    root = os.path.realpath(out_dir)
    target = os.path.realpath(os.path.join(root, file_name))
    if os.path.dirname(target) != root:
        raise SpecError(
            f"out_dir: refusing to write {file_name!r} outside {out_dir}", key="out_dir"
        )
    return target


@contextlib.contextmanager
def atomic_path(target: str, suffix: str | None = None) -> Iterator[str]:
    """Yields a temporary local path that replaces ``target`` only once fully written.

    The temporary file sits beside the target (same filesystem, so the rename is atomic) and
    keeps its suffix unless given another (Keras insists on ``.keras``; a reader that picks
    files by suffix wants another one). On an error the target is left untouched; a full disk
    or an I/O error is raised as :class:`~search.errors.WriteFailed` naming the target.
    """
    directory, name = os.path.split(target)
    os.makedirs(directory or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=directory or ".",
        prefix=f".{name}.",
        suffix=os.path.splitext(name)[1] if suffix is None else suffix,
    )
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as err:
        found = disk_error(err)
        if found is None:
            raise
        raise WriteFailed(name, target, found, then="run the command again") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_atomic(path: str, data: str | bytes) -> None:
    """Writes a whole file (local path or URI) so that a reader never sees it half-written.

    Locally: a temporary file, then a rename. On an object store a write replaces the whole
    object on close, so a reader sees the old or the new one.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fs, inner = filesystem(path)
    if is_local_fs(fs):
        with atomic_path(inner) as tmp, open(tmp, "wb") as handle:
            handle.write(payload)
        return
    with fs.open_output_stream(inner) as stream:
        stream.write(payload)
