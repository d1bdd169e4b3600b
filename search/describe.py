"""``describe``: one model's layers and parameter counts, from a spec or from model settings."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from search._validate import echo
from search.errors import SpecError


@dataclass
class ModelDescription:
    """A built model's settings (defaults filled in), summary and parameter counts."""

    settings: dict[str, Any]
    summary: str
    total_params: int
    trainable_params: int
    non_trainable_params: int


def describe_settings(source: str) -> dict[str, Any]:
    """The model settings ``source`` names.

    Args:
        source: A JSON object of model settings, a ``.json`` file holding one, or a spec YAML
            (its fixed model settings with the baseline's values, and for searched keys
            without one, their first candidate).

    Raises:
        SpecError: When the JSON or the spec is invalid, or the settings are not an object.
    """
    text = source.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as err:
            raise SpecError(f"describe: invalid JSON ({err})") from None
    elif source.endswith(".json"):
        try:
            with open(source, encoding="utf-8") as handle:
                value = json.load(handle)
        except FileNotFoundError:
            raise SpecError(f"{source}: file not found") from None
        except ValueError as err:
            raise SpecError(f"{source}: invalid JSON ({err})") from None
    else:
        from model_zoo import MODEL_KEYS
        from search.spec import load_spec

        spec = load_spec(source)
        # The baseline also holds searched training settings (learning_rate...): not the model's.
        value = {
            **spec.model,
            **{k: v for k, v in spec.baseline_point().items() if k in MODEL_KEYS},
        }
        # A searched key without an original-method value: describe its first candidate.
        for key, dist in spec.space.items():
            if key not in value and key in MODEL_KEYS:
                value[key] = dist.endpoints()[0]
    if not isinstance(value, dict):
        raise SpecError(f"describe: model settings must be a JSON object, got {echo(value)}")
    return value


def describe_model_settings(
    settings: dict[str, Any], *, input_shape: tuple[int, ...], num_classes: int
) -> ModelDescription:
    """Builds the model ``settings`` describe and counts its parameters.

    Raises:
        SpecError: On an input shape that is not three positive ints, or fewer than 2
            classes.
        ModelConfigError: On a model setting that breaks its rule.
    """
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise SpecError(
            f"input_shape: must be three positive integers H,W,C, got {echo(input_shape)}",
            key="input_shape",
        )
    if num_classes < 2:
        raise SpecError(f"num_classes: must be an int >= 2, got {num_classes}", key="num_classes")
    from model_zoo import ModelConfig, build_model, describe_model, model_summary

    config = ModelConfig.from_mapping(settings)
    model = build_model(config, input_shape=input_shape, num_classes=num_classes)
    counts = describe_model(model)
    return ModelDescription(
        settings=asdict(config),
        summary=model_summary(model),
        total_params=counts["total_params"],
        trainable_params=counts["trainable_params"],
        non_trainable_params=counts["non_trainable_params"],
    )
