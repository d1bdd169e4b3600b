"""How far apart the configurations TPE suggests at once are, with and without the constant liar.

With several trials running, plain TPE suggests each free slot from the same finished trials,
so concurrent suggestions crowd into one region. :func:`search.driver.study.make_sampler`
turns on Optuna's constant liar when ``max_concurrent > 1`` (the running trials count as bad
ones while TPE suggests). This measures it directly, without training: a study of the
project's space with finished trials on a synthetic objective, then ``concurrent``
suggestions asked while none of them has reported, with the liar on and off; the spread is the
mean pairwise distance of those suggestions in the unit cube (log scale where the
distribution is log).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

from search.driver.searcher import define_by_run
from search.driver.study import make_sampler
from search.space import parse_distribution

SPACE = {
    "learning_rate": {"loguniform": [1e-4, 0.1]},
    "noise_std": {"loguniform": [1e-3, 0.3]},
    "dropout": {"uniform": [0.0, 0.8]},
    "freeze": {"int": [0, 10]},
    "upsample": {"int": [1, 5]},
}


def _objective(params: Mapping[str, Any]) -> float:
    """A smooth synthetic accuracy with one optimum (lr 0.01, noise 0.01, dropout 0.3)."""
    return (
        1.0
        - 0.1 * (math.log10(params["learning_rate"]) + 2) ** 2
        - 0.05 * (math.log10(params["noise_std"]) + 2) ** 2
        - (params["dropout"] - 0.3) ** 2
    )


def _unit(params: Mapping[str, Any], space: Mapping[str, Any]) -> list[float]:
    point = []
    for key, dist in space.items():
        low, high = (float(v) for v in dist.endpoints())
        value = float(params[key])
        if dist.kind == "loguniform":
            low, high, value = math.log(low), math.log(high), math.log(value)
        point.append((value - low) / (high - low) if high > low else 0.0)
    return point


def concurrent_spread(
    constant_liar: bool, *, finished: int = 30, concurrent: int = 8, seed: int = 0
) -> float:
    """Mean pairwise distance of ``concurrent`` suggestions made before any reports."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {k: parse_distribution(v, f"space.{k}") for k, v in SPACE.items()}
    sampler = make_sampler(
        seed,
        "tpe",
        num_samples=finished + concurrent,
        max_concurrent=concurrent if constant_liar else 1,
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    suggest = define_by_run(space)
    for _ in range(finished):
        trial = study.ask()
        study.tell(trial, _objective({**suggest(trial), **trial.params}))
    pending = [study.ask() for _ in range(concurrent)]
    points = [_unit({**suggest(t), **t.params}, space) for t in pending]
    distances = [math.dist(a, b) for a, b in itertools.combinations(points, 2)]
    return sum(distances) / len(distances)


def bench_liar_spread(seeds: int = 3) -> dict[str, Any]:
    """The spread with and without the constant liar, over ``seeds`` seeds."""
    rows = [
        {
            "seed": seed,
            "liar": concurrent_spread(True, seed=seed),
            "plain": concurrent_spread(False, seed=seed),
        }
        for seed in range(seeds)
    ]
    liar = sum(r["liar"] for r in rows) / len(rows)
    plain = sum(r["plain"] for r in rows) / len(rows)
    return {
        "rows": rows,
        "liar_mean": liar,
        "plain_mean": plain,
        "ratio": liar / plain,
        "finished": 30,
        "concurrent": 8,
    }


def print_liar_spread(result: Mapping[str, Any]) -> str:
    """One line per seed and the means."""
    lines = [
        f"b2. TPE's concurrent suggestions: mean pairwise distance in the unit cube of "
        f"{result['concurrent']} suggestions made after {result['finished']} finished "
        f"trials, before any reports (larger = less repetition)"
    ]
    lines += [
        f"  seed {r['seed']}: constant liar {r['liar']:.3f}, plain TPE {r['plain']:.3f}"
        for r in result["rows"]
    ]
    lines.append(
        f"  mean: constant liar {result['liar_mean']:.3f}, plain TPE "
        f"{result['plain_mean']:.3f} (x{result['ratio']:.2f})"
    )
    return "\n".join(lines)
