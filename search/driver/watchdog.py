"""Says what a search waits for when nothing has moved for a while, instead of staying silent.

A driver whose trials are "running" while none of them reports, starts or ends for
``--stall-minutes`` (default :data:`DEFAULT_STALL_MINUTES`) prints one line naming each
running trial, the epoch it last reported, the worker process that runs it and what the
driver waits for from it; and, when the driver's own loop has not turned either, where that
loop is blocked. The line comes again every ``--stall-minutes`` while the stall lasts.

The driver's loop feeds :func:`observe` (through the progress callback, which every tuner has,
restored ones included); a thread of its own does the checking, so a loop that is itself
blocked is reported too.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from search.outputs.study import TIME_ATTR

DEFAULT_STALL_MINUTES = 30.0


@dataclass(frozen=True)
class TrialView:
    """What the watchdog knows of one trial at the loop's last turn."""

    trial_id: str
    status: str
    epoch: int
    pid: int | None
    has_worker: bool
    reported_at: float | None  # the last report's time (the result's ``timestamp``)


def view_of(trial: Any) -> TrialView:
    """A Ray ``Trial`` as the watchdog keeps it (read in the driver's loop)."""
    result = trial.last_result or {}
    state = getattr(trial, "temporary_state", None)
    return TrialView(
        trial_id=trial.trial_id,
        status=str(trial.status),
        epoch=int(result.get(TIME_ATTR, 0) or 0),
        pid=result.get("pid"),
        has_worker=getattr(state, "ray_actor", None) is not None,
        reported_at=result.get("timestamp"),
    )


def _ago(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


class StallWatchdog:
    """Tracks the trials' progress and words a stall.

    Args:
        stall_s: Seconds without any trial starting, reporting or ending (while some trial is
            running) before the first line, and between two lines.
        max_t: Epochs of a complete trial (for the words only).
        clock: Monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self, stall_s: float, max_t: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stall_s = stall_s
        self.max_t = max_t
        self.clock = clock
        self.trials: dict[str, TrialView] = {}
        self.moved_at = self.turned_at = clock()
        self.said_at: float | None = None
        self._lock = threading.Lock()

    def observe(self, trials: list[Any]) -> None:
        """Takes the trials at one turn of the driver's loop; any change counts as progress."""
        views = {view.trial_id: view for view in map(view_of, trials)}
        now = self.clock()
        with self._lock:
            self.turned_at = now
            if views != self.trials:
                self.trials, self.moved_at, self.said_at = views, now, None

    def check(self, loop_thread: int | None = None) -> str | None:
        """The stall's line when one is due (``None`` otherwise).

        Args:
            loop_thread: The driver's loop's thread id: where it is blocked is named when it
                has not turned for ``stall_s`` either.
        """
        now = self.clock()
        with self._lock:
            running = [v for v in self.trials.values() if v.status == "RUNNING"]
            if (
                not running
                or now - self.moved_at < self.stall_s
                or (self.said_at is not None and now - self.said_at < self.stall_s)
            ):
                return None
            self.said_at = now
            turned_ago = now - self.turned_at
        parts = [self._waits_for(view) for view in running]
        loop = f"the driver's loop last turned {_ago(turned_ago)} ago"
        if turned_ago >= self.stall_s and loop_thread is not None:
            frame = sys._current_frames().get(loop_thread)
            if frame is not None:
                where = traceback.extract_stack(frame)[-1]
                loop = (
                    f"the driver's loop has been blocked for {_ago(turned_ago)} in "
                    f"{where.name} ({where.filename}:{where.lineno})"
                )
        return (
            f"[{time.strftime('%H:%M:%S')}] stalled: no trial has reported, started or "
            f"ended for {_ago(now - self.moved_at)} while {len(running)} "
            f"{'is' if len(running) == 1 else 'are'} running: {'; '.join(parts)}; {loop}"
        )

    def _waits_for(self, view: TrialView) -> str:
        if not view.has_worker:
            return (
                f"trial {view.trial_id} (epoch {view.epoch}/{self.max_t}) has no worker "
                f"process: Ray lists it running, but nothing runs it"
            )
        worker = f"worker pid {view.pid}" if view.pid is not None else "its worker"
        if not view.epoch:
            return f"trial {view.trial_id} waits for its first report from {worker}"
        last = ""
        if view.reported_at is not None:
            last = f", reported {_ago(max(0.0, time.time() - view.reported_at))} ago"
        return (
            f"trial {view.trial_id} waits for epoch {view.epoch + 1}'s report from "
            f"{worker} (epoch {view.epoch}/{self.max_t}{last})"
        )


_active: StallWatchdog | None = None


def observe(trials: list[Any]) -> None:
    """Feeds the active watchdog (a no-op outside :func:`watching`)."""
    if _active is not None:
        _active.observe(trials)


@contextlib.contextmanager
def watching(stall_minutes: float, max_t: int) -> Iterator[StallWatchdog | None]:
    """Within the block a thread prints the stall line (``stall_minutes`` 0: no watchdog)."""
    global _active
    if not stall_minutes:
        yield None
        return
    watchdog = StallWatchdog(stall_minutes * 60.0, max_t)
    loop_thread = threading.get_ident()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(min(watchdog.stall_s / 4, 30.0)):
            line = watchdog.check(loop_thread)
            if line is not None:
                print(line, file=sys.stdout, flush=True)

    previous, _active = _active, watchdog
    thread = threading.Thread(target=watch, name="stall-watchdog", daemon=True)
    thread.start()
    try:
        yield watchdog
    finally:
        done.set()
        _active = previous
