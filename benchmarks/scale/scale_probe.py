"""The scale benchmark's instruments: timing ``suggest``, counting results, sampling the driver.

:class:`ScaleProbe` wraps the searcher's ``suggest`` and result callbacks and Ray Tune's
experiment snapshot for the length of a run (the library is not changed), and samples the
driver process's memory, the journal's size and the driver's CPU every ``trace_every``
finished trials; :func:`point_rows` turns that into the table's rows.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import resource
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

SUGGEST_WINDOW = 100  # suggestions per point
TRACE_EVERY = 25  # finished trials between the samples of memory, journal and CPU


# --------------------------------------------------------------------------------------------
# small pure helpers (tested in tests/benchmarks/test_scale.py)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile with linear interpolation between order statistics.

    The same rule as NumPy's default (``method="linear"``): rank ``(n - 1) * q / 100``.

    Args:
        values: The sample, any order.
        q: The percentile, 0 to 100.

    Returns:
        The percentile; NaN for an empty sample.
    """
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def suggest_window(
    calls: Sequence[tuple[int, float]], finished: int, window: int = SUGGEST_WINDOW
) -> list[float]:
    """The latencies of the last ``window`` suggestions made while at most ``finished`` trials
    had finished.

    Args:
        calls: ``(trials finished when suggest was called, seconds it took)`` in call order.
        finished: The point.
        window: How many suggestions to take.

    Returns:
        Their seconds, in call order (fewer than ``window`` if fewer were made).
    """
    before = [seconds for done, seconds in calls if done <= finished]
    return before[-window:]


# --------------------------------------------------------------------------------------------
# measuring the driver


def driver_rss_mb() -> float:
    """This process's resident memory now, in MB (Linux ``/proc``; elsewhere its peak)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


@dataclass
class ScaleProbe:
    """Times ``suggest``, counts results and finished trials, and samples the driver's state.

    Attributes:
        journal: The Optuna journal file whose size is sampled.
        experiment_dir: Where Ray writes its ``experiment_state-*.json`` snapshots.
        calls: ``(trials finished when called, seconds)`` per ``suggest`` that returned a
            config (a suggestion).
        cpu_calls: The same with the CPU seconds of the calling thread: what ``suggest`` itself
            costs, without the time its thread waited for a core, the GIL or the disk.
        declined: Calls that returned no config (every slot taken: the searcher keeps
            ``max_concurrent``); not timed.
        snapshots: ``(trials finished, seconds)`` per Ray experiment snapshot.
        trace: A sample every ``TRACE_EVERY`` finished trials.
    """

    journal: str
    experiment_dir: str
    trace_every: int = TRACE_EVERY
    calls: list[tuple[int, float]] = field(default_factory=list)
    cpu_calls: list[tuple[int, float]] = field(default_factory=list)
    snapshots: list[tuple[int, float]] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)
    finished: int = 0
    declined: int = 0
    results: int = 0
    began: float = field(default_factory=time.perf_counter)
    cpu_began: float = field(default_factory=time.process_time)
    _done: set[str] = field(default_factory=set)

    def sample(self) -> dict[str, Any]:
        """The driver's state now, with the trials finished and trial-epochs seen."""
        states = glob.glob(os.path.join(self.experiment_dir, "experiment_state-*.json"))
        return {
            "finished": self.finished,
            "trial_epochs": self.results,
            "running": len(self.calls) - self.finished,
            "wall_s": time.perf_counter() - self.began,
            "driver_cpu_s": time.process_time() - self.cpu_began,
            "driver_rss_mb": driver_rss_mb(),
            "journal_bytes": os.path.getsize(self.journal) if os.path.exists(self.journal) else 0,
            "snapshot_bytes": max((os.path.getsize(p) for p in states), default=0),
            "snapshots": len(self.snapshots),
            "snapshot_s": sum(s for _, s in self.snapshots),
        }

    def on_finished(self, trial_id: str) -> None:
        if trial_id in self._done:
            return
        self._done.add(trial_id)
        self.finished += 1
        if self.finished % self.trace_every == 0:
            self.trace.append(self.sample())

    @contextlib.contextmanager
    def installed(self) -> Iterator[ScaleProbe]:
        """Wraps the searcher's ``suggest`` and result callbacks and Ray's snapshot for the
        block; the originals are back afterwards."""
        from ray.tune.execution.tune_controller import TuneController

        from search.driver.searcher import AshaAwareOptunaSearch

        probe = self
        suggest = AshaAwareOptunaSearch.suggest
        on_result = AshaAwareOptunaSearch.on_trial_result
        on_complete = AshaAwareOptunaSearch.on_trial_complete
        save = TuneController.save_to_dir

        def timed_suggest(searcher: Any, trial_id: str) -> Any:
            began, cpu_began = time.perf_counter(), time.thread_time()
            config = suggest(searcher, trial_id)
            if config is None:
                # Ray asks again and again while every slot is taken; the searcher's
                # "no" costs microseconds and would fill the windows with near-zeros.
                probe.declined += 1
                return config
            probe.calls.append((probe.finished, time.perf_counter() - began))
            probe.cpu_calls.append((probe.finished, time.thread_time() - cpu_began))
            return config

        def counted_result(searcher: Any, trial_id: str, result: dict) -> None:
            # on_trial_complete hands a trial's last result here too: every epoch once.
            probe.results += 1
            on_result(searcher, trial_id, result)

        def counted_complete(
            searcher: Any, trial_id: str, result: dict | None = None, error: bool = False
        ) -> None:
            on_complete(searcher, trial_id, result, error)
            probe.on_finished(trial_id)

        def timed_save(controller: Any) -> None:
            began = time.perf_counter()
            save(controller)
            probe.snapshots.append((probe.finished, time.perf_counter() - began))

        AshaAwareOptunaSearch.suggest = timed_suggest
        AshaAwareOptunaSearch.on_trial_result = counted_result
        AshaAwareOptunaSearch.on_trial_complete = counted_complete
        TuneController.save_to_dir = timed_save
        try:
            yield self
        finally:
            AshaAwareOptunaSearch.suggest = suggest
            AshaAwareOptunaSearch.on_trial_result = on_result
            AshaAwareOptunaSearch.on_trial_complete = on_complete
            TuneController.save_to_dir = save


