"""benchmarks/gpu/gpu.py: the skip without a GPU, VGG16's FLOPs and the datasheet peaks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import REDUCED, REPO, Context
from benchmarks.gpu import gpu


def _ctx(tmp_path: Path) -> Context:
    return Context(mode=REDUCED, workdir=tmp_path, num_cpus=2)


def test_gpu_section_skips_with_message_when_no_gpu_is_visible(tmp_path, capsys):
    result = gpu.bench_gpu(_ctx(tmp_path), visible_gpus=[])
    assert result == {
        "skipped": True,
        "reason": "no GPU visible to TensorFlow",
        "backend": "tensorflow",
    }
    assert "skipped: no GPU visible to TensorFlow" in capsys.readouterr().out
    assert gpu.print_gpu(result).splitlines()[-1] == "skipped: no GPU visible to TensorFlow"
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_gpu_section_asks_tensorflow_and_skips_on_a_cpu_machine(tmp_path, capsys):
    result = gpu.bench_gpu(_ctx(tmp_path))
    assert result["skipped"] is True
    assert "skipped: no GPU visible to TensorFlow" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
@pytest.mark.parametrize(("backend", "name"), [("jax", "JAX"), ("torch", "PyTorch")])
def test_gpu_section_on_another_backend_asks_it_and_never_imports_tensorflow(backend, name):
    code = (
        "import sys; from benchmarks.gpu import gpu; "
        "from benchmarks.common import REDUCED, Context; from pathlib import Path; "
        "import tempfile; "
        "r = gpu.bench_gpu(Context(mode=REDUCED, workdir=Path(tempfile.mkdtemp()), "
        f"num_cpus=2, backend={backend!r})); "
        "print(gpu.print_gpu(r)); print('tensorflow' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-3:] == [
        f"d. GPU throughput ({backend})",
        f"skipped: no GPU visible to {name}",
        "False",
    ]


def test_vgg16_training_flops_match_the_published_forward_count():
    # VGG16's convolutions at 224x224 are 15.35 G multiply-adds (30.7 GFLOPs) per image.
    forward = gpu.vgg16_flops_per_image(224, 224, training=False)
    assert forward == pytest.approx(30.7e9, rel=0.01)
    assert gpu.vgg16_flops_per_image(224, 224) == pytest.approx(3 * forward)
    # Conv cost scales with the pixels: 64x64 is (64/224)^2 of it, up to the small head.
    assert gpu.vgg16_flops_per_image(64, 64, training=False) == pytest.approx(
        forward * (64 / 224) ** 2, rel=0.01
    )


@pytest.mark.parametrize(
    ("name", "mixed", "expected"),
    [
        ("NVIDIA H200", True, 989.4),
        ("NVIDIA H200", False, 494.7),
        ("NVIDIA H100 80GB HBM3", True, 989.4),
        ("NVIDIA H100 PCIe", True, 756.0),
        ("NVIDIA A100-SXM4-80GB", True, 312.0),
        ("NVIDIA A10G", False, 62.5),
        ("Tesla T4", True, None),
    ],
)
def test_peak_tflops_from_the_datasheet_table_by_nvidia_smi_name(name, mixed, expected):
    assert gpu.peak_tflops(name, mixed) == expected


def test_peak_tflops_argument_overrides_the_table():
    assert gpu.peak_tflops("NVIDIA H200", True, override=700.0) == 700.0
    assert gpu.peak_tflops("Tesla T4", False, override=65.0) == 65.0


def test_timed_steps_stop_after_the_time_not_a_step_count():
    now = [0.0]

    def step():  # each step takes 0.4 s of the fake clock
        now[0] += 0.4

    assert gpu.timed_steps(step, 2.0, clock=lambda: now[0]) == (5, pytest.approx(2.0))
    now[0] = 0.0
    # A slow device still gets the minimum of timed steps.
    assert gpu.timed_steps(step, 0.1, min_steps=3, clock=lambda: now[0])[0] == 3


def test_packing_specs_are_valid_before_any_gpu_is_used(tmp_path):
    from benchmarks.common import FULL, load_spec

    ctx = Context(mode=FULL, workdir=tmp_path, num_cpus=16)
    data = gpu.write_packing_data(tmp_path / "packing.npz", images=40)
    for per_gpu in gpu.PACKING:
        spec = load_spec(gpu.packing_spec(ctx, per_gpu, data))
        assert spec.resources.gpus_per_trial == 1 / per_gpu
        assert spec.resources.cpus_per_trial * per_gpu <= 16
        assert spec.search.num_samples == 2 * per_gpu


def test_gpu_tables_show_a_packing_row_skipped_for_time():
    result = {
        "skipped": False,
        "gpu": "NVIDIA H200",
        "peak_source": "datasheet table",
        "throughput": [
            {
                "size": 160,
                "batch": 128,
                "precision": "mixed_bfloat16",
                "xla": True,
                "images_per_s": 5000.0,
                "train_gflops_per_image": 23.7,
                "tflops": 118.5,
                "peak_tflops": 989.4,
                "share_of_peak": 0.12,
            }
        ],
        "packing": [
            {
                "per_gpu": 1,
                "gpus_per_trial": 1.0,
                "trials": 2,
                "span_s": 80.0,
                "trials_per_hour": 90.0,
                "trials_per_hour_wall": 70.0,
                "aggregate_img_s": 3000.0,
                "trial_img_s": 4000.0,
            },
            {"per_gpu": 4, "gpus_per_trial": 0.25, "skipped": "time budget (90 s left)"},
        ],
    }
    text = gpu.print_gpu(result)
    assert "12.0%" in text and "time budget (90 s left)" in text
    assert text.splitlines()[-1].split()[:2] == ["4", "0.25"]


CHECKPOINT_RESULT = {
    "kind": "checkpoint",
    "backend": "tensorflow",
    "size": 160,
    "batch": 64,
    "train_images": 2048,
    "val_images": 256,
    "epochs": 6,
    "precision": "mixed_bfloat16",
    "epoch_s": {"none": 1.0, "beside": 1.2, "snapshot": 1.05},
    "checkpoint_bytes": 145_000_000,
    "device": "GPU:0",
}


def test_the_checkpoint_line_says_each_ways_epoch_and_the_gpu_way_over_the_cpu_way():
    result = gpu.with_checkpoint_ratios(CHECKPOINT_RESULT)
    assert result["snapshot_ratio"] == pytest.approx(1.05 / 1.2)
    assert result["checkpoint_cost"] == {
        "beside": pytest.approx(1.2),
        "snapshot": pytest.approx(1.05),
    }
    assert gpu.format_checkpoint_writes(result) == (
        "a checkpoint every epoch (145 MB; VGG16 160x160, 2048 images per epoch, "
        "mixed_bfloat16): 1.000 s/epoch without, 1.200 waiting for the write (CPU trial's "
        "way, x1.200), 1.050 waiting for the copy only (GPU trial's way, x1.050); GPU way / "
        "CPU way = 0.875"
    )
    table = gpu.print_gpu(
        {
            "skipped": False,
            "gpu": "NVIDIA H200",
            "peak_source": "datasheet table",
            "throughput": [],
            "packing": [],
            "checkpoint": {"skipped": "time budget (90 s left)"},
        }
    )
    assert table.splitlines()[-1] == "checkpoint writes: skipped (time budget (90 s left))"


def test_the_checkpoint_job_is_skipped_when_the_sections_budget_is_short(tmp_path):
    result = gpu.bench_checkpoint_writes(
        _ctx(tmp_path), tmp_path / "gpu.log", left_s=gpu.CHECKPOINT_GUESS_S - 1
    )
    assert result == {"skipped": f"time budget ({gpu.CHECKPOINT_GUESS_S - 1:.0f} s left)"}
    assert list(tmp_path.iterdir()) == []  # no worker started


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_the_checkpoint_worker_times_each_way_and_leaves_no_checkpoint(
    backend, tmp_path, monkeypatch
):
    """On the CPU, tiny: the worker's process trains a fresh VGG16 per way, each checkpoint
    written and removed (JAX begins its writes at the epoch's end, as its trials do)."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    job = {
        "kind": "checkpoint",
        "backend": backend,
        "size": 32,
        "batch": 8,
        "train_images": 16,
        "val_images": 8,
        "epochs": 3,
        "precision": "float32",
        "ways": list(gpu.CHECKPOINT_WAYS),
    }
    result = gpu._run_gpu_worker(job, tmp_path / "gpu.log")
    assert result["backend"] == backend and result["device"] == "CPU"
    assert sorted(result["epoch_s"]) == sorted(gpu.CHECKPOINT_WAYS)
    assert all(seconds > 0 for seconds in result["epoch_s"].values())
    # VGG16's weights and SGD's momentum for each, float32.
    assert result["checkpoint_bytes"] > 2 * 14_714_688 * 4
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("trial-ckpt-")]
    assert "snapshot_ratio" in gpu.with_checkpoint_ratios(result)
