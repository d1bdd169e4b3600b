"""benchmarks/performance_page.py: the performance page's tables are what the JSON they cite
renders, and a figure changed in the JSON changes the table."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from benchmarks import performance_page as render

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "performance.md"
BLOCKS = ("performance-reduced", "performance-scale-full")


def _inside(text: str, block: str) -> str:
    return text.split(f"<!-- {block}: begin -->")[1].split(f"<!-- {block}: end -->")[0]


@pytest.mark.parametrize("block", BLOCKS)
def test_performance_page_tables_are_the_ones_their_json_renders(block):
    inside = _inside(PAGE.read_text(encoding="utf-8"), block)
    assert "From `benchmarks/measured/" in inside, f"the {block} block names no JSON"
    assert render.rerender(inside) == inside.strip()


def test_no_other_page_holds_a_performance_block():
    for path in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        if path != PAGE:
            text = path.read_text(encoding="utf-8")
            assert not any(f"<!-- {b}: begin -->" in text for b in BLOCKS), path


def test_a_figure_changed_in_the_json_changes_the_table_and_its_verdict(monkeypatch):
    inside = _inside(PAGE.read_text(encoding="utf-8"), "performance-reduced")
    real = render._load

    def drifted(path: str) -> dict:
        result = copy.deepcopy(real(path))
        if path.endswith("-1238.json"):
            result["sections"]["overhead"]["one_fit_ratio"] = 0.995
        return result

    monkeypatch.setattr(render, "_load", drifted)
    again = render.rerender(inside)
    assert again != inside.strip()
    row = next(line for line in again.splitlines() if "`overhead.one_fit_ratio`)" in line)
    assert "**0.995**" in row and ">= 0.99: **met**" in row


def test_other_runs_leave_out_the_sections_they_are_told_to(tmp_path):
    main = "benchmarks/measured/bench-reduced-2026-11-30-1238.json"
    other = "benchmarks/measured/bench-reduced-2026-11-30-0925.json"
    result = json.loads((REPO / main).read_text(encoding="utf-8"))
    block = render.reduced_block(
        main,
        result,
        [render.Other(other, json.loads((REPO / other).read_text(encoding="utf-8")), ["scale"])],
    )
    scale_rows = [line for line in block.splitlines() if "`scale." in line]
    overhead_rows = [line for line in block.splitlines() if "`overhead.one_fit_ratio`)" in line]
    assert scale_rows and all("09:25" not in line for line in scale_rows)
    assert "09:25: 1.057" in overhead_rows[0]
    assert "(09:25; its scale section not quoted)" in block
    assert render.rerender(block) == block
