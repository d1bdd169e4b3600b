"""The backbone registry: how to build each pretrained trunk, and what it expects as input.

Building a trunk imports Keras; everything else here (layer names, sizes, weight file names) is
plain data, so ``ModelConfig`` can check a ``freeze`` depth without importing TensorFlow.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from model_zoo.errors import ModelConfigError

if TYPE_CHECKING:
    import keras

# Caffe-style ImageNet preprocessing (keras.applications.imagenet_utils, mode="caffe"): the
# mean pixel of ImageNet in BGR order, on the [0, 255] scale.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# mode="torch": per-channel mean and standard deviation in RGB order, on the [0, 1] scale.
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)

# What each preprocessing mode does to [0, 1] RGB pixels, as (reverse channels to BGR, scale,
# offset): after the optional channel flip, x * scale + offset. These are the four modes of
# keras.applications.imagenet_utils.preprocess_input, rewritten for [0, 1] inputs so they fit
# in one zero-parameter Rescaling layer.
PREPROCESSING: dict[str, tuple[bool, float | tuple[float, ...], float | tuple[float, ...]]] = {
    "caffe": (True, 255.0, tuple(-m for m in CAFFE_MEAN_BGR)),
    "tf": (False, 2.0, -1.0),
    "torch": (
        False,
        tuple(1.0 / s for s in TORCH_STD_RGB),
        tuple(-m / s for m, s in zip(TORCH_MEAN_RGB, TORCH_STD_RGB)),
    ),
    "none": (False, 1.0, 0.0),
}

_KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
VGG16_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG16_WEIGHTS_URL = _KERAS_WEIGHTS_URL + "vgg16/" + VGG16_WEIGHTS_FILE
VGG16_WEIGHTS_HASH = "6d6bbae143d832006294945121d1f1fc"
VGG19_WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG19_WEIGHTS_URL = _KERAS_WEIGHTS_URL + "vgg19/" + VGG19_WEIGHTS_FILE
VGG19_WEIGHTS_HASH = "253f8cb515780f3b799900260a226db6"

# small_cnn: one 3x3 conv and one 2x2 max pool per block; few filters so CPU tests stay fast.
SMALL_CNN_FILTERS = (16, 32, 64)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone trunk (the network without its classifier).

    Attributes:
        build: Builds the trunk, randomly initialised, for an ``(height, width, 3)`` input.
            Pretrained weights are loaded afterwards with ``trunk.load_weights(path)``. The
            trunk's layers should form one chain (as in VGG) so that ``build_model`` can lay
            them out by name in the top-level model; any other trunk is nested as one layer.
        layer_names: Names of the trunk's layers after its ``InputLayer``, in Keras's order.
            ``freeze=n`` freezes the first ``n`` layers counting the ``InputLayer``, so the
            valid range is ``[0, len(layer_names) + 1]``.
        preprocessing: A key of ``PREPROCESSING``: what the pretrained weights expect.
        min_size: The smallest height and width the trunk accepts.
        weights_file: File name of the ImageNet weights without the top (in the Keras cache
            directory, ``$KERAS_HOME/models``); ``None`` if there are no pretrained weights.
        weights_url: Where Keras downloads ``weights_file`` from.
        weights_hash: The md5 or sha256 of ``weights_file`` (checked by ``keras.utils.get_file``).
    """

    build: Callable[[tuple[int, int, int]], keras.Model]
    layer_names: tuple[str, ...]
    preprocessing: str = "none"
    min_size: int = 32
    weights_file: str | None = None
    weights_url: str | None = None
    weights_hash: str | None = None

    @property
    def max_freeze(self) -> int:
        """The largest valid ``freeze`` depth: every layer, the ``InputLayer`` included."""
        return len(self.layer_names) + 1


def _vgg_layer_names(convs_per_block: tuple[int, ...]) -> tuple[str, ...]:
    names: list[str] = []
    for block, convs in enumerate(convs_per_block, start=1):
        names += [f"block{block}_conv{i}" for i in range(1, convs + 1)]
        names.append(f"block{block}_pool")
    return tuple(names)


VGG16_LAYERS = _vgg_layer_names((2, 2, 3, 3, 3))
VGG19_LAYERS = _vgg_layer_names((2, 2, 4, 4, 4))
SMALL_CNN_LAYERS = _vgg_layer_names((1,) * len(SMALL_CNN_FILTERS))


