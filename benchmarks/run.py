"""Useful training per GPU-hour: framework overhead, search efficiency, memory, GPU throughput.

One entry script for issue 8. Each section prints a fixed-width table and all of them go to
one JSON file; a section that fails raises (nothing is caught and skipped silently). The
sections live in the folders beside this file (``overhead/``, ``efficiency/``, ``memory/``,
``scale/``, ``gpu/``), with their shared helpers in ``common.py``.

* ``overhead``: the same trial (model, data, epochs, batch size) trained by plain
  ``model.fit`` (one call, and one call per epoch as the trial makes them; before and after
  the trial) and as a trial under ``run_search``; images/s of the training part of each
  epoch, the first epoch (graph tracing) excluded in both. Goal: the trial within 3% of plain.
  Also each path's all-in time per epoch, and the time from launching ``finetune-search run``
  to its first reported epoch.
* ``search``: ASHA + TPE against FIFO + random search on the offline digits data, same trials,
  epochs and seeds: trial-epochs and wall time spent, best validation accuracy, and the
  trial-epochs (in the order results arrived) needed to get within 1 point of the best.
  Goal: ASHA + TPE needs at most a third of FIFO random's trial-epochs.
* ``memory``: ``benchmarks/memory/data_sharing.py`` (memory per trial with the dataset shared
  through the object store vs. a copy per trial).
* ``scale``: thousands of simulated trials (learning curves, no TensorFlow) through the real
  driver, searcher (TPE and its journal) and ASHA on a local Ray with many logical GPUs:
  trials finished per minute, ``suggest`` p50/p99, driver memory, journal and Ray snapshot
  size at 100, 500, 1,000 and 2,000 finished trials, the driver's CPU per trial-epoch.
  Goals: p99 <= 100 ms at 2,000 trials, linear growth, the driver never the bottleneck.
* ``gpu``: VGG16 images/s at 160x160 in float32 and mixed precision, with and without XLA,
  the share of the GPU's peak that is, and trials per hour with 1, 2 and 4 trials packed on
  one GPU, in under 10 minutes, on ``--backend`` (tensorflow, jax or torch). Skipped where the
  backend sees no GPU.

    python benchmarks/run.py --reduced --json /tmp/bench.json       # ~6 min on 2 CPU cores
    python benchmarks/run.py --only gpu --gpu-peak-tflops 989       # on a GPU machine
    python benchmarks/run.py --only gpu --backend jax               # the same on JAX (or torch)

Experiment folders and logs go to a temporary folder (``--workdir`` keeps them). Progress goes
to stderr, tables to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout: `benchmarks.*`, and `search` uninstalled

# common first: it sets TensorFlow's and Ray's environment before anything imports them.
from benchmarks.common import (  # noqa: E402
    FULL,
    REDUCED,
    Context,
    format_pairs,
    jsonable,
    machine_info,
    progress,
)
from benchmarks.efficiency.search_efficiency import bench_search, print_search  # noqa: E402
from benchmarks.gpu.gpu import GPU_RESULT_PREFIX, bench_gpu, gpu_worker, print_gpu  # noqa: E402
from benchmarks.memory.memory import bench_memory, print_memory  # noqa: E402
from benchmarks.overhead.overhead import bench_overhead, print_overhead  # noqa: E402
from benchmarks.scale.scale import bench_scale, print_scale  # noqa: E402
from search.spec import BACKENDS  # noqa: E402

SECTIONS = ("overhead", "search", "memory", "scale", "gpu")


def parse_only(text: str | None) -> list[str]:
    """``--only`` as a list of sections in run order; all sections for None.

    Args:
        text: The option's value, comma-separated section names.

    Returns:
        The chosen sections in ``SECTIONS`` order.

    Raises:
        argparse.ArgumentTypeError: For an unknown section or an empty choice.
    """
    if text is None:
        return list(SECTIONS)
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"--only: must be a comma-separated subset of {','.join(SECTIONS)}, got {text!r}"
        )
    return [s for s in SECTIONS if s in chosen]


def build_parser() -> argparse.ArgumentParser:
    """The command line: sections, sizes, output, CPUs, the GPU's peak, the workdir."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Sections: overhead (plain fit vs. trial, CLI start-up), search (ASHA+TPE vs. "
        "FIFO random), memory (data_sharing.py), scale (simulated trials through the "
        "driver), gpu (throughput, packing; skipped without a GPU).",
    )
    parser.add_argument(
        "--reduced",
        action="store_true",
        help="smaller sizes, for a 2-core CPU machine in under 15 minutes",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="write all results here (default: a file in the temp folder)",
    )
    parser.add_argument(
        "--only",
        type=parse_only,
        default=None,
        metavar="SECTIONS",
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    parser.add_argument(
        "--num-cpus",
        type=int,
        default=os.cpu_count() or 1,
        help="CPUs for each local Ray (default: all)",
    )
    parser.add_argument(
        "--gpu-peak-tflops",
        type=float,
        default=None,
        help="the GPU's peak TFLOP/s for the share-of-peak column (default: "
        "datasheet table for H100/H200/A100/A10G by nvidia-smi's name)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="tensorflow",
        help="the Keras backend of the gpu section (default: tensorflow); "
        "jax and torch never import TensorFlow there",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep experiment folders and logs here (default: a temp folder, removed at the end)",
    )
    parser.add_argument("--gpu-worker", default=None, help=argparse.SUPPRESS)
    return parser


def bench_scale_apart(ctx: Context) -> dict[str, Any]:
    """The scale section, in a fresh Python process once an earlier section has imported
    TensorFlow here: a search's driver never imports it, and one that had measured something
    else (2026-11-29, after the overhead section: driver RSS 2.3 GB, ``suggest`` p99 ~300 ms,
    26.6 trials/min; the same section alone: 0.6 GB, 69 ms, 62.8 trials/min)."""
    if "tensorflow" not in sys.modules:
        return bench_scale(ctx)
    out = ctx.workdir / "scale-section.json"
    log = ctx.workdir / "scale-section.log"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--only",
        "scale",
        "--json",
        str(out),
        "--num-cpus",
        str(ctx.num_cpus),
        "--workdir",
        str(ctx.workdir / "scale-section"),
    ]
    if ctx.mode.name == REDUCED.name:
        command.append("--reduced")
    progress(
        f"scale: in a fresh process (an earlier section imported TensorFlow into this "
        f"one); its log: {log}"
    )
    with open(log, "w", encoding="utf-8") as sink:
        done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scale: the section's process exited {done.returncode}; see {log}")
    return json.loads(out.read_text(encoding="utf-8"))["sections"]["scale"]


