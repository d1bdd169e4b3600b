"""The driver's journal: Optuna's format, no fsync in the appending call, a background one."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from search.driver import journal as journal_module
from search.driver.journal import GroupCommitJournal
from search.driver.study import open_study


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch, tmp_path) -> list[str]:
    """The names of the threads that fsync a journal under ``tmp_path`` (the fsync happens).

    Journals of other tests may still have a syncer running: their fsyncs are not recorded.
    """
    calls: list[str] = []
    real = GroupCommitJournal._fsync

    def recorded(self: GroupCommitJournal) -> None:
        if self._file_path.startswith(str(tmp_path)):
            calls.append(threading.current_thread().name)
        real(self)

    monkeypatch.setattr(GroupCommitJournal, "_fsync", recorded)
    return calls


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_a_study_written_through_it_reads_back_with_optunas_own_backend(tmp_path):
    path = str(tmp_path / "study.journal")
    study = open_study(path, "s", seed=0)
    for x in (0.1, 0.5, 0.9):
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        trial.report(x, step=1)
        study.tell(trial, x)

    stock = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(path)))
    assert [t.value for t in stock.trials] == [0.1, 0.5, 0.9]
    assert [t.intermediate_values for t in stock.trials] == [{1: 0.1}, {1: 0.5}, {1: 0.9}]


def test_appending_writes_the_lines_at_once_and_leaves_the_fsync_to_the_background(
    tmp_path, fsyncs
):
    path = tmp_path / "study.journal"
    backend = GroupCommitJournal(str(path), sync_seconds=0.05)
    logs = [{"op_code": 0, "n": n, "text": "x" * 100} for n in range(3)]

    backend.append_logs(logs)

    # Readable in full before any fsync, and none of it on the appending thread.
    assert [json.loads(line) for line in path.read_bytes().splitlines()] == logs
    assert threading.current_thread().name not in fsyncs
    assert wait_for(lambda: fsyncs == ["optuna-journal-sync"])
    # The syncer ends once a sleep brought no new lines, and one starts for the next lines.
    assert wait_for(lambda: backend._syncer is None)
    backend.append_logs(logs[:1])
    assert wait_for(lambda: fsyncs == ["optuna-journal-sync"] * 2)


def test_lines_written_between_fsyncs_share_one(tmp_path, fsyncs):
    backend = GroupCommitJournal(str(tmp_path / "study.journal"), sync_seconds=0.5)
    for n in range(20):
        backend.append_logs([{"n": n}])

    assert wait_for(lambda: len(fsyncs) == 1)
    time.sleep(0.6)  # a second sync period with nothing new: no second fsync
    assert len(fsyncs) == 1


def test_sync_and_the_exit_hook_fsync_what_is_pending(tmp_path, fsyncs):
    backend = GroupCommitJournal(str(tmp_path / "study.journal"), sync_seconds=60)
    backend.sync()  # nothing written yet
    assert fsyncs == []

    backend.append_logs([{"n": 1}])
    journal_module._sync_pending()
    assert fsyncs == ["MainThread"]
    backend.sync()  # nothing new
    assert fsyncs == ["MainThread"]


def test_threads_appending_at_once_never_interleave_lines(tmp_path):
    path = tmp_path / "study.journal"
    backend = GroupCommitJournal(str(path), sync_seconds=0.01)
    payload = "y" * 5000  # lines larger than a pipe buffer or a page

    def append(worker: int) -> None:
        for n in range(100):
            backend.append_logs(
                [
                    {"worker": worker, "n": n, "p": payload},
                    {"worker": worker, "n": -n, "p": payload},
                ]
            )

    threads = [threading.Thread(target=append, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert len(records) == 800
    for worker in range(4):
        mine = [r["n"] for r in records if r["worker"] == worker]
        # Each batch is one write: a batch's two records stay adjacent and in order.
        assert mine == [m for n in range(100) for m in (n, -n)]


def test_the_storage_pickles_and_appends_after_unpickling(tmp_path):
    # Ray pickles the searcher, and with it the study's storage, at every snapshot.
    path = str(tmp_path / "study.journal")
    study = open_study(path, "s", seed=0)
    study.tell(study.ask(), 0.3)

    restored_storage = pickle.loads(pickle.dumps(study._storage))
    restored = optuna.load_study(study_name="s", storage=restored_storage)
    restored.tell(restored.ask(), 0.7)

    reread = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(path)))
    assert [t.value for t in reread.trials] == [0.3, 0.7]


def test_a_killed_driver_loses_no_record_it_wrote(tmp_path):
    # The lines are the operating system's when append returns: SIGKILL right after
    # (no exit hook, no background fsync yet) keeps every one.
    path = str(tmp_path / "study.journal")
    script = (
        "import os, signal, sys\n"
        "from search.driver.study import open_study\n"
        f"study = open_study({path!r}, 's', seed=0)\n"
        "for n in range(25):\n"
        "    trial = study.ask()\n"
        "    trial.suggest_int('n', 0, 100)\n"
        "    study.tell(trial, n / 100)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.getcwd(),
    )
    assert done.returncode == -9, done.stderr

    reread = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(path)))
    assert [t.value for t in reread.trials] == [n / 100 for n in range(25)]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in reread.trials)


def _study_with_trials(path: str, values: list[float]) -> None:
    study = open_study(path, "s", seed=0)
    for value in values:
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        study.tell(trial, value)


def test_a_line_cut_short_by_a_killed_writer_is_dropped_before_the_next_driver_appends(tmp_path):
    # Fault: the driver killed inside its write leaves half a line at the journal's end. The
    # next driver appended after it, and every read of the journal failed from then on (a
    # resume that read it inside Ray's restore then waited forever).
    path = str(tmp_path / "study.journal")
    _study_with_trials(path, [0.1, 0.2])
    whole = Path(path).read_bytes()
    last = whole.splitlines(keepends=True)[-1]
    with open(path, "ab") as handle:
        handle.write(last[: len(last) // 2])

    _study_with_trials(path, [0.3])  # a new driver: opens the journal and appends

    assert Path(path).read_bytes().startswith(whole)
    reread = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(path)))
    assert [t.value for t in reread.trials] == [0.1, 0.2, 0.3]


@pytest.mark.parametrize("errno_value", [28, 5], ids=["ENOSPC", "EIO"])
def test_a_full_disk_inside_a_journal_write_cuts_it_back_and_says_what_and_where(
    tmp_path, monkeypatch, errno_value
):
    # Fault: the disk takes half of a batch of records, then refuses the rest.
    from search.errors import WriteFailed

    path = str(tmp_path / "study.journal")
    _study_with_trials(path, [0.1])
    real_write = os.write

    def half_then_refused(fd: int, data: bytes) -> int:
        if len(data) > 1:
            real_write(fd, data[: len(data) // 2])
        raise OSError(errno_value, os.strerror(errno_value))

    study = open_study(path, "s", seed=0)
    before = Path(path).read_bytes()
    monkeypatch.setattr(journal_module.os, "write", half_then_refused)
    with pytest.raises(
        WriteFailed,
        match=f"{path}: could not write the study journal \\({os.strerror(errno_value)}\\)",
    ):
        study.ask()
    monkeypatch.setattr(journal_module.os, "write", real_write)
    assert Path(path).read_bytes() == before  # nothing already written changed

    _study_with_trials(path, [0.2])  # space freed: the study goes on
    reread = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(path)))
    assert [t.value for t in reread.trials] == [0.1, 0.2]
