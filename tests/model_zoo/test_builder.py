"""build_model: layer order, exact parameter counts, preprocessing, save/load, one training step.

Expected counts are computed here by arithmetic from the layer shapes, never by the builder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

from model_zoo import (
    BACKBONES,
    UPSAMPLE_INTERPOLATIONS,
    XLA_INTERPOLATIONS,
    BackboneSpec,
    ModelConfig,
    ModelConfigError,
    backbone_layer_names,
    build_model,
    describe_model,
    model_summary,
    register_backbone,
)
from model_zoo.backbones import _build_small_cnn

ORIGINAL = {"weights": "none"}  # noise 0.01, x2 upsampling, no input convs, 256/0.75 head
SHAPE = (32, 32, 3)


def conv(kernel: int, c_in: int, c_out: int) -> int:
    return kernel * kernel * c_in * c_out + c_out


def dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def vgg_layer_params(convs_per_block: tuple[int, ...]) -> list[tuple[str, int]]:
    """(name, params) of a VGG trunk's layers as Keras lists them, InputLayer first."""
    layers = [("input_layer", 0)]
    c_in = 3
    for block, (convs, width) in enumerate(zip(convs_per_block, (64, 128, 256, 512, 512)), 1):
        for i in range(1, convs + 1):
            layers.append((f"block{block}_conv{i}", conv(3, c_in, width)))
            c_in = width
        layers.append((f"block{block}_pool", 0))
    return layers


VGG16 = vgg_layer_params((2, 2, 3, 3, 3))
VGG19 = vgg_layer_params((2, 2, 4, 4, 4))
VGG16_PARAMS = sum(p for _, p in VGG16)
VGG19_PARAMS = sum(p for _, p in VGG19)
SMALL_CNN_PARAMS = conv(3, 3, 16) + conv(3, 16, 32) + conv(3, 32, 64)
HEAD_2X2 = dense(2 * 2 * 512, 256) + dense(256, 10)  # VGG on 64x64: block5_pool is 2x2x512


@pytest.fixture(autouse=True)
def seeded() -> Iterator[None]:
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()  # dozens of VGG models: keep memory flat on small runners


def params_of(model: keras.Model, *names: str) -> int:
    return sum(model.get_layer(name).count_params() for name in names)


def test_arithmetic_matches_the_published_vgg_sizes() -> None:
    assert VGG16_PARAMS == 14_714_688
    assert VGG19_PARAMS == 20_024_384
    assert HEAD_2X2 == 527_114


def test_original_model_has_the_original_parameter_counts() -> None:
    model = build_model(ORIGINAL, input_shape=SHAPE, num_classes=10)

    assert model.count_params() == 15_241_802
    assert params_of(model, "head_dense", "predictions") == 527_114
    assert params_of(model, *backbone_layer_names("vgg16")) == 14_714_688
    assert model.get_layer("block5_pool").output.shape == (None, 2, 2, 512)
    assert model.get_layer("head_flatten").output.shape == (None, 2048)
    assert describe_model(model) == {
        "total_params": 15_241_802,
        "trainable_params": 15_241_802,
        "non_trainable_params": 0,
    }


def test_layers_are_named_and_in_order() -> None:
    model = build_model(ORIGINAL, input_shape=SHAPE, num_classes=10)

    assert [layer.name for layer in model.layers] == [
        "image", "input_noise", "input_upsample", "preprocess_caffe",
        *backbone_layer_names("vgg16"),
        "head_flatten", "head_dense", "head_dropout", "predictions",
    ]  # fmt: skip
    # The RGB -> BGR flip is a keras.ops node, not a layer: it shows in the operations.
    names = [op.name for op in model.operations]
    assert names[names.index("preprocess_caffe") - 1] == "preprocess_bgr"
    assert model.get_layer("input_noise").stddev == pytest.approx(0.01)
    assert model.get_layer("input_upsample").size == (2, 2)
    assert model.get_layer("head_dropout").rate == pytest.approx(0.75)
    assert model.get_layer("head_dense").units == 256
    assert model.output.shape == (None, 10)


