"""The driver's lock: drivers racing for it, stale and foreign locks, on a disk and on S3."""

from __future__ import annotations

import json
import multiprocessing
import socket
import subprocess
import threading
import time

import pytest
import yaml

from search import storage
from search.cli import main
from search.errors import SpecError
from search.outputs.lock import LOCK_FILE, DriverLock, LockOwner, is_running, read_owner
from tests.helpers import tiny_raw


def dead_pid() -> int:
    """The pid of a process of this host that has ended."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def write_lock(experiment_dir: str, *, host: str, pid: int) -> None:
    storage.write_atomic(
        storage.join(experiment_dir, LOCK_FILE),
        json.dumps({"host": host, "pid": pid, "since": time.time(), "token": "theirs"}),
    )


def _race_local(
    folder: str, start: multiprocessing.Barrier, results: multiprocessing.Queue
) -> None:
    lock = DriverLock(folder)
    start.wait()
    try:
        lock.acquire()
        results.put("won")
        time.sleep(1.0)  # hold it while the others look
    except SpecError as err:
        results.put(str(err))


def race_processes(folder: str, drivers: int) -> list[str]:
    """``drivers`` processes take the lock at the same instant; what each one got."""
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(drivers), context.Queue()
    processes = [
        context.Process(target=_race_local, args=(folder, start, results)) for _ in range(drivers)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    return outcomes


@pytest.mark.parametrize("left_before", ["no lock", "a dead driver's lock"])
def test_drivers_racing_for_a_local_lock_exactly_one_wins(tmp_path, left_before):
    for round_ in range(3):
        folder = tmp_path / f"{round_}"
        folder.mkdir()
        if left_before != "no lock":
            write_lock(str(folder), host=socket.gethostname(), pid=dead_pid())
        outcomes = race_processes(str(folder), drivers=4)
        assert outcomes.count("won") == 1, outcomes
        assert all("another driver" in o for o in outcomes if o != "won"), outcomes


def test_dead_local_drivers_lock_is_taken_over_with_a_message(tmp_path, capsys):
    pid = dead_pid()
    write_lock(str(tmp_path), host=socket.gethostname(), pid=pid)
    assert not is_running(str(tmp_path))
    lock = DriverLock(str(tmp_path))
    lock.acquire()
    assert f"driver.lock of pid {pid} on {socket.gethostname()}" in capsys.readouterr().err
    assert read_owner(str(tmp_path)).token == lock.owner.token
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_live_local_driver_is_never_overridden_even_with_force(tmp_path):
    holder = DriverLock(str(tmp_path))
    holder.acquire()
    for force in (False, True):
        with pytest.raises(
            SpecError,
            match=r"another driver is running this experiment \(pid "
            r"\d+ on .*\); stop it first",
        ):
            DriverLock(str(tmp_path), force=force).acquire()
    assert holder.still_held()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_other_hosts_lock_is_respected_and_force_takes_it(tmp_path, request, capsys, where):
    experiment = (
        str(tmp_path / "exp")
        if where == "local"
        else f"{request.getfixturevalue('s3_bucket')}/exp"
    )
    write_lock(experiment, host="gpu-node-7", pid=4242)
    assert is_running(experiment)  # another host's process cannot be checked: trusted
    with pytest.raises(
        SpecError,
        match=r"another driver holds this experiment \(pid 4242 on "
        r"gpu-node-7, .*if it is dead, run again with --force",
    ):
        DriverLock(experiment, settle_s=0.1).acquire()
    assert read_owner(experiment).host == "gpu-node-7"  # untouched
    forced = DriverLock(experiment, force=True, settle_s=0.1)
    forced.acquire()
    assert "taken by force" in capsys.readouterr().err
    assert forced.still_held()
    forced.release()
    assert read_owner(experiment) is None


def test_drivers_racing_for_an_s3_lock_exactly_one_wins(s3_bucket):
    experiment = f"{s3_bucket}/race"
    for _ in range(3):
        drivers = [DriverLock(experiment, settle_s=0.5) for _ in range(3)]
        start = threading.Barrier(len(drivers))
        outcomes: list[str] = []

        def take(
            lock: DriverLock, start: threading.Barrier = start, outcomes: list[str] = outcomes
        ) -> None:
            start.wait()
            try:
                lock.acquire()
                outcomes.append("won")
            except SpecError as err:
                outcomes.append(str(err))

        threads = [threading.Thread(target=take, args=(d,)) for d in drivers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert outcomes.count("won") == 1, outcomes
        (winner,) = [d for d in drivers if d.still_held()]
        winner.release()


def test_driver_whose_s3_lock_was_forced_away_no_longer_holds_it(s3_bucket):
    experiment = f"{s3_bucket}/forced"
    first = DriverLock(experiment, settle_s=0.1)
    first.owner = LockOwner(host="gpu-node-7", pid=4242, since=time.time(), token="first")
    first.acquire()
    # This machine's driver, told that the one on gpu-node-7 is dead:
    second = DriverLock(experiment, force=True, settle_s=0.1)
    second.acquire()
    assert not first.still_held() and second.still_held()
    first.release()  # a driver that lost its lock leaves the new holder's lock in place
    assert read_owner(experiment).token == second.owner.token


def test_cli_refuses_another_hosts_lock_in_one_line_and_force_reaches_the_driver(
    tmp_path, capsys, monkeypatch
):
    experiment = tmp_path / "results" / "exp"
    experiment.mkdir(parents=True)
    (experiment / "spec.yaml").write_text(yaml.safe_dump({**tiny_raw(tmp_path), "name": "exp"}))
    write_lock(str(experiment), host="gpu-node-7", pid=4242)
    assert main(["extend", str(experiment), "--more", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "--force" in err, err

    import search.driver.service as service

    seen: dict = {}

    def extend_search(*args, **kwargs):
        seen.update(kwargs)
        raise SpecError("stopped here")

    monkeypatch.setattr(service, "extend_search", extend_search)
    assert main(["extend", str(experiment), "--more", "1", "--force"]) == 2
    assert seen["force"] is True
