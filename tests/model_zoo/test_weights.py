"""The weights setting: a file path, imagenet from the Keras cache, auto, and no network.

conftest.py points KERAS_HOME at an empty tmp folder and makes every download fail at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

from model_zoo import (
    BACKBONES,
    ModelConfigError,
    WeightsFallbackWarning,
    WeightsUnavailableError,
    backbone_layer_names,
    build_model,
    cached_weights_path,
    keras_cache_dir,
    weights_status,
)
from model_zoo import weights as weights_module
from model_zoo.backbones import VGG16_WEIGHTS_FILE, VGG16_WEIGHTS_URL

SHAPE = (32, 32, 3)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A VGG16 trunk with recognisable weights, saved in the new and the legacy .h5 format."""
    folder = tmp_path_factory.mktemp("weights")
    trunk = keras.applications.VGG16(include_top=False, weights=None, input_shape=SHAPE)
    rng = np.random.default_rng(42)
    trunk.set_weights([w + rng.normal(size=w.shape).astype(w.dtype) for w in trunk.get_weights()])
    new_format = folder / "x.weights.h5"
    trunk.save_weights(new_format)
    # The file name Keras downloads; a legacy HDF5 save is what load_weights reads from it.
    legacy = folder / VGG16_WEIGHTS_FILE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trunk.save(legacy)
    values = {name: trunk.get_layer(name).get_weights() for name in backbone_layer_names("vgg16")}
    return {"new": new_format, "legacy": legacy, "values": values}


def assert_trunk_weights(model: keras.Model, values: dict) -> None:
    for name, expected in values.items():
        for got, want in zip(model.get_layer(name).get_weights(), expected):
            np.testing.assert_array_equal(got, want)


def build(weights: str, **config: object) -> keras.Model:
    return build_model({"weights": weights, **config}, input_shape=SHAPE, num_classes=10)


@pytest.mark.parametrize("kind", ["new", "legacy"])
def test_weights_file_is_loaded_into_the_trunk(reference: dict, kind: str) -> None:
    model = build(str(reference[kind]))
    assert_trunk_weights(model, reference["values"])
    assert model.count_params() == 15_241_802


def test_weights_file_then_freeze(reference: dict) -> None:
    model = build(str(reference["new"]), freeze="block2_pool")
    assert_trunk_weights(model, reference["values"])
    assert not model.get_layer("block2_conv2").trainable


def test_missing_weights_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / VGG16_WEIGHTS_FILE
    with pytest.raises(ModelConfigError, match=rf"^weights: no weights file at {missing}, got"):
        build(str(missing))


# Keras warns about each group it cannot match before it raises.
@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_weights_file_of_another_backbone_is_a_clear_error(tmp_path: Path) -> None:
    small = build("none", backbone="small_cnn")
    path = tmp_path / "small.weights.h5"
    small.save_weights(path)
    with pytest.raises(ModelConfigError, match=rf"^weights: cannot load {path} into backbone "
                                               r"vgg16 \(") as info:  # fmt: skip
        build(str(path))
    assert "\n" not in str(info.value)


def test_keras_home_is_read_at_call_time(isolated_keras: Path) -> None:
    assert keras_cache_dir() == str(isolated_keras)
    assert cached_weights_path("vgg16") == str(isolated_keras / "models" / VGG16_WEIGHTS_FILE)
    assert cached_weights_path("small_cnn") is None


def test_imagenet_without_network_says_which_file_to_place_where(isolated_keras: Path) -> None:
    target = isolated_keras / "models" / VGG16_WEIGHTS_FILE
    with pytest.raises(WeightsUnavailableError) as info:
        build("imagenet")
    message = str(info.value)
    assert isinstance(info.value, ModelConfigError)
    assert "\n" not in message
    assert message.startswith("weights: imagenet weights of vgg16 are not cached and cannot be "
                              "downloaded (network disabled in tests); place ")  # fmt: skip
    assert f"{VGG16_WEIGHTS_FILE} (from {VGG16_WEIGHTS_URL}) at {target}" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__ is False


