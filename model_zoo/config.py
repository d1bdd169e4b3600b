"""``ModelConfig``: the model settings a search can vary, checked one rule at a time.

No Keras import here: the search spec validates model settings on the driver before Ray or
TensorFlow start.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from model_zoo.backbones import get_backbone
from model_zoo.errors import ModelConfigError

WEIGHTS_CHOICES = ("imagenet", "auto", "none")
POOLINGS = ("flatten", "avg")
# What keras.layers.UpSampling2D accepts as `interpolation` (Keras 3.15 with TensorFlow): nearest
# repeats pixels (the original method); the others resize smoothly, as a resize before the model
# would.
UPSAMPLE_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos3", "lanczos5", "area")
# The ones TensorFlow's XLA compiler has a kernel for; the others (ResizeBicubic, ResizeArea,
# ScaleAndTranslate) fail to compile, so a model using them must run without XLA.
XLA_INTERPOLATIONS = ("nearest", "bilinear")


def _is_int(value: Any) -> bool:
    # bool is a subclass of int, but `upsample: true` is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _check_int(key: str, value: Any, low: int) -> None:
    if not _is_int(value) or value < low:
        raise ModelConfigError(f"{key}: must be an int >= {low}, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The settings of one model: input model, backbone and head.

    Attributes:
        backbone: A name registered in ``BACKBONES``: ``vgg16``, ``vgg19`` or ``small_cnn``.
        weights: ``imagenet`` (downloaded into the Keras cache), ``none`` (random init), ``auto``
            (imagenet if cached or downloadable, else random init with one warning) or the path
            of the backbone's notop weights file (``.h5``), for clusters without internet.
        noise_std: Standard deviation of the GaussianNoise on the [0, 1] input; 0 omits it.
        upsample: Integer UpSampling2D factor; 1 omits it.
        upsample_interpolation: How UpSampling2D enlarges the image: ``nearest`` (repeats
            pixels, the original method) or a smooth resize (``bilinear``, ``bicubic``,
            ``lanczos3``, ``lanczos5``, ``area``). No parameters either way; unused when
            ``upsample == 1``.
        input_convs: Number of "same"-padded Conv2D layers before the backbone. Convs 1..N-1
            have ``input_conv_filters`` filters and ReLU; conv N has 3 filters and a sigmoid so
            that it hands the backbone an RGB image in [0, 1], which is what the backbone's
            preprocessing and pretrained first conv expect.
        input_conv_filters: Filters of input convs 1..N-1 (unused when ``input_convs <= 1``).
        input_conv_kernel: Kernel size of every input conv.
        freeze: How many of the backbone's layers, counting its InputLayer, are not trainable
            (VGG16: 4 freezes block1, 19 freezes everything); or a layer name such as
            ``block4_pool``, which freezes up to and including that layer.
        pooling: ``flatten`` or ``avg`` (global average pooling) before the dense head.
        dense_units: Units of the ReLU dense layer of the head.
        dropout: Dropout rate after the dense layer, in [0, 1).
    """

    backbone: str = "vgg16"
    weights: str = "imagenet"
    noise_std: float = 0.01
    upsample: int = 2
    upsample_interpolation: str = "nearest"
    input_convs: int = 0
    input_conv_filters: int = 16
    input_conv_kernel: int = 3
    freeze: int | str = 0
    pooling: str = "flatten"
    dense_units: int = 256
    dropout: float = 0.75

    def __post_init__(self) -> None:
        # Field order: the backbone first, since the weights and freeze rules depend on it.
        spec = get_backbone(self.backbone)

        if not isinstance(self.weights, str) or not self.weights:
            raise ModelConfigError(
                f"weights: must be one of {list(WEIGHTS_CHOICES)} or a path to a .h5 weights "
                f"file, got {self.weights!r}"
            )
        if self.weights not in WEIGHTS_CHOICES and not self.weights.endswith((".h5", ".hdf5")):
            raise ModelConfigError(
                f"weights: must be one of {list(WEIGHTS_CHOICES)} or a path to a .h5 weights "
                f"file, got {self.weights!r}"
            )
        if self.weights == "imagenet" and spec.weights_file is None:
            raise ModelConfigError(
                f"weights: backbone {self.backbone} has no imagenet weights; use 'none', 'auto' "
                f"or a weights file, got 'imagenet'"
            )

        if not _is_number(self.noise_std) or self.noise_std < 0:
            raise ModelConfigError(f"noise_std: must be a float >= 0, got {self.noise_std!r}")
        object.__setattr__(self, "noise_std", float(self.noise_std))

        _check_int("upsample", self.upsample, 1)
        # Checked even when upsample is 1: a typo should not wait until upsample is searched.
        if self.upsample_interpolation not in UPSAMPLE_INTERPOLATIONS:
            raise ModelConfigError(
                f"upsample_interpolation: must be one of {list(UPSAMPLE_INTERPOLATIONS)}, "
                f"got {self.upsample_interpolation!r}"
            )
        _check_int("input_convs", self.input_convs, 0)
        _check_int("input_conv_filters", self.input_conv_filters, 1)
        _check_int("input_conv_kernel", self.input_conv_kernel, 1)

        self._check_freeze()

        if self.pooling not in POOLINGS:
            raise ModelConfigError(
                f"pooling: must be one of {list(POOLINGS)}, got {self.pooling!r}"
            )
        _check_int("dense_units", self.dense_units, 1)
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise ModelConfigError(f"dropout: must be a float in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))

    def _check_freeze(self) -> None:
        spec = get_backbone(self.backbone)
        if isinstance(self.freeze, str):
            if self.freeze not in spec.layer_names:
                close = difflib.get_close_matches(self.freeze, spec.layer_names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ModelConfigError(
                    f"freeze: must be a layer of backbone {self.backbone} "
                    f"({', '.join(spec.layer_names)}), got {self.freeze!r}{hint}"
                )
        elif not _is_int(self.freeze):
            raise ModelConfigError(
                f"freeze: must be an int or a layer name of backbone {self.backbone}, "
                f"got {self.freeze!r}"
            )
        elif not 0 <= self.freeze <= spec.max_freeze:
            raise ModelConfigError(
                f"freeze: must be in [0, {spec.max_freeze}] for backbone {self.backbone}, "
                f"got {self.freeze!r}"
            )

    @property
    def xla_compatible(self) -> bool:
        """Whether XLA can compile the model: no UpSampling2D, or one XLA has a kernel for."""
        return self.upsample == 1 or self.upsample_interpolation in XLA_INTERPOLATIONS

    @property
    def freeze_depth(self) -> int:
        """``freeze`` as a number of backbone layers, counting its InputLayer."""
        if isinstance(self.freeze, str):
            # Index 0 of layer_names is layer 1 of the trunk (layer 0 is its InputLayer), and
            # freezing "up to and including" it means freezing index + 2 layers.
            return get_backbone(self.backbone).layer_names.index(self.freeze) + 2
        return self.freeze

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> ModelConfig:
        """Builds a config from a mapping of settings; missing ones take their defaults.

        Args:
            mapping: Setting name to value, e.g. the ``model`` section of a spec merged with
                one trial's sampled values.

        Returns:
            The validated config.

        Raises:
            ModelConfigError: On an unknown key (the closest valid key is suggested) or a value
                that breaks its rule. The message starts with the key, e.g.
                ``upsample: must be an int >= 1, got 0``.
        """
        if not isinstance(mapping, Mapping):
            raise ModelConfigError(f"model: must be a mapping of settings, got {mapping!r}")
        for key in mapping:
            if key not in MODEL_KEYS:
                # The project's one phrasing of an unknown key (as search/_validate.py's).
                close = difflib.get_close_matches(str(key), MODEL_KEYS, n=1)
                hint = (
                    f"did you mean `{close[0]}`?"
                    if close
                    else f"valid keys: {', '.join(MODEL_KEYS)}"
                )
                raise ModelConfigError(f"model: unknown key `{key}`; {hint}")
        return cls(**mapping)


MODEL_KEYS: tuple[str, ...] = tuple(f.name for f in fields(ModelConfig))
