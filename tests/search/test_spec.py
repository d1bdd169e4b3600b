"""The experiment spec: parsing, defaults, and the exact text of every error."""

from __future__ import annotations

import copy

import pytest
import yaml

from search._yaml import apply_overrides
from search.errors import SpecError
from search.space import parse_distribution
from search.spec import QUICKSTART_PATH, dump_spec, load_spec, load_spec_dict

BASE = {
    "name": "t",
    "dataset": {"name": "digits"},
    "model": {"backbone": "vgg16", "weights": "none"},
    "train": {"epochs": 3},
    "space": {
        "noise_std": {"loguniform": [0.001, 0.1]},
        "upsample": {"choice": [1, 2, 3]},
        "input_convs": {"int": [0, 2]},
        "freeze": {"choice": [0, 4, 7]},
        "dropout": {"uniform": [0.3, 0.8]},
    },
}


def spec_with(**changes):
    raw = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = raw
        parts = path.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if value is KeyError:
            node.pop(parts[-1])
        else:
            node[parts[-1]] = value
    return raw


def test_valid_spec_loads_with_defaults():
    spec = load_spec_dict(BASE)
    assert spec.max_t == 3
    assert spec.search.num_samples == 16 and spec.search.baseline is True
    assert spec.scheduler.grace_period == 1 and spec.scheduler.reduction_factor == 3
    assert spec.resources.gpus_per_trial == "auto"
    assert set(spec.space) == set(BASE["space"])
    assert spec.space["input_convs"].kind == "int"


def test_fixed_config_excludes_searched_keys():
    spec = load_spec_dict(BASE)
    fixed = spec.fixed_config()
    assert "upsample" not in fixed and "noise_std" not in fixed
    assert fixed["backbone"] == "vgg16" and fixed["epochs"] == 3


def test_baseline_point_is_the_original_method_for_searched_keys():
    spec = load_spec_dict(BASE)
    assert spec.baseline_point() == {
        "noise_std": 0.01,
        "upsample": 2,
        "input_convs": 0,
        "freeze": 0,
        "dropout": 0.75,
    }


def test_searched_upsample_interpolation_starts_the_baseline_at_nearest():
    spec = load_spec_dict(
        spec_with(space__upsample_interpolation={"choice": ["nearest", "bilinear", "bicubic"]})
    )
    assert spec.baseline_point()["upsample_interpolation"] == "nearest"
    assert spec.space["upsample_interpolation"].values == ("nearest", "bilinear", "bicubic")


def test_jit_compile_true_is_fine_with_xla_interpolations_or_without_upsampling():
    load_spec_dict(spec_with(train__jit_compile=True, model__upsample_interpolation="bilinear"))
    load_spec_dict(
        spec_with(
            train__jit_compile=True,
            space__upsample=KeyError,
            model__upsample=1,
            model__upsample_interpolation="bicubic",
        )
    )


