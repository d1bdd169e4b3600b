"""The driver's lock: at most one driver runs an experiment, on a local disk or in a bucket.

``driver.lock`` in the experiment folder names its holder (host, pid, start time and a random
token). How it is taken depends on where the folder lives:

- **A local folder** (or a shared mount): created with ``O_CREAT | O_EXCL``, so of two drivers
  starting together exactly one creates it. A lock left by a dead process of this host is taken
  over (with a message); takeovers on one host run one at a time under ``flock`` on the folder.
- **An object store** (``s3://``, ``gs://``): pyarrow offers no conditional write (S3's
  ``If-None-Match``), so the lock is written, then read back after :data:`SETTLE_S` seconds: a
  driver holds it only if its own token is still there. Of two drivers starting together,
  the later write wins and the other sees the winner's token and stops, provided each
  driver's read-check-write takes less than :data:`SETTLE_S`.

A lock held by another host is respected: that machine's process cannot be checked from here.
``force=True`` takes it (the user says that driver is dead); a live process of this host is
never overridden. A driver that lost its lock this way notices at its next journal upload
(:meth:`DriverLock.still_held`) and stops writing the journal.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from search import storage
from search.errors import SpecError

LOCK_FILE = "driver.lock"
# Object stores: how long a driver waits between writing its lock and reading it back.
SETTLE_S = 2.0


@dataclass(frozen=True)
class LockOwner:
    """Who holds an experiment, as its ``driver.lock`` says."""

    host: str
    pid: int
    since: float
    token: str = ""

    @classmethod
    def parse(cls, text: str) -> LockOwner | None:
        """The owner a lock file names; ``None`` when it is empty or unreadable."""
        try:
            raw = json.loads(text)
            return cls(
                host=str(raw["host"]),
                pid=int(raw["pid"]),
                since=float(raw.get("since", 0)),
                token=str(raw.get("token", "")),
            )
        except (ValueError, TypeError, KeyError):
            return None

    @classmethod
    def me(cls) -> LockOwner:
        return cls(
            host=socket.gethostname(), pid=os.getpid(), since=time.time(), token=uuid.uuid4().hex
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @property
    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def is_alive(self) -> bool:
        """Whether the holder still runs: always assumed for another host's driver."""
        if not self.on_this_host:
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's live process
            return True
        return True

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on {self.host}, since {since}"


def _lock_path(experiment_dir: str) -> tuple[storage.pafs.FileSystem, str]:
    fs, root = storage.filesystem(experiment_dir)
    return fs, storage.join(root, LOCK_FILE)


def _read_lock(experiment_dir: str) -> str | None:
    """The lock file's text, or ``None`` when there is none."""
    fs, path = _lock_path(experiment_dir)
    try:
        return storage.read_text(fs, path)
    except (FileNotFoundError, OSError):
        return None


def read_owner(experiment_dir: str) -> LockOwner | None:
    """The holder named by the experiment's lock (``None``: no lock, or an unreadable one)."""
    text = _read_lock(experiment_dir)
    return LockOwner.parse(text) if text is not None else None