SECTION_RUNNERS: dict[
    str, tuple[Callable[[Context], dict[str, Any]], Callable[[Mapping[str, Any], Context], str]]
] = {
    "overhead": (bench_overhead, lambda r, c: print_overhead(r)),
    "search": (bench_search, lambda r, c: print_search(r, c.mode)),
    "memory": (bench_memory, lambda r, c: print_memory(r)),
    "scale": (bench_scale_apart, lambda r, c: print_scale(r)),
    "gpu": (bench_gpu, lambda r, c: print_gpu(r)),
}


def main(argv: list[str] | None = None) -> int:
    """Runs the chosen sections, prints their tables and writes the JSON report.

    Args:
        argv: The arguments (``None``: ``sys.argv[1:]``).

    Returns:
        The exit status, 0: a section that fails raises.
    """
    args = build_parser().parse_args(argv)
    if args.gpu_worker is not None:
        print(GPU_RESULT_PREFIX + json.dumps(gpu_worker(json.loads(args.gpu_worker))), flush=True)
        return 0
    mode = REDUCED if args.reduced else FULL
    sections = args.only or list(SECTIONS)
    json_path = args.json or Path(tempfile.gettempdir(), f"finetune-search-bench-{mode.name}.json")
    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        mode=mode,
        workdir=workdir.resolve(),
        num_cpus=args.num_cpus,
        gpu_peak_tflops=args.gpu_peak_tflops,
        backend=args.backend,
    )

    began = time.perf_counter()
    machine = machine_info()
    report: dict[str, Any] = {
        "mode": mode.name,
        "sizes": asdict(mode),
        "num_cpus": ctx.num_cpus,
        "machine": machine,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "sections": {},
        "complete": False,
    }
    print(format_pairs(f"finetune-search benchmarks ({mode.name})", list(machine.items())))
    print(f"  {'ray num_cpus'.ljust(10)}  {ctx.num_cpus}\n", flush=True)
    try:
        for name in sections:
            run, show = SECTION_RUNNERS[name]
            section_began = time.perf_counter()
            result = run(ctx)
            result["seconds"] = time.perf_counter() - section_began
            report["sections"][name] = result
            print(show(result, ctx))
            print(f"({name}: {result['seconds']:.0f} s)\n", flush=True)
            # Written after every section, so a later failure keeps what was measured.
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(jsonable(report), indent=2) + "\n", encoding="utf-8")
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report["total_seconds"] = time.perf_counter() - began
    report["complete"] = True
    json_path.write_text(json.dumps(jsonable(report), indent=2) + "\n", encoding="utf-8")
    goals = [
        (n, report["sections"][n].get("goal_met"))
        for n in sections
        if "goal_met" in report["sections"][n]
    ]
    summary = ", ".join(f"{n} goal {'met' if met else 'NOT met'}" for n, met in goals)
    print(
        f"total {report['total_seconds'] / 60:.1f} min; {summary or 'no goals checked'}; "
        f"JSON: {json_path}" + (f"; workdir kept: {workdir}" if keep else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
