"""Bad input, generated: whatever a user types, a one-line error and exit status 2, never a
traceback, and an existing experiment folder left exactly as it was."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.cli import main
from search.errors import SpecError
from search.spec import load_spec_dict
from tests.helpers import REPO, tree_digest
from tests.search.test_spec import BASE

CIFAR10 = str(REPO / "configs" / "cifar10.yaml")

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
SECTIONS = [
    "name",
    "dataset",
    "model",
    "train",
    "space",
    "search",
    "scheduler",
    "resources",
    "storage",
]
KEYS = {
    "dataset": ["name", "val_fraction", "subset", "seed", "path", "label_mode", "image_size"],
    "model": [
        "backbone",
        "weights",
        "noise_std",
        "upsample",
        "input_convs",
        "freeze",
        "pooling",
        "dense_units",
        "dropout",
        "input_conv_kernel",
    ],
    "train": [
        "epochs",
        "batch_size",
        "optimizer",
        "learning_rate",
        "augment",
        "mixed_precision",
        "momentum",
    ],
    "search": [
        "num_samples",
        "max_concurrent",
        "seed",
        "baseline",
        "budget_gpu_hours",
        "budget_device_hours",
        "max_failures",
        "algorithm",
        "time_budget_s",
    ],
    "scheduler": ["grace_period", "reduction_factor", "name"],
    "resources": ["cpus_per_trial", "gpus_per_trial"],
    "space": ["upsample", "noise_std", "freeze", "dropout", "learning_rate", "bogus"],
}


@st.composite
def mutated_specs(draw):
    """A valid spec with one to three values replaced by junk, keys added, or ranges broken."""
    raw = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(SECTIONS))
        if section in KEYS and draw(st.booleans()):
            node = raw.setdefault(section, {})
            if not isinstance(node, dict):
                continue
            key = draw(st.sampled_from(KEYS[section] + ["typo_key"]))
            if section == "space" and draw(st.booleans()):
                kind = draw(st.sampled_from(["uniform", "loguniform", "int", "choice", "x"]))
                low, high = draw(junk), draw(junk)
                node[key] = {kind: [low, high]} if kind != "choice" else {kind: draw(junk)}
            else:
                node[key] = draw(junk)
        else:
            raw[section] = draw(junk)
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_specs())
def test_any_mutated_spec_loads_or_gives_one_line_spec_error(raw):
    try:
        load_spec_dict(raw)
    except SpecError as err:
        message = str(err)
        assert message and "\n" not in message
        # The message starts with the key path (or the file) it is about.
        assert message.split(":")[0].strip(), message


@pytest.fixture(scope="module")
def fake_experiment(tmp_path_factory) -> Path:
    """An experiment folder as `run` leaves it before any trial (spec + study journal)."""
    root = tmp_path_factory.mktemp("exp") / "experiment"
    root.mkdir()
    (root / "spec.yaml").write_text(yaml.safe_dump({**BASE, "name": "experiment"}))
    (root / "optuna_study.journal").write_text("")
    return root


words = st.sampled_from(
    [
        "run",
        "resume",
        "extend",
        "validate",
        "describe",
        "export",
        "report",
        "retrain",
        "status",
        "--watch",
        "--more",
        "--top",
        "--out",
        "--epochs",
        "--set",
        "--num-cpus",
        "--address",
        "--classes",
        "--input-shape",
        "0",
        "-3",
        "x",
        "nan",
        "1e9",
        "train.epochs=oops",
        "space.upsample=[5]",
        '{"upsample": 99}',
        '{"freeze": "nope"}',
        '{"noise_std": -1}',
        "/nonexistent",
        "EXP",
        "EXP/spec.yaml",
        "EXP/missing",
        "/",
        "a=b",
    ]
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(argv=st.lists(words, min_size=1, max_size=5))
def test_any_cli_arguments_exit_2_with_one_line_and_leave_the_experiment_alone(
    argv, fake_experiment, capsys
):
    argv = [a.replace("EXP", str(fake_experiment)) for a in argv]
    # Commands that would really start a search are out of scope for a property test.
    if argv[0] == "run" or argv[0] in ("resume", "extend") and argv[1:2] == [str(fake_experiment)]:
        argv = ["validate", *argv[1:]]
    before = tree_digest(fake_experiment)
    try:
        code = main(argv)
    except SystemExit as exit_:  # --help-like paths exit through argparse with status 0
        code = exit_.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if code == 2:
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    else:
        assert code == 0, (argv, captured.err)
    assert tree_digest(fake_experiment) == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["describe", '{"upsample": 64}', "--input-shape", "32,32,3"], "upsample"),
        (["describe", '{"backbone": "vgg16", "freeze": 40, "weights": "none"}'], "freeze"),
        (["describe", '{"noise_std": -1}'], "noise_std"),
        (
            ["describe", '{"upsample_interpolation": "cubic"}'],
            "upsample_interpolation: must be one of ['nearest', 'bilinear', 'bicubic', "
            "'lanczos3', "
            "'lanczos5', 'area'], got 'cubic'",
        ),
        (
            [
                "validate",
                CIFAR10,
                "--set",
                "space.upsample_interpolation={choice: [nearest, trilinear]}",
            ],
            "space.upsample_interpolation: must be one of",
        ),
        (
            ["validate", CIFAR10, "--set", "model.upsample_interpolation=Bilinear"],
            "model.upsample_interpolation: must be one of",
        ),
        (["validate", "/"], "is a folder"),
        (["export", "/nonexistent"], "experiment folder not found"),
        (["extend", "/nonexistent", "--more", "0"], "--more: must be an int >= 1"),
        (["run", "--set", "resources.cpus_per_trial=-1"], "resources.cpus_per_trial"),
    ],
)
def test_named_bad_inputs(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_experiment_folder_from_another_tool_is_refused(tmp_path, capsys):
    other = tmp_path / "ray_results"
    other.mkdir()
    (other / "experiment_state-2026.json").write_text("{}")
    before = tree_digest(other)
    for command in (
        ["resume", str(other)],
        ["export", str(other)],
        ["report", str(other)],
        ["extend", str(other), "--more", "2"],
    ):
        assert main(command) == 2
        assert "not a finetune-search experiment" in capsys.readouterr().err
    assert tree_digest(other) == before


def test_unreadable_config_is_one_line(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"\xff\xfe\x00bad")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "cannot be read" in err and len(err.strip().splitlines()) == 1
    assert os.path.exists(path)


HUGE = "x" * 20_000


@pytest.mark.parametrize(
    "case",
    [
        "text_file",
        "unknown_key",
        "model_value",
        "set_value",
        "argparse_value",
        "describe_value",
        "baseline_value",
    ],
)
def test_a_huge_value_is_cut_on_every_error_path(case, tmp_path, capsys):
    from search.errors import MAX_MESSAGE

    spec = tmp_path / "spec.yaml"
    raw = copy.deepcopy(BASE)
    if case == "text_file":  # what `validate /etc/passwd` did: the whole file echoed
        spec.write_text(
            "\n".join(f"user{i}:x:{i}:{i}::/home/user{i}:/bin/sh" for i in range(2000))
        )
    elif case == "unknown_key":
        spec.write_text(yaml.safe_dump({**raw, HUGE: 1}))
    elif case == "model_value":
        spec.write_text(yaml.safe_dump({**raw, "model": {**raw["model"], "pooling": HUGE}}))
    elif case == "baseline_value":
        raw["space"]["dense_units"] = {"choice": [8, 16]}
        raw["model"]["dense_units"] = 10**4000 // 3  # a 4000-digit int, outside the space
        raw["search"] = {"baseline": True}
        spec.write_text(yaml.safe_dump(raw))
    else:
        spec.write_text(yaml.safe_dump(raw))
    argv = {
        "set_value": ["validate", str(spec), "--set", f"train.epochs={HUGE}"],
        "argparse_value": ["extend", str(tmp_path), "--more", HUGE],
        "describe_value": ["describe", f'{{"noise_std": "{HUGE}"}}'],
    }.get(case, ["validate", str(spec)])
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[:500]
    assert len(lines[0]) <= len("error: ") + MAX_MESSAGE, lines[0]
