"""Device set-up of a training run, with a stand-in for TensorFlow's config API (no GPU here)."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pytest

from search.trial import backends, runtime


class FakeConfig:
    """The slice of ``tf.config`` the trainable uses, recording what it was asked to do."""

    def __init__(self, gpus: list[str], capability: tuple[int, int] = (8, 0)) -> None:
        self.gpus = gpus
        self.capability = capability
        self.growth: list[str] = []
        self.limits: dict[str, int] = {}
        self.experimental = SimpleNamespace(
            set_memory_growth=lambda gpu, on: self.growth.append(gpu),
            get_device_details=lambda gpu: {"compute_capability": self.capability},
        )

    def list_physical_devices(self, kind: str) -> list[str]:
        return list(self.gpus)

    def set_logical_device_configuration(self, gpu: str, configs: list) -> None:
        self.limits[gpu] = configs[0].memory_limit

    @staticmethod
    def LogicalDeviceConfiguration(memory_limit: int) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(memory_limit=memory_limit)


@pytest.fixture(autouse=True)
def _devices_not_yet_configured(monkeypatch):
    # A process configures its devices once; each test here is a fresh process's first time.
    monkeypatch.setattr(backends, "_CONFIGURED_GPUS", None)


def fake_tf(gpus: list[str], capability: tuple[int, int] = (8, 0)) -> SimpleNamespace:
    return SimpleNamespace(config=FakeConfig(gpus, capability))


def test_trial_without_gpus_hides_every_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    runtime.hide_unassigned_gpus([])
    assert runtime.os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_trial_with_gpus_keeps_rays_assignment(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    runtime.hide_unassigned_gpus(["3"])
    assert runtime.os.environ["CUDA_VISIBLE_DEVICES"] == "3"


def test_whole_gpu_trial_gets_memory_growth():
    tf = fake_tf(["gpu0"])
    backends.TensorFlowBackend(tf).configure_gpus(1.0)
    assert tf.config.growth == ["gpu0"] and tf.config.limits == {}


def test_a_reused_trial_process_configures_its_devices_only_once():
    first, second = fake_tf(["gpu0"]), fake_tf(["gpu0"])
    assert backends.TensorFlowBackend(first).configure_gpus(1.0) == ["gpu0"]
    # TensorFlow refuses a second configuration once the devices are in use.
    assert backends.TensorFlowBackend(second).configure_gpus(1.0) == ["gpu0"]
    assert second.config.growth == []


def test_fractional_gpu_trial_gets_a_hard_memory_share(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    calls = []

    def fake_smi(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="81920\n", stderr="")

    monkeypatch.setattr(backends.subprocess, "run", fake_smi)
    tf = fake_tf(["gpu0"])
    backends.TensorFlowBackend(tf).configure_gpus(0.25)
    assert tf.config.limits == {"gpu0": int(81920 * 0.25 * 0.95)}
    assert calls[0][-1] == "1"  # asked about the physical GPU Ray assigned
    assert tf.config.growth == []


@pytest.mark.parametrize(
    ("gpus", "capability", "expected"),
    [
        ([], (0, 0), "float32"),
        (["gpu0"], (9, 0), "mixed_bfloat16"),
        (["gpu0"], (8, 6), "mixed_bfloat16"),
        (["gpu0"], (7, 5), "mixed_float16"),
        (["gpu0"], (6, 1), "float32"),
    ],
)
def test_auto_precision_follows_the_device(gpus, capability, expected):
    found = backends.TensorFlowBackend(fake_tf(gpus, capability)).compute_capability(gpus)
    assert backends.resolve_precision("auto", found) == expected
    assert backends.resolve_precision("float32", found) == "float32"


def test_trial_holding_a_gpu_tensorflow_cannot_see_gets_a_no_gpu_reason(monkeypatch):
    monkeypatch.delenv(runtime.FAKE_GPUS_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    message = runtime.missing_gpu_message(["0"], [])
    assert message == (
        "Ray assigned GPU 0 but TensorFlow sees no GPU (CUDA_VISIBLE_DEVICES=0); "
        "check the NVIDIA driver, the container's --gpus all and "
        "tensorflow[and-cuda]"
    )
    assert runtime.missing_gpu_message(["0"], ["gpu0"]) is None  # it sees its GPU
    assert runtime.missing_gpu_message([], []) is None  # a CPU trial


def test_fake_gpus_are_allowed_only_when_declared_fake(monkeypatch):
    monkeypatch.setenv(runtime.FAKE_GPUS_ENV, "1")
    assert runtime.missing_gpu_message(["0"], []) is None
    monkeypatch.setenv(runtime.FAKE_GPUS_ENV, "0")
    assert runtime.missing_gpu_message(["0"], []) is not None
