"""The driver's Optuna journal: Optuna's file format, appended without waiting for the disk.

Optuna's ``JournalFileBackend`` takes a lock file and fsyncs the journal for every record it
appends, and one suggestion appends about ten (the trial, each parameter, the link to Ray's
trial). On a busy disk (a head node while trials upload checkpoints; 64 simulated trials on 2
cores in ``benchmarks/run.py --only scale``) an fsync can wait hundreds of milliseconds, and the
driver's loop waits with it: measured there, fsync was 284 ms of a suggestion's 310 ms at p99.

:class:`GroupCommitJournal` appends each batch of records with one ``write`` to the file opened
in append mode, so the lines are the operating system's at once: a driver that is killed
(SIGKILL, the OOM killer) loses none of them, and readers (``status``, ``export``,
``optuna-dashboard``) see them immediately. A background thread fsyncs the file when it has new
lines, at most once every :data:`SYNC_SECONDS`, as PostgreSQL's WAL writer does with
``synchronous_commit = off``; the lines still pending are synced when the process exits. Only
the machine itself going down can cost the last second's records, and ``resume`` rebuilds
lost records from Ray's results (:mod:`search.driver.reconcile`), as it does for a cloud
experiment's journal.

There is no lock file: one driver at a time writes an experiment (:mod:`search.outputs.lock`),
and a single ``write`` to a file opened with ``O_APPEND`` is never interleaved with another
thread's (a lock orders the driver's own threads anyway, so that a write a full disk refuses
part of can be cut back). A line cut short by a driver killed inside its write is cut off
when the next driver opens the journal: Optuna skips a torn last line, but once lines follow
it every read of the journal fails.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Generator
from typing import Any

from optuna.storages.journal import JournalFileBackend

from search.errors import SpecError, WriteFailed

logger = logging.getLogger(__name__)

SYNC_SECONDS = 1.0  # the most a record waits, after it is written, for its fsync

# Journals with lines not yet synced: the exit hook syncs them.
_pending: weakref.WeakSet[GroupCommitJournal] = weakref.WeakSet()


class GroupCommitJournal(JournalFileBackend):
    """Optuna's journal file, with a background fsync instead of one per record.

    Reads are Optuna's own (:class:`optuna.storages.journal.JournalFileBackend`); see the
    module's docs for what a crash can cost.

    Args:
        file_path: The journal file; created when missing.
        sync_seconds: The most a written record waits for its fsync.
    """

    def __init__(self, file_path: str, sync_seconds: float = SYNC_SECONDS) -> None:
        super().__init__(file_path)
        # Before Optuna reads it: a line its last writer cut short (a driver killed inside its
        # write) would be followed by this driver's lines, and every read after would fail.
        fd = os.open(file_path, os.O_RDWR)
        try:
            drop_torn_tail(fd)
        finally:
            os.close(fd)
        self._sync_seconds = sync_seconds
        self._init_sync_state()

    def _init_sync_state(self) -> None:
        self._writing = threading.Lock()
        self._state = threading.Lock()
        self._dirty = False
        self._syncer: threading.Thread | None = None

    # Ray pickles the searcher with its study at each experiment snapshot: no thread or lock.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_writing", "_state", "_dirty", "_syncer"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_sync_state()

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        """Optuna's reading; a damaged line (not a last line cut short, which Optuna skips) is
        a one-line error naming the file, not a traceback from inside Optuna.

        Raises:
            SpecError: A line in the journal is not a whole JSON record.
        """
        try:
            yield from super().read_logs(log_number_from)
        except ValueError as err:  # json's decode error, Optuna's "Invalid log format."
            raise SpecError(
                f"{self._file_path}: the study journal has a damaged line ({err}); "
                f"nothing was changed: restore the journal from a copy or remove "
                f"that line"
            ) from None

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Appends ``logs``, one JSON line each, with a single ``write``; the fsync follows.

        A write the disk refuses part of is cut back (one writer at a time in this process,
        so nothing else was appended meanwhile): a line cut short with lines after it would
        make every later read of the journal fail.

        Raises:
            WriteFailed: The disk refused the write (full, or an I/O error); the journal is
                left as it was before it.
        """
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode()
        fd = os.open(self._file_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            with self._writing:
                size = os.fstat(fd).st_size
                try:
                    written = os.write(fd, data)
                    while written < len(data):  # only a full disk or a signal cuts a write
                        written += os.write(fd, data[written:])
                except OSError as err:
                    os.ftruncate(fd, size)
                    raise WriteFailed("the study journal", self._file_path, err) from None
        finally:
            os.close(fd)
        with self._state:
            self._dirty = True
            _pending.add(self)
            if self._syncer is None:
                self._syncer = threading.Thread(
                    target=self._sync_loop, daemon=True, name="optuna-journal-sync"
                )
                self._syncer.start()

    def sync(self) -> None:
        """Fsyncs the journal now if it has lines not yet synced."""
        with self._state:
            if not self._dirty:
                return
            self._dirty = False
        self._fsync()

    def _sync_loop(self) -> None:
        # Lines written while it sleeps share one fsync; it ends once a sleep brought none.
        while True:
            time.sleep(self._sync_seconds)
            with self._state:
                if not self._dirty:
                    self._syncer = None
                    _pending.discard(self)
                    return
                self._dirty = False
            self._fsync()

    def _fsync(self) -> None:
        try:
            fd = os.open(self._file_path, os.O_WRONLY | os.O_APPEND)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            # The lines are written; only their flush to the disk failed (e.g. the experiment
            # folder was removed). Nothing to retry, but say so.
            logger.warning("could not fsync the study journal %s: %s", self._file_path, err)


def drop_torn_tail(fd: int) -> int:
    """Truncates a journal open at ``fd`` after its last whole line; returns its size."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    while end > 0:  # back to the last newline, a block at a time
        start = max(0, end - 65536)
        cut = os.pread(fd, end - start, start).rfind(b"\n")
        if cut >= 0:
            end = start + cut + 1
            break
        end = start
    os.ftruncate(fd, end)
    logger.warning(
        "the study journal ended in a line cut short (%d bytes); removed it", size - end
    )
    return end


@atexit.register
def _sync_pending() -> None:
    """Syncs every journal with lines still waiting for their fsync (at interpreter exit)."""
    for journal in list(_pending):
        journal.sync()
