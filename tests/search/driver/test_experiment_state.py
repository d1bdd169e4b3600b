"""Ray's experiment snapshot on local storage: uploaded whole or not at all, and a snapshot that
is not whole refused on resume (Ray would silently start the experiment over)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml
from ray.train import CheckpointConfig
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.train._internal.session import _TrainingResult
from ray.train._internal.storage import _FilesystemSyncer, _upload_to_fs_path
from ray.tune import Checkpoint
from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
from ray.tune.execution.tune_controller import TuneController

from search.cli import main
from search.driver.experiment_state import (
    DEFERRED,
    PARTIAL_SUFFIX,
    check_resumable_state,
    delete_when_snapshotted,
    ray_snapshots,
    write_files_atomically,
    write_objects,
)
from search.errors import SpecError
from search.outputs.results import STATE_FILE_PATTERN, experiment_state_files
from tests.helpers import REPO, tree_digest
from tests.search.test_spec import BASE

STATE = "experiment_state-2026-11-29_10-00-00.json"
OLDER_STATE = "experiment_state-2026-11-28_10-00-00.json"


def whole_state(trials: int) -> bytes:
    return json.dumps(
        {
            "trial_data": [{"trial_id": f"t{i}"} for i in range(trials)],
            "runner_data": {},
            "stats": {},
        }
    ).encode()


def staging_folder(root: Path, trials: int) -> Path:
    staging = root / "driver_artifacts"
    staging.mkdir(parents=True, exist_ok=True)
    (staging / STATE).write_bytes(whole_state(trials))
    (staging / "searcher-state-2026.pkl").write_bytes(b"searcher %d" % trials)
    return staging


def local_syncer() -> _FilesystemSyncer:
    return _FilesystemSyncer(
        storage_filesystem=pafs.LocalFileSystem(), sync_period=0, sync_timeout=60
    )


def upload_command(staging: Path, target: Path) -> tuple:
    """The command Ray's syncer would launch to upload ``staging`` to ``target`` now."""
    return local_syncer()._sync_up_command(local_path=str(staging), uri=str(target))


def test_the_state_file_pattern_is_rays():
    assert TuneController.CKPT_FILE_TMPL.format("*") == STATE_FILE_PATTERN


def test_rays_syncer_uploads_the_snapshot_through_temporary_files_within_the_block(tmp_path):
    staging, target = staging_folder(tmp_path, trials=3), tmp_path / "experiment"
    syncer = local_syncer()
    with ray_snapshots():
        assert upload_command(staging, target)[1]["job"].upload.func is write_files_atomically
        assert syncer.sync_up(str(staging), str(target))
        syncer.wait()
    assert json.loads((target / STATE).read_bytes())["trial_data"][2] == {"trial_id": "t2"}
    assert (target / "searcher-state-2026.pkl").read_bytes() == b"searcher 3"
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in staging.iterdir())
    # After the block Ray's own command again.
    assert (
        syncer._sync_up_command(local_path=str(staging), uri=str(target))[0] is _upload_to_fs_path
    )


def test_the_snapshot_is_read_when_the_upload_is_launched_not_when_it_runs(tmp_path):
    staging, target = staging_folder(tmp_path, trials=3), tmp_path / "experiment"
    with ray_snapshots():
        command, kwargs = upload_command(staging, target)
    # Ray's driver thread rewrites the staging folder (half written) while the upload runs.
    (staging / STATE).write_bytes(whole_state(5)[:20])
    command(**kwargs)
    assert len(json.loads((target / STATE).read_bytes())["trial_data"]) == 3


class Bucket:
    """An object store for the snapshot's writes (pyarrow's mock filesystem), which can die
    (a SIGKILLed driver) when a path containing ``dies_at`` is written."""

    def __init__(self, dies_at: str | None = None) -> None:
        self.fs, self.dies_at = pafs._MockFileSystem(), dies_at

    def create_dir(self, path: str, recursive: bool = True) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def open_output_stream(self, path: str):
        if self.dies_at is not None and self.dies_at in path:
            raise SystemExit("killed")
        return self.fs.open_output_stream(path)

    def read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as stream:
            return stream.readall()


def bucket_syncer(bucket: Bucket) -> _FilesystemSyncer:
    return _FilesystemSyncer(storage_filesystem=bucket, sync_period=0, sync_timeout=60)


