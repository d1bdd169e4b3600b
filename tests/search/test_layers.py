"""The package's layers: every import inside ``search`` points down (or across one layer).

As Optuna keeps ``trial/_state.py`` and ``study/_study_direction.py`` at the bottom and its
storages never import the study: the names every layer reads (the metric, ``TrialStatus``, the
storage layer) live in the lowest layer that reads them. Every import counts, the lazy ones
inside functions and those under ``TYPE_CHECKING`` too.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "search"

# Lowest first. A module may import its own layer and the layers before it, never after.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # The package's __init__ is here too: its public API is a table of names imported lazily,
    # so it imports nothing of its own eagerly (`search.__version__` is read from any layer).
    ("base", ("search", "search.errors", "search._validate", "search._yaml", "search.storage")),
    ("data", ("search.data",)),
    (
        "spec",
        (
            "search.spec",
            "search.space",
            "search.checkpoint_policy",
            "search.spec_docs",
            "search.describe",
        ),
    ),
    ("trial", ("search.trial",)),
    ("outputs", ("search.outputs",)),
    ("driver", ("search.driver",)),
    ("cli", ("search.cli", "search._cli_args", "search.__main__")),
)


def layer_of(module: str) -> int:
    """The index in ``LAYERS`` of a module (the longest prefix that names one wins)."""
    best, found = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    if found < 0:
        raise KeyError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(module: str, source: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every ``search`` module that ``source`` imports, wherever."""
    is_package = (REPO.joinpath(*module.split(".")) / "__init__.py").is_file()
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "search"
            ]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            if base.split(".")[0] != "search":
                continue
            for alias in node.names:  # `from search import storage` imports search.storage
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if _is_module(sub) else base))
    return found


def upward_imports(module: str, source: str) -> list[str]:
    """The imports in ``source`` (the text of ``module``) that reach a higher layer."""
    own = layer_of(module)
    return [
        f"{module}:{line} imports {target} ({LAYERS[layer_of(target)][0]} is above "
        f"{LAYERS[own][0]})"
        for line, target in dict.fromkeys(imported_modules(module, source))
        if layer_of(target) > own
    ]


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_of_the_package_is_in_a_layer():
    unplaced = []
    for path in _modules():
        try:
            layer_of(module_name(path))
        except KeyError as err:
            unplaced.append(str(err))
    assert unplaced == []


def test_imports_only_point_down_the_layers():
    upward = [
        found
        for path in _modules()
        for found in upward_imports(module_name(path), path.read_text())
    ]
    assert upward == []


def test_the_package_init_imports_nothing_of_its_own():
    assert imported_modules("search", (PACKAGE / "__init__.py").read_text()) == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "search.outputs.report",
            "from search.driver.study import open_study\n",
            ["search.outputs.report:1 imports search.driver.study (driver is above outputs)"],
        ),
        (
            "search.spec",
            "def f():\n    from search.outputs import export\n",
            ["search.spec:2 imports search.outputs.export (outputs is above spec)"],
        ),
        (
            "search.data.parquet",
            "import search.trial.checkpoint\n",
            ["search.data.parquet:1 imports search.trial.checkpoint (trial is above data)"],
        ),
        (
            "search.data.parquet",
            "from .. import cli\n",
            ["search.data.parquet:1 imports search.cli (cli is above data)"],
        ),
        (
            "search.driver.service",
            "from search import storage\nfrom search.outputs import lock\n",
            [],
        ),
    ],
)
def test_the_layer_check_sees_every_form_of_import(module, source, expected):
    assert upward_imports(module, source) == expected


@cache
def _top_level_names(path: Path) -> set[str] | None:
    """The names a module defines or imports at its top level (None: it answers any name,
    through a module ``__getattr__``)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(sub.name)
            elif isinstance(sub, (ast.Import, ast.ImportFrom)):
                names |= {(a.asname or a.name).split(".")[0] for a in sub.names}
            elif isinstance(sub, ast.Assign):
                names |= {
                    n.id
                    for target in sub.targets
                    for n in ast.walk(target)
                    if isinstance(n, ast.Name)
                }
            elif isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name):
                names.add(sub.target.id)
    return None if "__getattr__" in names else names


def test_every_import_of_a_project_module_names_something_it_has():
    """A name moved to another module breaks the imports left pointing at the old one, the lazy
    ones inside functions too, which only a slow or GPU test would otherwise reach."""
    missing = []
    for root in ("search", "model_zoo", "tests", "benchmarks", "scripts"):
        for path in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (
                    isinstance(node, ast.ImportFrom)
                    and not node.level
                    and node.module
                    and node.module.split(".")[0] in ("search", "model_zoo", "benchmarks")
                ):
                    continue
                base = REPO.joinpath(*node.module.split("."))
                target = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
                if not target.is_file():
                    missing.append(f"{path.relative_to(REPO)}:{node.lineno} {node.module}")
                    continue
                names = _top_level_names(target)
                for alias in node.names:
                    if (
                        names is not None
                        and alias.name not in names
                        and not _is_module(f"{node.module}.{alias.name}")
                    ):
                        missing.append(
                            f"{path.relative_to(REPO)}:{node.lineno} {node.module}.{alias.name}"
                        )
    assert missing == []
