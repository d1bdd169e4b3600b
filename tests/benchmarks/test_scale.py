"""benchmarks/scale/scale.py, scale_probe.py and scale_sim.py: percentiles, windows, growth checks,
the simulated curve and the probe, on hand-made data (no Ray cluster)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.scale import scale, scale_probe, scale_sim

# --------------------------------------------------------------------------------------------
# small statistics


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear_interpolation(q):
    values = [0.31, 0.02, 5.0, 0.7, 0.7, 1.9, 0.05, 3.3, 0.4]
    assert scale_probe.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_one_value_and_of_none():
    assert scale_probe.percentile([0.25], 99) == 0.25
    assert math.isnan(scale_probe.percentile([], 50))


def test_suggest_window_takes_the_last_calls_made_by_the_point():
    calls = [(0, 0.01), (0, 0.02), (1, 0.03), (2, 0.04), (2, 0.05), (3, 0.06)]
    assert scale_probe.suggest_window(calls, finished=2, window=3) == [0.03, 0.04, 0.05]
    assert scale_probe.suggest_window(calls, finished=0, window=3) == [0.01, 0.02]
    assert scale_probe.suggest_window(calls, finished=9, window=2) == [0.05, 0.06]


def test_scale_sizes_leave_suggestions_after_the_last_point():
    # 64 running: the last suggestion comes when trials - 64 have finished.
    assert scale.scale_sizes((100, 500, 1000, 2000), 64) == 2064


def _trace(key, values, every=25):
    return [{"finished": every * (i + 1), key: v} for i, v in enumerate(values)]


def test_growth_per_trial_between_two_samples():
    trace = _trace("journal_bytes", [1000, 2000, 3500])
    assert scale.growth_per_trial(trace, "journal_bytes", 25, 75) == pytest.approx(50.0)
    assert math.isnan(scale.growth_per_trial(trace, "journal_bytes", 25, 80))


def test_linear_growth_accepts_a_straight_line_and_flags_a_quadratic():
    line = _trace("journal_bytes", [4000 * i for i in range(1, 41)])
    verdict = scale.linear_growth(line, "journal_bytes", floor=0.0)
    assert verdict["linear"] is True and verdict["ratio"] == pytest.approx(1.0)
    quadratic = _trace("snapshot_bytes", [30 * (25 * i) ** 2 for i in range(1, 41)])
    verdict = scale.linear_growth(quadratic, "snapshot_bytes", floor=0.0)
    assert verdict["linear"] is False and verdict["ratio"] > 2


def test_linear_growth_counts_flat_noise_under_the_floor_as_linear():
    # RSS that wobbles by a few hundred KB: no growth to speak of.
    flat = _trace("driver_rss_mb", [400 + 0.3 * (i % 3) for i in range(40)])
    assert scale.linear_growth(flat, "driver_rss_mb", floor=0.05)["linear"] is True
    assert scale.linear_growth(flat[:3], "driver_rss_mb", floor=0.05)["linear"] is None


# --------------------------------------------------------------------------------------------
# the simulated learning curve


def _config(**changes):
    return {
        "learning_rate": 3e-3,
        "noise_std": 1e-2,
        "dropout": 0.5,
        "upsample": 4,
        "freeze": 7,
        "input_convs": 1,
        **changes,
    }


def test_simulated_accuracy_is_a_deterministic_function_of_config_epoch_and_seed():
    config = _config(dropout=0.61)
    assert scale_sim.simulated_accuracy(config, 3) == scale_sim.simulated_accuracy(config, 3)
    assert scale_sim.simulated_accuracy(config, 3, seed=1) != scale_sim.simulated_accuracy(
        config, 3, seed=0
    )


def test_simulated_curve_rises_and_peaks_at_the_optimum():
    best = [scale_sim.simulated_accuracy(_config(), e) for e in range(1, 10)]
    worse = [
        scale_sim.simulated_accuracy(_config(learning_rate=3e-4, freeze=15, upsample=1), e)
        for e in range(1, 10)
    ]
    assert best[-1] > best[0] + 0.3  # it learns
    assert best[-1] == pytest.approx(scale_sim.PEAK_ACCURACY, abs=4 * scale_sim.NOISE_STD)
    assert all(b > w for b, w in zip(best[2:], worse[2:]))  # TPE has something to find
    assert all(0.0 <= v <= 1.0 for v in best + worse)


def test_config_quality_is_one_at_the_optimum_and_ignores_other_keys():
    assert scale_sim.config_quality(_config(batch_size=64)) == pytest.approx(1.0)
    assert 0.0 < scale_sim.config_quality(_config(learning_rate=1e-4)) < 0.5


# --------------------------------------------------------------------------------------------
# the probe and the table


def test_probe_times_suggest_and_counts_results_through_the_real_searcher(tmp_path):
    from search.driver.searcher import AshaAwareOptunaSearch
    from search.space import parse_distribution

    original = AshaAwareOptunaSearch.suggest
    journal = tmp_path / "study.journal"
    probe = scale_probe.ScaleProbe(
        journal=str(journal), experiment_dir=str(tmp_path), trace_every=2
    )
    space = {k: parse_distribution(v, k) for k, v in scale.SCALE_SPACE.items()}
    with probe.installed():
        searcher = AshaAwareOptunaSearch(
            space, journal_path=str(journal), study_name="s", max_t=3, seed=0
        )
        searcher.set_search_properties("val_accuracy", "max", {})
        for number in range(4):
            trial_id = f"t{number}"
            config = searcher.suggest(trial_id)
            searcher.on_trial_result(trial_id, {"epoch": 1, "val_accuracy": 0.5})
            searcher.on_trial_complete(
                trial_id, {"epoch": 2, "val_accuracy": scale_sim.simulated_accuracy(config, 2)}
            )
        # A call that gets no config (every slot taken) is counted, not timed.
        searcher.set_max_concurrency(1)
        assert searcher.suggest("t4") is not None
        assert searcher.suggest("t5") is None
    assert AshaAwareOptunaSearch.suggest is original  # put back
    assert probe.declined == 1
    assert [done for done, _ in probe.calls] == [0, 1, 2, 3, 4]
    assert probe.results == 8  # each trial's last result counted once, through complete
    assert [s["finished"] for s in probe.trace] == [2, 4]
    assert probe.trace[-1]["journal_bytes"] > probe.trace[0]["journal_bytes"] > 0
    rows = scale_probe.point_rows(probe, [2, 4])
    assert [r["suggestions"] for r in rows] == [3, 5]
    assert rows[1]["suggest_p99_ms"] >= rows[1]["suggest_p50_ms"] > 0
    # The thread's CPU in suggest: counted per call, never more than the wall time it took.
    assert [done for done, _ in probe.cpu_calls] == [0, 1, 2, 3, 4]
    assert all(0 < cpu <= wall + 1e-3 for (_, cpu), (_, wall) in zip(probe.cpu_calls, probe.calls))
    assert 0 < rows[1]["suggest_cpu_p99_ms"] <= rows[1]["suggest_p99_ms"] + 1
    with pytest.raises(RuntimeError, match="no sample at 6 finished trials"):
        scale_probe.point_rows(probe, [6])


def test_print_scale_shows_the_points_and_the_verdicts():
    growth = {"early": 1.0, "late": 1.1, "ratio": 1.1, "linear": True}
    point = {
        "finished": 100,
        "suggestions": 100,
        "suggest_p50_ms": 12.0,
        "suggest_p99_ms": 30.0,
        "suggest_cpu_p99_ms": 4.0,
        "driver_rss_mb": 400.0,
        "journal_bytes": 200000,
        "snapshot_bytes": 900000,
        "running": 15.2,
        "driver_cpu_s_per_trial_epoch": 0.02,
        "wall_s_per_trial_epoch": 0.05,
    }
    result = {
        "trials": 116,
        "max_t": 9,
        "concurrent": 16,
        "logical_gpus": 16,
        "cpus_per_trial": 0.125,
        "points": [point],
        "suggest_p99_ms": 30.0,
        "suggest_cpu_p99_ms": 4.0,
        "suggest_declined": 321,
        "trials_per_minute": 50.0,
        "trial_epochs_per_minute": 200.0,
        "wall_s": 140.0,
        "driver_budget_s_per_trial_epoch": 60 / 64,
        "driver_cpu_s_per_trial_epoch": 0.02,
        "driver_cpu_s_per_trial_epoch_last_interval": 0.02,
        "snapshots": 40,
        "snapshot_s_total": 3.0,
        "snapshot_s_max": 0.2,
        "growth": {"driver_rss_mb": growth, "journal_bytes": growth, "snapshot_bytes": growth},
        "goals": {
            "suggest_p99": True,
            "memory_linear": True,
            "journal_linear": True,
            "driver_not_bottleneck": False,
        },
        "load_avg_before": 1.0,
        "load_avg_after": 2.0,
    }
    text = scale.print_scale(result)
    assert "30.0 ms  goal <= 100 ms: met; the calling thread's CPU in suggest, p99: 4.0 ms" in text
    assert "goal <= 0.094 s: NOT met" in text
    assert "321 calls declined while every slot was taken, untimed" in text
    assert text.splitlines()[3].split()[:5] == ["100", "100", "12.0", "30.0", "4.0"]
