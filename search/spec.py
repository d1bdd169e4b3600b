"""The experiment spec: one YAML file, loaded into small frozen dataclasses and validated at load.

Every rule is checked here, before Ray starts, and every broken rule raises
:class:`~search.errors.SpecError` with a one-line message that names the key path, the rule and
the value received, e.g. ``space.upsample: `low <= high` must hold, got low=5, high=2``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from model_zoo import MODEL_KEYS, ModelConfig, ModelConfigError
from search import storage
from search._validate import (
    check_bool,
    check_float,
    check_int,
    check_keys,
    check_one_of,
    echo,
    is_number,
)
from search._yaml import apply_overrides, read_yaml
from search.checkpoint_policy import CHECKPOINT_KEYS, check_checkpoint_settings
from search.data.pipeline import AUGMENT_CHOICES
from search.data.spec import DatasetSpec
from search.errors import SpecError
from search.space import Distribution, check_conditions, check_jit_compile, parse_distribution

SECTIONS = (
    "name",
    "dataset",
    "model",
    "train",
    "space",
    "search",
    "scheduler",
    "resources",
    "storage",
    "tracking",
)
OPTIMIZERS = ("sgd", "adam")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
SCHEDULERS = ("asha", "fifo")
SEARCHERS = ("tpe", "tpe_rungs", "random")
TRACKERS = ("mlflow",)
BACKENDS = ("tensorflow", "jax", "torch")  # Keras backends (search.trial.backends)

# The original method's settings (GaussianNoise 0.01, x2 nearest-neighbour upsampling, no input
# convs, nothing frozen, a 256/0.75 head): the baseline trial every search is measured against.
ORIGINAL_METHOD: dict[str, Any] = {
    "noise_std": 0.01,
    "upsample": 2,
    "upsample_interpolation": "nearest",
    "input_convs": 0,
    "freeze": 0,
    "dense_units": 256,
    "dropout": 0.75,
}

QUICKSTART_PATH = Path(__file__).parent / "configs" / "quickstart.yaml"


# --------------------------------------------------------------------------------------------
# the sections


@dataclass(frozen=True)
class TrainSpec:
    """How one trial trains. Every field may also be searched in ``space``."""

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.9
    augment: str = "none"
    mixed_precision: str = "auto"
    jit_compile: bool | str = "auto"
    seed: int = 0
    backend: str = "tensorflow"  # the Keras backend, one per search (search/trial/backends.py)
    checkpoint: str = "asha_rungs"  # see search.checkpoint_policy
    checkpoint_minutes: float = 10.0

    @classmethod
    def from_mapping(cls, mapping: Any, where: str = "train") -> TrainSpec:
        check_keys(mapping, TRAIN_KEYS, where)
        spec = cls(**mapping)
        spec.validate(where)
        return spec

    def validate(self, where: str = "train") -> None:
        check_int(self.epochs, f"{where}.epochs", 1)
        check_int(self.batch_size, f"{where}.batch_size", 1)
        check_one_of(self.optimizer, OPTIMIZERS, f"{where}.optimizer")
        check_float(self.learning_rate, f"{where}.learning_rate", positive=True)
        if not is_number(self.momentum) or not 0 <= self.momentum < 1:
            raise SpecError(
                f"{where}.momentum: must be a float in [0, 1), got {echo(self.momentum)}"
            )
        check_one_of(self.augment, AUGMENT_CHOICES, f"{where}.augment")
        check_one_of(self.mixed_precision, PRECISIONS, f"{where}.mixed_precision")
        if self.jit_compile not in ("auto", True, False):
            raise SpecError(
                f"{where}.jit_compile: must be auto, true or false, got {echo(self.jit_compile)}"
            )
        check_int(self.seed, f"{where}.seed", 0)
        check_one_of(self.backend, BACKENDS, f"{where}.backend")
        check_checkpoint_settings(self.checkpoint, self.checkpoint_minutes, where)


TRAIN_KEYS = tuple(f.name for f in fields(TrainSpec))


def setting_defaults() -> dict[str, Any]:
    """Every model and train setting's default: what a trial uses for a key nobody set."""
    return {**{f.name: f.default for f in fields(ModelConfig)}, **asdict(TrainSpec())}


# Keys a trial's config may hold; never `backend`: a search trains on one (one Keras a process).
SEARCHABLE_KEYS = tuple(MODEL_KEYS) + tuple(
    k for k in TRAIN_KEYS if k not in ("epochs", "seed", "backend", *CHECKPOINT_KEYS)
)


