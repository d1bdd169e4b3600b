"""Keeping only the checkpoints that can still be used: finished trials outside the best K lose
theirs when they end (or when a better trial ends); running and errored trials never do."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs as pafs
import pytest

from search.driver import pruning
from search.outputs.results import TrialRecord


def trial_folder(root: Path, trial_id: str, checkpoints: int = 2) -> Path:
    folder = root / f"trial_{trial_id}"
    for index in range(checkpoints):
        (folder / f"checkpoint_{index:06d}").mkdir(parents=True)
        (folder / f"checkpoint_{index:06d}" / "model.keras").write_bytes(b"x" * 10)
    (folder / "result.json").write_text("{}\n")
    return folder


def ray_trial(root: Path, trial_id: str, best: float, *, failed: bool = False):
    folder = trial_folder(root, trial_id)
    return SimpleNamespace(
        trial_id=trial_id,
        path=str(folder),
        last_result={"trial_failed": failed},
        metric_analysis={"val_accuracy": {"max": best, "min": 0.0}},
        storage=SimpleNamespace(storage_filesystem=pafs.LocalFileSystem()),
    )


def record(
    root: Path,
    trial_id: str,
    best: float,
    *,
    epochs: int = 3,
    ray_status: str = "TERMINATED",
    errored: bool = False,
) -> TrialRecord:
    folder = trial_folder(root, trial_id)
    history = [{"epoch": e, "val_accuracy": best} for e in range(1, epochs + 1)]
    return TrialRecord(
        trial_id=trial_id,
        round="",
        path=str(folder),
        config={},
        history=history,
        errored=errored,
        ray_status=ray_status,
    )


def has_checkpoints(root: Path, trial_id: str) -> bool:
    return any((root / f"trial_{trial_id}").glob("checkpoint_*"))


def test_finished_trials_outside_the_best_k_lose_their_checkpoints(tmp_path, monkeypatch):
    earlier = [
        record(tmp_path, "old_best", 0.95),
        record(tmp_path, "old_weak", 0.20, epochs=1),  # stopped by ASHA
        record(tmp_path, "resuming", 0.10, ray_status="RUNNING"),
        record(tmp_path, "errored", 0.05, errored=True),
    ]
    monkeypatch.setattr(pruning, "recorded_trials", lambda trial: earlier)
    pruner = pruning.CheckpointPruner(keep=2, max_t=3)

    pruner.on_trial_complete(0, [], ray_trial(tmp_path, "a", 0.50))
    # Best two finished: old_best and a; the weaker finished one loses its checkpoints.
    assert has_checkpoints(tmp_path, "old_best") and has_checkpoints(tmp_path, "a")
    assert not has_checkpoints(tmp_path, "old_weak")
    # A trial that resume continues, and an errored one Ray retries, keep theirs.
    assert has_checkpoints(tmp_path, "resuming") and has_checkpoints(tmp_path, "errored")

    pruner.on_trial_complete(0, [], ray_trial(tmp_path, "b", 0.80))  # displaces a
    assert not has_checkpoints(tmp_path, "a") and has_checkpoints(tmp_path, "b")
    pruner.on_trial_complete(0, [], ray_trial(tmp_path, "c", 0.30))  # never in the best two
    assert not has_checkpoints(tmp_path, "c")
    pruner.on_trial_complete(0, [], ray_trial(tmp_path, "nan", 0.99, failed=True))
    assert not has_checkpoints(tmp_path, "nan")  # a failed trial is never exported
    assert pruner.kept() == ["old_best", "b"]
    # A trial resumed at its last epoch reports nothing: ranked by the result Ray restored;
    # one with no value at all keeps its checkpoints.
    restored = ray_trial(tmp_path, "restored", 0.0)
    restored.metric_analysis, restored.last_result = {}, {"val_accuracy": 0.9}
    pruner.on_trial_complete(0, [], restored)
    assert has_checkpoints(tmp_path, "restored") and not has_checkpoints(tmp_path, "b")
    unknown = ray_trial(tmp_path, "unknown", 0.0)
    unknown.metric_analysis, unknown.last_result = {}, {}
    pruner.on_trial_complete(0, [], unknown)
    assert has_checkpoints(tmp_path, "unknown")
    # A trial resumed from a stale snapshot: its best epoch is only in its results.
    stale = ray_trial(tmp_path, "stale", 0.1)
    (tmp_path / "trial_stale" / "result.json").write_text(
        '{"epoch": 1, "val_accuracy": 0.1}\n{"epoch": 2, "val_accuracy": 0.97}\n'
    )
    pruner.on_trial_complete(0, [], stale)
    assert has_checkpoints(tmp_path, "stale") and pruner.kept()[0] == "stale"
    # The rest of each folder (results, params) stays.
    assert (tmp_path / "trial_a" / "result.json").exists()


@pytest.mark.parametrize("keep", [1, 3])
def test_the_kept_checkpoints_are_the_best_k(tmp_path, monkeypatch, keep):
    monkeypatch.setattr(pruning, "recorded_trials", lambda trial: [])
    pruner = pruning.CheckpointPruner(keep=keep, max_t=3)
    values = {"t0": 0.4, "t1": 0.9, "t2": 0.1, "t3": 0.7, "t4": 0.8}
    for trial_id, value in values.items():
        pruner.on_trial_complete(0, [], ray_trial(tmp_path, trial_id, value))
    best = sorted(values, key=values.get, reverse=True)[:keep]
    assert {t for t in values if has_checkpoints(tmp_path, t)} == set(best)
