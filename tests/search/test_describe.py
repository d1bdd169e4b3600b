"""describe: which model settings a spec or JSON names, and the model they build."""

from __future__ import annotations

from search.describe import describe_model_settings, describe_settings
from tests.helpers import write_spec


def test_spec_describes_the_baseline_model_with_its_interpolation(tmp_path):
    # A searched training setting (learning_rate) is part of the baseline but not of the model.
    path = write_spec(
        tmp_path,
        space={
            "upsample": {"choice": [1, 2, 4]},
            "upsample_interpolation": {"choice": ["nearest", "bilinear", "bicubic"]},
            "learning_rate": {"loguniform": [0.0003, 0.01]},
        },
    )
    settings = describe_settings(str(path))
    assert settings == {
        "backbone": "small_cnn",
        "weights": "none",
        "dense_units": 32,
        "upsample": 2,
        "upsample_interpolation": "nearest",
    }

    described = describe_model_settings(
        {**settings, "upsample_interpolation": "bicubic"}, input_shape=(8, 8, 3), num_classes=10
    )
    assert described.settings["upsample_interpolation"] == "bicubic"
    assert described.settings["noise_std"] == 0.01  # defaults filled in
    assert "input_upsample" in described.summary
