"""What every benchmark section shares: sizes, context, tables, small statistics, the machine.

Also the quiet runners: progress lines on the real stderr, Ray's output sent to a log file,
and one search run from a raw spec. Imported as ``benchmarks.common`` by ``benchmarks/run.py``,
each family's modules (``overhead/``, ``efficiency/``, ``memory/``, ``scale/``, ``gpu/``,
``peers/``) and the simulator's (``quality/``); nothing here imports TensorFlow or Ray at
import time.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.outputs.study import METRIC

# Before TensorFlow is imported anywhere (here, in Ray workers, in subprocesses).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
TOLERANCE = 0.01  # "within 1 point" of validation accuracy


@dataclass(frozen=True)
class Mode:
    """The sizes of one run; ``FULL`` and ``REDUCED`` below.

    Optuna's TPE draws its first 10 trials at random (``n_startup_trials``), with the same
    draws as the random sampler of the same seed, so ``search_trials`` is above 10 for TPE to
    act at all. The overhead runs have several epochs because the first (graph tracing) is
    left out and a shared machine's noise needs more than one to average over.
    """

    name: str
    overhead_subset: int  # digits images, split 80/20 into train/validation
    overhead_epochs: int
    overhead_batch: int
    overhead_short_subset: int  # the short size: epochs of a second or two on this machine
    storage_trials: int  # trials of the checkpoint-storage search (small_cnn on digits)
    search_trials: int
    search_epochs: int
    search_seeds: tuple[int, ...]
    memory_args: tuple[str, ...]
    gpu_seconds: float  # timed training steps per GPU throughput case, after the warm-up
    gpu_warmup: int
    pack_images: int
    pack_epochs: int
    scale_points: tuple[int, ...]  # finished trials at which the scale section measures
    scale_concurrent: int  # trials at once, one logical GPU each


FULL = Mode(
    name="full",
    overhead_subset=640,
    overhead_epochs=4,
    overhead_batch=32,
    overhead_short_subset=100,
    storage_trials=64,
    search_trials=32,
    search_epochs=4,
    search_seeds=(0, 1, 2),
    memory_args=("--pipeline",),
    gpu_seconds=10.0,
    gpu_warmup=5,
    pack_images=8192,
    pack_epochs=3,
    scale_points=(100, 500, 1000, 2000),
    scale_concurrent=64,
)
REDUCED = Mode(
    name="reduced",
    overhead_subset=320,
    overhead_epochs=6,
    overhead_batch=32,
    overhead_short_subset=100,
    storage_trials=12,
    search_trials=16,
    search_epochs=3,
    search_seeds=(0, 1),
    memory_args=("--reduced", "--pipeline"),
    gpu_seconds=5.0,
    gpu_warmup=3,
    pack_images=4096,
    pack_epochs=2,
    scale_points=(100, 500),
    scale_concurrent=16,
)


@dataclass
class Context:
    """What every section needs: the mode, where to write, how many CPUs Ray gets."""

    mode: Mode
    workdir: Path
    num_cpus: int
    gpu_peak_tflops: float | None = None
    backend: str = "tensorflow"  # the Keras backend of the gpu section (``--backend``)


# --------------------------------------------------------------------------------------------
# tables


@dataclass(frozen=True)
class Column:
    """One table column: the row key, its header, and a format spec for numbers."""

    key: str
    header: str
    fmt: str = ""


def format_cell(value: Any, fmt: str = "") -> str:
    """One value as table text: ``-`` for None/NaN, yes/no for booleans, ``fmt`` for numbers.

    Args:
        value: The value.
        fmt: A format spec applied to ints and floats (e.g. ``.1f``); ignored otherwise.

    Returns:
        The cell's text.
    """
    if value is None or isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and fmt:
        return format(value, fmt)
    return str(value)


def format_table(title: str, columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width text table: title, header, dashes, one line per row.

    Numbers are right-aligned and text left-aligned; every column is as wide as its widest
    cell or header. A key missing from a row prints as ``-``.

    Args:
        title: The line above the header.
        columns: The columns, in order.
        rows: One mapping per line, read by each column's key.

    Returns:
        The table, lines joined by newlines, no trailing newline.
    """
    cells = [[format_cell(row.get(c.key), c.fmt) for c in columns] for row in rows]
    widths = [
        max([len(c.header)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)
    ]
    numeric = [
        all(
            row.get(c.key) is None
            or isinstance(row.get(c.key), (int, float))
            and not isinstance(row.get(c.key), bool)
            for row in rows
        )
        for c in columns
    ]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = [title, line([c.header for c in columns]), "  ".join("-" * w for w in widths)]
    out += [line(values) for values in cells]
    return "\n".join(out)


def format_pairs(title: str, pairs: Sequence[tuple[str, Any]]) -> str:
    """A two-column ``key  value`` block, keys padded to one width.

    Args:
        title: The line above the pairs.
        pairs: ``(key, value)`` in order; values are written by :func:`format_cell`.

    Returns:
        The block, lines joined by newlines.
    """
    width = max(len(k) for k, _ in pairs)
    return "\n".join([title] + [f"  {k.ljust(width)}  {format_cell(v)}" for k, v in pairs])


# --------------------------------------------------------------------------------------------
# small pure helpers (tested in tests/benchmarks/test_common.py)


def finite(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (booleans are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def arrival_key(row: Mapping[str, Any]) -> tuple[float, float, int]:
    """Sorts result rows in the order they arrived.

    Ray's ``timestamp`` has whole seconds; within one second the trial's start time plus its
    running time (``attempt_started_at + time_total_s``, where present) breaks the tie.

    Args:
        row: One trial-epoch's result row.

    Returns:
        ``(timestamp, start + running time, epoch)``.
    """
    finer = float(row.get("attempt_started_at", 0.0)) + float(row.get("time_total_s", 0.0))
    return float(row.get("timestamp", 0.0)), finer, int(row.get("epoch", 0))


def trial_epochs_to_within(
    rows: Sequence[Mapping[str, Any]], target: float, tolerance: float = TOLERANCE
) -> int | None:
    """Trial-epochs spent until a result came within ``tolerance`` of ``target``.

    Args:
        rows: One row per trial-epoch, from every trial of a search, **in the order they
            arrived** (a run's rows are kept that way: Ray's rows sorted by
            :func:`arrival_key` when read, the others by their arrival time ``t``). They are
            not sorted here: rows without Ray's timestamps would fall back to epoch order,
            which counts other trials' later epochs first. Rows with ``trial_failed`` count as
            spent epochs but never reach the target (their accuracy is the last good epoch's).
        target: The validation accuracy to get close to (e.g. the best of the search).
        tolerance: How close counts, in accuracy (0.01 is one point).

    Returns:
        The 1-based count of trial-epochs up to and including the first close enough, or
        ``None`` if none was.
    """
    for spent, row in enumerate(rows, start=1):
        value = row.get(METRIC)
        # The epsilon keeps a value exactly `tolerance` below the target counting as within.
        if not row.get("trial_failed") and finite(value) and value >= target - tolerance - 1e-9:
            return spent
    return None


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with the lines between ``<!-- name: begin -->`` and ``<!-- name: end -->``
    replaced by ``content`` (the README's tables are rendered from JSON this way, never copied
    by hand).

    Raises:
        ValueError: When the markers are missing or out of order.
    """
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"no {begin} ... {end} block in the text")
    return text[: start + len(begin)] + "\n" + content.strip("\n") + "\n" + text[stop:]


def harmonic_rate(rates: Sequence[float]) -> float:
    """The overall rate of equal-sized pieces of work done at ``rates`` (e.g. epochs' images/s).

    Args:
        rates: The pieces' rates.

    Returns:
        The harmonic mean of ``rates``; NaN for none.
    """
    if not rates:
        return float("nan")
    return len(rates) / sum(1.0 / r for r in rates)


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean; NaN for no values."""
    return sum(values) / len(values) if values else float("nan")


def spread(values: Sequence[float]) -> float:
    """Coefficient of variation (population standard deviation / mean); NaN below 2 values."""
    if len(values) < 2:
        return float("nan")
    average = sum(values) / len(values)
    return math.sqrt(sum((v - average) ** 2 for v in values) / len(values)) / average


def jsonable(value: Any) -> Any:
    """NaN and infinities become null, so the JSON file is strict JSON.

    Args:
        value: A result: nested mappings, lists and tuples of plain values.

    Returns:
        The same structure with non-finite floats as ``None`` and mapping keys as strings.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# the machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            return round(int(meminfo.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return float("nan")


def gpu_names() -> list[str]:
    """Names of the machine's NVIDIA GPUs from ``nvidia-smi`` ([] without it)."""
    if shutil.which("nvidia-smi") is None:
        return []
    done = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def _version(*packages: str) -> str:
    from importlib import metadata

    for package in packages:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def machine_info(*packages: str) -> dict[str, Any]:
    """The machine and the versions the numbers were measured with.

    Args:
        packages: Further distributions whose versions to list (e.g. the peers a benchmark
            compares against), after the standard ones.
    """
    gpus = gpu_names()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "gpu": ", ".join(gpus) if gpus else "none",
        "python": platform.python_version(),
        "tensorflow": _version("tensorflow", "tensorflow-cpu", "tf-nightly"),
        "keras": _version("keras"),
        "jax": _version("jax"),
        "torch": _version("torch"),
        "ray": _version("ray"),
        "optuna": _version("optuna"),
        "platform": platform.platform(),
        **{package: _version(package) for package in packages},
    }


def load_average() -> float:
    """The machine's 1-minute load average, rounded to 2 decimals."""
    return round(os.getloadavg()[0], 2)


# --------------------------------------------------------------------------------------------
# running things quietly


def progress(message: str) -> None:
    """One progress line on the real stderr (tables alone go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.__stderr__, flush=True)


@contextlib.contextmanager
def logged(path: Path) -> Iterator[None]:
    """Sends Python-level stdout/stderr (Ray's progress and worker logs) to ``path``.

    On an exception the log's tail is shown on the real stderr, then the exception goes on.

    Args:
        path: The log file; appended to, its folder created.

    Yields:
        Nothing; the redirection holds inside the ``with`` block.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        except BaseException:
            log.flush()
            tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
            print(f"--- last lines of {path} ---", *tail, sep="\n", file=sys.__stderr__)
            raise


def ensure_ray_stopped(section: str) -> None:
    """Sections must not leave Ray running for the next one (each starts its own).

    Args:
        section: The section's name, for the error.

    Raises:
        RuntimeError: When Ray is still initialised.
    """
    import ray

    if ray.is_initialized():
        raise RuntimeError(f"{section}: Ray is still initialised after the section")


def load_spec(raw: Mapping[str, Any]) -> Any:
    """The validated ``ExperimentSpec`` of a raw spec mapping (source ``benchmark``)."""
    from search.spec import load_spec_dict

    return load_spec_dict(dict(raw), source="benchmark")


def run_logged_search(raw: Mapping[str, Any], ctx: Context, log: Path) -> tuple[Any, float]:
    """Runs one search from a raw spec, its output sent to ``log``.

    Args:
        raw: The experiment spec as a mapping.
        ctx: The run's context (``num_cpus`` for the local Ray).
        log: Where Ray's and the driver's output go.

    Returns:
        The search's summary and the wall seconds it took.

    Raises:
        RuntimeError: When the search was interrupted or a trial errored.
    """
    from search.driver.service import run_search

    spec = load_spec(raw)
    began = time.perf_counter()
    with logged(log):
        summary = run_search(spec, num_cpus=ctx.num_cpus)
    wall = time.perf_counter() - began
    if summary.interrupted:
        raise RuntimeError(f"{spec.name}: the search was interrupted (see {log})")
    errored = [t for t in summary.trials if t.errored]
    if errored:
        raise RuntimeError(
            f"{spec.name}: trial {errored[0].trial_id} errored: "
            f"{errored[0].error} (see {errored[0].path})"
        )
    return summary, wall