def is_running(experiment_dir: str) -> bool:
    """Whether a driver still holds the experiment (a lock naming a live process, or any
    process of another host)."""
    owner = read_owner(experiment_dir)
    return owner is not None and owner.is_alive()


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class DriverLock:
    """This driver's hold on one experiment folder (see the module's docstring).

    Args:
        experiment_dir: The experiment folder (local path or URI).
        force: Take a lock that another host's driver holds.
        settle_s: Object stores only: the wait before reading the lock back.
    """

    def __init__(
        self, experiment_dir: str, *, force: bool = False, settle_s: float = SETTLE_S
    ) -> None:
        self.experiment_dir = experiment_dir
        self.force = force
        self.settle_s = settle_s
        self.owner = LockOwner.me()
        self.fs, self.path = _lock_path(experiment_dir)
        # Folders the lock had to create: removed again if the driver leaves nothing in them
        # (a search refused before it started leaves no trace).
        self._created: list[str] = []

    # -- taking it --------------------------------------------------------------------------

    def acquire(self) -> None:
        """Takes the lock.

        Raises:
            SpecError: When another live driver holds it (or won the race for it).
        """
        if storage.is_local_fs(self.fs):
            self._acquire_local()
        else:
            self._acquire_object_store()

    def _may_take(self, holder: LockOwner | None) -> None:
        """Raises unless the lock that ``holder`` left may be taken; says why it is taken."""
        where = f"{self.experiment_dir}: driver.lock"
        if holder is None:
            _warn(f"{where} is unreadable; taking it over")
        elif holder.on_this_host and not holder.is_alive():
            _warn(
                f"{where} of {holder.describe()} is stale (no such process: that driver "
                f"died); taking it over"
            )
        elif holder.on_this_host:
            raise SpecError(
                f"{self.experiment_dir}: another driver is running this experiment "
                f"({holder.describe()}; see {self.path}); stop it first"
            )
        elif self.force:
            _warn(f"{where} of {holder.describe()} taken by force")
        else:
            raise SpecError(
                f"{self.experiment_dir}: another driver holds this experiment "
                f"({holder.describe()}; see {self.path}); this machine cannot "
                f"check that host's process: if it is dead, run again with "
                f"--force"
            )

    def _acquire_local(self) -> None:
        folder = os.path.dirname(self.path)
        missing = folder
        while missing and not os.path.isdir(missing):
            self._created.append(missing)
            missing = os.path.dirname(missing)
        os.makedirs(folder, exist_ok=True)
        payload = self.owner.to_json().encode("utf-8")
        for _ in range(5):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._take_over_local(folder, payload):
                    return
                continue  # the lock vanished (its driver ended) before it could be read
            with os.fdopen(handle, "wb") as out:
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())
            return
        raise SpecError(
            f"{self.experiment_dir}: could not take {LOCK_FILE}: other drivers keep "
            f"taking and releasing it"
        )

    def _take_over_local(self, folder: str, payload: bytes) -> bool:
        """Replaces an existing lock if it may be taken; False when it vanished meanwhile."""
        directory = os.open(folder, os.O_RDONLY)
        try:
            # One takeover at a time: without this, two drivers that both read the same
            # stale lock could both replace it and both believe they hold it.
            fcntl.flock(directory, fcntl.LOCK_EX)
            try:
                with open(self.path, "rb") as handle:
                    text = handle.read().decode("utf-8", "replace")
            except FileNotFoundError:
                return False
            holder = LockOwner.parse(text)
            if holder is None and time.time() - os.path.getmtime(self.path) < self.settle_s:
                # Created an instant ago and not written yet: its driver is alive.
                raise SpecError(
                    f"{self.experiment_dir}: another driver is taking this "
                    f"experiment right now (see {self.path})"
                )
            self._may_take(holder)
            with storage.atomic_path(self.path) as tmp, open(tmp, "wb") as out:
                out.write(payload)
            return True
        finally:
            os.close(directory)  # releases the flock

    def _acquire_object_store(self) -> None:
        existing = _read_lock(self.experiment_dir)
        if existing is not None:
            self._may_take(LockOwner.parse(existing))
        storage.write_atomic(storage.join(self.experiment_dir, LOCK_FILE), self.owner.to_json())
        time.sleep(self.settle_s)
        holder = read_owner(self.experiment_dir)
        if holder is None or holder.token != self.owner.token:
            who = holder.describe() if holder else "an unknown driver"
            raise SpecError(
                f"{self.experiment_dir}: another driver took this experiment at "
                f"the same moment ({who}; see {self.path})"
            )

    # -- holding and giving it back ---------------------------------------------------------

    def still_held(self) -> bool:
        """Whether the lock still carries this driver's token (``force`` elsewhere takes it)."""
        holder = read_owner(self.experiment_dir)
        return holder is not None and holder.token == self.owner.token

    def release(self) -> None:
        """Removes the lock if it is still this driver's."""
        if self.still_held():
            with contextlib.suppress(OSError):
                self.fs.delete_file(self.path)
        for folder in self._created:  # deepest first; stops at the first one in use
            try:
                os.rmdir(folder)
            except OSError:
                break


@contextlib.contextmanager
def driver_lock(experiment_dir: str, *, force: bool = False) -> Iterator[DriverLock]:
    """Holds the experiment for this driver while the block runs (``export`` and ``extend``
    refuse a running search; a second driver refuses to start)."""
    lock = DriverLock(experiment_dir, force=force)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
