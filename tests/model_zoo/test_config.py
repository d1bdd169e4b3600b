"""ModelConfig: defaults, every rule and its one-line message. No TensorFlow needed."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict

import pytest

from model_zoo import (
    BACKBONES,
    MODEL_KEYS,
    BackboneSpec,
    ModelConfig,
    ModelConfigError,
    backbone_layer_names,
    get_backbone,
    register_backbone,
)

VGG16_NAMES = (
    "block1_conv1", "block1_conv2", "block1_pool",
    "block2_conv1", "block2_conv2", "block2_pool",
    "block3_conv1", "block3_conv2", "block3_conv3", "block3_pool",
    "block4_conv1", "block4_conv2", "block4_conv3", "block4_pool",
    "block5_conv1", "block5_conv2", "block5_conv3", "block5_pool",
)  # fmt: skip


def test_defaults_are_the_original_method() -> None:
    assert asdict(ModelConfig()) == {
        "backbone": "vgg16",
        "weights": "imagenet",
        "noise_std": 0.01,
        "upsample": 2,
        "upsample_interpolation": "nearest",
        "input_convs": 0,
        "input_conv_filters": 16,
        "input_conv_kernel": 3,
        "freeze": 0,
        "pooling": "flatten",
        "dense_units": 256,
        "dropout": 0.75,
    }
    assert ModelConfig.from_mapping({}) == ModelConfig()


def test_model_keys_are_the_fields_in_order() -> None:
    assert tuple(asdict(ModelConfig())) == MODEL_KEYS


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        ModelConfig().upsample = 3  # type: ignore[misc]


def test_int_values_of_float_settings_become_floats() -> None:
    config = ModelConfig.from_mapping({"noise_std": 0, "dropout": 0})
    assert config.noise_std == 0.0 and isinstance(config.noise_std, float)
    assert isinstance(config.dropout, float)


def test_every_valid_value_is_accepted() -> None:
    config = ModelConfig.from_mapping(
        {
            "backbone": "vgg19",
            "weights": "/clusters/shared/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "noise_std": 0.0,
            "upsample": 1,
            "input_convs": 3,
            "input_conv_filters": 1,
            "input_conv_kernel": 1,
            "freeze": 22,
            "pooling": "avg",
            "dense_units": 1,
            "dropout": 0.0,
        }
    )
    assert config.freeze_depth == 22
    for weights in ("imagenet", "auto", "none", "x.weights.h5", "old.hdf5"):
        assert ModelConfig(weights=weights).weights == weights
    assert ModelConfig(backbone="small_cnn", weights="auto").weights == "auto"


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ModelConfigError, match=r"^upsample: must be an int >= 1, got 0$"):
        ModelConfig(upsample=0)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"upsampel": 2}, r"^model: unknown key `upsampel`; did you mean `upsample`\?$"),
        ({"learning_rate": 0.1}, r"^model: unknown key `learning_rate`; valid keys: backbone, "),
        ({"backbone": "vgg_16"}, r"^backbone: must be one of \['small_cnn', 'vgg16', 'vgg19'\], "
                                r"got 'vgg_16' \(did you mean 'vgg16'\?\)$"),
        ({"backbone": 16}, r"^backbone: must be one of .*, got 16$"),
        ({"backbone": ["vgg16"]}, r"^backbone: must be one of .*, got \['vgg16'\]$"),
        ({"weights": "imagenett"}, r"^weights: must be one of \['imagenet', 'auto', 'none'\] or "
                                   r"a path to a \.h5 weights file, got 'imagenett'$"),
        ({"weights": None}, r"^weights: must be one of .*, got None$"),
        ({"weights": ""}, r"^weights: must be one of .*, got ''$"),
        ({"backbone": "small_cnn"}, r"^weights: backbone small_cnn has no imagenet weights; "
                                    r"use 'none', 'auto' or a weights file, got 'imagenet'$"),
        ({"noise_std": -0.01}, r"^noise_std: must be a float >= 0, got -0\.01$"),
        ({"noise_std": "0.1"}, r"^noise_std: must be a float >= 0, got '0\.1'$"),
        ({"noise_std": True}, r"^noise_std: must be a float >= 0, got True$"),
        ({"noise_std": float("nan")}, r"^noise_std: must be a float >= 0, got nan$"),
        ({"noise_std": float("inf")}, r"^noise_std: must be a float >= 0, got inf$"),
        ({"upsample": 0}, r"^upsample: must be an int >= 1, got 0$"),
        ({"upsample": 2.0}, r"^upsample: must be an int >= 1, got 2\.0$"),
        ({"upsample": True}, r"^upsample: must be an int >= 1, got True$"),
        ({"upsample": "2"}, r"^upsample: must be an int >= 1, got '2'$"),
        ({"upsample_interpolation": "linear"},
         r"^upsample_interpolation: must be one of \['nearest', 'bilinear', 'bicubic', "
         r"'lanczos3', 'lanczos5', 'area'\], got 'linear'$"),
        ({"upsample_interpolation": None}, r"^upsample_interpolation: must be one of .*, "
                                           r"got None$"),
        ({"upsample": 1, "upsample_interpolation": "cubic"},
         r"^upsample_interpolation: must be one of .*, got 'cubic'$"),
        ({"input_convs": -1}, r"^input_convs: must be an int >= 0, got -1$"),
        ({"input_convs": 1.5}, r"^input_convs: must be an int >= 0, got 1\.5$"),
        ({"input_conv_filters": 0}, r"^input_conv_filters: must be an int >= 1, got 0$"),
        ({"input_conv_filters": False}, r"^input_conv_filters: must be an int >= 1, got False$"),
        ({"input_conv_kernel": 0}, r"^input_conv_kernel: must be an int >= 1, got 0$"),
        ({"freeze": 25}, r"^freeze: must be in \[0, 19\] for backbone vgg16, got 25$"),
        ({"freeze": -1}, r"^freeze: must be in \[0, 19\] for backbone vgg16, got -1$"),
        ({"backbone": "vgg19", "freeze": 23},
         r"^freeze: must be in \[0, 22\] for backbone vgg19, got 23$"),
        ({"backbone": "small_cnn", "weights": "none", "freeze": 8},
         r"^freeze: must be in \[0, 7\] for backbone small_cnn, got 8$"),
        ({"freeze": True}, r"^freeze: must be an int or a layer name of backbone vgg16, got True"),
        ({"freeze": 2.0}, r"^freeze: must be an int or a layer name of backbone vgg16, got 2\.0"),
        ({"freeze": "block4_pol"}, r"^freeze: must be a layer of backbone vgg16 \(block1_conv1, "
                                   r".*, block5_pool\), got 'block4_pol' "
                                   r"\(did you mean 'block4_pool'\?\)$"),
        ({"backbone": "small_cnn", "weights": "none", "freeze": "block4_pool"},
         r"^freeze: must be a layer of backbone small_cnn \(block1_conv1, block1_pool, "
         r"block2_conv1, block2_pool, block3_conv1, block3_pool\), got 'block4_pool'"),
        ({"pooling": "max"}, r"^pooling: must be one of \['flatten', 'avg'\], got 'max'$"),
        ({"dense_units": 0}, r"^dense_units: must be an int >= 1, got 0$"),
        ({"dense_units": 256.0}, r"^dense_units: must be an int >= 1, got 256\.0$"),
        ({"dropout": 1.0}, r"^dropout: must be a float in \[0, 1\), got 1\.0$"),
        ({"dropout": -0.1}, r"^dropout: must be a float in \[0, 1\), got -0\.1$"),
        ({"dropout": True}, r"^dropout: must be a float in \[0, 1\), got True$"),
    ],
)  # fmt: skip
def test_bad_value_names_key_rule_and_value(mapping: dict, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message) as info:
        ModelConfig.from_mapping(mapping)
    assert "\n" not in str(info.value)


def test_not_a_mapping_is_an_error() -> None:
    with pytest.raises(ModelConfigError, match=r"^model: must be a mapping of settings, got 3$"):
        ModelConfig.from_mapping(3)  # type: ignore[arg-type]


def test_model_config_error_is_a_value_error() -> None:
    assert issubclass(ModelConfigError, ValueError)


@pytest.mark.parametrize(
    ("name", "depth"),
    [("block1_conv1", 2), ("block1_pool", 4), ("block2_pool", 7), ("block3_pool", 11),
     ("block4_pool", 15), ("block5_conv3", 18), ("block5_pool", 19)],
)  # fmt: skip
def test_freeze_by_layer_name_counts_the_input_layer(name: str, depth: int) -> None:
    assert ModelConfig(weights="none", freeze=name).freeze_depth == depth


def test_vgg_layer_names_are_keras_names() -> None:
    assert backbone_layer_names("vgg16") == VGG16_NAMES
    vgg19 = backbone_layer_names("vgg19")
    assert len(vgg19) == 21 and vgg19[9:12] == ("block3_conv4", "block3_pool", "block4_conv1")
    assert get_backbone("vgg16").max_freeze == 19


def test_backbone_layer_names_of_unknown_backbone() -> None:
    with pytest.raises(ModelConfigError, match=r"^backbone: must be one of .*, got 'resnet'$"):
        backbone_layer_names("resnet")


@pytest.mark.usefixtures("restore_registry")
def test_register_backbone_adds_and_guards() -> None:
    spec = BackboneSpec(build=lambda shape: None, layer_names=("a", "b"), min_size=4)
    register_backbone("tiny", spec)
    assert ModelConfig(backbone="tiny", weights="none", freeze="b").freeze_depth == 3
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("tiny", spec)
    register_backbone("tiny", spec, replace=True)
    with pytest.raises(ValueError, match=r"preprocessing must be one of"):
        register_backbone(
            "odd", BackboneSpec(build=spec.build, layer_names=(), preprocessing="inception")
        )
    with pytest.raises(ValueError, match=r"min_size must be an int >= 1"):
        register_backbone("odd", BackboneSpec(build=spec.build, layer_names=(), min_size=0))
    with pytest.raises(ValueError, match=r"weights_file and weights_url"):
        register_backbone(
            "odd", BackboneSpec(build=spec.build, layer_names=(), weights_file="odd.h5")
        )
    with pytest.raises(ValueError, match=r"spec must be a BackboneSpec"):
        register_backbone("odd", {"build": None})  # type: ignore[arg-type]
    assert "odd" not in BACKBONES


def test_import_loads_neither_tensorflow_nor_ray_nor_search() -> None:
    code = (
        "import sys, model_zoo; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'ray', 'search') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