def test_a_state_ray_saves_during_a_slow_upload_to_a_bucket_is_not_the_one_uploaded(tmp_path):
    # Fault (found by the chaos soak on S3): Ray saves its experiment state into the staging
    # folder at every snapshot, also while the last upload still runs (slow on a loaded
    # machine or a far bucket). Ray's copy read the files as it uploaded them, the state
    # last: the bucket got a state newer than the trials' result rows copied before it, one
    # that lists a checkpoint whose epoch no row held. A driver killed then, and resumed on a
    # fresh machine, recorded that trial's epochs as 1, 3, 4. The upload must carry the
    # snapshot as it was when launched: the state and the rows of the same moment.
    staging = staging_folder(tmp_path, trials=2)
    (staging / "trial_t1").mkdir()
    (staging / "trial_t1" / "result.json").write_text('{"epoch": 1}\n')
    bucket = pafs._MockFileSystem()
    syncer = _FilesystemSyncer(storage_filesystem=bucket, sync_period=0, sync_timeout=60)
    with ray_snapshots():
        command, kwargs = syncer._sync_up_command(local_path=str(staging), uri="bucket/x")
    # While it waits to run, the driver reports epoch 2 (its checkpoint) and saves its state.
    with open(staging / "trial_t1" / "result.json", "a") as rows:
        rows.write('{"epoch": 2}\n')
    (staging / STATE).write_bytes(whole_state(3))
    command(**kwargs)
    with bucket.open_input_stream(f"bucket/x/{STATE}") as state:
        assert state.readall() == whole_state(2)
    with bucket.open_input_stream("bucket/x/trial_t1/result.json") as rows:
        assert rows.readall() == b'{"epoch": 1}\n'


def test_excluding_uploads_keep_rays_command(tmp_path):
    staging = staging_folder(tmp_path, trials=1)
    with ray_snapshots():
        assert (
            local_syncer()
            ._sync_up_command(local_path=str(staging), uri=str(tmp_path / "x"), exclude=["*.pkl"])[
                1
            ]["job"]
            .upload.func
            is _upload_to_fs_path
        )
        job = bucket_syncer(Bucket())._sync_up_command(local_path=str(staging), uri="bucket/x")[1][
            "job"
        ]
        assert job.upload.func is write_objects


def test_a_driver_killed_while_a_snapshot_is_written_to_a_bucket_leaves_the_state_before_it(
    tmp_path,
):
    # Fault: the driver dies while the snapshot goes to an object store (each object whole,
    # the folder many objects). The new state must never be in the bucket without the
    # trials' files it lists: it goes last.
    staging = staging_folder(tmp_path, trials=2)
    (staging / "trial_t1").mkdir()
    (staging / "trial_t1" / "result.json").write_text('{"epoch": 1}\n')
    bucket = Bucket(dies_at="experiment_state-")
    bucket.create_dir("bucket/x")
    with bucket.fs.open_output_stream(f"bucket/x/{STATE}") as old:
        old.write(whole_state(1))
    with ray_snapshots():
        command, kwargs = bucket_syncer(bucket)._sync_up_command(
            local_path=str(staging), uri="bucket/x"
        )
        with pytest.raises(SystemExit):
            command(**kwargs)
    assert bucket.read(f"bucket/x/{STATE}") == whole_state(1)  # the state before it
    assert bucket.read("bucket/x/trial_t1/result.json") == b'{"epoch": 1}\n'
    bucket.dies_at = None
    command(**kwargs)  # uninterrupted: everything, the new state included
    assert bucket.read(f"bucket/x/{STATE}") == whole_state(2)


