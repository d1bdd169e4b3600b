"""The table as an objective: learning curves for any configuration, with the table's noise.

:class:`Table` reads the Parquet table ``build_table.py`` writes. :class:`Surrogate` predicts a
configuration's whole curve (validation and test accuracy, and each epoch's seconds) from its
``k`` nearest table configurations in the unit cube of the space (inverse-distance weights; a
configuration in the table gets its own curve), as Syne Tune's ``BlackboxSurrogate`` does with
a nearest-neighbour model. :func:`check_surrogate` measures it on configurations trained for real
that are not in the table (the ``holdout`` runs). :class:`NoisyObjective` is what a simulated
search observes: the surrogate's curve plus noise of the size the table's repeated runs show,
drawn from a seed, so every method at that seed sees the same draw for the same configuration.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from task import BASELINE, HOLDOUT, PERTURBED, REPEAT, SOBOL, TableTask

TABLE_ROLES = (SOBOL, BASELINE, PERTURBED)  # the configurations the surrogate is built from


@dataclass
class Curves:
    """Per-run learning curves: one row per run, one column per epoch."""

    config_ids: list[str]
    roles: list[str]
    seeds: list[int]
    configs: list[dict[str, Any]]
    val: np.ndarray
    test: np.ndarray
    cost: np.ndarray  # the epoch's seconds (fit_s)

    def select(self, mask: Sequence[bool]) -> Curves:
        index = np.flatnonzero(np.asarray(mask))
        return Curves(
            [self.config_ids[i] for i in index],
            [self.roles[i] for i in index],
            [self.seeds[i] for i in index],
            [self.configs[i] for i in index],
            self.val[index],
            self.test[index],
            self.cost[index],
        )

    def __len__(self) -> int:
        return len(self.config_ids)


def read_curves(path: Path, task: TableTask) -> Curves:
    """The table's complete runs (every epoch to ``max_t``) as :class:`Curves`."""
    import pandas as pd

    frame = pd.read_parquet(path)
    names = [d.name for d in task.dimensions]
    ids, roles, seeds, configs, val, test, cost = [], [], [], [], [], [], []
    for (config_id, seed), run in frame.groupby(["config_id", "seed"], sort=True):
        run = run.sort_values("epoch")
        if len(run) < task.max_t:
            continue
        run = run.iloc[: task.max_t]
        first = run.iloc[0]
        ids.append(str(config_id))
        roles.append(str(first["role"]))
        seeds.append(int(seed))
        configs.append(
            {n: (first[n].item() if hasattr(first[n], "item") else first[n]) for n in names}
        )
        val.append(run["val_accuracy"].to_numpy(float))
        test.append(run["test_accuracy"].to_numpy(float))
        cost.append(run["fit_s"].to_numpy(float))
    return Curves(ids, roles, seeds, configs, np.array(val), np.array(test), np.array(cost))