def test_dump_round_trips():
    spec = load_spec_dict(BASE)
    again = load_spec_dict(yaml.safe_load(dump_spec(spec)))
    assert again == spec


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"space__upsample": {"int": [5, 2]}},
            r"^space\.upsample\.int: `low <= high` must hold, got low=5, high=2$",
        ),
        (
            {"space__dropout": {"uniform": [0.5, 0.5]}},
            r"space\.dropout\.uniform: `low < high` must hold, got low=0.5, high=0.5",
        ),
        (
            {"space__noise_std": {"loguniform": [0, 0.1]}},
            r"space\.noise_std\.loguniform: `low > 0` must hold, got low=0",
        ),
        ({"space__noise_std": {"uniform": [-0.1, 0.1]}}, r"space\.noise_std: .*-0\.1"),
        ({"space__upsample": {"choice": []}}, r"space\.upsample\.choice: must be a non-empty"),
        (
            {"space__upsample": {"normal": [1, 2]}},
            r"space\.upsample: unknown distribution `normal`",
        ),
        ({"space__upsample": [1, 2]}, r"space\.upsample: a list is ambiguous"),
        ({"space__freeze": {"choice": [0, 40]}}, r"space\.freeze: .*40"),
        (
            {"space__upsampel": {"choice": [1]}},
            r"space: unknown key `upsampel`; did you mean "
            r"`upsample`\?",
        ),
        ({"trian": {}}, r"spec: unknown key `trian`; did you mean `train`\?"),
        ({"train__epochs": 0}, r"train\.epochs: must be an int >= 1, got 0"),
        ({"train__epochs": True}, r"train\.epochs: must be an int >= 1, got True"),
        (
            {"train__optimizer": "rmsprop"},
            r"train\.optimizer: must be one of sgd, adam, "
            r"got 'rmsprop'",
        ),
        ({"train__learning_rate": -1}, r"train\.learning_rate: must be a float > 0, got -1"),
        ({"search": {"num_samples": 0}}, r"search\.num_samples: must be an int >= 1, got 0"),
        ({"search": {"budget_gpu_hours": -2}}, r"search\.budget_gpu_hours: must be a float > 0"),
        (
            {"scheduler": {"reduction_factor": 1}},
            r"scheduler\.reduction_factor: must be a "
            r"number >= 2, got 1",
        ),
        (
            {"scheduler": {"break_ties": 1}},
            r"scheduler\.break_ties: must be true or false, "
            r"got 1",
        ),
        (
            {"scheduler": {"grace_period": 5}},
            r"scheduler\.grace_period: `grace_period <= "
            r"max_t` must hold",
        ),
        (
            {"resources": {"gpus_per_trial": -1}},
            r"resources\.gpus_per_trial: must be a float "
            r">= 0, got -1",
        ),
        ({"resources": {"gpus_per_trial": 1.5}}, r"resources\.gpus_per_trial: above 1 must be"),
        ({"resources": {"cpus_per_trial": 0}}, r"resources\.cpus_per_trial: must be a float > 0"),
        ({"model__pooling": "max"}, r"model\.pooling"),
        ({"name": "a/b"}, r"name: must be a non-empty string without '/'"),
        ({"dataset": KeyError}, r"dataset: is required"),
        (
            {
                "space__learning_rate": {"uniform": [0.1, 0.2]},
                "train__learning_rate": 0.01,
                "search": {"baseline": True},
            },
            r"search\.baseline: the baseline's learning_rate=0\.01 must lie in "
            r"space\.learning_rate",
        ),
        (
            {"space__upsample": {"choice": [3, 4]}, "search": {"baseline": True}},
            r"search\.baseline: the original method's upsample=2 must lie in space\.upsample",
        ),
        ({"storage": 3}, r"storage: must be a path or URI string, got 3"),
        (
            {"train__checkpoint": "rungs"},
            r"^train\.checkpoint: must be one of asha_rungs, "
            r"every_epoch, got 'rungs'$",
        ),
        (
            {"train__checkpoint_minutes": 0},
            r"^train\.checkpoint_minutes: must be a float > 0, "
            r"got 0$",
        ),
        (
            {"search__keep_checkpoints": 0},
            r"^search\.keep_checkpoints: must be an int >= 1, "
            r"got 0$",
        ),
        (
            {"space__checkpoint": {"choice": ["asha_rungs", "every_epoch"]}},
            r"^space: unknown key `checkpoint`",
        ),
        ({"name": ""}, r"name: must be a non-empty string without '/'"),
        (
            {"search__budget_gpu_hours": 1, "resources__gpus_per_trial": 0},
            r"search\.budget_gpu_hours: trials hold no GPU \(resources\.gpus_per_trial is 0\), "
            r"so GPU-hours never accrue; use search\.budget_device_hours, got "
            r"budget_gpu_hours=1",
        ),
        ({"search__budget_device_hours": -1}, r"search\.budget_device_hours: must be"),
        (
            {"space__upsample_interpolation": {"choice": ["nearest", "cubic"]}},
            r"^space\.upsample_interpolation: must be one of \['nearest', 'bilinear', 'bicubic', "
            r"'lanczos3', 'lanczos5', 'area'\], got 'cubic'$",
        ),
        (
            {"model__upsample_interpolation": "linear"},
            r"^model\.upsample_interpolation: must be one of .*, got 'linear'$",
        ),
        (
            {
                "space__upsample_interpolation": {"choice": ["bilinear", "bicubic"]},
                "search__baseline": True,
            },
            r"^search\.baseline: the original method's upsample_interpolation='nearest' must lie "
            r"in space\.upsample_interpolation",
        ),
        (
            {
                "space__upsample_interpolation": {"choice": ["nearest", "lanczos3"]},
                "train__jit_compile": True,
            },
            r"^train\.jit_compile: true needs upsample_interpolation in \['nearest', 'bilinear'\] "
            r"\(XLA has no kernel for the others; use jit_compile: auto\), "
            r"got upsample_interpolation='lanczos3'$",
        ),
    ],
)
def test_bad_spec_gets_one_line_error(changes, message):
    with pytest.raises(SpecError, match=message) as info:
        load_spec_dict(spec_with(**changes))
    assert "\n" not in str(info.value)


