"""Puts the repository's root on ``sys.path``, as the entry scripts do, so tests import the
benchmarks as ``benchmarks.<family>.<module>``; and ``benchmarks/quality/`` too, whose modules
import each other by their own names (``simulate``, ``task``, ``render``)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for _path in (REPO / "benchmarks" / "quality", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
