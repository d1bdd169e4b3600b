"""The journal mirror of a cloud experiment, against moto's S3 server: uploaded after every
finished trial, at least every minute, whole lines only, and never by a driver that lost its
lock."""

from __future__ import annotations

from pathlib import Path

from search import storage
from search.driver import mirror
from search.outputs.lock import LOCK_FILE, DriverLock, LockOwner
from search.outputs.study import STUDY_FILE


def bucket_journal(experiment: str) -> bytes | None:
    fs, root = storage.filesystem(experiment)
    path = storage.join(root, STUDY_FILE)
    return storage.read_bytes(fs, path) if storage.exists(fs, path) else None


def test_journal_reaches_s3_after_each_finished_trial_and_at_least_every_minute(
    s3_bucket, tmp_path, monkeypatch, capsys
):
    experiment = f"{s3_bucket}/exp"
    local = tmp_path / STUDY_FILE
    clock = [1000.0]
    monkeypatch.setattr(mirror.time, "monotonic", lambda: clock[0])
    lock = DriverLock(experiment, settle_s=0.1)
    lock.acquire()
    callback = mirror.JournalMirror()
    with mirror.mirroring(experiment, str(tmp_path), lock):
        local.write_bytes(b'{"op_code": 0}\n{"op_code": 4, "half a li')
        callback.on_step_end(iteration=1, trials=[])
        assert bucket_journal(experiment) is None  # not due yet
        callback.on_trial_complete(iteration=2, trials=[], trial=None)
        assert bucket_journal(experiment) == b'{"op_code": 0}\n'  # whole lines only

        local.write_bytes(b'{"op_code": 0}\n{"op_code": 4}\n')
        clock[0] += 59
        callback.on_step_end(iteration=3, trials=[])
        assert bucket_journal(experiment) == b'{"op_code": 0}\n'
        clock[0] += 2  # a minute since the last upload
        callback.on_step_end(iteration=4, trials=[])
        assert bucket_journal(experiment) == b'{"op_code": 0}\n{"op_code": 4}\n'

        # Another host's driver takes the experiment by force: this one must not overwrite
        # the journal any more.
        thief = LockOwner(host="gpu-node-7", pid=1, since=0.0, token="t")
        storage.write_atomic(storage.join(experiment, LOCK_FILE), thief.to_json())
        local.write_bytes(b'{"op_code": 0}\n{"op_code": 4}\n{"op_code": 5}\n')
        callback.on_trial_error(iteration=5, trials=[], trial=None)
        assert bucket_journal(experiment) == b'{"op_code": 0}\n{"op_code": 4}\n'
        assert "driver.lock now belongs to pid 1 on gpu-node-7" in capsys.readouterr().err


def test_a_mirror_written_for_another_run_loses_its_journal(tmp_path, monkeypatch):
    # The mirror's path depends only on the URI: a search deleted from the bucket and run
    # again under the same URI finds the old run's journal there.
    from search.outputs.experiment import RUN_ID_FILE, local_mirror_dir
    from search.outputs.study import journal_path_for

    monkeypatch.setenv("HOME", str(tmp_path))
    experiment = "s3://bucket/exp/chaos"
    first = local_mirror_dir(experiment, "run-a")
    journal = Path(journal_path_for(first))
    journal.write_bytes(b'{"op_code": 0}\n')
    assert local_mirror_dir(experiment, "run-a") == first and journal.exists()
    assert local_mirror_dir(experiment, "run-b") == first and not journal.exists()
    assert (Path(first) / RUN_ID_FILE).read_text().strip() == "run-b"
    # A mirror from before run ids (no marker) is another run's as far as anyone can tell.
    journal.write_bytes(b'{"op_code": 0}\n')
    (Path(first) / RUN_ID_FILE).unlink()
    local_mirror_dir(experiment, "run-b")
    assert not journal.exists()


def test_fetch_keeps_a_local_journal_only_where_it_extends_the_bucket_one(s3_bucket, tmp_path):
    from search.outputs.experiment import fetch_journal

    experiment = f"{s3_bucket}/exp"
    storage.write_atomic(storage.join(experiment, STUDY_FILE), b"a\nb\n")
    local = tmp_path / STUDY_FILE
    local.write_bytes(b"a\nb\nc\n")  # this machine's driver wrote c, then died
    assert fetch_journal(experiment, str(local)) and local.read_bytes() == b"a\nb\nc\n"
    local.write_bytes(b"x\ny\nz\n")  # longer, but another history
    assert fetch_journal(experiment, str(local)) and local.read_bytes() == b"a\nb\n"