def test_conditional_keys_are_accepted_and_baseline_can_be_turned_off():
    raw = spec_with(
        space__input_conv_filters={"choice": [8, 16]},
        space__upsample={"choice": [3, 4]},
        search={"baseline": False},
    )
    spec = load_spec_dict(raw)
    assert spec.baseline_point()["upsample"] == 2  # defined, but not used with baseline off
    assert spec.search.baseline is False


def test_default_baseline_outside_the_space_is_dropped_with_one_note():
    spec = load_spec_dict(spec_with(space__upsample={"choice": [3, 4]}))
    assert spec.search.baseline is False
    assert spec.notes == (
        "search.baseline: running without the baseline trial, the original "
        "method's upsample=2 lies outside space.upsample "
        "({'choice': [3, 4]})",
    )
    # Written down, the spec's own search.baseline: false round-trips without a note.
    assert load_spec_dict(spec.to_dict()).notes == ()
    assert load_spec_dict(BASE).notes == () and load_spec_dict(BASE).search.baseline is True


def test_value_written_and_searched_is_searched_and_starts_the_baseline():
    raw = spec_with(
        space__learning_rate={"loguniform": [0.0001, 0.05]},
        train__learning_rate=0.01,
        model__dropout=0.5,
    )
    spec = load_spec_dict(raw)
    assert "learning_rate" not in spec.fixed_config() and "dropout" not in spec.fixed_config()
    # The original method's dropout wins for the baseline; learning_rate is the written one.
    assert spec.baseline_point()["learning_rate"] == 0.01
    assert spec.baseline_point()["dropout"] == 0.75
    assert load_spec_dict(yaml.safe_load(dump_spec(spec))) == spec


def test_plain_value_in_space_is_fixed():
    dist = parse_distribution(0.5, "space.dropout")
    assert dist.kind == "fixed" and dist.contains(0.5) and not dist.contains(0.4)


def test_overrides_are_literals_and_type_checked(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(BASE))
    spec = load_spec(path, ["train.epochs=5", "search.num_samples=2", "model.pooling=avg"])
    assert spec.train.epochs == 5 and spec.search.num_samples == 2
    assert spec.model["pooling"] == "avg"
    with pytest.raises(SpecError, match=r"train\.epochs: must be an int >= 1, got 'five'"):
        load_spec(path, ["train.epochs=five"])
    with pytest.raises(SpecError, match=r"--set: must look like key.path=value"):
        load_spec(path, ["train.epochs"])
    # Nothing is executed: a Python expression stays a string and fails the type check.
    with pytest.raises(SpecError, match=r"train\.epochs: must be an int"):
        load_spec(path, ["train.epochs=__import__('os').getpid()"])


def test_override_into_a_scalar_is_an_error():
    with pytest.raises(SpecError, match=r"`name` is not a section"):
        apply_overrides(BASE, ["name.x=1"])


def test_yaml_errors_and_missing_files_are_one_line(tmp_path):
    with pytest.raises(SpecError, match=r"nope\.yaml: file not found"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match=r"bad\.yaml: invalid YAML at line"):
        load_spec(bad)
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match=r"must be a YAML mapping"):
        load_spec(not_mapping)


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.getpid []\ndataset: {name: digits}\n")
    with pytest.raises(SpecError, match=r"invalid YAML"):
        load_spec(evil)


def test_shipped_configs_validate():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for path in sorted((root / "configs").glob("*.yaml")):
        load_spec(path)
    # The quickstart in configs/ is the one shipped inside the package.
    assert (root / "configs" / "quickstart.yaml").read_text() == QUICKSTART_PATH.read_text()
    assert load_spec(None).name == "quickstart"


def test_validate_says_in_one_line_that_the_baseline_is_dropped_and_refuses_when_asked(
    tmp_path, capsys
):
    from search.cli import main

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_with(space__upsample={"choice": [3, 4]})))
    assert main(["validate", str(path)]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "running without the baseline trial" in notes[0]
    assert main(["validate", str(path), "--set", "search.baseline=true"]) == 2
    assert "must lie in space.upsample" in capsys.readouterr().err
