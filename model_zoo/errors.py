"""Errors and warnings raised by ``model_zoo``.

Every message is one line that starts with the setting it is about, then the rule, then the value
received (Optuna's distribution errors are the model), e.g.
``upsample: must be an int >= 1, got 0``. The search spec prefixes it with its own key path.
"""

from __future__ import annotations


class ModelConfigError(ValueError):
    """A model setting (or the input shape it meets) that cannot build a model."""


class WeightsUnavailableError(ModelConfigError):
    """``weights="imagenet"``, but the weights file is neither cached nor downloadable."""


class WeightsFallbackWarning(UserWarning):
    """``weights="auto"`` found no pretrained weights and fell back to random initialisation."""
