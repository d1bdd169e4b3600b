"""Reading spec files: YAML with the safe loader only, and ``--set key.path=value`` overrides
parsed as literals (never executed), each failure a one-line error."""

from __future__ import annotations

import ast
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from search._validate import echo, one_line
from search.errors import SpecError


def read_yaml(path: str | os.PathLike) -> Any:
    """Reads a YAML file with the safe loader, turning every failure into a one-line error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a folder, expected a YAML file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(
            f"{path}: cannot be read ({err.__class__.__name__}: {one_line(err)})"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(f"{path}: invalid YAML{where}: {problem}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parses ``key.path=value`` (value as a YAML scalar/flow literal, never executed)."""
    if "=" not in text:
        raise SpecError(f"--set: must look like key.path=value, got {echo(text)}")
    key, value_text = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise SpecError(f"--set: key path must be dotted names like train.epochs, got {echo(key)}")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError:
        try:
            value = ast.literal_eval(value_text)
        except (ValueError, SyntaxError):
            raise SpecError(f"--set {key}: cannot parse value {echo(value_text)}") from None
    return parts, value


def apply_overrides(raw: Any, overrides: list[str]) -> Any:
    """Applies ``--set`` overrides to the raw spec; the result is validated as a whole later."""
    if not overrides:
        return raw
    if not isinstance(raw, Mapping):
        return raw
    result = _deep_copy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = result
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(
                    f"--set {'.'.join(parts)}: `{'.'.join(parts[: i + 1])}` is not a "
                    f"section, got {echo(child)}"
                )
            node = child
        node[parts[-1]] = value
    return result


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
