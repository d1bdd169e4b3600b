"""benchmarks/gpu.py: the skip without a GPU, VGG16's FLOPs and the datasheet peaks."""

from __future__ import annotations

import shutil
from pathlib import Path

import gpu
import pytest
from common import REDUCED, Context


def _ctx(tmp_path: Path) -> Context:
    return Context(mode=REDUCED, workdir=tmp_path, num_cpus=2)


def test_gpu_section_skips_with_message_when_no_gpu_is_visible(tmp_path, capsys):
    result = gpu.bench_gpu(_ctx(tmp_path), visible_gpus=[])
    assert result == {"skipped": True, "reason": "no GPU visible to TensorFlow"}
    assert "skipped: no GPU visible to TensorFlow" in capsys.readouterr().out
    assert gpu.print_gpu(result).splitlines()[-1] == "skipped: no GPU visible to TensorFlow"
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_gpu_section_asks_tensorflow_and_skips_on_a_cpu_machine(tmp_path, capsys):
    result = gpu.bench_gpu(_ctx(tmp_path))
    assert result["skipped"] is True
    assert "skipped: no GPU visible to TensorFlow" in capsys.readouterr().out


def test_vgg16_training_flops_match_the_published_forward_count():
    # VGG16's convolutions at 224x224 are 15.35 G multiply-adds (30.7 GFLOPs) per image.
    forward = gpu.vgg16_flops_per_image(224, 224, training=False)
    assert forward == pytest.approx(30.7e9, rel=0.01)
    assert gpu.vgg16_flops_per_image(224, 224) == pytest.approx(3 * forward)
    # Conv cost scales with the pixels: 64x64 is (64/224)^2 of it, up to the small head.
    assert gpu.vgg16_flops_per_image(64, 64, training=False) == pytest.approx(
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
    assert gpu.peak_tflops(name, mixed) == expected


def test_peak_tflops_argument_overrides_the_table():
    assert gpu.peak_tflops("NVIDIA H200", True, override=700.0) == 700.0
    assert gpu.peak_tflops("Tesla T4", False, override=65.0) == 65.0
