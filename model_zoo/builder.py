"""``build_model``: input model, the backbone's own preprocessing, the backbone, the head.

The model takes [0, 1] RGB (or grayscale) images and lays out, in order:

- ``input_noise`` GaussianNoise (omitted when ``noise_std == 0``),
- ``input_upsample`` UpSampling2D with ``upsample_interpolation`` (omitted when
  ``upsample == 1``),
- ``input_rgb`` (grayscale inputs without input convs only: the channel repeated three times),
- ``input_conv_1`` ... ``input_conv_N`` ("same" Conv2D; the last has 3 filters and a sigmoid),
- ``preprocess_bgr`` / ``preprocess_<mode>``: the backbone's preprocessing, zero parameters,
- the backbone's layers under Keras's names (``block1_conv1`` ... ``block5_pool`` for VGG),
- ``head_flatten`` or ``head_pool``, ``head_dense``, ``head_dropout``, ``predictions``.

Only built-in layers and ``keras.ops`` are used, so a saved ``.keras`` file loads with plain
``keras.saving.load_model(path)`` where this package is not installed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from model_zoo.backbones import PREPROCESSING, BackboneSpec, get_backbone
from model_zoo.config import ModelConfig
from model_zoo.errors import ModelConfigError
from model_zoo.weights import resolve_weights

if TYPE_CHECKING:
    import keras

# Largest height or width after upsampling: beyond this an "upsample" value is a typo, not a
# model that fits on an accelerator.
MAX_IMAGE_SIZE = 1024


def _as_config(config: ModelConfig | Mapping[str, Any]) -> ModelConfig:
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, Mapping):
        return ModelConfig.from_mapping(config)
    raise ModelConfigError(f"model: must be a ModelConfig or a mapping, got {config!r}")


def _check_input_shape(
    input_shape: Any, config: ModelConfig, spec: BackboneSpec
) -> tuple[int, int, int]:
    """Checks the (height, width, channels) of the images against the config and backbone."""
    if (
        not isinstance(input_shape, (tuple, list))
        or len(input_shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in input_shape)
    ):
        raise ModelConfigError(
            f"input_shape: must be (height, width, channels) of ints >= 1, got {input_shape!r}"
        )
    height, width, channels = input_shape
    if config.input_convs == 0 and channels not in (1, 3):
        raise ModelConfigError(
            f"input_shape: must have 1 or 3 channels when input_convs is 0 (the backbone takes "
            f"RGB), got {tuple(input_shape)!r}"
        )
    if max(height, width) > MAX_IMAGE_SIZE:
        raise ModelConfigError(
            f"input_shape: height and width must be <= {MAX_IMAGE_SIZE}, "
            f"got {tuple(input_shape)!r}"
        )
    up = config.upsample
    small, large = min(height, width), max(height, width)
    if small * up < spec.min_size:
        raise ModelConfigError(
            f"upsample: backbone {config.backbone} needs at least {spec.min_size}x"
            f"{spec.min_size} pixels after upsampling, {height}x{width} inputs x{up} give "
            f"{height * up}x{width * up}; use upsample >= {math.ceil(spec.min_size / small)}, "
            f"got {up}"
        )
    if large * up > MAX_IMAGE_SIZE:
        raise ModelConfigError(
            f"upsample: must keep images <= {MAX_IMAGE_SIZE}x{MAX_IMAGE_SIZE} after upsampling, "
            f"{height}x{width} inputs x{up} give {height * up}x{width * up}; use upsample <= "
            f"{MAX_IMAGE_SIZE // large}, got {up}"
        )
    return height, width, channels


def _build_trunk(
    config: ModelConfig, spec: BackboneSpec, shape: tuple[int, int, int]
) -> keras.Model:
    """Builds the backbone for ``shape``, loads its weights and freezes its first layers."""
    weights_path = resolve_weights(config.backbone, config.weights)
    trunk = spec.build(shape)
    names = tuple(layer.name for layer in trunk.layers[1:])
    if names != spec.layer_names:
        raise ValueError(
            f"backbone {config.backbone}: the built layers {names} differ from the registered "
            f"layer_names {spec.layer_names}"
        )
    if weights_path is not None:
        try:
            trunk.load_weights(weights_path)
        except Exception as err:  # a wrong or corrupt file: Keras raises ValueError or OSError
            reason = " ".join(str(err).split())
            reason = reason if len(reason) <= 200 else reason[:197] + "..."
            raise ModelConfigError(
                f"weights: cannot load {weights_path} into backbone {config.backbone} ({reason}), "
                f"got {config.weights!r}"
            ) from None
    for layer in trunk.layers[: config.freeze_depth]:
        layer.trainable = False
    return trunk


def _apply_trunk(trunk: keras.Model, x: keras.KerasTensor) -> keras.KerasTensor:
    """Lays the trunk's layers out one by one on ``x``, so they appear by name in the model.

    Each layer is copied (config, weights, trainable flag) rather than called again: a layer
    shared with the throwaway trunk would have two graphs, and ``layer.output`` would point at
    the wrong one. A trunk that is not a single chain (e.g. with skip connections) is called as
    one nested layer instead; ``freeze`` works on its layers either way.
    """
    layers = trunk.layers
    try:
        is_chain = all(layers[i].input is layers[i - 1].output for i in range(1, len(layers)))
    except (AttributeError, ValueError):  # a layer used twice has no single input
        is_chain = False
    if not is_chain:
        return trunk(x)
    for layer in layers[1:]:
        copy = layer.__class__.from_config(layer.get_config())
        x = copy(x)
        copy.set_weights(layer.get_weights())
        copy.trainable = layer.trainable
    return x


def _preprocess(x: keras.KerasTensor, mode: str) -> keras.KerasTensor:
    """The backbone's input preprocessing, in the graph and with zero parameters.

    No Lambda and no custom layer, so that the saved model loads anywhere in safe mode: a
    ``keras.ops.flip`` node for RGB -> BGR and a ``Rescaling`` with per-channel offsets.
    """
    import keras

    reverse, scale, offset = PREPROCESSING[mode]
    if reverse:
        x = keras.ops.flip(x, axis=-1)
        # Ops get automatic names ("flip_3"); a fixed one reads better in the summary and is
        # saved with the model. Best effort: _keras_history is Keras's own bookkeeping.
        history = getattr(x, "_keras_history", None)
        if history is not None:
            history.operation.name = "preprocess_bgr"
    if mode != "none":
        x = keras.layers.Rescaling(scale, offset=offset, name=f"preprocess_{mode}")(x)
    return x


def build_model(
    config: ModelConfig | Mapping[str, Any],
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
) -> keras.Model:
    """Builds the (uncompiled) fine-tuning model for one config.

    Args:
        config: A ``ModelConfig``, or a mapping of its settings (missing ones take defaults).
        input_shape: ``(height, width, channels)`` of the [0, 1]-scaled images; 1 or 3
            channels, or any number when ``input_convs > 0``.
        num_classes: Number of classes of the softmax output.

    Returns:
        A functional ``keras.Model`` from [0, 1] images to class probabilities (float32 even
        under a mixed-precision policy).

    Raises:
        ModelConfigError: If a setting is invalid, the images are too small for the backbone or
            too large after upsampling, or the weights cannot be found or loaded.
    """
    config = _as_config(config)
    spec = get_backbone(config.backbone)
    height, width, channels = _check_input_shape(input_shape, config, spec)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ModelConfigError(f"num_classes: must be an int >= 2, got {num_classes!r}")

    import keras

    up = config.upsample
    trunk = _build_trunk(config, spec, (height * up, width * up, 3))

    inputs = keras.Input(shape=(height, width, channels), name="image")
    x = inputs
    if config.noise_std > 0:
        x = keras.layers.GaussianNoise(config.noise_std, name="input_noise")(x)
    if up > 1:
        upsample = keras.layers.UpSampling2D(
            up, interpolation=config.upsample_interpolation, name="input_upsample"
        )
        # Keras's jit_compile="auto" turns XLA on for GPUs unless a layer says it cannot be
        # compiled (as Keras's own RandomZoom does); a smooth resize without an XLA kernel
        # would otherwise fail at the first step.
        upsample.supports_jit = config.xla_compatible
        x = upsample(x)
    if channels == 1 and config.input_convs == 0:
        x = keras.layers.Concatenate(name="input_rgb")([x, x, x])
    for i in range(1, config.input_convs + 1):
        last = i == config.input_convs
        x = keras.layers.Conv2D(
            3 if last else config.input_conv_filters,
            config.input_conv_kernel,
            padding="same",
            activation="sigmoid" if last else "relu",
            name=f"input_conv_{i}",
        )(x)

    x = _preprocess(x, spec.preprocessing)
    x = _apply_trunk(trunk, x)

    if config.pooling == "flatten":
        x = keras.layers.Flatten(name="head_flatten")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = keras.layers.Dense(config.dense_units, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(config.dropout, name="head_dropout")(x)
    # float32 so the softmax and the loss stay stable under a mixed-precision policy.
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="predictions"
    )(x)
    return keras.Model(inputs, outputs, name=f"{config.backbone}_finetune")


def describe_model(model: keras.Model) -> dict[str, int]:
    """Parameter counts of a model, as ``model.summary()`` reports them.

    Returns:
        ``{"total_params": ..., "trainable_params": ..., "non_trainable_params": ...}``.
    """
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    non_trainable = sum(math.prod(w.shape) for w in model.non_trainable_weights)
    return {
        "total_params": trainable + non_trainable,
        "trainable_params": trainable,
        "non_trainable_params": non_trainable,
    }


def model_summary(model: keras.Model, *, line_length: int | None = None) -> str:
    """The text of ``model.summary()`` as a string instead of printed.

    Args:
        model: The model.
        line_length: Total width of the table; Keras's default when ``None``.
    """
    parts: list[str] = []
    model.summary(line_length=line_length, print_fn=parts.append)
    return "\n".join(parts)
