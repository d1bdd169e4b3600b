"""What every method of ``peers.py`` shares: the task, what a run returns, the budget.

:class:`Task` is the search every method runs (a raw experiment spec without name, seed and
storage, the budget in trial-epochs, the trials at once); :class:`MethodRun` is what one method
did with one seed. The budget arithmetic sizes each method's own stopping rule, and the space
converters say the spec's distributions in each framework's vocabulary.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Task:
    """The search every method runs: a raw experiment spec (without name, seed, storage),
    the budget in trial-epochs and how many trials run at once where a method can."""

    raw: Mapping[str, Any]
    budget: int
    concurrency: int

    @property
    def max_t(self) -> int:
        return int(self.raw["train"]["epochs"])

    @property
    def grace_period(self) -> int:
        return int(self.raw["scheduler"]["grace_period"])

    @property
    def reduction_factor(self) -> int:
        return int(self.raw["scheduler"]["reduction_factor"])

    def spec(self, name: str, seed: int, workdir: Path, **search: Any) -> Any:
        """The validated ``ExperimentSpec`` for one run (the seed trains and searches)."""
        from benchmarks.common import load_spec

        return load_spec(self.raw_for(name, seed, workdir, **search))

    def raw_for(self, name: str, seed: int, workdir: Path, **search: Any) -> dict[str, Any]:
        """The raw spec for one run of ``finetune-search``."""
        raw = json.loads(json.dumps(self.raw))
        raw["name"] = name
        raw["train"]["seed"] = seed
        raw["search"] = {**raw["search"], "seed": seed, **search}
        raw["storage"] = str(workdir / "experiments")
        return raw


@dataclass
class MethodRun:
    """What one method did with one seed.

    Attributes:
        rows: One per trained epoch in arrival order: ``trial``, ``epoch``, ``val_accuracy``,
            ``t`` (arrival, seconds since the epoch), ``fit_s`` (the trial's own seconds).
        wall_s: From the method's start (data loading included) to its end.
        began: When it started (``time.time()``).
        concurrency: Trials it ran at once.
        test_of: The test accuracy of the model a row's trial had at that row's epoch.
    """

    rows: list[dict[str, Any]]
    wall_s: float
    began: float
    concurrency: int
    test_of: Callable[[dict[str, Any]], float | None] = field(
        default=lambda row: row.get("test_accuracy")
    )


def method_seed(name: str, seed: int) -> int:
    """The seed one method's own random state gets at one benchmark seed: drawn from both, so
    two methods never share a sampler's draws (ours and stock Ray + Optuna with one
    ``TPESampler(seed)`` drew the same start-up configurations) and each is independent of
    the others. The training's seed stays the benchmark seed, the same for every method."""
    import hashlib

    digest = hashlib.blake2b(f"{name}:{seed}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") % (2**31 - 1)


def asha_trials(task: Task, margin: float = 1.3) -> int:
    """Trials for an ASHA search whose expected spend is ``margin`` x the budget.

    Under ASHA about ``1/reduction_factor**k`` of the trials reach the ``k``-th rung
    (``grace_period * reduction_factor**k``), so a trial trains this many epochs on average.
    """
    expected, start, k = 0.0, 0, 0
    while True:
        rung = min(task.grace_period * task.reduction_factor**k, task.max_t)
        expected += (rung - start) / task.reduction_factor**k
        if rung >= task.max_t:
            break
        start, k = rung, k + 1
    return math.ceil(margin * task.budget / expected)


def hyperband_iteration_epochs(max_t: int, factor: int) -> int:
    """Trial-epochs of one Keras Tuner Hyperband iteration (its brackets' sizes and epochs,
    as ``keras_tuner``'s ``HyperbandOracle`` computes them; a promoted trial trains only the
    epochs it adds)."""
    brackets, epochs = 0, float(max_t)
    while epochs >= 1:
        epochs, brackets = epochs / factor, brackets + 1
    end_size = math.ceil(1 + math.log(max_t, factor))
    total = 0
    for bracket in range(brackets):
        previous = 0
        for round_num in range(bracket + 1):
            size = math.ceil(end_size / (bracket + 1) * factor ** (bracket - round_num))
            round_epochs = math.ceil(max_t / factor ** (bracket - round_num))
            total += size * (round_epochs - previous)
            previous = round_epochs
    return total


# --------------------------------------------------------------------------------------------
# the search space in each framework's vocabulary


def ray_space(space: Mapping[str, Any]) -> dict[str, Any]:
    """``search.space`` distributions as Ray Tune's sampling functions."""
    from ray import tune

    out = {}
    for key, dist in space.items():
        out[key] = {
            "uniform": lambda d: tune.uniform(d.low, d.high),
            "loguniform": lambda d: tune.loguniform(d.low, d.high),
            "int": lambda d: tune.randint(d.low, d.high + 1),  # Ray's upper is open
            "choice": lambda d: tune.choice(list(d.values)),
        }[dist.kind](dist)
    return out


def keras_tuner_config(hp: Any, space: Mapping[str, Any]) -> dict[str, Any]:
    """Draws the space through Keras Tuner's ``HyperParameters``."""
    out = {}
    for key, dist in space.items():
        if dist.kind == "choice":
            out[key] = hp.Choice(key, list(dist.values))
        elif dist.kind == "int":
            out[key] = hp.Int(key, dist.low, dist.high)
        else:
            out[key] = hp.Float(
                key, dist.low, dist.high, sampling="log" if dist.kind == "loguniform" else "linear"
            )
    return out


def syne_space(space: Mapping[str, Any]) -> dict[str, Any]:
    """``search.space`` distributions as Syne Tune's config space."""
    from syne_tune.config_space import choice, loguniform, randint, uniform

    out = {}
    for key, dist in space.items():
        out[key] = {
            "uniform": lambda d: uniform(d.low, d.high),
            "loguniform": lambda d: loguniform(d.low, d.high),
            "int": lambda d: randint(d.low, d.high),  # Syne's bounds are inclusive
            "choice": lambda d: choice(list(d.values)),
        }[dist.kind](dist)
    return out


# --------------------------------------------------------------------------------------------
# shared pieces


def write_task(task: Task, spec: Any, gpus: float, workdir: Path) -> Path:
    """The task file a peer's trials read: fixed settings, dataset, space, ``max_t``, rows."""
    from dataclasses import asdict

    path = workdir / "task.json"
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "fixed": {**spec.fixed_config(), "gpus_per_trial": gpus},
                "dataset": {k: v for k, v in asdict(spec.dataset).items() if v is not None},
                "space": task.raw["space"],
                "max_t": task.max_t,
                "rows": str(workdir / "rows"),
            }
        ),
        encoding="utf-8",
    )
    return path


def peer_gpus(spec: Any) -> float:
    """GPUs per trial for the non-Ray peers: the spec's number, 0 for ``auto`` on a machine
    without GPUs and 1 with them (what ``auto`` means to finetune-search)."""
    from benchmarks.common import gpu_names

    wanted = spec.resources.gpus_per_trial
    if wanted == "auto":
        return 1.0 if gpu_names() else 0.0
    return float(wanted)
