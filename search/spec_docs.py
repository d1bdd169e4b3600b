"""One line of meaning for every key of every spec section, beside the dataclasses it documents.

The spec reference page (``docs/reference/spec.md``) is generated from this table and from the
dataclasses themselves (``scripts/gen_docs.py``): a key's type and default come from its
dataclass field, its choices from the same constants the validators check against, its
searchability from :data:`search.spec.SEARCHABLE_KEYS`. What only a validator's code knows (a
numeric range) is written here as a :class:`Range`, and ``tests/docs/test_reference.py`` probes
the validators at each range's edges, so a range written here cannot differ from the one
enforced. A key without a line here fails that test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

from model_zoo import ModelConfig
from model_zoo.backbones import BACKBONES
from model_zoo.config import POOLINGS, UPSAMPLE_INTERPOLATIONS, WEIGHTS_CHOICES
from search.checkpoint_policy import CHECKPOINT_POLICIES
from search.data.pipeline import AUGMENT_CHOICES
from search.data.spec import DATASET_NAMES, LABEL_MODES, DatasetSpec
from search.space import DISTRIBUTIONS
from search.spec import (
    BACKENDS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULERS,
    SEARCHABLE_KEYS,
    SEARCHERS,
    TRACKERS,
    ResourcesSpec,
    SchedulerSpec,
    SearchSpec,
    TrackingSpec,
    TrainSpec,
)


@dataclass(frozen=True)
class Range:
    """A numeric range a validator enforces: ``low``/``high`` ``None`` for no bound."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is refused
    high_open: bool = False
    integer: bool = False
    or_null: bool = False  # null (None) is accepted too

    def text(self) -> str:
        kind = "int" if self.integer else "number"
        if self.low is not None and self.high is not None:
            rule = (
                f"{kind} in {'(' if self.low_open else '['}{_num(self.low)}, "
                f"{_num(self.high)}{')' if self.high_open else ']'}"
            )
        elif self.low is not None:
            rule = f"{kind} {'>' if self.low_open else '>='} {_num(self.low)}"
        elif self.high is not None:
            rule = f"{kind} {'<' if self.high_open else '<='} {_num(self.high)}"
        else:
            rule = kind
        return f"{rule}, or null" if self.or_null else rule


def _num(value: float) -> str:
    return "2**32" if value == 2**32 else f"{value:g}"


@dataclass(frozen=True)
class KeyDoc:
    """What the reference says of one key: its meaning, and its allowed values where no
    constant of the code lists them (``allowed`` text, or a :class:`Range`)."""

    meaning: str
    allowed: Range | str | Sequence[str] = ""