def test_a_driver_killed_mid_upload_leaves_the_last_whole_state(tmp_path):
    """A real SIGKILL-like death (``os._exit``) halfway through writing the new state: the old
    state stays whole, and the leftover temporary file is one Ray never reads."""
    target = tmp_path / "experiment"
    target.mkdir()
    (target / STATE).write_bytes(whole_state(2))
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from search.driver.experiment_state import write_files_atomically

        def dies_halfway(self, data):
            with open(self, "wb") as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
            os._exit(9)

        Path.write_bytes = dies_halfway
        new = b'{{"trial_data": [' + b'{{"trial_id": "t"}}, ' * 500 + b'{{}}]}}'
        write_files_atomically({{{STATE!r}: new}}, {str(target)!r})
    """)
    died = subprocess.run([sys.executable, "-c", script], cwd=REPO, check=False)
    assert died.returncode == 9
    assert json.loads((target / STATE).read_bytes()) == json.loads(whole_state(2))
    leftovers = [p.name for p in target.iterdir() if p.name != STATE]
    assert len(leftovers) == 1 and leftovers[0].endswith(PARTIAL_SUFFIX)
    # Neither Ray's resume (*.json, *.pkl) nor ours takes it for a state.
    assert not leftovers[0].endswith((".json", ".pkl"))
    assert [Path(p).name for p in experiment_state_files(pafs.LocalFileSystem(), str(target))] == [
        STATE
    ]


def test_a_whole_state_is_resumable(tmp_path):
    (tmp_path / STATE).write_bytes(whole_state(2))
    check_resumable_state(str(tmp_path))


@pytest.mark.parametrize("older", [False, True])
def test_a_truncated_newest_state_is_refused_with_the_way_on(tmp_path, older):
    if older:
        (tmp_path / OLDER_STATE).write_bytes(whole_state(1))
    (tmp_path / STATE).write_bytes(whole_state(40)[:300])
    with pytest.raises(SpecError) as raised:
        check_resumable_state(str(tmp_path))
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / STATE}: Ray's experiment state must be whole JSON")
    assert "got 300 bytes" in message and "\n" not in message
    assert (f"remove it to resume from the older {OLDER_STATE}" in message) is older


def test_resume_of_a_truncated_state_exits_2_and_leaves_the_folder_alone(tmp_path, capsys):
    experiment = tmp_path / "experiment"
    experiment.mkdir()
    (experiment / "spec.yaml").write_text(yaml.safe_dump({**BASE, "name": "experiment"}))
    (experiment / "optuna_study.journal").write_text("")
    (experiment / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for
    (experiment / STATE).write_bytes(whole_state(40)[:300])
    before = tree_digest(experiment)
    assert main(["resume", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "must be whole JSON to resume, got 300 bytes" in err
    assert tree_digest(experiment) == before


def checkpoint_folder(root: Path, index: int) -> Path:
    folder = root / f"checkpoint_{index:06d}"
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(b"weights")
    return folder


def test_a_dropped_checkpoint_is_deleted_once_the_next_snapshot_is_uploaded(tmp_path):
    staging, target = staging_folder(tmp_path, trials=1), tmp_path / "experiment"
    old, new = checkpoint_folder(target / "trial_a", 0), checkpoint_folder(target / "trial_a", 1)
    syncer = local_syncer()
    with ray_snapshots():
        # Ray's bookkeeping with one checkpoint kept: registering the newer drops the older.
        manager = _CheckpointManager(CheckpointConfig(num_to_keep=1))
        for folder, value in ((old, 0.5), (new, 0.4)):
            manager.register_checkpoint(
                _TrainingResult(
                    checkpoint=Checkpoint(str(folder)), metrics={"val_accuracy": value}
                )
            )
        # num_to_keep=1 but no score attribute: the older is dropped; not deleted yet.
        assert old.exists() and new.exists()
        assert syncer.sync_up(str(staging), str(target))
        syncer.wait()
        assert not old.exists() and new.exists()
    assert not DEFERRED.take()


def test_a_deletion_queued_after_a_snapshot_was_launched_waits_for_the_next(tmp_path):
    staging, target = staging_folder(tmp_path, trials=1), tmp_path / "experiment"
    folder = checkpoint_folder(target / "trial_a", 0)
    with ray_snapshots():
        command, kwargs = upload_command(staging, target)
        delete_when_snapshotted(pafs.LocalFileSystem(), str(folder))
        command(**kwargs)  # that snapshot was read before the drop: it may still list it
        assert folder.exists()
        command, kwargs = upload_command(staging, target)
        command(**kwargs)
        assert not folder.exists()


def test_a_failed_upload_keeps_its_deletions_for_the_next(tmp_path):
    staging, target = staging_folder(tmp_path, trials=1), tmp_path / "experiment"
    folder = checkpoint_folder(target / "trial_a", 0)

    def fails():
        raise OSError("disk full")

    with ray_snapshots():
        delete_when_snapshotted(pafs.LocalFileSystem(), str(folder))
        command, kwargs = upload_command(staging, target)
        with pytest.raises(OSError):
            kwargs["job"].upload = fails
            command(**kwargs)
        assert folder.exists()
        command, kwargs = upload_command(staging, target)
        command(**kwargs)
        assert not folder.exists()


def test_deletions_left_at_the_end_happen_only_when_the_block_ends_cleanly(tmp_path):
    kept, deleted = checkpoint_folder(tmp_path / "a", 0), checkpoint_folder(tmp_path / "b", 0)
    with pytest.raises(KeyError), ray_snapshots():
        delete_when_snapshotted(pafs.LocalFileSystem(), str(kept))
        raise KeyError("the driver failed")
    assert kept.exists()
    with ray_snapshots():
        delete_when_snapshotted(pafs.LocalFileSystem(), str(deleted))
    assert not deleted.exists()
    # Outside the block (no search running) a deletion is immediate.
    delete_when_snapshotted(pafs.LocalFileSystem(), str(kept))
    assert not kept.exists()


class Clock:
    """Stands in for ``time.monotonic`` in the module and Ray's snapshot bookkeeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_forced_snapshot_waits_19_times_the_last_ones_duration(tmp_path, monkeypatch):
    import ray.tune.execution.experiment_state as ray_state

    import search.driver.experiment_state as ours

    clock = Clock()
    monkeypatch.setattr(ray_state.time, "monotonic", clock)
    monkeypatch.setattr(ours.time, "monotonic", clock)
    saves = []

    def save() -> None:  # Ray's save_to_dir, taking 0.5 s of the driver's time
        saves.append(clock.now)
        clock.now += 0.5

    storage_context = type(
        "Storage",
        (),
        {
            "experiment_driver_staging_path": str(tmp_path / "staging"),
            "experiment_fs_path": str(tmp_path / "experiment"),
            "syncer": local_syncer(),
        },
    )()
    (tmp_path / "staging").mkdir()
    with ray_snapshots():
        manager = _ExperimentCheckpointManager(
            storage=storage_context, checkpoint_period="auto", sync_every_n_trial_checkpoints=1
        )
        manager.sync_up_experiment_state(save, force=True)  # the first: 0.5 s
        storage_context.syncer.wait()
        manager.on_trial_checkpoint(object())
        for _ in range(3):  # due 9.5 s after the first ended: every step before holds it
            clock.now += 2.0
            manager.sync_up_experiment_state(save)
            assert len(saves) == 1 and manager._should_force_sync_up
        clock.now += 3.6  # 9.6 s after: 19 x 0.5 s have passed, Ray's 10 s timer has not
        manager.sync_up_experiment_state(save)
        storage_context.syncer.wait()
        assert len(saves) == 2 and not manager._should_force_sync_up
        # An explicit force (the end of a fit, Ctrl-C) never waits.
        manager.sync_up_experiment_state(save, force=True)
        assert len(saves) == 3
    # Ray's own: the forced snapshot at once.
    manager = _ExperimentCheckpointManager(
        storage=storage_context, checkpoint_period="auto", sync_every_n_trial_checkpoints=1
    )
    storage_context.syncer.wait()
    manager.sync_up_experiment_state(save, force=True)
    storage_context.syncer.wait()
    manager.on_trial_checkpoint(object())
    clock.now += 0.1
    manager.sync_up_experiment_state(save)
    assert len(saves) == 5