def _build_vgg16(input_shape: tuple[int, int, int]) -> keras.Model:
    import keras

    return keras.applications.VGG16(include_top=False, weights=None, input_shape=input_shape)


def _build_vgg19(input_shape: tuple[int, int, int]) -> keras.Model:
    import keras

    return keras.applications.VGG19(include_top=False, weights=None, input_shape=input_shape)


def _build_small_cnn(input_shape: tuple[int, int, int]) -> keras.Model:
    import keras

    inputs = keras.Input(shape=input_shape)
    x = inputs
    for block, filters in enumerate(SMALL_CNN_FILTERS, start=1):
        x = keras.layers.Conv2D(
            filters, 3, padding="same", activation="relu", name=f"block{block}_conv1"
        )(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name="small_cnn")


BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec(
        build=_build_vgg16,
        layer_names=VGG16_LAYERS,
        preprocessing="caffe",
        min_size=32,
        weights_file=VGG16_WEIGHTS_FILE,
        weights_url=VGG16_WEIGHTS_URL,
        weights_hash=VGG16_WEIGHTS_HASH,
    ),
    "vgg19": BackboneSpec(
        build=_build_vgg19,
        layer_names=VGG19_LAYERS,
        preprocessing="caffe",
        min_size=32,
        weights_file=VGG19_WEIGHTS_FILE,
        weights_url=VGG19_WEIGHTS_URL,
        weights_hash=VGG19_WEIGHTS_HASH,
    ),
    # No pretrained weights: for tests and CPU demos. Three 2x2 pools need at least 8x8.
    "small_cnn": BackboneSpec(
        build=_build_small_cnn,
        layer_names=SMALL_CNN_LAYERS,
        preprocessing="none",
        min_size=2 ** len(SMALL_CNN_FILTERS),
    ),
}


def register_backbone(name: str, spec: BackboneSpec, *, replace: bool = False) -> None:
    """Adds a backbone to ``BACKBONES`` so that ``backbone: <name>`` can build it.

    Args:
        name: The value of the ``backbone`` setting that selects it.
        spec: How to build it.
        replace: Allow replacing a backbone registered under the same name.

    Raises:
        ValueError: If the name is taken (and ``replace`` is false) or the spec is malformed.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_backbone: name must be a non-empty str, got {name!r}")
    if name in BACKBONES and not replace:
        raise ValueError(
            f"register_backbone: {name!r} is already registered; pass replace=True to replace it"
        )
    if not isinstance(spec, BackboneSpec):
        raise ValueError(f"register_backbone: spec must be a BackboneSpec, got {spec!r}")
    if spec.preprocessing not in PREPROCESSING:
        raise ValueError(
            f"register_backbone: preprocessing must be one of {sorted(PREPROCESSING)}, "
            f"got {spec.preprocessing!r}"
        )
    if isinstance(spec.min_size, bool) or not isinstance(spec.min_size, int) or spec.min_size < 1:
        raise ValueError(f"register_backbone: min_size must be an int >= 1, got {spec.min_size!r}")
    if (spec.weights_file is None) != (spec.weights_url is None):
        raise ValueError("register_backbone: give both weights_file and weights_url, or neither")
    BACKBONES[name] = spec


def get_backbone(name: str) -> BackboneSpec:
    """Returns the registered spec of a backbone.

    Raises:
        ModelConfigError: If no backbone has that name (the closest one is suggested).
    """
    spec = BACKBONES.get(name) if isinstance(name, str) else None
    if spec is None:
        hint = ""
        if isinstance(name, str):
            close = difflib.get_close_matches(name, list(BACKBONES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ModelConfigError(f"backbone: must be one of {sorted(BACKBONES)}, got {name!r}{hint}")
    return spec


def backbone_layer_names(name: str) -> tuple[str, ...]:
    """Names of a backbone's layers after its ``InputLayer``: the names ``freeze`` accepts.

    ``freeze=n`` freezes the first ``n`` layers of the trunk counting its ``InputLayer``, so the
    layer ``backbone_layer_names(name)[n - 2]`` is the last one frozen.

    Raises:
        ModelConfigError: If no backbone has that name.
    """
    return get_backbone(name).layer_names