class Surrogate:
    """A configuration's curves from its ``k`` nearest table configurations.

    Args:
        task: The task (its space's unit cube).
        curves: The table configurations (seed 0; sobol, baseline and perturbed runs).
        k: Neighbours.
    """

    def __init__(self, task: TableTask, curves: Curves, k: int = 3) -> None:
        self.task = task
        self.curves = curves
        self.k = k
        self.points = np.array([task.unit(c) for c in curves.configs])
        self._cache: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def key(self, config: Mapping[str, Any]) -> tuple:
        return tuple(round(float(u), 6) for u in self.task.unit(config))

    def predict(self, config: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(val, test, cost)`` curves of ``config``."""
        key = self.key(config)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        distance = np.sqrt(((self.points - np.array(key)) ** 2).sum(axis=1))
        nearest = np.argsort(distance, kind="stable")[: self.k]
        if distance[nearest[0]] < 1e-5:  # the key is rounded to 6 decimals
            nearest, weights = nearest[:1], np.ones(1)
        else:
            weights = 1.0 / distance[nearest]
        weights = weights / weights.sum()
        out = (
            weights @ self.curves.val[nearest],
            weights @ self.curves.test[nearest],
            weights @ self.curves.cost[nearest],
        )
        self._cache[key] = out
        return out


class ForestSurrogate(Surrogate):
    """Random forests over the unit cube that predict whole curves: one multi-output forest for
    validation and test accuracy per epoch, one for the log of each epoch's seconds (the cost
    depends on other settings than the accuracy does). Each tree averages the curves of the
    table runs in its leaf, so a prediction is a curve the table's neighbours, as the forest
    weighs them, trained. A table configuration gets its own curve, as with
    :class:`Surrogate`.

    The forest learns which settings matter (the k-NN surrogate weighs every setting alike);
    :func:`check_surrogate` compares the two on the held-out runs. Prediction walks the trees
    in plain Python over their node arrays: one configuration at a time, as a simulated search
    asks, that is much faster than scikit-learn's ``predict`` on one row.

    Args:
        task: The task (its space's unit cube).
        curves: The table configurations (seed 0; sobol, baseline and perturbed runs).
        trees: Trees in each forest.
        min_leaf: Runs a leaf holds at least.
        seed: The forests' random state.
    """

    def __init__(
        self, task: TableTask, curves: Curves, trees: int = 60, min_leaf: int = 2, seed: int = 0
    ) -> None:
        super().__init__(task, curves, k=1)
        self.epochs = curves.val.shape[1]
        self._own = {self.key(c): i for i, c in enumerate(curves.configs)}
        accuracy = np.hstack([curves.val, curves.test])
        log_cost = np.log(np.maximum(curves.cost, 1e-6))
        self._accuracy = _forest(self.points, accuracy, trees, min_leaf, seed)
        self._cost = _forest(self.points, log_cost, trees, min_leaf, seed)

    def predict(self, config: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = self.key(config)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        own = self._own.get(key)
        if own is not None:
            out = (self.curves.val[own], self.curves.test[own], self.curves.cost[own])
        else:
            accuracy = _walk(self._accuracy, key)
            out = (
                accuracy[: self.epochs],
                accuracy[self.epochs :],
                np.exp(_walk(self._cost, key)),
            )
        self._cache[key] = out
        return out


def _forest(
    points: np.ndarray, targets: np.ndarray, trees: int, min_leaf: int, seed: int
) -> list[tuple]:
    """A fitted random forest as plain node arrays, for :func:`_walk`."""
    from sklearn.ensemble import RandomForestRegressor

    forest = RandomForestRegressor(
        n_estimators=trees, min_samples_leaf=min_leaf, random_state=seed
    ).fit(points, targets)
    return [
        (
            t.tree_.children_left.tolist(),
            t.tree_.children_right.tolist(),
            t.tree_.feature.tolist(),
            t.tree_.threshold.tolist(),
            t.tree_.value[:, :, 0],
        )
        for t in forest.estimators_
    ]


def _walk(forest: list[tuple], point: Sequence[float]) -> np.ndarray:
    """The forest's mean prediction at ``point``."""
    total = 0.0
    for left, right, feature, threshold, value in forest:
        node = 0
        while left[node] != -1:
            node = left[node] if point[feature[node]] <= threshold[node] else right[node]
        total = total + value[node]
    return np.asarray(total) / len(forest)


def table_curves(curves: Curves) -> Curves:
    """The runs the surrogate is built from: table configurations, seed 0."""
    return curves.select([r in TABLE_ROLES and s == 0 for r, s in zip(curves.roles, curves.seeds)])


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def make_surrogate(task: TableTask, curves: Curves, kind: str = "knn", k: int = 3) -> Surrogate:
    """The surrogate of ``kind``: ``knn`` (:class:`Surrogate`, ``k`` neighbours) or
    ``forest`` (:class:`ForestSurrogate`), built from ``curves``' table runs."""
    table = table_curves(curves)
    if kind == "forest":
        return ForestSurrogate(task, table)
    if kind == "knn":
        return Surrogate(task, table, k=k)
    raise ValueError(f"surrogate: must be knn or forest, got {kind!r}")


def check_surrogate(task: TableTask, curves: Curves, k: int, kind: str = "knn") -> dict[str, Any]:
    """The surrogate's final-epoch predictions on held-out configurations trained for real.

    Returns:
        ``spearman`` and ``mae`` of the last epoch's validation accuracy (and of the best
        epoch's), the number of held-out configurations, ``k`` and ``kind``.
    """
    surrogate = make_surrogate(task, curves, kind, k)
    held = curves.select([r == HOLDOUT for r in curves.roles])
    predicted = [surrogate.predict(c)[0] for c in held.configs]
    last_pred = [p[-1] for p in predicted]
    best_pred = [p.max() for p in predicted]
    return {
        "k": k,
        "kind": kind,
        "holdout": len(held),
        "spearman": spearman(last_pred, held.val[:, -1]) if len(held) else float("nan"),
        "mae": float(np.mean(np.abs(np.array(last_pred) - held.val[:, -1])))
        if len(held)
        else float("nan"),
        "spearman_best_epoch": spearman(best_pred, held.val.max(axis=1))
        if len(held)
        else float("nan"),
    }


def noise_by_epoch(curves: Curves) -> dict[str, Any]:
    """The table's noise: per epoch, the standard deviation of one run's validation (and
    test) accuracy, from the configurations trained with two seeds (``sd(diff) / sqrt 2``)."""
    first = {
        cid: i
        for i, (cid, s, r) in enumerate(zip(curves.config_ids, curves.seeds, curves.roles))
        if s == 0
    }
    pairs = [
        (first[cid], i)
        for i, (cid, r) in enumerate(zip(curves.config_ids, curves.roles))
        if r == REPEAT and cid in first
    ]
    if not pairs:
        zeros = [0.0] * curves.val.shape[1]
        return {
            "pairs": 0,
            "val_sd": zeros,
            "test_sd": zeros,
            "val_sd_robust": zeros,
            "final_val_abs_diff_median": 0.0,
        }
    a, b = zip(*pairs)
    val_diff = curves.val[list(a)] - curves.val[list(b)]
    test_diff = curves.test[list(a)] - curves.test[list(b)]
    # A run that diverges under one seed and not the other is a trait of its configuration
    # (a high learning rate), which the surrogate's curve already carries: the simulator's
    # noise is the robust sd (1.4826 x the median absolute difference), the plain one is kept.
    robust = 1.4826 * np.median(np.abs(val_diff - np.median(val_diff, axis=0)), axis=0)
    return {
        "pairs": len(pairs),
        "val_sd": [float(x) for x in val_diff.std(axis=0, ddof=1) / math.sqrt(2)],
        "test_sd": [float(x) for x in test_diff.std(axis=0, ddof=1) / math.sqrt(2)],
        "val_sd_robust": [float(x) for x in robust / math.sqrt(2)],
        "final_val_abs_diff_median": float(np.median(np.abs(val_diff[:, -1]))),
    }


class NoisyObjective:
    """What a simulated search observes at one seed (the noise draw).

    The observed validation accuracy is the surrogate's plus Gaussian noise with the table's
    per-epoch standard deviation, drawn from ``(seed, configuration)``: the same configuration
    at the same seed is seen the same by every method. Regret is measured on the surrogate's
    noise-free curve.
    """

    def __init__(self, surrogate: Surrogate, noise_sd: Sequence[float], seed: int) -> None:
        self.surrogate = surrogate
        self.noise_sd = np.asarray(noise_sd, float)
        self.seed = seed
        self._noise: dict[tuple, np.ndarray] = {}

    def curves(self, config: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.surrogate.predict(config)

    def observed(self, config: Mapping[str, Any]) -> np.ndarray:
        key = self.surrogate.key(config)
        noise = self._noise.get(key)
        if noise is None:
            digest = hashlib.blake2b(repr((self.seed, key)).encode(), digest_size=8).digest()
            rng = np.random.default_rng(int.from_bytes(digest, "little"))
            noise = rng.standard_normal(len(self.noise_sd)) * self.noise_sd
            self._noise[key] = noise
        return np.clip(self.curves(config)[0] + noise, 0.0, 1.0)
