"""Each Keras backend's set-up: choosing it, GPU memory caps, OOM detection, determinism.

The frameworks' own exception classes are raised here (no GPU needed to build one); what only
a GPU can show (the caps taking effect) is in the ``gpu``-marked tests.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from search.errors import SpecError, TrialFailure
from search.trial import backends
from tests.helpers import REPO


def test_a_missing_backend_is_a_one_line_error_with_the_install_command(monkeypatch):
    real = backends.importlib.util.find_spec
    monkeypatch.setattr(
        backends.importlib.util, "find_spec", lambda name: None if name == "jax" else real(name)
    )
    with pytest.raises(
        SpecError,
        match=r"^train\.backend: jax is not installed on .*; pip "
        r"install 'finetune-search\[jax\]'",
    ) as err:
        backends.check_installed("jax")
    assert "\n" not in str(err.value)
    with pytest.raises(TrialFailure, match=r"^backend_missing: train\.backend: jax is not"):
        backends.activate("jax", gpu_fraction=0)
    backends.check_installed("torch")  # installed: no error


def test_an_unknown_backend_is_rejected_by_name():
    with pytest.raises(
        SpecError,
        match=r"^train\.backend: must be one of tensorflow, jax, "
        r"torch, got 'mxnet'$",
    ):
        backends.check_installed("mxnet")


def test_switching_backend_in_a_process_that_imported_keras_fails_with_the_reason(monkeypatch):
    import keras  # this process runs Keras on its default backend, TensorFlow

    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert keras.backend.backend() == "tensorflow"
    with pytest.raises(
        TrialFailure,
        match=r"^backend_mismatch: train\.backend: this process "
        r"already runs Keras on tensorflow .* to jax",
    ):
        backends.activate("jax", gpu_fraction=0)
    assert backends.activate("tensorflow", gpu_fraction=0).name == "tensorflow"


def test_jax_allocator_is_capped_to_the_trials_share_before_import(monkeypatch):
    for name in ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_FLAGS"):
        monkeypatch.delenv(name, raising=False)
    backends.JaxBackend().set_environment(0.5, deterministic=False)
    assert backends.os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert backends.os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.475"
    assert "XLA_FLAGS" not in backends.os.environ
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION")
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    backends.JaxBackend().set_environment(1.0, deterministic=True)  # a whole GPU: no cap
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in backends.os.environ
    assert backends.os.environ["XLA_FLAGS"] == (
        "--xla_dump_to=/tmp/x --xla_gpu_deterministic_ops=true"
    )


def test_torch_caps_each_visible_gpu_to_the_trials_share(monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(
        torch.cuda,
        "set_per_process_memory_fraction",
        lambda fraction, device: calls.append((round(fraction, 4), device)),
    )
    assert backends.TorchBackend().configure_gpus(0.25) == [0, 1]
    assert calls == [(0.2375, 0), (0.2375, 1)]
    calls.clear()
    backends.TorchBackend().configure_gpus(1.0)
    assert calls == []  # a whole GPU is not capped


def test_out_of_memory_is_recognised_from_each_frameworks_own_error():
    import jax
    import tensorflow as tf
    import torch

    jax_oom = jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4294967296 bytes."
    )
    torch_oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    tf_oom = tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
    assert backends.JaxBackend().is_out_of_memory(jax_oom)
    assert backends.TorchBackend().is_out_of_memory(torch_oom)
    assert backends.TensorFlowBackend().is_out_of_memory(tf_oom)
    others = [
        ValueError("shapes do not match"),
        jax.errors.JaxRuntimeError("INTERNAL: ptxas"),
        RuntimeError("expected scalar type Float"),
    ]
    for backend in (backends.JaxBackend(), backends.TorchBackend(), backends.TensorFlowBackend()):
        assert not any(backend.is_out_of_memory(err) for err in others), backend.name


def test_torch_determinism_turns_on_deterministic_algorithms(monkeypatch):
    import torch

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    backend = backends.TorchBackend()
    backend.set_environment(1.0, deterministic=True)
    assert backends.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    try:
        backend.enable_determinism()
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize(
    ("capability", "expected"),
    [
        (None, "float32"),
        ((9, 0), "mixed_bfloat16"),
        ((7, 0), "mixed_float16"),
        ((6, 1), "float32"),
    ],
)
def test_auto_precision_follows_the_compute_capability(capability, expected):
    assert backends.resolve_precision("auto", capability) == expected
    assert backends.resolve_precision("float32", capability) == "float32"


def test_jax_compute_capability_is_read_from_the_device_string():
    class Device:
        compute_capability = "8.6"

    assert backends.JaxBackend().compute_capability([Device()]) == (8, 6)
    assert backends.JaxBackend().compute_capability([]) is None


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_fractional_trial_on_a_real_gpu_is_capped_and_sees_it(backend):
    code = (
        "from search.trial import runtime; "
        f"run = runtime.prepare({{'backend': {backend!r}, 'mixed_precision': 'auto', "
        "'seed': 1}, gpu_fraction=0.5); import os; "
        "print(len(run.gpus), run.precision, "
        "os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    gpus, precision, fraction = done.stdout.split()[-3:]
    assert int(gpus) >= 1 and precision.startswith("mixed")
    assert fraction == ("0.475" if backend == "jax" else "None")


def test_run_with_a_backend_not_installed_exits_2_before_anything_starts(tmp_path, monkeypatch):
    from tests.helpers import cli, write_spec

    spec_path = write_spec(tmp_path, train__backend="jax")
    # A site hook makes `jax` unimportable in the CLI's process only.
    hook = tmp_path / "hide" / "sitecustomize.py"
    hook.parent.mkdir()
    hook.write_text("import sys\nsys.modules['jax'] = None\n")
    monkeypatch.setenv("PYTHONPATH", str(hook.parent))
    done = cli("run", str(spec_path), "--num-cpus", "2")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: train.backend: jax is not installed on ")
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()  # no experiment folder, no Ray
