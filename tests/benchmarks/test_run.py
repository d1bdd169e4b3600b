"""benchmarks/run.py: the entry's ``--only`` and its ``--help``."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_PY = REPO / "benchmarks" / "run.py"


def _load_run_module() -> ModuleType:
    # By path, under a name of its own: "run" alone is too common a module name.
    spec = importlib.util.spec_from_file_location("benchmarks_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_run_module()


def test_only_accepts_a_subset_in_run_order_and_names_a_wrong_one():
    assert bench.parse_only("gpu,overhead") == ["overhead", "gpu"]
    assert bench.parse_only("scale,gpu,overhead") == ["overhead", "scale", "gpu"]
    assert bench.parse_only(None) == ["overhead", "search", "memory", "scale", "gpu"]
    with pytest.raises(Exception, match="subset of overhead,search,memory,scale,gpu, got 'cpu'"):
        bench.parse_only("cpu")


def test_help_runs_without_starting_anything():
    done = subprocess.run(
        [sys.executable, str(RUN_PY), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    for option in ("--reduced", "--json", "--only", "--gpu-peak-tflops"):
        assert option in done.stdout
    assert "--gpu-worker" not in done.stdout  # internal


def test_scale_runs_in_a_fresh_process_once_tensorflow_is_loaded(tmp_path, monkeypatch):
    ctx = bench.Context(mode=bench.REDUCED, workdir=tmp_path, num_cpus=2)
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        out = Path(command[command.index("--json") + 1])
        out.write_text('{"sections": {"scale": {"trials": 516}}}', encoding="utf-8")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    monkeypatch.setattr(bench, "bench_scale", lambda c: {"trials": "in this process"})
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    assert bench.bench_scale_apart(ctx) == {"trials": "in this process"} and not calls
    monkeypatch.setitem(sys.modules, "tensorflow", ModuleType("tensorflow"))
    assert bench.bench_scale_apart(ctx) == {"trials": 516}
    (command,) = calls
    assert command[:2] == [sys.executable, str(RUN_PY)]
    assert command[command.index("--only") + 1] == "scale" and "--reduced" in command

    def failing_run(command, **kwargs):
        return subprocess.CompletedProcess(command, 3)

    monkeypatch.setattr(bench.subprocess, "run", failing_run)
    with pytest.raises(RuntimeError, match="exited 3; see .*scale-section.log"):
        bench.bench_scale_apart(ctx)
