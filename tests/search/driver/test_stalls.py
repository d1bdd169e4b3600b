"""No silent wait: a resume whose restore fails says so instead of waiting forever, a journal
cut short inside a write resumes, and the stall watchdog names what running trials wait for."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from types import SimpleNamespace

import pytest

from search.driver.watchdog import StallWatchdog, observe, watching
from search.outputs.lock import LOCK_FILE
from search.outputs.study import STUDY_FILE
from tests.helpers import cli, kill_when, tree_digest, write_spec
from tests.search.driver.test_resume_faults import (
    assert_study_tells_what_ray_did,
    rows,
    start_driver,
)


def fake_trial(
    trial_id: str,
    status: str = "RUNNING",
    epoch: int = 0,
    pid: int | None = 41,
    worker: bool = True,
) -> SimpleNamespace:
    # Ray's result carries the worker's pid and the report's time (seconds since the epoch).
    result = {"epoch": epoch, "pid": pid, "timestamp": time.time() - 90} if epoch else {}
    return SimpleNamespace(
        trial_id=trial_id,
        status=status,
        last_result=result,
        temporary_state=SimpleNamespace(ray_actor=object() if worker else None),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_names_each_running_trial_and_what_it_waits_for_once_per_stall_period():
    clock = Clock()
    watchdog = StallWatchdog(600.0, max_t=4, clock=clock)
    trials = [
        fake_trial("a1", epoch=2, pid=77),
        fake_trial("b2"),
        fake_trial("c3", status="TERMINATED", epoch=1),
    ]
    watchdog.observe(trials)
    clock.now = 599.0
    watchdog.observe(trials)  # the loop turns, nothing moves
    assert watchdog.check() is None
    clock.now = 600.0
    line = watchdog.check()
    assert (
        line is not None
        and "stalled: no trial has reported, started or ended for 10m00s while 2 are running"
        in line
    )
    assert (
        "trial a1 waits for epoch 3's report from worker pid 77 (epoch 2/4, reported 1m3" in line
    )
    assert "trial b2 waits for its first report from its worker" in line
    assert "c3" not in line and "the driver's loop last turned 0m01s ago" in line
    assert watchdog.check() is None  # said once per period
    clock.now = 1200.0
    assert watchdog.check() is not None


def test_watchdog_is_quiet_while_trials_report_and_while_none_runs():
    clock = Clock()
    watchdog = StallWatchdog(60.0, max_t=4, clock=clock)
    for epoch in range(1, 5):
        watchdog.observe([fake_trial("a1", epoch=epoch)])
        clock.now += 59.0
        assert watchdog.check() is None
    watchdog.observe([fake_trial("a1", status="PENDING")])
    clock.now += 3600.0
    assert watchdog.check() is None


def test_watchdog_says_a_trial_without_a_worker_and_where_the_blocked_loop_waits():
    clock = Clock()
    watchdog = StallWatchdog(60.0, max_t=4, clock=clock)
    watchdog.observe([fake_trial("a1", epoch=1, worker=False)])
    clock.now = 120.0  # the loop has not turned since: blocked
    line = watchdog.check(threading.get_ident())
    assert line is not None
    assert "trial a1 (epoch 1/4) has no worker process: Ray lists it running" in line
    assert "the driver's loop has been blocked for 2m00s in check (" in line


def test_watching_feeds_the_active_watchdog_and_zero_turns_it_off():
    with watching(0, max_t=4) as off:
        assert off is None
        observe([fake_trial("a1")])  # nothing to feed: no error
    with watching(10, max_t=4) as watchdog:
        observe([fake_trial("a1", epoch=1)])
        assert watchdog is not None and set(watchdog.trials) == {"a1"}
    observe([fake_trial("b2")])  # after the block: fed no more
    assert set(watchdog.trials) == {"a1"}


@pytest.mark.parametrize("value", ["-1", "soon", "inf"])
def test_bad_stall_minutes_is_a_one_line_error(tmp_path, value):
    done = cli("resume", str(tmp_path / "nothing"), "--stall-minutes", value, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: finetune-search resume: argument --stall-minutes: must be a number of "
        f"minutes >= 0 (0: off), got {value!r}"
    ]


def end_session(session: int) -> None:
    """SIGKILLs what is left of a killed driver's session and waits until it is gone: Ray's
    trial workers sit in process groups of their own, outlive a SIGKILL of the driver's group
    for a while and go on writing checkpoints into the experiment (as they would not if the
    driver's machine had gone down)."""
    import psutil

    def left() -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(process.pid) == session:
                    found.append(process)
        return found

    for process in left():
        with contextlib.suppress(psutil.Error):
            process.kill()
    _, alive = psutil.wait_procs(left(), timeout=60)
    assert not alive, alive


@pytest.mark.slow
def test_resume_of_a_journal_cut_inside_a_write_finishes_and_a_failed_restore_exits_2(tmp_path):
    # Fault: the driver is SIGKILLed inside a journal write (half a line at the end). Its
    # resume used to append after the half line; Ray's restore of the searcher then failed to
    # read the journal, Ray logged it and carried on half restored, and the driver waited
    # forever for a trial no one would suggest (found by benchmarks/reliability/soak.py). A
    # restore that fails for any other reason (here a damaged line inside the journal) now
    # exits 2 with one line, folder unchanged, instead of that wait.
    spec_path = write_spec(
        tmp_path,
        train__epochs=3,
        search={"num_samples": 3, "max_concurrent": 2, "seed": 0, "baseline": False},
    )
    experiment = tmp_path / "results" / "torn"
    log = tmp_path / "run.log"
    driver = start_driver(spec_path, "torn", log)
    kill_when(
        lambda: (
            any(r["epoch"] == 1 for r in rows(experiment))
            and list(experiment.glob("experiment_state-*.json"))
        ),
        driver,
        log,
        "a first epoch and Ray's snapshot",
    )
    end_session(driver.pid)
    journal = experiment / STUDY_FILE
    whole = journal.read_bytes()
    lines = whole.splitlines(keepends=True)

    def refused(what: str) -> str:
        """The resume's one line; Ray's files as they were (the dead driver's stale lock
        gone, the journal at most appended to by the study's reconciliation with them)."""
        before, journal_before = tree_digest(experiment), journal.read_bytes()
        done = cli("resume", str(experiment), "--num-cpus", "2", timeout=300)
        assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith("error: ") and what in line, line
        after = tree_digest(experiment)
        assert {k: v for k, v in after.items() if k not in (LOCK_FILE, STUDY_FILE)} == {
            k: v for k, v in before.items() if k not in (LOCK_FILE, STUDY_FILE)
        }
        assert journal.read_bytes().startswith(journal_before)
        return line

    # A damaged line inside the journal: named before Ray starts.
    journal.write_bytes(b"".join(lines[:2]) + b'{"op_code": 4, "damaged\n' + b"".join(lines[2:]))
    refused(f"{journal}: the study journal has a damaged line")
    journal.write_bytes(whole)
    whole = journal.read_bytes()
    # Ray's restore itself fails (its searcher's state cut short): it used to log the error
    # and go on half restored.
    searcher_state = sorted(experiment.glob("searcher-state-*.pkl"))[-1]
    state = searcher_state.read_bytes()
    searcher_state.write_bytes(state[: len(state) // 2])
    refused("Ray could not restore the search's state")
    searcher_state.write_bytes(state)

    # A driver killed inside its journal write: half a line at the end.
    journal.write_bytes(whole + lines[-1][: len(lines[-1]) // 2])
    done = cli("resume", str(experiment), "--num-cpus", "2", timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = assert_study_tells_what_ray_did(experiment, 3)
    assert len(records) == 3
    assert journal.read_bytes().startswith(whole)  # the half line went, nothing else
