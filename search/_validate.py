"""One checking toolkit and one error phrasing for everything a user writes.

Every rule reads the same way, after Optuna's distribution errors: the key path, the rule, then
what was received, e.g. ``space.upsample.int: `low <= high` must hold, got low=5, high=2`` or
``train.epochs: must be an int >= 1, got 0``. Unknown keys always read
``section: unknown key `x`; did you mean `y`?``.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from search.errors import SpecError

# An echoed value longer than this is cut: an error stays one readable line.
MAX_ECHO = 120


def echo(value: Any) -> str:
    """``repr(value)``, cut to :data:`MAX_ECHO` characters."""
    text = repr(value)
    if len(text) > MAX_ECHO:
        text = f"{text[: MAX_ECHO - 20]}... ({len(text)} characters)"
    return text


def is_int(value: Any) -> bool:
    """An integer (NumPy's included) that is not a bool: ``upsample: true`` is a mistake."""
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and (type(value).__name__ != "bool_")
    )


def is_number(value: Any) -> bool:
    """A real number that is not a bool (may be infinite or NaN)."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and (type(value).__name__ != "bool_")
    )


def is_finite(value: Any) -> bool:
    """A finite real number that is not a bool."""
    return is_number(value) and math.isfinite(value)


def did_you_mean(key: str, valid: Sequence[str]) -> str:
    """``; did you mean `y`?`` for the closest valid key, else the list of valid keys."""
    close = difflib.get_close_matches(str(key), list(valid), n=1)
    return f"; did you mean `{close[0]}`?" if close else f"; valid keys: {', '.join(valid)}"


def unknown_key(where: str, key: Any, valid: Sequence[str]) -> SpecError:
    """The one phrasing of an unknown key (a huge key, or one with a line break or other
    control character, is echoed like a value so the error stays one short line)."""
    text = str(key)
    printable = isinstance(key, str) and key.isprintable()
    shown = text if printable and len(text) <= MAX_ECHO else echo(key)
    return SpecError(f"{where}: unknown key `{shown}`{did_you_mean(text[:MAX_ECHO], valid)}")


def check_keys(mapping: Any, valid: Sequence[str], where: str) -> Mapping:
    """Checks that ``mapping`` is a mapping whose keys are all in ``valid``.

    Args:
        mapping: The value read from YAML.
        valid: The allowed keys.
        where: Key path of the mapping, used in the error message.

    Returns:
        The mapping, unchanged.

    Raises:
        SpecError: When it is not a mapping or holds an unknown key.
    """
    if not isinstance(mapping, Mapping):
        raise SpecError(f"{where}: must be a mapping, got {echo(mapping)}")
    for key in mapping:
        if key not in valid:
            raise unknown_key(where, key, valid)
    return mapping


def check_int(value: Any, where: str, low: int | None = None, high: int | None = None) -> int:
    """An int, optionally within ``[low, high]``.

    Raises:
        SpecError: ``where: must be an int >= low, got value``.
    """
    if (
        not is_int(value)
        or (low is not None and value < low)
        or (high is not None and value > high)
    ):
        bounds = "" if low is None else f" >= {low}" if high is None else f" in [{low}, {high}]"
        raise SpecError(f"{where}: must be an int{bounds}, got {echo(value)}")
    return int(value)


def check_float(value: Any, where: str, *, positive: bool = False, nonneg: bool = False) -> float:
    """A finite float (ints accepted), optionally ``> 0`` or ``>= 0``.

    Raises:
        SpecError: ``where: must be a float > 0, got value``.
    """
    ok = is_finite(value)
    if ok and positive and value <= 0:
        ok = False
    if ok and nonneg and value < 0:
        ok = False
    if not ok:
        rule = "a float > 0" if positive else "a float >= 0" if nonneg else "a finite float"
        raise SpecError(f"{where}: must be {rule}, got {echo(value)}")
    return float(value)


def check_one_of(value: Any, valid: Sequence[Any], where: str) -> Any:
    """One of ``valid``.

    Raises:
        SpecError: ``where: must be one of a, b, got value``.
    """
    if value not in valid:
        raise SpecError(f"{where}: must be one of {', '.join(map(str, valid))}, got {echo(value)}")
    return value


def check_bool(value: Any, where: str) -> bool:
    """``true`` or ``false``.

    Raises:
        SpecError: ``where: must be true or false, got value``.
    """
    if not isinstance(value, bool):
        raise SpecError(f"{where}: must be true or false, got {echo(value)}")
    return value


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's text on one line, cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
