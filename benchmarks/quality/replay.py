"""Replays a real search into the simulator's ``finetune_search``: same decisions, or a list
of where they differ.

The real search's Optuna journal is an append-only log of what its driver did, in order: each
trial's start (the suggestion, with its parameters), each epoch's value as the searcher heard
it, and each trial's end. :func:`replay` builds a fresh searcher and scheduler with the search's
own spec and seed through the factory ``run_search`` uses
(:func:`search.driver.policy.make_search_policy`), then walks the log: at every start it asks
the simulated searcher for a suggestion and compares the parameters; at every epoch it gives the
value to the simulated scheduler and searcher as Ray's ``TuneController`` would and records
whether it stops the trial; at every end it compares where the real trial ended with where the
simulated scheduler stopped it. The simulator drives the same objects the same way, so a replay
with no differences shows that the simulated ours is the product's decision code.

    python benchmarks/quality/replay.py results/my-search      # prints the comparison
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUALITY_DIR = Path(__file__).resolve().parent
for _path in (QUALITY_DIR.parents[1], QUALITY_DIR.parent, QUALITY_DIR):  # run from a checkout
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

# Optuna's journal operations (optuna.storages.journal._storage.JournalOperation).
CREATE_TRIAL, SET_TRIAL_PARAM, SET_TRIAL_STATE_VALUES, SET_TRIAL_INTERMEDIATE_VALUE = 4, 5, 6, 7
RUNNING, WAITING = 0, 3  # optuna.trial.TrialState values
FINISHED = {1: "COMPLETE", 2: "PRUNED", 4: "FAIL"}


@dataclass
class ReplayReport:
    """What the replay found.

    Attributes:
        trials: Trials the real search started.
        epochs: Epoch values replayed.
        stops: ``(trial number, epoch)`` where the simulated scheduler stopped a trial before
            ``max_t``.
        mismatches: One line per difference (a suggestion's parameters, where a trial ended).
    """

    trials: int = 0
    epochs: int = 0
    stops: list[tuple[int, int]] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)


def journal_events(path: Path) -> Iterator[tuple[str, int, Any]]:
    """``(kind, real trial id, payload)`` in the journal's order: ``start`` (payload: the
    parameters, filled in as their records follow), ``value`` (``(step, value)``), ``end``
    (the state's name)."""
    params: dict[int, dict[str, Any]] = {}
    created = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            log = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line a killed driver cut short
        op = log.get("op_code")
        if op == CREATE_TRIAL:
            trial_id = created
            created += 1
            params[trial_id] = {}
            if log.get("state", RUNNING) == RUNNING:
                yield "start", trial_id, params[trial_id]
        elif op == SET_TRIAL_PARAM:
            from optuna.distributions import json_to_distribution

            distribution = json_to_distribution(log["distribution"])
            params[log["trial_id"]][log["param_name"]] = distribution.to_external_repr(
                log["param_value_internal"]
            )
        elif op == SET_TRIAL_STATE_VALUES:
            state = log["state"]
            if state == RUNNING:
                yield "start", log["trial_id"], params[log["trial_id"]]
            elif state in FINISHED:
                yield "end", log["trial_id"], FINISHED[state]
        elif op == SET_TRIAL_INTERMEDIATE_VALUE:
            yield "value", log["trial_id"], (int(log["step"]), float(log["intermediate_value"]))


def _same(real: Any, simulated: Any) -> bool:
    if isinstance(real, float) or isinstance(simulated, float):
        return math.isclose(float(real), float(simulated), rel_tol=1e-9, abs_tol=1e-12)
    return real == simulated


def replay(experiment_dir: Path, seed: int | None = None) -> ReplayReport:
    """Replays the search in ``experiment_dir`` (a local experiment folder, one round).

    Args:
        experiment_dir: The experiment folder.
        seed: The sampler's seed (default: the search's own; another one shows what a
            difference looks like).
    """
    from methods import RayTrial, sync_journal, tell_result

    from search.driver.policy import make_search_policy
    from search.outputs.experiment import SPEC_FILE
    from search.outputs.study import journal_path_for
    from search.spec import load_spec

    spec = load_spec(experiment_dir / SPEC_FILE)
    report = ReplayReport()
    with tempfile.TemporaryDirectory(prefix="replay-") as folder:
        searcher, scheduler = make_search_policy(
            spec,
            journal_path=str(Path(folder) / "optuna_study.journal"),
            num_samples=spec.search.num_samples,
            seed=spec.search.seed if seed is None else seed,
            baseline=spec.search.baseline,
        )
        searcher.set_max_concurrency(spec.search.max_concurrent)
        scheduler.remember([])
        simulated: dict[int, RayTrial] = {}  # real trial id -> its simulated trial
        real_last: dict[int, int] = {}  # real trial id -> the last epoch it reported
        stopped_at: dict[int, int] = {}
        # (real trial id, its parameters as the journal records them after the start, the
        # simulated suggestion): compared once the whole journal is read.
        starts: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
        for kind, real_id, payload in journal_events(Path(journal_path_for(str(experiment_dir)))):
            if kind == "start":
                trial = RayTrial(f"{len(simulated):05d}")
                config = searcher.suggest(trial.trial_id)
                if config is None:
                    report.mismatches.append(
                        f"trial {real_id}: the simulated searcher "
                        "suggested nothing where the search started one"
                    )
                    continue
                scheduler.on_trial_add(None, trial)
                simulated[real_id] = trial
                starts.append((real_id, payload, config))
                report.trials += 1
            elif kind == "value" and real_id in simulated:
                step, value = payload
                real_last[real_id] = step
                report.epochs += 1
                if not tell_result(
                    searcher, scheduler, simulated[real_id], step, value, spec.max_t
                ):
                    stopped_at[real_id] = step
                    if step < spec.max_t:
                        report.stops.append((real_id, step))
            elif kind == "end" and real_id in simulated:
                last = real_last.get(real_id, 0)
                if stopped_at.get(real_id) != last:
                    report.mismatches.append(
                        f"trial {real_id}: the search ended it {payload} after epoch {last}, "
                        f"the simulated scheduler at {stopped_at.get(real_id, 'none')}"
                    )
        for real_id, real_params, config in starts:
            for key, value in real_params.items():
                if key not in config or not _same(value, config[key]):
                    report.mismatches.append(
                        f"trial {real_id}: {key} = {value!r} in the "
                        f"search, {config.get(key)!r} simulated"
                    )
        sync_journal(searcher)
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path, help="a local experiment folder")
    args = parser.parse_args(argv)
    report = replay(args.experiment)
    print(
        f"{report.trials} trials, {report.epochs} epochs replayed; simulated stops {report.stops}"
    )
    for line in report.mismatches:
        print("MISMATCH", line)
    print("same decisions" if not report.mismatches else f"{len(report.mismatches)} differences")
    return 0 if not report.mismatches else 1


if __name__ == "__main__":
    sys.exit(main())
