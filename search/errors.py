"""Errors a user can act on.

The CLI catches exactly these at the top level, prints the one-line message and exits with
status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SpecError(ValueError):
    """A value the user supplied breaks a rule (spec key, CLI argument, file, experiment folder).

    The message names the key or path, the rule, and the value received, e.g.
    ``space.upsample: `low <= high` must hold, got low=5, high=2``.
    """


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