def point_rows(probe: ScaleProbe, points: Sequence[int]) -> list[dict[str, Any]]:
    """One row per point: suggest p50/p99 (ms) over its window, and the sample taken there.

    Args:
        probe: The finished run's probe.
        points: The finished-trial counts (multiples of the probe's ``trace_every``).

    Returns:
        The rows, with the interval since the previous point's driver CPU per trial-epoch.
    """
    by_finished = {s["finished"]: s for s in probe.trace}
    rows: list[dict[str, Any]] = []
    previous = {"trial_epochs": 0, "driver_cpu_s": 0.0, "wall_s": 0.0}
    for point in points:
        sample = by_finished.get(point)
        if sample is None:
            raise RuntimeError(
                f"scale: no sample at {point} finished trials (the run finished {probe.finished})"
            )
        window = suggest_window(probe.calls, point)
        cpu_window = suggest_window(probe.cpu_calls, point)
        epochs = sample["trial_epochs"] - previous["trial_epochs"]
        rows.append(
            {
                "finished": point,
                "suggestions": len(window),
                "suggest_p50_ms": percentile(window, 50) * 1e3,
                "suggest_p99_ms": percentile(window, 99) * 1e3,
                "suggest_cpu_p99_ms": percentile(cpu_window, 99) * 1e3,
                "driver_rss_mb": sample["driver_rss_mb"],
                "journal_bytes": sample["journal_bytes"],
                "snapshot_bytes": sample["snapshot_bytes"],
                "trial_epochs": sample["trial_epochs"],
                "driver_cpu_s_per_trial_epoch": (sample["driver_cpu_s"] - previous["driver_cpu_s"])
                / max(epochs, 1),
                "wall_s_per_trial_epoch": (sample["wall_s"] - previous["wall_s"]) / max(epochs, 1),
                "running": sample["running"],
            }
        )
        previous = sample
    return rows
