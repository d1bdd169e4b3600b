"""Errors a user can act on.

The CLI catches exactly these at the top level, prints the one-line message and exits with
status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re

# A message longer than this is cut in the middle: an error stays one readable line even when
# a value somewhere in it is huge (a whole file read as YAML, a giant --set value).
MAX_MESSAGE = 400


def shorten(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` on one line, its middle cut when longer than ``limit``.

    The start (the key or path and the rule) and the end (often the value's closing part or
    the hint) both stay; the cut says how much is missing.
    """
    text = " ".join(message.split())
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 3, limit // 4
    return f"{text[:head]} ...({len(text) - head - tail} characters cut)... {text[-tail:]}"


class SpecError(ValueError):
    """A value the user supplied breaks a rule (spec key, CLI argument, file, experiment folder).

    The message names the key or path, the rule, and the value received, e.g.
    ``space.upsample: `low <= high` must hold, got low=5, high=2``.

    Args:
        message: The one-line message, starting with the key or path.
        key: The library parameter the message starts with (``top``, ``out_dir``), so that
            the CLI can name its own flag for it (``--top``, ``--out``) instead.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(shorten(message))
        self.key = key


class DataError(SpecError):
    """A dataset file or folder cannot be used (corrupt, wrong shape, unsafe, missing columns)."""


class TrialFailure(RuntimeError):
    """Ends a trial as failed without retrying it (NaN/inf loss, a config that cannot fit).

    Ray's ``max_failures`` retries ordinary crashes; this marks a failure that a retry cannot
    fix, so the trainable reports it and stops instead.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


# What a disk (or the store behind a mount) says when it cannot take a write, and how that
# reads in a message: "[Errno 28] No space left on device: 'path'".
DISK_ERRNOS = {28: "no space left", 122: "disk quota exceeded", 5: "I/O error"}
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\] ([^:\n']+)(?:: '([^'\n]+)')?")


class WriteFailed(SpecError):
    """The search could not write one of its files (a full disk, an I/O error).

    What was already written is left whole (each write is atomic or cut back), so once space
    is freed ``finetune-search resume`` finishes the search.

    Args:
        what: What was being written (``the study journal``, ``a checkpoint``...).
        where: Its path or URI.
        error: The ``OSError`` the write raised.
    """

    def __init__(
        self,
        what: str,
        where: str,
        error: BaseException,
        then: str = "`finetune-search resume` the experiment",
    ) -> None:
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        super().__init__(
            f"{where}: could not write {what} ({reason}); nothing written "
            f"before it was changed: free space (or mend the disk), then {then}"
        )
        self.what, self.where, self.error = what, where, error


def disk_error(error: BaseException | None) -> BaseException | None:
    """The full disk (or I/O error) behind ``error``, if any: a :class:`WriteFailed` or an
    ``OSError`` with one of :data:`DISK_ERRNOS`, anywhere in its chain of causes (Ray wraps a
    trial's error in its own, with the original as ``cause``)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, WriteFailed) or (
            isinstance(error, OSError) and error.errno in DISK_ERRNOS
        ):
            return error
        if isinstance(error, OSError) and error.errno is None:  # pyarrow's: errno in the text
            found = _ERRNO_TEXT.search(str(error))
            if found and int(found.group(1)) in DISK_ERRNOS:
                return OSError(int(found.group(1)), found.group(2).strip(), found.group(3))
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


def write_failed(error: BaseException, what: str, where: str) -> WriteFailed | None:
    """``error`` as a :class:`WriteFailed` (``what`` and ``where`` unless it already names
    them) when a full disk or an I/O error is behind it; ``None`` otherwise."""
    found = disk_error(error)
    if found is None or isinstance(found, WriteFailed):
        return found
    return WriteFailed(what, getattr(found, "filename", None) or where, found)
