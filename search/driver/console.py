"""The driver's console: the search's own lines, real warnings and errors once each, and none
of the stack's start-up chatter.

Ray forwards every line its worker processes print to the driver's ``sys.stdout`` /
``sys.stderr`` with a ``(train_trial pid=N)`` prefix: TensorFlow's C++ start-up lines (oneDNN,
cuInit, absl), the same Python warning once per worker process, Ray's "Checkpoint successfully
created" each epoch, and at shut-down a SIGTERM traceback that looks like a crash. While a
search runs, :func:`search_console` filters those forwarded lines: a worker line reaches the
console only if it is a warning or an error that is not known chatter, and each such line only
once. The driver's own lines (the progress lines) pass unchanged. Everything stays in Ray's
worker logs (``<ray session>/logs/worker-*``). Ray Tune's own start-up box and its TensorBoard
hint (for a ``/tmp/ray/session_*`` folder) are switched off, and Optuna's study-created lines
kept to warnings.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from typing import TextIO

# Ray's prefix on a forwarded worker line: "(train_trial pid=123)" or
# "(train_trial pid=123, ip=10.0.0.2)", perhaps coloured.
WORKER_PREFIX = re.compile(r"^\((?:[^()]*\s)?pid=[^()]*\)\s?")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Ray's own deduplication suffix: " [repeated 3x across cluster] (Ray deduplicates ...)".
RAY_REPEATED = re.compile(r"\s*\[repeated \d+x across cluster\].*$")
# A line worth showing from a worker: a warning or an error, in Python's or logging's words.
NOTEWORTHY = re.compile(r"\b(?:\w*Warning|WARNING|\w*Error|ERROR|\w*Exception|CRITICAL)\b")
# Worker lines that look noteworthy but are the stack's start-up or shut-down chatter.
CHATTER = tuple(
    re.compile(p)
    for p in (
        r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [\w.]+:\d+\]",  # absl/glog C++ lines (TF, XLA)
        r"absl::InitializeLog\(\)",
        r"oneDNN custom operations",
        r"cuInit|cuda drivers|CUDA error|Unable to register cu\w+ factory",
        r"This TensorFlow binary is optimized|rebuild TensorFlow with the appropriate compiler",
        r"Checkpoint successfully created",
        r"sigterm_handler|SystemExit",
    )
)
# Ray Tune's "new output" engine prints a configuration box and a TensorBoard hint for a
# folder under /tmp/ray even at verbose=0; the legacy engine at verbose=0 prints nothing.
RAY_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"


def worker_message(line: str) -> str | None:
    """The message of a line Ray forwarded from a worker (prefix and colours removed), or
    ``None`` for the driver's own lines."""
    plain = ANSI.sub("", line)
    match = WORKER_PREFIX.match(plain)
    if match is None:
        return None
    return RAY_REPEATED.sub("", plain[match.end() :]).rstrip()


def is_chatter(message: str) -> bool:
    """Whether a worker's message is known start-up/shut-down chatter."""
    return any(pattern.search(message) for pattern in CHATTER)


class ConsoleFilter(io.TextIOBase):
    """A text stream that passes the driver's lines and each noteworthy worker line once.

    Args:
        target: Where the lines that pass are written.
        seen: The worker messages shown so far, shared by the stdout and stderr filters so a
            warning printed on either shows once.
    """

    def __init__(self, target: TextIO, seen: set[str]) -> None:
        super().__init__()
        self.target = target
        self.seen = seen
        self.pending = ""
        self.lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self.lock:
            self.pending += text
            *lines, self.pending = self.pending.split("\n")
            for line in lines:
                if self.keep(line):
                    self.target.write(line + "\n")
        return len(text)

    def keep(self, line: str) -> bool:
        message = worker_message(line)
        if message is None:
            return True
        if not message or is_chatter(message) or not NOTEWORTHY.search(message):
            return False
        if message in self.seen:
            return False
        self.seen.add(message)
        return True

    def flush(self) -> None:
        with self.lock:
            if self.pending and self.keep(self.pending):
                self.target.write(self.pending)
            self.pending = ""
        self.target.flush()

    def isatty(self) -> bool:
        # Ray's colorama keeps the stream it found at start-up and asks it at exit, perhaps
        # after the target was closed.
        try:
            return self.target.isatty()
        except ValueError:
            return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.target, "encoding", "utf-8")


@contextlib.contextmanager
def search_console() -> Iterator[None]:
    """Filters what reaches the console while a search runs (see the module's docstring);
    everything is restored on exit."""
    import optuna

    seen: set[str] = set()
    streams = sys.stdout, sys.stderr
    verbosity = optuna.logging.get_verbosity()
    previous_env = os.environ.get(RAY_OUTPUT_ENV)
    optuna.logging.set_verbosity(logging.WARNING)
    os.environ[RAY_OUTPUT_ENV] = "0"
    sys.stdout, sys.stderr = ConsoleFilter(streams[0], seen), ConsoleFilter(streams[1], seen)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = streams
        optuna.logging.set_verbosity(verbosity)
        if previous_env is None:
            os.environ.pop(RAY_OUTPUT_ENV, None)
        else:
            os.environ[RAY_OUTPUT_ENV] = previous_env