def test_auto_without_network_warns_once_and_initialises_randomly(
    isolated_keras: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.warns(WeightsFallbackWarning) as record:
        first = build("auto")
        second = build("auto")

    fallbacks = [w for w in record if issubclass(w.category, WeightsFallbackWarning)]
    assert len(fallbacks) == 1
    message = str(fallbacks[0].message)
    assert "\n" not in message
    assert "Temporary failure in name resolution" in message
    assert "using random initialisation" in message
    assert str(isolated_keras / "models" / VGG16_WEIGHTS_FILE) in message
    assert len(attempts) == 1  # the second build does not try the network again
    assert first.count_params() == second.count_params() == 15_241_802
    # Random init: the two builds differ (pretrained weights would be equal).
    assert not np.array_equal(
        first.get_layer("block1_conv1").get_weights()[0],
        second.get_layer("block1_conv1").get_weights()[0],
    )


@pytest.fixture
def cached_reference(reference: dict, isolated_keras: Path, monkeypatch: pytest.MonkeyPatch):
    """The reference file in the Keras cache, with the registered hash set to its own."""
    target = isolated_keras / "models" / VGG16_WEIGHTS_FILE
    target.parent.mkdir(parents=True)
    shutil.copy(reference["legacy"], target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    monkeypatch.setitem(
        BACKBONES, "vgg16", dataclasses.replace(BACKBONES["vgg16"], weights_hash=digest)
    )
    return target


@pytest.mark.parametrize("weights", ["imagenet", "auto"])
def test_cached_imagenet_weights_are_used_without_network(
    reference: dict, cached_reference: Path, weights: str
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeightsFallbackWarning)
        model = build(weights)
    assert_trunk_weights(model, reference["values"])
    assert weights_status("vgg16") == f"vgg16: imagenet weights cached at {cached_reference}"


def test_auto_downloads_when_it_can(
    reference: dict, isolated_keras: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_download(spec: object, cache_dir: str) -> str:
        target = Path(cache_dir) / "models" / VGG16_WEIGHTS_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(reference["legacy"], target)
        return str(target)

    monkeypatch.setattr(weights_module, "_fetch", fake_download)
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeightsFallbackWarning)
        model = build("auto")
    assert_trunk_weights(model, reference["values"])


def test_small_cnn_auto_is_random_init_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights_module, "_fetch", pytest.fail)
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeightsFallbackWarning)
        model = build("auto", backbone="small_cnn")
    assert model.get_layer("block1_conv1") is not None


def test_small_cnn_imagenet_is_an_error() -> None:
    with pytest.raises(ModelConfigError, match=r"^weights: backbone small_cnn has no imagenet"):
        build("imagenet", backbone="small_cnn")


def test_weights_status_lines(isolated_keras: Path, tmp_path: Path, reference: dict) -> None:
    target = isolated_keras / "models" / VGG16_WEIGHTS_FILE
    assert weights_status("vgg16", "none") == "vgg16: random initialisation (weights='none')"
    assert weights_status("vgg16", "auto") == (
        f"vgg16: imagenet weights not cached; will download {VGG16_WEIGHTS_URL} to {target} "
        f"(random initialisation if that fails)"
    )
    assert weights_status("vgg16", "imagenet").endswith("(an error if that fails)")
    assert weights_status("vgg16", str(reference["new"])) == (
        f"vgg16: weights file {reference['new']} (found)"
    )
    missing = tmp_path / "missing.h5"
    assert weights_status("vgg16", str(missing)) == f"vgg16: weights file {missing} (MISSING)"
    assert weights_status("small_cnn") == "small_cnn: no pretrained weights; random initialisation"
    assert weights_status("small_cnn", "imagenet").endswith("(weights='imagenet' is an error)")
