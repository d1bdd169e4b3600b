"""The ``space:`` section's vocabulary: distributions, and which settings depend on others.

Ray-free and TensorFlow-free: the spec validates these on the driver, and the searcher turns
them into Optuna suggestions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from model_zoo import XLA_INTERPOLATIONS
from search._validate import did_you_mean, echo, is_finite, is_int, is_number
from search.errors import SpecError

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")

# Settings that only matter when another one allows them: key -> (parent, rule, test). Optuna's
# define-by-run API samples them only then, so TPE does not learn from values that had no
# effect. (The last input conv always has 3 filters, so `input_conv_filters` needs two convs;
# `upsample: 1` has no UpSampling2D layer to interpolate.)
CONDITIONS: dict[str, tuple[str, str, Callable[[Any], bool]]] = {
    "input_conv_filters": ("input_convs", "input_convs > 1", lambda convs: convs > 1),
    "input_conv_kernel": ("input_convs", "input_convs > 0", lambda convs: convs > 0),
    "upsample_interpolation": ("upsample", "upsample > 1", lambda factor: factor > 1),
    "momentum": ("optimizer", "optimizer == 'sgd'", lambda optimizer: optimizer == "sgd"),
}


def condition_holds(key: str, values: Mapping[str, Any]) -> bool:
    """Whether conditional ``key`` matters given a trial's ``values``, which must hold the
    parent's effective value (drawn, written, or the default)."""
    parent, _, test = CONDITIONS[key]
    return test(values[parent])


@dataclass(frozen=True)
class Distribution:
    """One searched setting: ``kind`` is uniform, loguniform, int, choice or fixed."""

    kind: str
    low: float | int | None = None
    high: float | int | None = None
    values: tuple = ()

    def endpoints(self) -> tuple:
        """Values whose validity implies every sampled value's validity (ranges are convex)."""
        return self.values if self.kind in ("choice", "fixed") else (self.low, self.high)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` can be drawn from this distribution."""
        if self.kind in ("choice", "fixed"):
            return value in self.values
        if not is_number(value):
            return False
        if self.kind == "int" and not is_int(value):
            return False
        return self.low <= value <= self.high

    def to_optuna(self) -> Any:
        """The Optuna distribution a searched setting is suggested from (not for ``fixed``)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "choice":
            return CategoricalDistribution(list(self.values))
        # parse_distribution sets both bounds for these kinds.
        low, high = cast(float, self.low), cast(float, self.high)
        if self.kind == "int":
            return IntDistribution(int(low), int(high))
        if self.kind in ("uniform", "loguniform"):
            return FloatDistribution(low, high, log=self.kind == "loguniform")
        raise ValueError(f"a {self.kind} setting is not an Optuna parameter")

    def to_yaml(self) -> Any:
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":
            return {"choice": list(self.values)}
        return {self.kind: [self.low, self.high]}


def parse_distribution(value: Any, where: str) -> Distribution:
    """Parses ``{uniform: [lo, hi]}``, ``{loguniform: ...}``, ``{int: ...}``, ``{choice: [...]}``
    or a plain value (fixed).

    Raises:
        SpecError: On an unknown distribution, inverted or empty range, or wrong types.
    """
    if not isinstance(value, Mapping):
        if isinstance(value, (list, tuple)):
            raise SpecError(
                f"{where}: a list is ambiguous; write {{choice: {list(value)}}}, "
                f"got {echo(list(value))}"
            )
        return Distribution("fixed", values=(value,))
    if len(value) != 1:
        raise SpecError(
            f"{where}: must have exactly one of {', '.join(DISTRIBUTIONS)}, "
            f"got keys {sorted(map(str, value))}"
        )
    kind, args = next(iter(value.items()))
    if kind not in DISTRIBUTIONS:
        raise SpecError(
            f"{where}: unknown distribution `{kind}`{did_you_mean(str(kind), DISTRIBUTIONS)}"
        )
    if kind == "choice":
        if not isinstance(args, (list, tuple)) or len(args) == 0:
            raise SpecError(f"{where}.choice: must be a non-empty list, got {echo(args)}")
        if len(set(map(repr, args))) != len(args):
            raise SpecError(f"{where}.choice: values must be distinct, got {echo(list(args))}")
        return Distribution("choice", values=tuple(args))
    if not isinstance(args, (list, tuple)) or len(args) != 2:
        raise SpecError(f"{where}.{kind}: must be a list [low, high], got {echo(args)}")
    low, high = args
    check = is_int if kind == "int" else is_number
    rule = "ints" if kind == "int" else "numbers"
    if not (check(low) and check(high)) or not (is_finite(low) and is_finite(high)):
        raise SpecError(
            f"{where}.{kind}: low and high must be finite {rule}, "
            f"got low={echo(low)}, high={echo(high)}"
        )
    if kind == "int" and low > high or kind != "int" and low >= high:
        sign = "<=" if kind == "int" else "<"
        raise SpecError(f"{where}.{kind}: `low {sign} high` must hold, got low={low}, high={high}")
    if kind == "loguniform" and low <= 0:
        raise SpecError(f"{where}.loguniform: `low > 0` must hold, got low={low}, high={high}")
    return Distribution(kind, low=low, high=high)


def check_conditions(
    space: Mapping[str, Distribution], written: Mapping[str, Any], defaults: Mapping[str, Any]
) -> None:
    """Refuses a searched conditional key that no trial would use.

    Args:
        space: The searched settings.
        written: The settings written under ``model``/``train``.
        defaults: Every setting's default (what a trial uses for a key nobody set).

    Raises:
        SpecError: When the parent's fixed value, or every value its range allows, fails the
            condition (the rules are thresholds and equalities, so a range's endpoints decide).
    """
    for key, (parent, rule, test) in CONDITIONS.items():
        if key not in space:
            continue
        if parent in space:
            candidates = space[parent].endpoints()
            why = f"space.{parent} allows only {', '.join(echo(v) for v in candidates)}"
        else:
            value = written.get(parent, defaults[parent])
            candidates = (value,)
            why = f"{parent} is {echo(value)}" + ("" if parent in written else " (the default)")
        if not any(test(candidate) for candidate in candidates):
            raise SpecError(
                f"space.{key}: only drawn when `{rule}`, but {why}; search or set "
                f"{parent}, or remove space.{key}"
            )


def candidates(key: str, fixed: Any, space: Mapping[str, Distribution]) -> tuple:
    """The values ``key`` can take in a trial: its searched candidates, or its fixed value."""
    return space[key].endpoints() if key in space else (fixed,)


def check_jit_compile(
    model: Mapping[str, Any], jit_compile: Any, space: Mapping[str, Distribution]
) -> None:
    """``jit_compile: true`` asks for XLA, which has no kernel for a smooth resize other than
    bilinear: refused here rather than at a trial's first step (``auto`` simply goes without)."""
    if True not in candidates("jit_compile", jit_compile, space):
        return
    if candidates("upsample", model.get("upsample", 2), space) == (1,):
        return
    interpolations = candidates(
        "upsample_interpolation", model.get("upsample_interpolation", "nearest"), space
    )
    for value in interpolations:
        if value not in XLA_INTERPOLATIONS:
            raise SpecError(
                f"train.jit_compile: true needs upsample_interpolation in "
                f"{list(XLA_INTERPOLATIONS)} (XLA has no kernel for the others; "
                f"use jit_compile: auto), got upsample_interpolation={echo(value)}"
            )
