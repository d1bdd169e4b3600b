"""The chaos soak's own run in CI: two seeded cycles (a driver killed inside its journal write
on local storage, then inside Ray's snapshot copy on S3), each resumed and checked."""

from __future__ import annotations

import random

import pytest

from benchmarks.reliability import soak


@pytest.mark.slow
def test_two_soak_cycles_end_with_no_hang_no_lost_trial_and_no_disagreement(tmp_path):
    # The faults the seed draws, so the run below exercises what it says it does.
    assert [random.Random(29 * 100_003 + i).choice(soak.FAULTS) for i in range(2)] == [
        "kill_in_journal_write",
        "kill_in_snapshot",
    ]
    results = soak.soak(2, 29, tmp_path)
    summary = soak.summarize(results, 29)
    assert summary["cycles"] == 2 and summary["by_storage"] == {"local": 1, "s3": 1}
    assert summary["faults"] == {"kill_in_journal_write": 1, "kill_in_snapshot": 1}
    assert [r["violations"] for r in results] == [{}, {}], results
    assert summary["hangs"] == summary["lost_trials"] == summary["disagreements"] == 0
    # Each cycle's driver was killed where the fault says, and a resume finished it.
    for result in results:
        assert any(e.startswith("killed during ") for e in result["events"]), result
        assert result["resume_s"] is not None
    assert summary["max_resume_s"] == max(r["resume_s"] for r in results)
