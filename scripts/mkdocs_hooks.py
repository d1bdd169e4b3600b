"""MkDocs hooks: the measured figures under ``benchmarks/measured/`` are served as
``measured/<name>.png``, so the results pages show the committed PNGs without a copy in
``docs/`` that could fall behind them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

MEASURED = Path(__file__).resolve().parents[1] / "benchmarks" / "measured"


def on_files(files: Files, config: Any) -> Files:
    for png in sorted(MEASURED.glob("*.png")):
        files.append(File.generated(config, f"measured/{png.name}", abs_src_path=str(png)))
    return files
