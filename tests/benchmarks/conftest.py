"""Puts ``benchmarks/`` on ``sys.path``, as ``benchmarks/run.py`` does, so tests import its
modules (``common``, ``gpu``, ``search_efficiency``) by their own names."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