def test_only_one_block_at_a_time():
    with ray_snapshots(), pytest.raises(RuntimeError, match="already active"), ray_snapshots():
        pass


def test_a_retried_trial_keeps_the_drivers_log_and_a_resumed_one_gets_storages(tmp_path):
    from types import SimpleNamespace

    from ray.tune.logger.json import JsonLoggerCallback

    local, remote = tmp_path / "staging" / "trial_a", tmp_path / "experiment" / "trial_a"
    remote.mkdir(parents=True)
    local.mkdir(parents=True)  # as Ray's trial.init_local_path() leaves it
    (remote / "result.json").write_text('{"epoch": 1}\n')  # the last snapshot's copy
    trial = SimpleNamespace(
        checkpoint=object(),
        local_path=str(local),
        storage=SimpleNamespace(
            trial_fs_path=str(remote), storage_filesystem=pafs.LocalFileSystem()
        ),
    )
    logger = JsonLoggerCallback()
    with ray_snapshots():
        logger._restore_from_remote("result.json", trial)  # a resumed driver: none here
        assert (local / "result.json").read_text() == '{"epoch": 1}\n'
        (local / "result.json").write_text('{"epoch": 1}\n{"epoch": 2}\n')
        logger._restore_from_remote("result.json", trial)  # a retry on the same driver
        assert (local / "result.json").read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    logger._restore_from_remote("result.json", trial)  # Ray's own: storage's over it
    assert (local / "result.json").read_text() == '{"epoch": 1}\n'


