"""The tabulated task: the searched space, its fixed settings, and which configurations the
table holds.

The space is the shipped one (``noise_std`` log, ``upsample`` 1-5, ``input_convs`` 0-2,
``freeze``, ``learning_rate`` log, ``dropout``) on the CPU proxy of the peers run (digits,
``small_cnn``, 500 training images, the peers' split) or, with ``cifar10``, VGG16 on CIFAR-10 on
a GPU machine. The table's configurations are a scrambled Sobol sequence stratified over
``upsample`` x ``input_convs`` (every cell of those two gets the same number of points), plus
the seed article's configuration and perturbations of it, plus repeats with another seed (the
noise) and held-out configurations (the surrogate's check).

The plan is a fixed list in a fixed order, interleaved so that any prefix of it is a balanced
table: generation can stop after any chunk and still leave a usable table.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUALITY = Path(__file__).resolve().parent
BENCHMARKS = QUALITY.parent
REPO = BENCHMARKS.parent
for _path in (REPO, BENCHMARKS):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

# Roles of a planned run (a table row group).
SOBOL, BASELINE, PERTURBED, REPEAT, HOLDOUT = "sobol", "baseline", "perturbed", "repeat", "holdout"
TRAIN_SEED, REPEAT_SEED = 0, 1


@dataclass(frozen=True)
class Dimension:
    """One searched setting: its kind (``log``, ``linear``, ``int``, ``choice``) and range."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 1.0
    values: tuple[Any, ...] = ()

    def from_unit(self, u: float) -> Any:
        """The setting's value at ``u`` in [0, 1) (the inverse of :meth:`to_unit`)."""
        u = min(max(u, 0.0), 1.0 - 1e-12)
        if self.kind == "log":
            low, high = math.log(self.low), math.log(self.high)
            return float(math.exp(low + u * (high - low)))
        if self.kind == "linear":
            return float(self.low + u * (self.high - self.low))
        if self.kind == "int":
            return int(self.low + math.floor(u * (self.high - self.low + 1)))
        return self.values[int(math.floor(u * len(self.values)))]

    def to_unit(self, value: Any) -> float:
        """Where ``value`` sits in [0, 1] (the centre of its cell for ints and choices)."""
        if self.kind == "log":
            low, high = math.log(self.low), math.log(self.high)
            return (math.log(value) - low) / (high - low)
        if self.kind == "linear":
            return (float(value) - self.low) / (self.high - self.low)
        if self.kind == "int":
            return (int(value) - self.low + 0.5) / (self.high - self.low + 1)
        return (self.values.index(value) + 0.5) / len(self.values)

    def to_spec(self) -> dict[str, Any]:
        """The dimension in the experiment spec's vocabulary."""
        if self.kind == "log":
            return {"loguniform": [self.low, self.high]}
        if self.kind == "linear":
            return {"uniform": [self.low, self.high]}
        if self.kind == "int":
            return {"int": [int(self.low), int(self.high)]}
        return {"choice": list(self.values)}


@dataclass(frozen=True)
class TableTask:
    """A task the table is made for: its space, fixed settings, dataset and ``max_t``.

    Attributes:
        name: The table's name (its file names).
        dimensions: The searched settings, in a fixed order (the Sobol axes, the surrogate's).
        raw: A raw experiment spec (``dataset``, ``model``, ``train``, ``space``, ...) as the
            peers run uses it; ``space`` is :attr:`dimensions` in the spec's vocabulary.
        baseline: The seed article's configuration.
        per_cell: Sobol configurations per ``upsample`` x ``input_convs`` cell.
        perturbations: Perturbed copies of the baseline.
        repeats: Configurations trained a second time with another seed.
        holdout: Configurations outside the table, for the surrogate's check.
    """

    name: str
    dimensions: tuple[Dimension, ...]
    raw: Mapping[str, Any]
    baseline: Mapping[str, Any]
    per_cell: int = 27
    perturbations: int = 20
    repeats: int = 40
    holdout: int = 40

    @property
    def max_t(self) -> int:
        return int(self.raw["train"]["epochs"])

    def dimension(self, name: str) -> Dimension:
        return next(d for d in self.dimensions if d.name == name)

    def space(self) -> dict[str, Any]:
        return {d.name: d.to_spec() for d in self.dimensions}

    def unit(self, config: Mapping[str, Any]) -> list[float]:
        """The config as a point in the unit cube (the surrogate's space)."""
        return [d.to_unit(config[d.name]) for d in self.dimensions]


STRATA = ("upsample", "input_convs")


def _dimensions(
    upsample: Sequence[int],
    freeze: Sequence[int],
    noise: tuple[float, float],
    learning_rate: tuple[float, float],
    dropout: tuple[float, float],
) -> tuple[Dimension, ...]:
    return (
        Dimension("noise_std", "log", *noise),
        Dimension("upsample", "choice", values=tuple(upsample)),
        Dimension("input_convs", "int", 0, 2),
        Dimension("freeze", "choice", values=tuple(freeze)),
        Dimension("learning_rate", "log", *learning_rate),
        Dimension("dropout", "linear", *dropout),
    )