@dataclass(frozen=True)
class SearchSpec:
    """How many trials, how many at once, and the budgets that stop a search."""

    num_samples: int = 16
    max_concurrent: int | None = None
    seed: int = 0
    algorithm: str = "tpe_rungs"
    time_budget_s: float | None = None
    budget_gpu_hours: float | None = None
    budget_device_hours: float | None = None
    baseline: bool = True
    cost_exponent: float = 0.0  # TPE's acquisition per cost ** this, cooled (CArBO)
    prior_weight: float = 0.0  # draws around the baseline, chance w / (w + trials) (piBO)
    max_failures: int = 3
    keep_checkpoints: int = 3  # finished trials that keep theirs (search.driver.pruning)

    @classmethod
    def from_mapping(cls, mapping: Any, where: str = "search") -> SearchSpec:
        check_keys(mapping, tuple(f.name for f in fields(cls)), where)
        spec = cls(**mapping)
        check_int(spec.num_samples, f"{where}.num_samples", 1)
        if spec.max_concurrent is not None:
            check_int(spec.max_concurrent, f"{where}.max_concurrent", 1)
        check_int(spec.seed, f"{where}.seed", 0)
        check_one_of(spec.algorithm, SEARCHERS, f"{where}.algorithm")
        for key in (
            "time_budget_s",
            "budget_gpu_hours",
            "budget_device_hours",
            "cost_exponent",
            "prior_weight",
        ):  # budgets > 0 where set, levers >= 0
            if (value := getattr(spec, key)) is not None or "budget" not in key:
                check_float(value, f"{where}.{key}", positive="budget" in key, nonneg=True)
        check_bool(spec.baseline, f"{where}.baseline")
        check_int(spec.max_failures, f"{where}.max_failures", 0)
        check_int(spec.keep_checkpoints, f"{where}.keep_checkpoints", 1)
        return spec


@dataclass(frozen=True)
class SchedulerSpec:
    """ASHA's settings (Ray's names); ``max_t`` is always ``train.epochs``."""

    name: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 3
    min_rung_results: int = 0  # 0: Ray's rule, the first arrival at a rung goes on
    break_ties: bool = True  # a trial only tying a rung's cutoff stops once its top is full

    @classmethod
    def from_mapping(cls, mapping: Any, where: str = "scheduler") -> SchedulerSpec:
        check_keys(mapping, tuple(f.name for f in fields(cls)), where)
        spec = cls(**mapping)
        check_one_of(spec.name, SCHEDULERS, f"{where}.name")
        check_int(spec.grace_period, f"{where}.grace_period", 1)
        if not is_number(spec.reduction_factor) or spec.reduction_factor < 2:
            raise SpecError(
                f"{where}.reduction_factor: must be a number >= 2, "
                f"got {echo(spec.reduction_factor)}"
            )
        check_int(spec.min_rung_results, f"{where}.min_rung_results", 0)
        check_bool(spec.break_ties, f"{where}.break_ties")
        return spec


@dataclass(frozen=True)
class ResourcesSpec:
    """What each trial asks Ray for. ``gpus_per_trial: auto`` is 1 on a GPU cluster, else 0."""

    cpus_per_trial: float = 1
    gpus_per_trial: float | str = "auto"

    @classmethod
    def from_mapping(cls, mapping: Any, where: str = "resources") -> ResourcesSpec:
        check_keys(mapping, tuple(f.name for f in fields(cls)), where)
        spec = cls(**mapping)
        check_float(spec.cpus_per_trial, f"{where}.cpus_per_trial", positive=True)
        gpus = spec.gpus_per_trial
        if gpus != "auto":
            count = check_float(gpus, f"{where}.gpus_per_trial", nonneg=True)
            # Ray only packs fractional GPUs below one; above one a trial takes whole devices.
            if count > 1 and not count.is_integer():
                raise SpecError(
                    f"{where}.gpus_per_trial: above 1 must be a whole number, got {echo(gpus)}"
                )
        return spec


