"""Ray's experiment snapshot: whole, at a bounded rate, never pointing at a deleted checkpoint.

Ray Tune writes its snapshot (``experiment_state-*.json``, the searcher's and callbacks'
pickles) into a staging folder on the driver, then a background thread uploads that folder
to the experiment's storage; ``resume`` starts from the last one uploaded. Four things about
it are changed while a search runs (:func:`ray_snapshots`):

- **Whole files, read when the snapshot is taken.** The files are read in the driver's
  thread when the upload is launched, right after Ray saved the state (the driver's thread is
  Ray's only writer of the staging folder, so none is half written and the trials' logs hold
  every result the state knows of), and written in the background with the experiment state
  last. Ray's copy read them only as it uploaded them, while the driver went on: Ray saves
  a newer state into the staging folder during a slow upload (every save does, even one
  whose upload must wait), so the bucket could get that newer state after the trials'
  ``result.json`` copied before it, and a driver killed then left a state that lists a
  checkpoint whose epoch no result row in storage holds (a resume on a fresh machine then
  recorded a trial's epochs as 1, 3, 4). On a local or shared disk each file is written
  beside its target under a name Ray never reads, then renamed over it (Ray's copy wrote in
  place: a driver killed during the copy left a truncated ``experiment_state-*.json``, and
  ``Tuner.restore`` then logged "Failed to restore the run state" and silently started the
  experiment over); on an object store each write replaces a whole object. The staging
  folder also holds every trial's logs: only the files changed since the last upload are
  written, where Ray's copy wrote all of them each time.
  :func:`check_resumable_state` refuses, before Ray, a snapshot that does not parse anyway.
- **Forced snapshots at most ~5% of the driver's time.** Ray forces a snapshot after every
  trial checkpoint (``CheckpointConfig(num_to_keep=1)``), so that the state a resume starts
  from knows each one. Each snapshot serialises every trial of the experiment, so that cost
  grew with the square of the number of trials (279 of 451 s of a 516-trial simulation).
  A forced snapshot now waits until 19 times the last snapshot's duration has passed since
  it (as Ray paces its timed ones): in a small search that is a fraction of a second, as
  before; in one with thousands of trials the snapshots stay a twentieth of the driver's
  time and the state a resume starts from is that much older.
- **A retried trial keeps its log.** A trial's ``result.json`` and ``progress.csv`` are
  written on the driver and reach storage with the snapshots; when a trial restarts from a
  checkpoint, Ray copies them back from storage over the driver's own copy. With a snapshot
  that came later than the last epoch, that copy back erased the epochs since (a crash
  retry's results read epochs 1, 3, 4). The driver's copy, when it has one, now stays: it
  holds everything storage holds and more (a resumed driver has none and gets storage's).
- **Deletions wait for the snapshot.** A checkpoint Ray (or
  :class:`~search.driver.pruning.CheckpointPruner`) drops is deleted only once a snapshot
  taken after the drop has been uploaded: the snapshot a resume starts from never points at
  a checkpoint that is gone, however late it is.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from ray.train._internal import checkpoint_manager as ray_checkpoints
from ray.train._internal.storage import _FilesystemSyncer
from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
from ray.tune.execution.tune_controller import TuneController
from ray.tune.logger.logger import LoggerCallback

from search import storage
from search.errors import SpecError, WriteFailed, disk_error
from search.outputs.results import experiment_state_files

logger = logging.getLogger(__name__)

# A forced snapshot waits this many times the last snapshot's duration after it (Ray's own
# factor for its timed ones): snapshots take at most a twentieth of the driver's time.
SNAPSHOT_SPACING = 19.0

# Ray reads back every *.json and *.pkl of the experiment folder on resume; a temporary file
# must end otherwise, so one left by a killed driver is never taken for state.
PARTIAL_SUFFIX = ".partial"


FileStamp = tuple[int, int]  # (mtime in ns, size): a file changed since it was uploaded


def read_changed_files(
    local_path: str, uploaded: dict[str, FileStamp]
) -> tuple[dict[str, bytes], dict[str, FileStamp]]:
    """The files under ``local_path`` whose stamp differs from ``uploaded``'s, and every file's
    stamp now (paths relative to ``local_path``, ``/``-separated).

    The folder also holds every trial's logs (``result.json``...): a snapshot rewrites only
    those that changed since the last one instead of all of them.
    """
    files, stamps = {}, {}
    for root, _, names in os.walk(local_path):
        for name in names:
            path = os.path.join(root, name)
            relative = Path(os.path.relpath(path, local_path)).as_posix()
            try:
                stat = os.stat(path)
                stamp = (stat.st_mtime_ns, stat.st_size)
                if uploaded.get(relative) != stamp:
                    files[relative] = Path(path).read_bytes()
            except FileNotFoundError:
                continue  # removed since the folder was listed: nothing to upload
            stamps[relative] = stamp
    return files, stamps


def _state_last(files: dict[str, bytes]) -> list[str]:
    """The files' names, the experiment state last: the searcher state it is read with is
    never older than the state a resume starts from, nor a trial's log older than the state
    that lists its checkpoints."""
    return sorted(files, key=lambda name: name.startswith("experiment_state-"))


def write_files_atomically(files: dict[str, bytes], target_dir: str) -> None:
    """Writes each file under the local ``target_dir`` through a temporary file and a rename,
    the experiment state last."""
    for relative in _state_last(files):
        with storage.atomic_path(os.path.join(target_dir, relative), suffix=PARTIAL_SUFFIX) as tmp:
            Path(tmp).write_bytes(files[relative])


def write_objects(files: dict[str, bytes], fs: pafs.FileSystem, target_dir: str) -> None:
    """Writes each file under ``target_dir`` on an object store (each write replaces a whole
    object): the trials' logs in parallel, as Ray's copy did, then the experiment state."""
    paths = {name: f"{target_dir.rstrip('/')}/{name}" for name in files}
    for parent in sorted({path.rsplit("/", 1)[0] for path in paths.values()}):
        fs.create_dir(parent, recursive=True)  # as Ray's copy did

    def write(relative: str) -> None:
        with fs.open_output_stream(paths[relative]) as stream:
            stream.write(files[relative])

    states = [name for name in files if name.startswith("experiment_state-")]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(write, [name for name in files if name not in states]))
    for relative in sorted(states):
        write(relative)


class DeferredDeletions:
    """Checkpoint folders to delete once a snapshot that no longer lists them is uploaded.

    Folders are queued from the driver's thread (Ray's checkpoint bookkeeping, the pruner)
    and taken when an upload is launched, in that same thread, right after Ray saved the
    state: that state no longer lists them. The upload's thread deletes them after it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queued: list[tuple[pafs.FileSystem, str]] = []
        self.active = False

    def queue(self, fs: pafs.FileSystem, fs_path: str) -> None:
        with self._lock:
            self._queued.append((fs, fs_path))

    def take(self) -> list[tuple[pafs.FileSystem, str]]:
        with self._lock:
            taken, self._queued = self._queued, []
        return taken

    def give_back(self, folders: list[tuple[pafs.FileSystem, str]]) -> None:
        with self._lock:
            self._queued[:0] = folders

    @staticmethod
    def delete(folders: list[tuple[pafs.FileSystem, str]]) -> None:
        for fs, fs_path in folders:
            try:
                storage.remove_tree(fs, fs_path)
            except OSError as error:  # one folder the store refuses must not keep the rest
                logger.warning("could not delete checkpoint folder %s: %s", fs_path, error)


