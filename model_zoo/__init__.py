"""Pure Keras model builders for fine-tuning: input model + pretrained backbone + head.

Never imports Ray or ``search``. Importing this package does not import TensorFlow either (the
search spec validates ``ModelConfig`` on the driver); ``build_model`` imports Keras when called.
"""

from __future__ import annotations

from model_zoo.backbones import (
    BACKBONES,
    PREPROCESSING,
    BackboneSpec,
    backbone_layer_names,
    get_backbone,
    register_backbone,
)
from model_zoo.builder import MAX_IMAGE_SIZE, build_model, describe_model, model_summary
from model_zoo.config import (
    MODEL_KEYS,
    UPSAMPLE_INTERPOLATIONS,
    XLA_INTERPOLATIONS,
    ModelConfig,
)
from model_zoo.errors import ModelConfigError, WeightsFallbackWarning, WeightsUnavailableError
from model_zoo.weights import cached_weights_path, keras_cache_dir, weights_status

__all__ = [
    "BACKBONES",
    "MAX_IMAGE_SIZE",
    "MODEL_KEYS",
    "PREPROCESSING",
    "UPSAMPLE_INTERPOLATIONS",
    "XLA_INTERPOLATIONS",
    "BackboneSpec",
    "ModelConfig",
    "ModelConfigError",
    "WeightsFallbackWarning",
    "WeightsUnavailableError",
    "backbone_layer_names",
    "build_model",
    "cached_weights_path",
    "describe_model",
    "get_backbone",
    "keras_cache_dir",
    "model_summary",
    "register_backbone",
    "weights_status",
]