# Section -> key -> description. Choices point at the validators' own constants.
KEYS: dict[str, dict[str, KeyDoc]] = {
    "name": {
        "name": KeyDoc(
            "the experiment's name: its folder under `storage` (required)",
            "non-empty, without `/`, `\\` or `:`",
        )
    },
    "dataset": {
        "name": KeyDoc(
            "which images: the CIFAR sets through Keras, scikit-learn's bundled "
            "digits, or your own folder, Parquet or npz file (required)",
            DATASET_NAMES,
        ),
        "path": KeyDoc(
            "the file, folder or URI to read; required for folder, parquet and "
            "npz, optional for CIFAR (Keras's cache without it), refused for digits",
            "a non-empty string, or null",
        ),
        "val_fraction": KeyDoc(
            "share of the training pool held out for validation (stratified)",
            Range(0, 1, low_open=True, high_open=True),
        ),
        "subset": KeyDoc(
            "at most this many training examples (stratified, before the split); null keeps all",
            Range(1, integer=True, or_null=True),
        ),
        "seed": KeyDoc(
            "seeds the subset and the validation split",
            Range(0, 2**32, high_open=True, integer=True),
        ),
        "label_mode": KeyDoc("cifar100's fine (100) or coarse (20) labels", LABEL_MODES),
        "image_size": KeyDoc(
            "[height, width] that folder and encoded Parquet images are "
            "resized to (flat Parquet pixel lists are read in this shape)",
            "two positive ints",
        ),
        "image_column": KeyDoc("the Parquet column holding the images", "a non-empty string"),
        "label_column": KeyDoc("the Parquet column holding the labels", "a non-empty string"),
    },
    "model": {
        "backbone": KeyDoc(
            "the pretrained trunk (`small_cnn`: a tiny CNN for CPU demos and tests)",
            tuple(sorted(BACKBONES)),
        ),
        "weights": KeyDoc(
            "the backbone's weights: Keras's ImageNet download, random init, "
            "ImageNet if available else random, or a notop `.h5` file for "
            "air-gapped clusters",
            ", ".join(f"`{w}`" for w in WEIGHTS_CHOICES) + ", or a `.h5` path",
        ),
        "noise_std": KeyDoc(
            "GaussianNoise std on the [0, 1] pixels; 0 = no noise layer", Range(0)
        ),
        "upsample": KeyDoc(
            "UpSampling2D factor; 1 = none (x5 turns 32x32 into 160x160)", Range(1, integer=True)
        ),
        "upsample_interpolation": KeyDoc(
            "how UpSampling2D enlarges: `nearest` repeats pixels "
            "(the original method), the others resize smoothly; "
            "XLA has no kernel for bicubic, lanczos* and area",
            UPSAMPLE_INTERPOLATIONS,
        ),
        "input_convs": KeyDoc(
            "Conv2D layers of the input model (the last has 3 filters and a sigmoid)",
            Range(0, integer=True),
        ),
        "input_conv_filters": KeyDoc("filters of input convs 1..N-1", Range(1, integer=True)),
        "input_conv_kernel": KeyDoc("kernel size of every input conv", Range(1, integer=True)),
        "freeze": KeyDoc(
            "leading backbone layers kept frozen (InputLayer included; VGG16: 4/7/"
            "11/15/19 end its blocks), or a layer name frozen up to and including",
            "an int in [0, the backbone's layer count] or one of its layer names",
        ),
        "pooling": KeyDoc("how the trunk's output reaches the head", POOLINGS),
        "dense_units": KeyDoc("units of the head's ReLU dense layer", Range(1, integer=True)),
        "dropout": KeyDoc(
            "dropout rate after the head's dense layer", Range(0, 1, high_open=True)
        ),
    },
    "train": {
        "epochs": KeyDoc(
            "epochs a fully trained trial runs: ASHA's `max_t`", Range(1, integer=True)
        ),
        "batch_size": KeyDoc(
            "training batch size (halved once on out-of-memory)", Range(1, integer=True)
        ),
        "optimizer": KeyDoc("the Keras optimizer", OPTIMIZERS),
        "learning_rate": KeyDoc("the optimizer's learning rate", Range(0, low_open=True)),
        "momentum": KeyDoc(
            "SGD's momentum (drawn only with `optimizer: sgd`)", Range(0, 1, high_open=True)
        ),
        "augment": KeyDoc(
            "training augmentation: horizontal flip, reflect-padded crop, or both", AUGMENT_CHOICES
        ),
        "mixed_precision": KeyDoc(
            "`auto`: bfloat16 on Ampere+ GPUs, float16 on Volta/Turing, float32 on CPU", PRECISIONS
        ),
        "jit_compile": KeyDoc(
            "XLA compilation; `auto` is Keras's choice", ("auto", "true", "false")
        ),
        "seed": KeyDoc("seeds every trial's RNGs and shuffling", Range(0, integer=True)),
        "backend": KeyDoc("the Keras backend every trial of the search trains on", BACKENDS),
        "checkpoint": KeyDoc(
            "when a trial writes a checkpoint: at ASHA's rungs (and the last "
            "epoch, and every `checkpoint_minutes`), or after every epoch",
            CHECKPOINT_POLICIES,
        ),
        "checkpoint_minutes": KeyDoc(
            "also checkpoint at the end of an epoch this long after the last checkpoint",
            Range(0, low_open=True),
        ),
    },
    "search": {
        "num_samples": KeyDoc(
            "trials in the search (the baseline included)", Range(1, integer=True)
        ),
        "max_concurrent": KeyDoc(
            "trials at once; null: as many as the resources fit",
            Range(1, integer=True, or_null=True),
        ),
        "seed": KeyDoc("seeds the searcher", Range(0, integer=True)),
        "algorithm": KeyDoc(
            "the searcher: `tpe_rungs` (default) is TPE fitted on the highest "
            "ASHA rung d+2 trials reached (BOHB's rule); `tpe` ranks trials by "
            "how far they trained (Optuna's way); or random",
            SEARCHERS,
        ),
        "time_budget_s": KeyDoc(
            "Ray's wall-clock limit on one run, resume or extend",
            Range(0, low_open=True, or_null=True),
        ),
        "budget_gpu_hours": KeyDoc(
            "stop once trials held this many GPU-hours, over every run, resume and extend",
            Range(0, low_open=True, or_null=True),
        ),
        "budget_device_hours": KeyDoc(
            "the same in trial-hours, whatever the trials hold (CPU clusters)",
            Range(0, low_open=True, or_null=True),
        ),
        "baseline": KeyDoc("run the original method's configuration first", ("true", "false")),
        "cost_exponent": KeyDoc(
            "0: plain TPE; alpha > 0: TPE's acquisition per configuration "
            "cost ** alpha, alpha cooled to 0 as the budget is spent "
            "(CArBO); off by default: it did not pay in the simulator",
            Range(0),
        ),
        "prior_weight": KeyDoc(
            "0: none; w > 0: a suggestion is a perturbation of the baseline "
            "with chance w / (w + trials so far) (piBO); off by default",
            Range(0),
        ),
        "max_failures": KeyDoc(
            "crash retries per trial, each from its last checkpoint", Range(0, integer=True)
        ),
        "keep_checkpoints": KeyDoc(
            "finished trials that keep their checkpoints: the best by val_accuracy",
            Range(1, integer=True),
        ),
    },
    "scheduler": {
        "name": KeyDoc(
            "ASHA stops weak trials at its rungs; FIFO runs every trial to `max_t`", SCHEDULERS
        ),
        "grace_period": KeyDoc(
            "the first rung's epoch (at most `train.epochs`)", Range(1, integer=True)
        ),
        "reduction_factor": KeyDoc("1/reduction_factor of a rung's trials go on", Range(2)),
        "min_rung_results": KeyDoc(
            "0: Ray's rule (the first arrival at a rung goes on); n > 0: "
            "a rung with fewer than n results counts those to come as "
            "ahead of the trial",
            Range(0, integer=True),
        ),
        "break_ties": KeyDoc(
            "true: a trial that only ties a rung's cutoff goes on while the "
            "rung's top 1/reduction_factor has room; false: Ray's rule (ties "
            "go on)",
            "true or false",
        ),
    },
    "resources": {
        "cpus_per_trial": KeyDoc("CPUs each trial asks Ray for", Range(0, low_open=True)),
        "gpus_per_trial": KeyDoc(
            "GPUs each trial asks for: `auto` is 1 on a cluster with (or "
            "adding) GPUs, else 0; a fraction packs trials on one GPU",
            "auto, or a number >= 0 (whole above 1)",
        ),
    },
    "storage": {
        "storage": KeyDoc(
            "where experiment folders go: a path, or a URI (s3://, gs://) through pyarrow",
            "a non-empty string",
        )
    },
    "tracking": {
        "backend": KeyDoc("the tracker", TRACKERS),
        "uri": KeyDoc(
            "the MLflow tracking server; null: a local store in the experiment folder",
            "a non-empty string, or null",
        ),
        "experiment": KeyDoc(
            "the MLflow experiment's name; null: the spec's name", "a non-empty string, or null"
        ),
    },
}

