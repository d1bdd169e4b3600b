"""The generated references cannot drift from the code: every spec key is described, every
range the spec reference states is the one its validator enforces, and the committed spec and
CLI pages are exactly what ``scripts/gen_docs.py`` generates."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from search.errors import SpecError
from search.spec import load_spec_dict
from search.spec_docs import KEYS, Range, key_rows, section_keys
from tests.helpers import REPO


def _gen_docs() -> Any:
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_key_the_spec_accepts_has_a_description():
    from search.spec import SECTIONS

    missing = [
        f"{section}.{key}"
        for section in SECTIONS
        if section != "space"
        for key, _, _ in section_keys(section)
        if not KEYS.get(section, {}).get(key, None) or not KEYS[section][key].meaning
    ]
    assert missing == [], (
        "spec keys without a line in search/spec_docs.py KEYS (add one, "
        "then run python scripts/gen_docs.py)"
    )


def test_committed_reference_pages_are_what_the_code_generates():
    stale = _gen_docs().stale_pages()
    assert stale == [], f"{stale} differ from the code: run python scripts/gen_docs.py"


def _loads(section: str, key: str, value: Any) -> bool:
    raw: dict[str, Any] = {"name": "t", "dataset": {"name": "digits"}}
    if section == "dataset":
        raw["dataset"] = {"name": "digits", key: value}
    elif section in ("name", "storage"):
        raw[section] = value
    else:
        raw[section] = {key: value}
    try:
        load_spec_dict(raw, source="test")
    except SpecError:
        return False
    return True


def _edges(rule: Range) -> tuple[list[Any], list[Any]]:
    """Values the rule accepts and values it refuses, at its edges."""
    step = 1 if rule.integer else 1e-6
    accepted, refused = [], []
    if rule.low is not None:
        low = int(rule.low) if rule.integer else rule.low
        (refused if rule.low_open else accepted).append(low)
        accepted.append(low + step)
        if not rule.low_open:
            refused.append(low - step)
    if rule.high is not None:
        high = int(rule.high) if rule.integer else rule.high
        (refused if rule.high_open else accepted).append(high)
        accepted.append(high - step)
        if not rule.high_open:
            refused.append(high + step)
    if rule.integer and rule.low is not None:
        refused.append(rule.low + 1.5)
    (accepted if rule.or_null else refused).append(None)
    return accepted, refused


# The keys the code accepts (a description may be written before its key lands).
RANGES = [
    (section, key, doc.allowed)
    for section, docs in KEYS.items()
    for key, doc in docs.items()
    if isinstance(doc.allowed, Range) and key in {k for k, _, _ in section_keys(section)}
]


@pytest.mark.parametrize(
    ("section", "key", "rule"), RANGES, ids=[f"{s}.{k}" for s, k, _ in RANGES]
)
def test_each_stated_range_is_the_one_its_validator_enforces(section, key, rule):
    accepted, refused = _edges(rule)
    assert [v for v in accepted if not _loads(section, key, v)] == [], (
        f"{section}.{key}: the reference says {rule.text()}"
    )
    assert [v for v in refused if _loads(section, key, v)] == [], (
        f"{section}.{key}: the reference says {rule.text()}"
    )


def test_every_row_has_a_type_an_allowed_rule_and_a_meaning():
    for row in key_rows():
        assert row.type and row.allowed and row.meaning, row
