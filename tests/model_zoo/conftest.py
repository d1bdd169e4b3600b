"""Fixtures for model_zoo tests: a private Keras cache and no network, ever."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_zoo import BACKBONES, weights


def _no_network(*args: object, **kwargs: object) -> None:
    raise urllib.error.URLError("network disabled in tests")


@pytest.fixture(autouse=True)
def isolated_keras(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Points KERAS_HOME at an empty folder and makes downloads fail at once.

    keras.utils.get_file downloads through urllib.request.urlretrieve, which calls
    urllib.request.urlopen: failing that exercises the real download path without hanging.
    The per-process "already warned / unreachable" state of model_zoo.weights starts empty.
    """
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    monkeypatch.setattr(weights, "_UNREACHABLE", set())
    monkeypatch.setattr(weights, "_WARNED", set())
    return home


@pytest.fixture
def restore_registry() -> Iterator[None]:
    """Puts the backbone registry back as it was after a test that registers backbones."""
    saved = dict(BACKBONES)
    yield
    BACKBONES.clear()
    BACKBONES.update(saved)
