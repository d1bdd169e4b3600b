"""Puts ``benchmarks/`` on ``sys.path``, as ``benchmarks/run.py`` does, so tests import its
modules (``common``, ``gpu``, ``search_efficiency``, ``quality/simulate``) by their own
names."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
for _path in (BENCHMARKS / "quality", BENCHMARKS):  # the quality benchmark's modules too
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
