"""Errors a user can act on.

The CLI catches exactly these at the top level, prints the one-line message and exits with
status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

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