@pytest.mark.parametrize(
    ("config", "num_classes", "expected"),
    [
        pytest.param({"upsample": 5}, 10,
                     VGG16_PARAMS + dense(5 * 5 * 512, 256) + dense(256, 10), id="x5-upsample"),
        pytest.param({}, 100, VGG16_PARAMS + dense(2048, 256) + dense(256, 100), id="100-classes"),
        pytest.param({"input_convs": 3, "input_conv_filters": 8, "input_conv_kernel": 5}, 10,
                     conv(5, 3, 8) + conv(5, 8, 8) + conv(5, 8, 3) + VGG16_PARAMS + HEAD_2X2,
                     id="3-input-convs"),
        pytest.param({"input_convs": 1, "input_conv_filters": 64}, 10,
                     conv(3, 3, 3) + VGG16_PARAMS + HEAD_2X2, id="1-input-conv"),
        pytest.param({"pooling": "avg"}, 10,
                     VGG16_PARAMS + dense(512, 256) + dense(256, 10), id="avg-pooling"),
        pytest.param({"backbone": "vgg19"}, 10, VGG19_PARAMS + HEAD_2X2, id="vgg19"),
        pytest.param({"dense_units": 64, "dropout": 0.0}, 10,
                     VGG16_PARAMS + dense(2048, 64) + dense(64, 10), id="small-head"),
        pytest.param({"noise_std": 0, "upsample": 1}, 10,
                     VGG16_PARAMS + dense(512, 256) + dense(256, 10), id="no-noise-no-upsample"),
        pytest.param({"backbone": "small_cnn"}, 10,
                     SMALL_CNN_PARAMS + dense(8 * 8 * 64, 256) + dense(256, 10), id="small_cnn"),
    ],
)  # fmt: skip
def test_parameter_counts(config: dict, num_classes: int, expected: int) -> None:
    model = build_model({**ORIGINAL, **config}, input_shape=SHAPE, num_classes=num_classes)
    assert model.count_params() == expected
    assert describe_model(model)["non_trainable_params"] == 0


@pytest.mark.parametrize("interpolation", UPSAMPLE_INTERPOLATIONS)
def test_every_interpolation_keeps_the_original_parameter_counts(interpolation: str) -> None:
    model = build_model(
        {**ORIGINAL, "upsample_interpolation": interpolation}, input_shape=SHAPE, num_classes=10
    )
    assert model.count_params() == 15_241_802
    upsample = model.get_layer("input_upsample")
    assert upsample.interpolation == interpolation
    assert upsample.output.shape == (None, 64, 64, 3)


def test_nearest_and_bilinear_give_different_outputs_on_the_same_input() -> None:
    nearest = build_model(ORIGINAL, input_shape=SHAPE, num_classes=10)
    bilinear = build_model(
        {**ORIGINAL, "upsample_interpolation": "bilinear"}, input_shape=SHAPE, num_classes=10
    )
    bilinear.set_weights(nearest.get_weights())  # the same weights: only the resize differs
    images = np.random.default_rng(0).random((4, *SHAPE), dtype=np.float32)

    def enlarged(model: keras.Model) -> np.ndarray:
        return keras.Model(model.input, model.get_layer("input_upsample").output)(images).numpy()

    # nearest repeats every pixel 2x2 (the original method); bilinear blends neighbours.
    np.testing.assert_array_equal(enlarged(nearest), images.repeat(2, axis=1).repeat(2, axis=2))
    assert not np.allclose(enlarged(bilinear), enlarged(nearest), atol=1e-3)
    assert not np.allclose(
        bilinear.predict(images, verbose=0), nearest.predict(images, verbose=0), atol=1e-6
    )


def test_upsample_1_has_no_upsampling_layer_whatever_the_interpolation() -> None:
    model = build_model(
        {**ORIGINAL, "upsample": 1, "upsample_interpolation": "bicubic"},
        input_shape=SHAPE,
        num_classes=10,
    )
    assert "input_upsample" not in [layer.name for layer in model.layers]
    assert model.count_params() == VGG16_PARAMS + dense(512, 256) + dense(256, 10)