def test_only_files_changed_since_the_last_upload_are_written_again(tmp_path):
    staging, target = staging_folder(tmp_path, trials=1), tmp_path / "experiment"
    (staging / "trial_a").mkdir()
    (staging / "trial_a" / "result.json").write_text('{"epoch": 1}\n')
    with ray_snapshots():
        syncer = local_syncer()
        assert syncer.sync_up(str(staging), str(target))
        syncer.wait()
        # Marks on the uploaded copies: a file written again loses its mark.
        (target / "searcher-state-2026.pkl").write_bytes(b"marked")
        (target / "trial_a" / "result.json").write_text("marked")
        with open(staging / "trial_a" / "result.json", "a") as log:
            log.write('{"epoch": 2}\n')
        command, kwargs = syncer._sync_up_command(local_path=str(staging), uri=str(target))
        assert sorted(kwargs["job"].upload.args[0]) == ["trial_a/result.json"]
        with pytest.raises(OSError):  # an upload that fails is not remembered
            kwargs["job"].upload = lambda: (_ for _ in ()).throw(OSError())
            command(**kwargs)
        command, kwargs = syncer._sync_up_command(local_path=str(staging), uri=str(target))
        command(**kwargs)
    assert (target / "trial_a" / "result.json").read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    assert (target / "searcher-state-2026.pkl").read_bytes() == b"marked"


def test_the_syncer_ray_ships_to_every_trial_carries_no_snapshot_bytes(tmp_path):
    """Ray keeps the last upload command on the syncer for a retry and pickles the syncer
    with each trial's storage context: the snapshot's bytes must not travel with it (they
    did, 13 MB per trial start at 500 trials, and filled the node's memory)."""
    import pickle

    staging, target = staging_folder(tmp_path, trials=1), tmp_path / "experiment"
    (staging / "trial_a").mkdir()
    (staging / "trial_a" / "result.json").write_bytes(b"x" * 5_000_000)
    folder = checkpoint_folder(target / "trial_a", 0)
    syncer = local_syncer()
    with ray_snapshots():
        delete_when_snapshotted(pafs.LocalFileSystem(), str(folder))
        assert syncer.sync_up(str(staging), str(target))
        syncer.wait()
        shipped = pickle.dumps(syncer)
        assert len(shipped) < 100_000
        # The copy a trial gets writes and deletes nothing if ever run.
        command, kwargs = pickle.loads(shipped)._current_cmd
        (target / "trial_a" / "result.json").unlink()
        command(**kwargs)
        assert not (target / "trial_a" / "result.json").exists()


def test_a_file_removed_while_the_folder_is_read_is_left_out(tmp_path):
    from search.driver.experiment_state import read_changed_files

    staging = staging_folder(tmp_path, trials=1)
    (staging / "gone.json").symlink_to(tmp_path / "nowhere")  # listed, then not there
    files, stamps = read_changed_files(str(staging), {})
    assert sorted(files) == sorted(stamps) == sorted([STATE, "searcher-state-2026.pkl"])


def test_a_folder_the_store_refuses_to_delete_does_not_keep_the_others(tmp_path, caplog):
    from search.driver.experiment_state import DeferredDeletions

    refused, deleted = checkpoint_folder(tmp_path / "a", 0), checkpoint_folder(tmp_path / "b", 0)
    local = pafs.LocalFileSystem()

    class RefusingOne:
        def delete_dir(self, path: str) -> None:
            raise PermissionError(13, "Access denied", path)

    DeferredDeletions.delete([(RefusingOne(), str(refused)), (local, str(deleted))])
    assert refused.exists() and not deleted.exists()
    assert f"could not delete checkpoint folder {refused}" in caplog.text
