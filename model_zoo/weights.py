"""Where a backbone's pretrained weights come from: the Keras cache, a download, or a file.

``weights`` is resolved to a file path (or ``None`` for random initialisation) before any layer
is built, so a missing file fails in a second with a message saying which file to put where.
"""

from __future__ import annotations

import os
import warnings

from model_zoo.backbones import BackboneSpec, get_backbone
from model_zoo.errors import ModelConfigError, WeightsFallbackWarning, WeightsUnavailableError

# Keras keeps downloaded weights in $KERAS_HOME/models (default ~/.keras/models).
CACHE_SUBDIR = "models"

# Per process: URLs that failed to download under weights="auto" (not retried, so every trial
# of a worker gets the same initialisation) and the fallback warnings already shown.
_UNREACHABLE: set[str | None] = set()  # weights URLs that failed in this process
_WARNED: set[str] = set()


def keras_cache_dir() -> str:
    """The Keras cache directory, read now rather than when Keras was imported.

    Same rule as Keras: ``$KERAS_HOME`` if set, else ``~/.keras``, else ``/tmp/.keras`` when the
    home directory is not writable.
    """
    if os.environ.get("KERAS_HOME"):
        return os.environ["KERAS_HOME"]
    home = os.path.expanduser("~")
    if not os.access(home, os.W_OK):
        home = "/tmp"
    return os.path.join(home, ".keras")


def cached_weights_path(backbone: str) -> str | None:
    """Full path of the backbone's ImageNet weights in the Keras cache (present or not).

    Returns:
        The path, or ``None`` if the backbone has no pretrained weights.
    """
    spec = get_backbone(backbone)
    if spec.weights_file is None:
        return None
    return os.path.join(keras_cache_dir(), CACHE_SUBDIR, spec.weights_file)


def weights_status(backbone: str, weights: str = "auto") -> str:
    """One line saying what ``weights`` would give for ``backbone`` right now, without network.

    Args:
        backbone: A registered backbone name.
        weights: The ``weights`` setting.

    Returns:
        E.g. ``vgg16: imagenet weights cached at /root/.keras/models/vgg16_..._notop.h5``.
    """
    spec = get_backbone(backbone)
    if weights == "none":
        return f"{backbone}: random initialisation (weights='none')"
    if weights not in ("imagenet", "auto"):
        path = os.path.abspath(os.path.expanduser(weights))
        found = "found" if os.path.isfile(path) else "MISSING"
        return f"{backbone}: weights file {path} ({found})"
    cached = cached_weights_path(backbone)
    if cached is None:
        if weights == "imagenet":
            return f"{backbone}: no imagenet weights (weights='imagenet' is an error)"
        return f"{backbone}: no pretrained weights; random initialisation"
    if os.path.isfile(cached):
        return f"{backbone}: imagenet weights cached at {cached}"
    fallback = "random initialisation" if weights == "auto" else "an error"
    fallback += " if that fails"
    return (
        f"{backbone}: imagenet weights not cached; will download {spec.weights_url} to "
        f"{cached} ({fallback})"
    )


def _fetch(spec: BackboneSpec, cache_dir: str) -> str:
    """Returns the cached weights file, downloading it first if needed (the only network use)."""
    import keras

    return keras.utils.get_file(
        spec.weights_file,
        spec.weights_url,
        cache_subdir=CACHE_SUBDIR,
        file_hash=spec.weights_hash,
        cache_dir=cache_dir,
    )


def _reason(err: BaseException) -> str:
    """The short cause of a failed fetch: keras.utils.get_file wraps urllib's error (which has
    the useful part, e.g. "[Errno -2] Name or service not known") in a message with the URL."""
    cause: BaseException | None = err
    while cause is not None:
        reason = getattr(cause, "reason", None)
        if reason is not None:
            return " ".join(str(reason).split())
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def resolve_weights(backbone: str, weights: str) -> str | None:
    """Turns the ``weights`` setting into a weights file to load, or ``None`` for random init.

    Args:
        backbone: A registered backbone name.
        weights: ``imagenet``, ``auto``, ``none`` or a path to a weights file.

    Returns:
        The path of the file to load into the trunk, or ``None``.

    Raises:
        ModelConfigError: If a weights file path does not exist, or the backbone has no
            pretrained weights and ``imagenet`` was asked for.
        WeightsUnavailableError: If ``imagenet`` weights are neither cached nor downloadable.
    """
    spec = get_backbone(backbone)
    if weights == "none":
        return None
    if weights not in ("imagenet", "auto"):
        path = os.path.abspath(os.path.expanduser(weights))
        if not os.path.isfile(path):
            raise ModelConfigError(f"weights: no weights file at {path}, got {weights!r}")
        return path
    if spec.weights_file is None:
        if weights == "imagenet":
            raise ModelConfigError(
                f"weights: backbone {backbone} has no imagenet weights; use 'none', 'auto' or "
                f"a weights file, got 'imagenet'"
            )
        return None  # "auto" on a backbone without pretrained weights: nothing to warn about.

    cache_dir = keras_cache_dir()
    target = os.path.join(cache_dir, CACHE_SUBDIR, spec.weights_file)
    if weights == "auto" and spec.weights_url in _UNREACHABLE and not os.path.isfile(target):
        return None
    try:
        return _fetch(spec, cache_dir)
    except Exception as err:  # urllib, socket and hash errors all mean "not available here"
        reason = _reason(err)
    if weights == "imagenet":
        raise WeightsUnavailableError(
            f"weights: imagenet weights of {backbone} are not cached and cannot be downloaded "
            f"({reason}); place {spec.weights_file} (from {spec.weights_url}) at {target}, or "
            f"set weights to its path, 'auto' or 'none', got 'imagenet'"
        )
    _UNREACHABLE.add(spec.weights_url)
    if target not in _WARNED:
        _WARNED.add(target)
        warnings.warn(
            f"weights='auto': imagenet weights of {backbone} are not cached and cannot be "
            f"downloaded ({reason}); using random initialisation. To fine-tune from ImageNet, "
            f"place {spec.weights_file} (from {spec.weights_url}) at {target}",
            WeightsFallbackWarning,
            # Point at the caller of build_model (resolve_weights <- _build_trunk <- build_model).
            stacklevel=4,
        )
    return None