def digits_task(max_t: int = 9) -> TableTask:
    """``small_cnn`` on digits, the peers run's CPU proxy with the shipped ``upsample`` 1-5."""
    from benchmarks.peers.peers import digits_task as peers_digits

    dims = _dimensions([1, 2, 3, 4, 5], [0, 3, 5], (0.001, 0.3), (1e-4, 0.3), (0.0, 0.8))
    raw = dict(peers_digits(max_t, budget=0, concurrency=1, train_images=500).raw)
    raw["space"] = {d.name: d.to_spec() for d in dims}
    baseline = {
        "noise_std": 0.01,
        "upsample": 2,
        "input_convs": 0,
        "freeze": 0,
        "learning_rate": 0.01,
        "dropout": 0.75,
    }
    return TableTask("digits-small_cnn", dims, raw, baseline)


def cifar10_task(max_t: int = 9) -> TableTask:
    """VGG16 on CIFAR-10 (10,000 training images), one GPU: run with ``--task cifar10``."""
    from benchmarks.peers.peers import cifar_task

    dims = _dimensions([1, 2, 3, 4, 5], [0, 4, 7, 11, 15], (0.001, 0.1), (1e-4, 0.05), (0.3, 0.8))
    raw = dict(cifar_task(max_t, budget=0, concurrency=1).raw)
    raw["space"] = {d.name: d.to_spec() for d in dims}
    baseline = {
        "noise_std": 0.01,
        "upsample": 2,
        "input_convs": 0,
        "freeze": 0,
        "learning_rate": 0.01,
        "dropout": 0.75,
    }
    return TableTask("cifar10-vgg16", dims, raw, baseline)


TASKS = {"digits": digits_task, "cifar10": cifar10_task}


@dataclass(frozen=True)
class Planned:
    """One training run of the plan: a configuration, its role and its seed."""

    config_id: str
    role: str
    seed: int
    config: Mapping[str, Any]


def _sobol_configs(task: TableTask, per_cell: int, seed: int) -> list[dict[str, Any]]:
    """``per_cell`` scrambled-Sobol configurations in every ``upsample`` x ``input_convs``
    cell, in round-robin order over the cells (any prefix is balanced)."""
    from scipy.stats import qmc

    free = [d for d in task.dimensions if d.name not in STRATA]
    cells = [
        (u, c)
        for u in task.dimension("upsample").values
        for c in range(
            int(task.dimension("input_convs").low), int(task.dimension("input_convs").high) + 1
        )
    ]
    per: list[list[dict[str, Any]]] = []
    for index, (upsample, convs) in enumerate(cells):
        points = qmc.Sobol(d=len(free), scramble=True, seed=seed * 1000 + index).random(
            2 ** math.ceil(math.log2(max(per_cell, 1)))
        )[:per_cell]
        per.append(
            [
                {
                    **{d.name: d.from_unit(float(u)) for d, u in zip(free, point)},
                    "upsample": upsample,
                    "input_convs": convs,
                }
                for point in points
            ]
        )
    return [cell[i] for i in range(per_cell) for cell in per]


def _perturbed(task: TableTask, count: int, seed: int) -> list[dict[str, Any]]:
    """Copies of the baseline with every setting moved a little (ints and choices by one step
    at most), seeded."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        config = {}
        for d in task.dimensions:
            u = d.to_unit(task.baseline[d.name])
            if d.kind in ("log", "linear"):
                config[d.name] = d.from_unit(u + rng.normal(0.0, 0.08))
            else:
                cells = len(d.values) if d.kind == "choice" else int(d.high - d.low + 1)
                step = int(rng.integers(-1, 2))
                config[d.name] = d.from_unit(u + step / cells)
        out.append(config)
    return out


def plan(task: TableTask) -> list[Planned]:
    """Every run the table holds, in generation order.

    Sobol configurations come round-robin over the strata; after every tenth one the config
    ten back is trained again with :data:`REPEAT_SEED` (until ``task.repeats``) and a held-out
    configuration is trained (until ``task.holdout``); a baseline perturbation comes after
    every twentieth. The baseline is first.
    """
    sobol = _sobol_configs(task, task.per_cell, seed=0)
    holdout = _sobol_configs(task, math.ceil(task.holdout / 15) + 1, seed=1)
    # Held-out points are a second Sobol sequence; mix the cells so the first ones cover them.
    perturbed = _perturbed(task, task.perturbations, seed=0)
    out = [Planned("baseline", BASELINE, TRAIN_SEED, dict(task.baseline))]
    repeats = holds = perturbs = 0
    for i, config in enumerate(sobol):
        out.append(Planned(f"sobol-{i:04d}", SOBOL, TRAIN_SEED, config))
        if (i + 1) % 10 == 0:
            if repeats < task.repeats:
                j = i - 9 + repeats % 10
                out.append(Planned(f"sobol-{j:04d}", REPEAT, REPEAT_SEED, sobol[j]))
                repeats += 1
            if holds < task.holdout:
                out.append(Planned(f"holdout-{holds:04d}", HOLDOUT, TRAIN_SEED, holdout[holds]))
                holds += 1
        if (i + 1) % 20 == 0 and perturbs < task.perturbations:
            out.append(
                Planned(f"perturbed-{perturbs:04d}", PERTURBED, TRAIN_SEED, perturbed[perturbs])
            )
            perturbs += 1
    return out