@dataclass(frozen=True)
class TrackingSpec:
    """Where every trial is also tracked: an MLflow tracking server by ``uri``, or (no uri) a
    local store in the experiment folder. MLflow experiment: ``experiment`` or the spec's name.
    """

    backend: str = "mlflow"
    uri: str | None = None
    experiment: str | None = None

    @classmethod
    def from_mapping(cls, mapping: Any, where: str = "tracking") -> TrackingSpec:
        check_keys(mapping, tuple(f.name for f in fields(cls)), where)
        spec = cls(**mapping)
        check_one_of(spec.backend, TRACKERS, f"{where}.backend")
        for key in ("uri", "experiment"):
            value = getattr(spec, key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise SpecError(
                    f"{where}.{key}: must be a non-empty string or null, got {echo(value)}"
                )
        return spec


@dataclass(frozen=True)
class ExperimentSpec:
    """A whole experiment: what data, which fixed settings, what to search, how, where."""

    name: str
    dataset: DatasetSpec
    model: Mapping[str, Any] = field(default_factory=dict)
    train: TrainSpec = field(default_factory=TrainSpec)
    space: Mapping[str, Distribution] = field(default_factory=dict)
    search: SearchSpec = field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    storage: str = "./results"
    tracking: TrackingSpec | None = None
    # Values given under model/train for keys that are also searched: the baseline trial's.
    baseline_values: Mapping[str, Any] = field(default_factory=dict)
    # One-line notes for the user about what loading decided (not part of the spec's data).
    notes: tuple[str, ...] = ()

    @property
    def max_t(self) -> int:
        """ASHA's ``max_t``: a trial that reaches it has trained fully."""
        return self.train.epochs

    @property
    def experiment_path(self) -> str:
        """Where the experiment's folder is (a local path or a URI)."""
        return join_storage(self.storage, self.name)

    def fixed_config(self) -> dict[str, Any]:
        """The model and train settings that every trial shares (searched keys excluded)."""
        fixed = {**self.model, **asdict(self.train)}
        return {k: v for k, v in fixed.items() if k not in self.space}

    def baseline_point(self) -> dict[str, Any]:
        """The baseline trial: the original method's values for the searched keys it defines,
        and, for other searched keys, the value written under model/train (if any)."""
        point = {k: v for k, v in self.baseline_values.items() if k in self.space}
        point.update({k: v for k, v in ORIGINAL_METHOD.items() if k in self.space})
        return point

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain YAML-ready data; ``load_spec_dict(spec.to_dict())`` round-trips."""
        train = {
            k: v
            for k, v in asdict(self.train).items()
            if k not in self.space or k in self.baseline_values
        }
        model = {
            **self.model,
            **{k: v for k, v in self.baseline_values.items() if k in MODEL_KEYS},
        }
        return {
            "name": self.name,
            "dataset": {k: v for k, v in asdict(self.dataset).items() if v is not None},
            "model": model,
            "train": train,
            "space": {k: d.to_yaml() for k, d in self.space.items()},
            "search": asdict(self.search),
            "scheduler": asdict(self.scheduler),
            "resources": asdict(self.resources),
            "storage": self.storage,
            **({"tracking": asdict(self.tracking)} if self.tracking else {}),
        }


def join_storage(location: str, name: str) -> str:
    """Joins a storage path or URI with an experiment name."""
    return storage.join(storage.absolute(location), name)


# --------------------------------------------------------------------------------------------
# loading


def _check_model_values(values: Mapping[str, Any], where: str) -> None:
    try:
        ModelConfig.from_mapping(values)
    except ModelConfigError as err:
        raise SpecError(f"{where}.{err}") from None


def _check_value(key: str, value: Any, where: str, model: Mapping[str, Any]) -> None:
    """Checks one candidate value of a searched key against the key's own rules."""
    if key in MODEL_KEYS:
        # Checked together with the fixed model settings: e.g. a freeze depth is only valid for
        # the backbone chosen.
        try:
            ModelConfig.from_mapping({**model, key: value})
        except ModelConfigError as err:
            message = str(err)
            prefix = f"{key}: "
            raise SpecError(f"{where}: {message.removeprefix(prefix)}") from None
    else:
        try:
            replace(TrainSpec(), **{key: value}).validate("train")
        except SpecError as err:
            raise SpecError(f"{where}: {str(err).split(': ', 1)[1]}") from None


def _parse_space(raw: Any, model: Mapping[str, Any], train_raw: Mapping) -> dict:
    if isinstance(raw, Mapping) and "backend" in raw:
        raise SpecError("space.backend: a search trains on one backend; set train.backend")
    check_keys(raw, SEARCHABLE_KEYS, "space")
    space: dict[str, Distribution] = {}
    for key, value in raw.items():
        where = f"space.{key}"
        dist = parse_distribution(value, where)
        for candidate in dist.endpoints():
            _check_value(key, candidate, where, model)
        space[key] = dist
    return space


def load_spec_dict(raw: Any, source: str = "spec") -> ExperimentSpec:
    """Validates a spec given as plain data (what YAML gives) and freezes it.

    Args:
        raw: The parsed YAML document.
        source: Where it came from, for messages.

    Returns:
        The validated, frozen experiment spec.

    Raises:
        SpecError: On the first broken rule.
    """
    if not isinstance(raw, Mapping):
        raise SpecError(f"{source}: must be a YAML mapping of sections, got {echo(raw)}")
    check_keys(raw, SECTIONS, "spec")
    name = raw.get("name", None)
    if not isinstance(name, str) or any(c in name for c in "/\\:") or name in ("", ".", ".."):
        raise SpecError(
            f"name: must be a non-empty string without '/', '\\' or ':', got {echo(name)}"
        )
    if "dataset" not in raw:
        raise SpecError("dataset: is required (e.g. dataset: {name: digits})")
    dataset = DatasetSpec.from_mapping(raw["dataset"], where="dataset")

    model = dict(check_keys(raw.get("model") or {}, MODEL_KEYS, "model"))
    _check_model_values(model, "model")
    train_raw = raw.get("train") or {}
    train = TrainSpec.from_mapping(train_raw)
    space = _parse_space(raw.get("space") or {}, model, train_raw)
    check_conditions(space, {**model, **train_raw}, setting_defaults())
    check_jit_compile(model, train.jit_compile, space)
    # A key both written under model/train and searched is searched; the written value is
    # where the baseline trial starts.
    baseline_values = {k: model.pop(k) for k in list(model) if k in space}
    baseline_values.update({k: v for k, v in train_raw.items() if k in space})

    search = SearchSpec.from_mapping(raw.get("search") or {})
    scheduler = SchedulerSpec.from_mapping(raw.get("scheduler") or {})
    if scheduler.grace_period > train.epochs:
        raise SpecError(
            f"scheduler.grace_period: `grace_period <= max_t` must hold "
            f"(max_t = train.epochs), got grace_period={scheduler.grace_period}, "
            f"max_t={train.epochs}"
        )
    resources = ResourcesSpec.from_mapping(raw.get("resources") or {})
    if search.budget_gpu_hours is not None and resources.gpus_per_trial == 0:
        raise SpecError(
            f"search.budget_gpu_hours: trials hold no GPU (resources.gpus_per_trial"
            f" is 0), so GPU-hours never accrue; use search.budget_device_hours, "
            f"got budget_gpu_hours={echo(search.budget_gpu_hours)}"
        )
    location = raw.get("storage", "./results")
    if not isinstance(location, str) or not location:
        raise SpecError(f"storage: must be a path or URI string, got {echo(location)}")

    tracking = None if raw.get("tracking") is None else TrackingSpec.from_mapping(raw["tracking"])
    spec = ExperimentSpec(
        name=name,
        dataset=dataset,
        model=model,
        train=train,
        space=space,
        search=search,
        scheduler=scheduler,
        resources=resources,
        storage=location,
        tracking=tracking,
        baseline_values=baseline_values,
    )
    outside = [k for k, v in spec.baseline_point().items() if not space[k].contains(v)]
    if search.baseline and outside:
        key = outside[0]
        value = spec.baseline_point()[key]
        whose = "the original method's" if key in ORIGINAL_METHOD else "the baseline's"
        if "baseline" in (raw.get("search") or {}):
            raise SpecError(
                f"search.baseline: {whose} {key}={echo(value)} must "
                f"lie in space.{key} ({space[key].to_yaml()}); widen the space "
                f"or set search.baseline: false"
            )
        # The baseline is on by default, not by request: a space that leaves it out is a
        # choice, so the search runs without it and says so.
        note = (
            f"search.baseline: running without the baseline trial, {whose} "
            f"{key}={echo(value)} lies outside space.{key} ({space[key].to_yaml()})"
        )
        spec = replace(spec, search=replace(search, baseline=False), notes=(note,))
    return spec


def load_spec(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None, **replacements: Any
) -> ExperimentSpec:
    """Loads and validates an experiment spec from YAML.

    Args:
        path: The YAML file; ``None`` loads the quickstart shipped in the package.
        overrides: ``key.path=value`` strings, applied before validation.
        **replacements: Top-level values to replace (``name=``, ``storage=``), as the CLI's
            ``--name`` and ``--storage`` do.

    Returns:
        The validated experiment spec.

    Raises:
        SpecError: On any broken rule, with the key path, the rule and the value received.
    """
    source = QUICKSTART_PATH if path is None else Path(path)
    raw = apply_overrides(read_yaml(source), list(overrides or []))
    if isinstance(raw, Mapping):
        raw = {**raw, **{k: v for k, v in replacements.items() if v is not None}}
    return load_spec_dict(raw, source=str(source))


def dump_spec(spec: ExperimentSpec) -> str:
    """The spec as YAML text (sections in the documented order)."""
    return yaml.safe_dump(spec.to_dict(), sort_keys=False)