DEFERRED = DeferredDeletions()
# Ray logs a restore that failed with its traceback before it raises it again.
RAY_CONTROLLER_LOG = logging.getLogger("ray.tune.execution.tune_controller")


def _refused_restore(record: logging.LogRecord) -> bool:
    return record.getMessage() != "Failed to restore the run state."


# Snapshot writes a full disk (or an I/O error) refused, for the driver's loop to raise.
REFUSED_SNAPSHOTS: list[BaseException] = []


def delete_when_snapshotted(fs: pafs.FileSystem, fs_path: str) -> None:
    """Deletes a checkpoint folder once the experiment's snapshot cannot point at it.

    Within :func:`ray_snapshots` that is after the next snapshot is uploaded; outside it (no
    search running in this process) at once.
    """
    if DEFERRED.active:
        DEFERRED.queue(fs, fs_path)
    else:
        storage.remove_tree(fs, fs_path)


class SnapshotUpload:
    """One upload of the staging folder, then the deletions it makes safe.

    Ray keeps the last upload command on its syncer (to retry it) and ships that syncer,
    with the experiment's storage context, to every trial it starts. So a pickled upload is
    an empty one: the bytes it carries (every changed file of the snapshot, megabytes in a
    large search) stay on the driver, which alone runs it (a trial never uploads the
    experiment's state).

    Args:
        upload: Writes the snapshot (ours, or Ray's copy for object stores).
        folders: Checkpoint folders to delete once it is written.
        uploaded: Called once it is written (remembers what was written).
    """

    def __init__(
        self,
        upload: Callable[[], None] | None,
        folders: list[tuple[pafs.FileSystem, str]],
        uploaded: Callable[[], None] | None = None,
    ) -> None:
        self.upload = upload
        self.folders = folders
        self.uploaded = uploaded

    def __getstate__(self) -> dict[str, Any]:
        return {"upload": None, "folders": [], "uploaded": None}

    def run(self) -> None:
        """Writes the snapshot, then deletes the folders; on a failure they wait for the
        next snapshot."""
        if self.upload is None:
            return  # a copy shipped with a trial's storage context
        try:
            self.upload()
        except BaseException as err:
            DEFERRED.give_back(self.folders)  # the snapshot that lists them no more failed
            if disk_error(err) is not None:
                # Ray logs a failed upload and goes on; the driver's loop stops the search.
                REFUSED_SNAPSHOTS.append(err)
            raise
        if self.uploaded is not None:
            self.uploaded()
        DEFERRED.delete(self.folders)


