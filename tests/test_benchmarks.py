"""benchmarks/run.py: its pure helpers on hand-made data, the GPU skip, and its --help."""

from __future__ import annotations

import importlib.util
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from search.results import TrialRecord

REPO = Path(__file__).resolve().parents[1]
RUN_PY = REPO / "benchmarks" / "run.py"


def _load_run_module():
    spec = importlib.util.spec_from_file_location("benchmarks_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = _load_run_module()


def _ctx(tmp_path: Path):
    return bench.Context(mode=bench.REDUCED, workdir=tmp_path, num_cpus=2)


# --------------------------------------------------------------------------------------------
# the GPU section


def test_gpu_section_skips_with_message_when_no_gpu_is_visible(tmp_path, capsys):
    result = bench.bench_gpu(_ctx(tmp_path), visible_gpus=[])
    assert result == {"skipped": True, "reason": "no GPU visible to TensorFlow"}
    assert "skipped: no GPU visible to TensorFlow" in capsys.readouterr().out
    assert bench.print_gpu(result).splitlines()[-1] == "skipped: no GPU visible to TensorFlow"
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_gpu_section_asks_tensorflow_and_skips_on_a_cpu_machine(tmp_path, capsys):
    result = bench.bench_gpu(_ctx(tmp_path))
    assert result["skipped"] is True
    assert "skipped: no GPU visible to TensorFlow" in capsys.readouterr().out


def test_vgg16_training_flops_match_the_published_forward_count():
    # VGG16's convolutions at 224x224 are 15.35 G multiply-adds (30.7 GFLOPs) per image.
    forward = bench.vgg16_flops_per_image(224, 224, training=False)
    assert forward == pytest.approx(30.7e9, rel=0.01)
    assert bench.vgg16_flops_per_image(224, 224) == pytest.approx(3 * forward)
    # Conv cost scales with the pixels: 64x64 is (64/224)^2 of it, up to the small head.
    assert bench.vgg16_flops_per_image(64, 64, training=False) == pytest.approx(
        forward * (64 / 224) ** 2, rel=0.01)


@pytest.mark.parametrize(("name", "mixed", "expected"), [
    ("NVIDIA H200", True, 989.4),
    ("NVIDIA H200", False, 494.7),
    ("NVIDIA H100 80GB HBM3", True, 989.4),
    ("NVIDIA H100 PCIe", True, 756.0),
    ("NVIDIA A100-SXM4-80GB", True, 312.0),
    ("NVIDIA A10G", False, 62.5),
    ("Tesla T4", True, None),
])
def test_peak_tflops_from_the_datasheet_table_by_nvidia_smi_name(name, mixed, expected):
    assert bench.peak_tflops(name, mixed) == expected


def test_peak_tflops_argument_overrides_the_table():
    assert bench.peak_tflops("NVIDIA H200", True, override=700.0) == 700.0
    assert bench.peak_tflops("Tesla T4", False, override=65.0) == 65.0


# --------------------------------------------------------------------------------------------
# tables


def test_format_table_is_fixed_width_numbers_right_text_left():
    columns = [bench.Column("path", "path"), bench.Column("epochs", "epochs"),
               bench.Column("img_s", "img/s", ".1f"), bench.Column("ok", "ok")]
    rows = [{"path": "plain model.fit", "epochs": 3, "img_s": 110.25, "ok": True},
            {"path": "trial", "epochs": 12, "img_s": float("nan"), "ok": False},
            {"path": "cli", "epochs": None}]
    assert bench.format_table("a. Title", columns, rows) == "\n".join([
        "a. Title",
        "path             epochs  img/s  ok",
        "---------------  ------  -----  ---",
        "plain model.fit       3  110.2  yes",
        "trial                12      -  no",
        "cli                   -      -  -",
    ])


def test_format_cell_writes_missing_values_as_dash_and_booleans_as_words():
    assert bench.format_cell(None) == "-"
    assert bench.format_cell(float("nan"), ".2f") == "-"
    assert bench.format_cell(True) == "yes"
    assert bench.format_cell(0.12345, ".1%") == "12.3%"
    assert bench.format_cell("mixed_bfloat16") == "mixed_bfloat16"


def test_format_pairs_pads_keys_to_one_width():
    assert bench.format_pairs("machine", [("cpu", "AMD EPYC"), ("cores", 2)]) == (
        "machine\n  cpu    AMD EPYC\n  cores  2")


# --------------------------------------------------------------------------------------------
# trial-epochs to within one point


def _row(trial, epoch, acc, timestamp, started=0.0, total=0.0, failed=False):
    return {"trial": trial, "epoch": epoch, "val_accuracy": acc, "timestamp": timestamp,
            "attempt_started_at": started, "time_total_s": total, "trial_failed": failed}


def test_trial_epochs_to_within_counts_in_arrival_order_not_list_order():
    rows = [
        _row("b", 2, 0.95, timestamp=105),
        _row("a", 1, 0.50, timestamp=100),
        _row("b", 1, 0.80, timestamp=103),
        _row("a", 2, 0.70, timestamp=104),
    ]
    # Arrival: a1 (0.50), b1 (0.80), a2 (0.70), b2 (0.95).
    assert bench.trial_epochs_to_within(rows, target=0.95) == 4
    assert bench.trial_epochs_to_within(rows, target=0.81) == 2  # 0.80 is within 0.01
    assert bench.trial_epochs_to_within(rows, target=0.51) == 1
    assert bench.trial_epochs_to_within(rows, target=0.97) is None


def test_trial_epochs_to_within_counts_exactly_one_point_below_as_within():
    rows = [_row("a", 1, 0.89, timestamp=1), _row("a", 2, 0.90, timestamp=2)]
    assert bench.trial_epochs_to_within(rows, target=0.90) == 1
    assert bench.trial_epochs_to_within(rows, target=0.90, tolerance=0.005) == 2


def test_trial_epochs_to_within_breaks_same_second_ties_by_start_plus_running_time():
    rows = [_row("late", 1, 0.9, timestamp=50, started=40.0, total=9.8),
            _row("early", 1, 0.6, timestamp=50, started=45.0, total=4.1)]
    # Both reported in second 50; "early" arrived at 49.1, "late" at 49.8.
    assert bench.trial_epochs_to_within(rows, target=0.9) == 2


def test_trial_epochs_to_within_counts_failed_epochs_as_spent_but_never_reached():
    rows = [_row("nan", 1, 0.99, timestamp=1, failed=True),
            _row("ok", 1, float("nan"), timestamp=2),
            _row("ok", 2, 0.98, timestamp=3)]
    assert bench.trial_epochs_to_within(rows, target=0.99) == 3


def test_search_run_figures_on_hand_made_trial_records():
    trials = [
        TrialRecord("t1", "main", "/x/t1", {}, history=[
            _row("t1", 1, 0.40, timestamp=10), _row("t1", 2, 0.70, timestamp=20),
            _row("t1", 3, 0.905, timestamp=30)]),
        TrialRecord("t2", "main", "/x/t2", {}, history=[_row("t2", 1, 0.90, timestamp=15)]),
        TrialRecord("t3", "main", "/x/t3", {}, history=[
            _row("t3", 1, 0.1, timestamp=12, failed=True)]),
    ]
    figures = bench.search_run_figures(trials)
    assert figures["trials"] == 3
    assert figures["trial_epochs"] == 5
    assert figures["failed"] == 1
    assert figures["best"] == pytest.approx(0.905)
    # Arrival: t1e1, t3e1 (failed), t2e1 = 0.90 (within 0.01 of 0.905) -> 3 trial-epochs.
    assert figures["to_own_best"] == 3


def test_harmonic_rate_and_spread():
    # 100 images at 100/s and 100 at 50/s: 200 images in 3 s.
    assert bench.harmonic_rate([100.0, 50.0]) == pytest.approx(200 / 3)
    assert math.isnan(bench.harmonic_rate([]))
    assert bench.spread([10.0, 10.0, 10.0]) == 0.0
    assert bench.spread([9.0, 11.0]) == pytest.approx(0.1)
    assert math.isnan(bench.spread([5.0]))


# --------------------------------------------------------------------------------------------
# the command line


def test_only_accepts_a_subset_in_run_order_and_names_a_wrong_one():
    assert bench.parse_only("gpu,overhead") == ["overhead", "gpu"]
    assert bench.parse_only(None) == ["overhead", "search", "memory", "gpu"]
    with pytest.raises(Exception, match="subset of overhead,search,memory,gpu, got 'cpu'"):
        bench.parse_only("cpu")


def test_help_runs_without_starting_anything():
    done = subprocess.run([sys.executable, str(RUN_PY), "--help"], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    for option in ("--reduced", "--json", "--only", "--gpu-peak-tflops"):
        assert option in done.stdout
    assert "--gpu-worker" not in done.stdout  # internal
