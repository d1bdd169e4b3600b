"""The checking toolkit: one phrasing for every rule, values echoed at a readable length."""

from __future__ import annotations

import numpy as np
import pytest

from search import _validate as v
from search.errors import SpecError


def test_unknown_keys_read_the_same_everywhere():
    with pytest.raises(SpecError, match=r"^train: unknown key `epoch`; did you mean `epochs`\?$"):
        v.check_keys({"epoch": 3}, ("epochs", "batch_size"), "train")
    with pytest.raises(
        SpecError,
        match=r"^train: unknown key `zzz`; valid keys: epochs, "
        r"batch_size$",
    ):
        v.check_keys({"zzz": 3}, ("epochs", "batch_size"), "train")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, True),
        (np.int64(3), True),
        (True, False),
        (np.bool_(True), False),
        (3.0, False),
        ("3", False),
    ],
)
def test_is_int_takes_numpy_ints_but_never_bools(value, expected):
    assert v.is_int(value) is expected


def test_rules_name_the_key_the_rule_and_the_value():
    with pytest.raises(SpecError, match=r"^train\.epochs: must be an int >= 1, got 0$"):
        v.check_int(0, "train.epochs", 1)
    with pytest.raises(SpecError, match=r"^x: must be an int in \[1, 3\], got 4$"):
        v.check_int(4, "x", 1, 3)
    with pytest.raises(SpecError, match=r"^lr: must be a float > 0, got nan$"):
        v.check_float(float("nan"), "lr", positive=True)
    with pytest.raises(SpecError, match=r"^opt: must be one of sgd, adam, got 'rmsprop'$"):
        v.check_one_of("rmsprop", ("sgd", "adam"), "opt")
    with pytest.raises(SpecError, match=r"^b: must be true or false, got 'yes'$"):
        v.check_bool("yes", "b")


def test_a_huge_value_is_cut_to_one_readable_line():
    text = v.echo("x" * 10_000)
    assert len(text) < v.MAX_ECHO + 30 and "(10002 characters)" in text
    with pytest.raises(SpecError) as caught:
        v.check_keys("line\n" * 5000, ("a",), "spec")
    assert len(str(caught.value)) < 200


def test_one_line_flattens_and_cuts_exception_text():
    assert v.one_line(ValueError("a\n  b")) == "a b"
    assert v.one_line(ValueError("x" * 500)).endswith("...")
    assert v.one_line(ValueError("")) == "ValueError"
