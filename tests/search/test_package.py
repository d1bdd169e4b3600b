"""The package's shape: a small lazy public API, layers kept apart, small modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import search
from tests.helpers import REPO

PACKAGE = REPO / "search"
# In ruff format's layout (a call that wraps puts one argument per line): the 420
# hand-wrapped lines of the limit before the project adopted `ruff format`, grown as
# formatting grew the largest modules (service.py 420 -> 550 lines, the same code).
MAX_MODULE_LINES = 560


def test_public_api_lists_the_entry_points_and_each_resolves():
    expected = {
        "run_search",
        "resume_search",
        "extend_search",
        "load_spec",
        "export_experiment",
        "retrain",
        "write_report",
    }
    assert expected <= set(search.__all__)
    for name in search.__all__:
        assert callable(getattr(search, name)) or isinstance(getattr(search, name), type)


def test_importing_the_cli_loads_neither_ray_nor_tensorflow():
    code = (
        "import sys, search, search.cli; "
        "print(sorted(m for m in ('ray', 'tensorflow', 'keras', 'optuna') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert done.stdout.strip() == "[]"


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_module_in_search_is_over_the_size_limit():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in _modules()}
    assert {k: n for k, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def _private_reaches(path: Path) -> list[str]:
    """``from search.x import _name`` and ``module._name`` on an imported search module."""
    tree = ast.parse(path.read_text())
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("search"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"from {node.module} import {alias.name}")
                elif node.module == "search" or (node.module or "").count(".") >= 1:
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("search"):
                    modules.add(alias.asname or alias.name.split(".")[-1])
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_no_module_reaches_into_another_modules_private_names():
    reaches = {str(p.relative_to(REPO)): _private_reaches(p) for p in _modules()}
    # `search._validate` and `search._yaml` are the package's own private toolkit modules.
    allowed = {"from search._validate import", "from search._yaml import"}
    bad = {
        k: [r for r in v if not any(r.startswith(a) for a in allowed)] for k, v in reaches.items()
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_model_zoo_never_imports_ray_or_search():
    for path in sorted((REPO / "model_zoo").rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {n for n in names if n.split(".")[0] in ("ray", "search")}, path


def test_the_private_reach_check_sees_both_forms(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        "from search.data.cifar import _CIFAR\nfrom search import storage\n"
        "storage._hidden()\nimport search.data.sources as src\nsrc._x\n"
    )
    assert sorted(_private_reaches(path)) == [
        "from search.data.cifar import _CIFAR",
        "src._x",
        "storage._hidden",
    ]