def _run_upload(job: SnapshotUpload) -> None:
    job.run()


@contextlib.contextmanager
def ray_snapshots() -> Iterator[None]:
    """Within the block, Ray's experiment snapshots are whole and paced, and checkpoint
    deletions wait for them (see the module's docstring).

    Ray builds its syncer and checkpoint bookkeeping deep inside ``Tuner.fit``, so the block
    swaps the methods concerned for its duration. Uploads with exclusions (and of a single
    file) keep Ray's own copy.

    Raises:
        RuntimeError: When a block is already active in this process.
    """
    if DEFERRED.active:
        raise RuntimeError("ray_snapshots() is already active in this process")
    ray_command = _FilesystemSyncer._sync_up_command
    ray_sync_up = _ExperimentCheckpointManager.sync_up_experiment_state
    ray_delete = ray_checkpoints._delete_fs_path
    ray_restore_log = LoggerCallback._restore_from_remote
    ray_resume = TuneController.resume

    # (staging folder, target) -> the stamps of the files the last upload there wrote
    uploaded_stamps: dict[tuple[str, str], dict[str, FileStamp]] = {}

    def sync_up_command(
        syncer: _FilesystemSyncer, local_path: str, uri: str, exclude: list | None = None
    ) -> tuple[Any, dict]:
        if exclude or not os.path.isdir(local_path):
            upload, upload_kwargs = ray_command(
                syncer, local_path=local_path, uri=uri, exclude=exclude
            )
            return _run_upload, {
                "job": SnapshotUpload(functools.partial(upload, **upload_kwargs), DEFERRED.take())
            }
        # Read now, in the driver's thread: Ray (and its loggers) rewrite the staging folder
        # while the background thread uploads it, a newer state included.
        key = (local_path, uri)
        files, stamps = read_changed_files(local_path, uploaded_stamps.get(key, {}))
        fs = syncer.storage_filesystem
        write = (
            functools.partial(write_files_atomically, files, uri)
            if isinstance(fs, pafs.LocalFileSystem)
            else functools.partial(write_objects, files, fs, uri)
        )
        return _run_upload, {
            "job": SnapshotUpload(
                write, DEFERRED.take(), functools.partial(uploaded_stamps.__setitem__, key, stamps)
            )
        }

    pacing = {"last_s": 0.0, "ended_at": float("-inf")}  # the last snapshot's duration, end

    def paced_sync_up(
        manager: _ExperimentCheckpointManager,
        save_fn: Callable[[], None],
        force: bool = False,
        wait: bool = False,
    ) -> None:
        if REFUSED_SNAPSHOTS:
            refused = REFUSED_SNAPSHOTS.pop()
            raise (
                refused
                if isinstance(refused, WriteFailed)
                else WriteFailed(
                    "Ray's experiment snapshot",
                    str(getattr(manager._storage, "experiment_fs_path", "the experiment")),
                    refused,
                )
            )
        saved, synced = manager._last_save_time, manager._last_sync_time
        began = time.monotonic()
        held = (
            manager._should_force_sync_up
            and not force
            and began - pacing["ended_at"] < SNAPSHOT_SPACING * pacing["last_s"]
        )
        if held:  # Ray's timer may still take one; the forced one waits for its turn
            manager._should_force_sync_up = False
        try:
            ray_sync_up(manager, save_fn, force=force, wait=wait)
        finally:
            if held and manager._last_sync_time == synced:
                manager._should_force_sync_up = True
        if manager._last_save_time != saved:
            pacing["ended_at"] = time.monotonic()
            pacing["last_s"] = pacing["ended_at"] - began

    def restore_log(callback: LoggerCallback, file_name: str, trial: Any) -> None:
        if not os.path.exists(os.path.join(trial.local_path, file_name)):
            ray_restore_log(callback, file_name, trial)

    # Ray's methods patched for this fit() only (restored below): deliberate, hence the ignores.
    def strict_resume(controller: TuneController, resume_config: Any) -> None:
        try:
            ray_resume(controller, resume_config)
        except Exception as err:
            RAY_CONTROLLER_LOG.addFilter(_refused_restore)  # the error says it in one line
            # Ray logs a failed restore and goes on with what it half restored: no trial
            # requeued and a searcher without its study, it then waits forever for a trial no
            # one suggests (a journal with a line cut short did this). Refuse instead.
            controller._fail_fast = True
            where = getattr(controller._storage, "experiment_fs_path", "the experiment")
            raise SpecError(
                f"{where}: Ray could not restore "
                f"the search's state ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); the search "
                f"was not resumed"
            ) from err

    _FilesystemSyncer._sync_up_command = sync_up_command  # type: ignore[method-assign,assignment]
    TuneController.resume = strict_resume  # type: ignore[method-assign,assignment]
    LoggerCallback._restore_from_remote = restore_log  # type: ignore[method-assign,assignment]
    _ExperimentCheckpointManager.sync_up_experiment_state = paced_sync_up  # type: ignore[method-assign,assignment]
    ray_checkpoints._delete_fs_path = delete_when_snapshotted
    DEFERRED.active = True
    REFUSED_SNAPSHOTS.clear()
    ended_cleanly = False
    try:
        yield
        ended_cleanly = True
    finally:
        DEFERRED.active = False
        ray_checkpoints._delete_fs_path = ray_delete
        LoggerCallback._restore_from_remote = ray_restore_log  # type: ignore[method-assign]
        TuneController.resume = ray_resume  # type: ignore[method-assign]
        RAY_CONTROLLER_LOG.removeFilter(_refused_restore)
        _ExperimentCheckpointManager.sync_up_experiment_state = ray_sync_up  # type: ignore[method-assign]
        _FilesystemSyncer._sync_up_command = ray_command  # type: ignore[method-assign]
        left = DEFERRED.take()
        # Ray's fit ends with a snapshot taken after its last drop; after a failure the
        # folders stay (storage spent, nothing a resume needs lost).
        if ended_cleanly:
            DeferredDeletions.delete(left)


def check_resumable_state(round_path: str) -> None:
    """Refuses a round whose newest experiment state is not whole.

    Ray would log the error and start the experiment over; the user would lose the
    interrupted trials without being told.

    Raises:
        SpecError: When that state does not parse, naming the file, its size and the way on.
    """
    fs, round_dir = storage.filesystem(round_path)
    names = [os.path.basename(path) for path in experiment_state_files(fs, round_dir)]
    if not names:
        return
    newest = storage.join(round_path, names[-1])
    text = storage.read_bytes(fs, storage.join(round_dir, names[-1]))
    try:
        json.loads(text)
    except ValueError as error:
        way_on = (
            f"remove it to resume from the older {names[-2]}"
            if len(names) > 1
            else "no older state is there to resume from, so run the search again under "
            "another name"
        )
        raise SpecError(
            f"{newest}: Ray's experiment state must be whole JSON to resume, got "
            f"{len(text)} bytes that end mid-document ({error}; a driver killed while "
            f"writing it); {way_on}"
        ) from None