# The sections whose keys are a dataclass's fields.
SECTION_CLASSES: dict[str, type] = {
    "dataset": DatasetSpec,
    "model": ModelConfig,
    "train": TrainSpec,
    "search": SearchSpec,
    "scheduler": SchedulerSpec,
    "resources": ResourcesSpec,
    "tracking": TrackingSpec,
}
# The top-level keys that are one value, not a section of keys.
SCALARS: dict[str, tuple[str, Any]] = {"name": ("str", MISSING), "storage": ("str", "./results")}
SPACE_FORMS = {
    name: f"`{{{name}: {example}}}`"
    for name, example in zip(
        DISTRIBUTIONS,
        ("[low, high]", "[low, high]", "[low, high] (inclusive)", "[a, b, ...]"),
        strict=True,
    )
}


@dataclass(frozen=True)
class KeyRow:
    """One row of the reference: everything said about one key."""

    section: str
    key: str
    type: str
    default: Any  # dataclasses.MISSING for a required key
    allowed: str
    searchable: bool
    meaning: str


def allowed_text(allowed: Range | str | Sequence[str]) -> str:
    """The allowed values as the reference writes them."""
    if isinstance(allowed, Range):
        return allowed.text()
    if isinstance(allowed, str):
        return allowed
    return ", ".join(f"`{v}`" for v in allowed)


def section_keys(section: str) -> list[tuple[str, str, Any]]:
    """``(key, type, default)`` of every key the code accepts in ``section``."""
    if section in SCALARS:
        return [(section, *SCALARS[section])]
    rows = []
    for f in fields(SECTION_CLASSES[section]):
        default = f.default
        if default is MISSING and f.default_factory is not MISSING:
            default = f.default_factory()
        rows.append((f.name, str(f.type), default))
    return rows


def key_rows() -> list[KeyRow]:
    """Every key of every section, in the spec's order, with its description.

    Raises:
        KeyError: For a key the code accepts that :data:`KEYS` does not describe.
    """
    from search.spec import SECTIONS

    rows = []
    for section in SECTIONS:
        if section == "space":
            continue  # its keys are the model and train keys marked searchable
        for key, type_, default in section_keys(section):
            doc = KEYS[section][key]
            searchable = section in ("model", "train") and key in SEARCHABLE_KEYS
            rows.append(
                KeyRow(
                    section,
                    key,
                    type_,
                    default,
                    allowed_text(doc.allowed),
                    searchable,
                    doc.meaning,
                )
            )
    return rows