@pytest.mark.slow
@pytest.mark.parametrize("interpolation", UPSAMPLE_INTERPOLATIONS)
def test_jit_compile_true_trains_every_interpolation_with_xla_where_it_has_a_kernel(
    interpolation: str,
) -> None:
    # XLA has no kernel for bicubic, lanczos or area resizes: the layer says so, Keras then
    # trains without XLA (with a warning) instead of failing at the first step.
    model = build_model(
        {
            "backbone": "small_cnn",
            "weights": "none",
            "upsample": 2,
            "upsample_interpolation": interpolation,
        },
        input_shape=(8, 8, 3),
        num_classes=3,
    )
    compile_args = dict(optimizer="sgd", loss="sparse_categorical_crossentropy", jit_compile=True)
    if interpolation in XLA_INTERPOLATIONS:
        model.compile(**compile_args)
        assert model.jit_compile is True
    else:
        with pytest.warns(UserWarning, match="doesn't support `jit_compile=True`"):
            model.compile(**compile_args)
        assert model.jit_compile is False
    history = model.fit(np.full((4, 8, 8, 3), 0.5, "float32"), np.zeros(4), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_x5_upsampling_gives_5x5_block5_pool() -> None:
    model = build_model({**ORIGINAL, "upsample": 5}, input_shape=SHAPE, num_classes=10)
    assert model.get_layer("input_upsample").output.shape == (None, 160, 160, 3)
    assert model.get_layer("block5_pool").output.shape == (None, 5, 5, 512)
    assert model.get_layer("head_flatten").output.shape == (None, 12800)


def test_vgg19_trunk_has_keras_layer_names_and_size() -> None:
    model = build_model({**ORIGINAL, "backbone": "vgg19"}, input_shape=SHAPE, num_classes=10)
    assert params_of(model, *backbone_layer_names("vgg19")) == 20_024_384
    assert [name for name, _ in VGG19[1:]] == list(backbone_layer_names("vgg19"))


def test_registered_layer_names_match_what_keras_builds() -> None:
    for name in ("vgg16", "vgg19", "small_cnn"):
        trunk = BACKBONES[name].build((32, 32, 3))
        assert tuple(layer.name for layer in trunk.layers[1:]) == backbone_layer_names(name)


def test_omitted_input_layers() -> None:
    model = build_model(
        {**ORIGINAL, "noise_std": 0.0, "upsample": 1}, input_shape=SHAPE, num_classes=10
    )
    names = {layer.name for layer in model.layers}
    assert "input_noise" not in names and "input_upsample" not in names
    assert model.get_layer("block1_conv1").input.shape == (None, 32, 32, 3)


def test_input_convs_end_in_3_sigmoid_channels() -> None:
    model = build_model(
        {**ORIGINAL, "input_convs": 3, "input_conv_filters": 8, "input_conv_kernel": 5},
        input_shape=SHAPE,
        num_classes=10,
    )
    convs = [model.get_layer(f"input_conv_{i}") for i in (1, 2, 3)]
    assert [c.filters for c in convs] == [8, 8, 3]
    assert all(c.kernel_size == (5, 5) and c.padding == "same" for c in convs)
    assert [c.activation.__name__ for c in convs] == ["relu", "relu", "sigmoid"]
    # After the upsampling: the convs see 64x64 images and keep the size.
    assert convs[-1].output.shape == (None, 64, 64, 3)


@pytest.mark.parametrize("freeze", [0, 1, 4, 7, 11, 15, 19])
def test_freeze_depth_counts_the_input_layer(freeze: int) -> None:
    model = build_model({**ORIGINAL, "freeze": freeze}, input_shape=SHAPE, num_classes=10)
    frozen = sum(p for _, p in VGG16[:freeze])
    assert describe_model(model) == {
        "total_params": 15_241_802,
        "trainable_params": 15_241_802 - frozen,
        "non_trainable_params": frozen,
    }
    frozen_names = {name for name, _ in VGG16[1:freeze]}
    for name, _ in VGG16[1:]:
        assert model.get_layer(name).trainable == (name not in frozen_names)
    assert model.get_layer("head_dense").trainable and model.get_layer("predictions").trainable


def test_freeze_by_layer_name_freezes_up_to_and_including_it() -> None:
    model = build_model({**ORIGINAL, "freeze": "block4_pool"}, input_shape=SHAPE, num_classes=10)
    frozen = sum(p for _, p in VGG16[:15])
    assert describe_model(model)["non_trainable_params"] == frozen == 7_635_264
    assert not model.get_layer("block4_conv3").trainable
    assert model.get_layer("block5_conv1").trainable


def test_vgg19_full_freeze_leaves_only_the_head_trainable() -> None:
    model = build_model(
        {**ORIGINAL, "backbone": "vgg19", "freeze": 22}, input_shape=SHAPE, num_classes=10
    )
    assert describe_model(model)["trainable_params"] == HEAD_2X2
    assert describe_model(model)["non_trainable_params"] == VGG19_PARAMS


def test_grayscale_images_are_repeated_to_rgb_without_parameters() -> None:
    model = build_model(ORIGINAL, input_shape=(32, 32, 1), num_classes=10)
    assert model.get_layer("input_rgb").output.shape == (None, 64, 64, 3)
    assert model.count_params() == 15_241_802


def test_input_convs_accept_any_channel_count() -> None:
    model = build_model({**ORIGINAL, "input_convs": 1}, input_shape=(32, 32, 4), num_classes=10)
    assert model.count_params() == conv(3, 4, 3) + VGG16_PARAMS + HEAD_2X2


def test_caffe_preprocessing_matches_keras_on_0_1_images() -> None:
    model = build_model(
        {**ORIGINAL, "noise_std": 0, "upsample": 1}, input_shape=SHAPE, num_classes=10
    )
    images = np.random.default_rng(0).random((2, *SHAPE), dtype=np.float32)
    preprocess = keras.Model(model.input, model.get_layer("preprocess_caffe").output)
    expected = keras.applications.vgg16.preprocess_input(images * 255.0)
    np.testing.assert_allclose(preprocess.predict(images, verbose=0), expected, atol=1e-4)


@pytest.mark.usefixtures("restore_registry")
@pytest.mark.parametrize("mode", ["tf", "torch"])
def test_other_keras_preprocessing_modes(mode: str) -> None:
    register_backbone(f"tiny_{mode}", BackboneSpec(
        build=_build_small_cnn, layer_names=backbone_layer_names("small_cnn"),
        preprocessing=mode, min_size=8,
    ))  # fmt: skip
    config = {"backbone": f"tiny_{mode}", "weights": "none", "noise_std": 0, "upsample": 1}
    model = build_model(config, input_shape=SHAPE, num_classes=3)
    images = np.random.default_rng(0).random((2, *SHAPE), dtype=np.float32)
    preprocess = keras.Model(model.input, model.get_layer(f"preprocess_{mode}").output)
    expected = keras.applications.imagenet_utils.preprocess_input(images * 255.0, mode=mode)
    np.testing.assert_allclose(preprocess.predict(images, verbose=0), expected, atol=1e-4)


def test_small_cnn_takes_0_1_pixels_unchanged() -> None:
    model = build_model(
        {"backbone": "small_cnn", "weights": "none"}, input_shape=SHAPE, num_classes=10
    )
    assert not any(layer.name.startswith("preprocess") for layer in model.operations)
    assert model.get_layer("block1_conv1").input.shape == (None, 64, 64, 3)


def _residual_trunk(shape: tuple[int, int, int]) -> keras.Model:
    inputs = keras.Input(shape=shape)
    x = keras.layers.Conv2D(3, 3, padding="same", name="res_conv")(inputs)
    x = keras.layers.Add(name="res_add")([inputs, x])
    return keras.Model(inputs, keras.layers.MaxPooling2D(name="res_pool")(x), name="resnet_tiny")


@pytest.mark.usefixtures("restore_registry")
def test_non_chain_backbone_is_nested_and_still_freezes() -> None:
    register_backbone("res_tiny", BackboneSpec(
        build=_residual_trunk, layer_names=("res_conv", "res_add", "res_pool"), min_size=2,
    ))  # fmt: skip
    model = build_model(
        {"backbone": "res_tiny", "weights": "none", "freeze": "res_conv", "pooling": "avg"},
        input_shape=(8, 8, 3),
        num_classes=4,
    )
    assert model.get_layer("resnet_tiny").get_layer("res_add") is not None
    assert describe_model(model)["non_trainable_params"] == conv(3, 3, 3)
    assert model.predict(np.zeros((1, 8, 8, 3), "float32"), verbose=0).shape == (1, 4)


@pytest.mark.usefixtures("restore_registry")
def test_registered_layer_names_are_checked_against_the_built_trunk() -> None:
    register_backbone("wrong_names", BackboneSpec(
        build=_build_small_cnn, layer_names=("block1_conv1",) * 6, min_size=8,
    ))  # fmt: skip
    with pytest.raises(ValueError, match=r"differ from the registered layer_names"):
        build_model(
            {"backbone": "wrong_names", "weights": "none"}, input_shape=SHAPE, num_classes=2
        )


@pytest.mark.parametrize(
    ("config", "input_shape", "num_classes", "message"),
    [
        ({}, (32, 32), 10, r"^input_shape: must be \(height, width, channels\) of ints >= 1, "
                           r"got \(32, 32\)$"),
        ({}, (32, 0, 3), 10, r"^input_shape: must be .*, got \(32, 0, 3\)$"),
        ({}, (32.0, 32, 3), 10, r"^input_shape: must be .*, got \(32\.0, 32, 3\)$"),
        ({}, (32, 32, 4), 10, r"^input_shape: must have 1 or 3 channels when input_convs is 0 "
                              r"\(the backbone takes RGB\), got \(32, 32, 4\)$"),
        ({}, (8, 8, 3), 10, r"^upsample: backbone vgg16 needs at least 32x32 pixels after "
                            r"upsampling, 8x8 inputs x2 give 16x16; use upsample >= 4, got 2$"),
        ({"upsample": 1}, (32, 16, 3), 10, r"^upsample: backbone vgg16 needs at least 32x32 .* "
                                           r"use upsample >= 2, got 1$"),
        ({"backbone": "small_cnn"}, (2, 2, 3), 10, r"^upsample: backbone small_cnn needs at "
                                                   r"least 8x8 pixels"),
        ({"upsample": 64}, (32, 32, 3), 10, r"^upsample: must keep images <= 1024x1024 after "
                                            r"upsampling, 32x32 inputs x64 give 2048x2048; use "
                                            r"upsample <= 32, got 64$"),
        ({"upsample": 1}, (2048, 2048, 3), 10, r"^input_shape: height and width must be <= "
                                               r"1024, got \(2048, 2048, 3\)$"),
        ({}, (32, 32, 3), 1, r"^num_classes: must be an int >= 2, got 1$"),
        ({}, (32, 32, 3), True, r"^num_classes: must be an int >= 2, got True$"),
        ({"upsample": 0}, (32, 32, 3), 10, r"^upsample: must be an int >= 1, got 0$"),
        ({"pooling": "max"}, (32, 32, 3), 10, r"^pooling: must be one of"),
    ],
)  # fmt: skip
def test_build_errors_name_the_setting(
    config: dict, input_shape: tuple, num_classes: int, message: str
) -> None:
    with pytest.raises(ModelConfigError, match=message):
        build_model({**ORIGINAL, **config}, input_shape=input_shape, num_classes=num_classes)


def test_config_must_be_a_model_config_or_mapping() -> None:
    with pytest.raises(ModelConfigError, match=r"^model: must be a ModelConfig or a mapping"):
        build_model(["vgg16"], input_shape=SHAPE, num_classes=10)  # type: ignore[arg-type]


def test_model_config_and_mapping_build_the_same_model() -> None:
    config = {"backbone": "small_cnn", "weights": "none", "pooling": "avg"}
    from_mapping = build_model(config, input_shape=SHAPE, num_classes=10)
    from_config = build_model(ModelConfig(**config), input_shape=SHAPE, num_classes=10)
    assert [layer.name for layer in from_mapping.layers] == [
        layer.name for layer in from_config.layers
    ]
    assert config == {"backbone": "small_cnn", "weights": "none", "pooling": "avg"}


@pytest.fixture
def mixed_float16() -> Iterator[None]:
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.mark.usefixtures("mixed_float16")
def test_predictions_stay_float32_under_mixed_precision() -> None:
    model = build_model(ORIGINAL, input_shape=SHAPE, num_classes=10)
    assert model.get_layer("block1_conv1").compute_dtype == "float16"
    assert model.get_layer("head_dense").compute_dtype == "float16"
    assert model.output.dtype == "float32"

    small = build_model(
        {"backbone": "small_cnn", "weights": "none"}, input_shape=SHAPE, num_classes=10
    )
    probabilities = small.predict(np.full((2, *SHAPE), 0.5, "float32"), verbose=0)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_describe_and_summary_text() -> None:
    model = build_model({**ORIGINAL, "freeze": 4}, input_shape=SHAPE, num_classes=10)
    text = model_summary(model)
    assert "vgg16_finetune" in text
    for name in ("input_noise", "preprocess_caffe", "block1_conv1", "block5_pool", "predictions"):
        assert name in text
    assert "15,241,802" in text
    assert f"{conv(3, 3, 64) + conv(3, 64, 64):,}" in text  # non-trainable: block1


def test_saved_models_load_where_model_zoo_cannot_be_imported(tmp_path: Path) -> None:
    # The original model, and one with a smooth resize (a searched upsample_interpolation).
    models = {
        "nearest": build_model(ORIGINAL, input_shape=SHAPE, num_classes=10),
        "bicubic": build_model(
            {**ORIGINAL, "upsample_interpolation": "bicubic"}, input_shape=SHAPE, num_classes=10
        ),
    }
    for name, model in models.items():
        model.save(tmp_path / f"{name}.keras")
    images = np.random.default_rng(1).random((4, *SHAPE), dtype=np.float32)
    np.save(tmp_path / "images.npy", images)

    # The project is installed in editable mode, so an empty sys.path entry is not enough:
    # None in sys.modules makes `import model_zoo` (and `search`) fail in the child for sure.
    code = textwrap.dedent(
        """
        import sys
        sys.modules["model_zoo"] = None
        sys.modules["search"] = None
        try:
            import model_zoo
        except ImportError:
            pass
        else:
            raise SystemExit("model_zoo is importable")
        import keras
        import numpy as np
        for name in ("nearest", "bicubic"):
            model = keras.saving.load_model(f"{name}.keras")
            np.save(f"{name}-loaded.npy", model.predict(np.load("images.npy"), verbose=0))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    for name, model in models.items():
        loaded = np.load(tmp_path / f"{name}-loaded.npy")
        assert loaded.shape == (4, 10)
        np.testing.assert_allclose(loaded, model.predict(images, verbose=0), atol=1e-5)


@pytest.mark.slow
def test_one_training_step_of_the_full_vgg16_model() -> None:
    model = build_model(ORIGINAL, input_shape=SHAPE, num_classes=10)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(0)
    images = rng.random((8, *SHAPE), dtype=np.float32)
    labels = rng.integers(0, 10, size=8)
    before = model.get_layer("block1_conv1").get_weights()[0].copy()

    history = model.fit(images, labels, batch_size=4, epochs=1, verbose=0)

    assert np.isfinite(history.history["loss"][0])
    assert not np.array_equal(before, model.get_layer("block1_conv1").get_weights()[0])
