"""The study the driver writes: Optuna's sampler and the journal-backed study a search runs.

Its vocabulary (the metric, a trial's status and outcome, the journal's file name, the
read-only opener) is :mod:`search.outputs.study`'s, a layer below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from search.outputs.study import MODE

if TYPE_CHECKING:
    import optuna


def startup_trials(num_samples: int | None) -> int:
    """TPE's random start-up trials: Optuna's 10, but never more than a quarter of a search
    (with 16 trials, 10 random ones would leave TPE almost nothing to decide)."""
    if num_samples is None:
        return 10
    return max(2, min(10, num_samples // 4))


def make_sampler(
    seed: int,
    algorithm: str = "tpe",
    num_samples: int | None = None,
    max_concurrent: int | None = 1,
    rung_epochs: Sequence[int] = (),
    cost_exponent: float = 0.0,
) -> optuna.samplers.BaseSampler:
    """The search's Optuna sampler: random, or TPE with a constant liar for parallel trials.

    ``tpe_rungs`` is TPE that models the highest of ``rung_epochs`` (ASHA's rungs and
    ``max_t``) that enough trials reached, as BOHB does (see
    :class:`~search.driver.sampler.BoundedHistorySampler`); ``tpe`` ranks trials by how far
    they trained, as Optuna's TPE does with pruned trials.

    With more than one trial running at once (``max_concurrent`` > 1, or ``None``: no limit),
    TPE counts the running trials among the bad ones while it suggests (the constant liar), so
    the free slots are not all sent to the same promising region before any of them reports.
    Optuna 5 turns the liar on by default and Optuna 4 off: the choice is made here, for both.
    TPE sees a bounded history (:mod:`search.driver.sampler`), so a suggestion's cost stops
    growing with the study. With ``cost_exponent`` > 0 TPE's acquisition is divided by the
    configuration's cost to that power, cooled as the search goes on
    (:class:`~search.driver.acquisition.CostAwareTPESampler`).
    """
    import optuna

    from search.driver.acquisition import CostAwareTPESampler
    from search.driver.sampler import BoundedHistorySampler

    if algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    parallel = max_concurrent is None or max_concurrent > 1
    settings: dict[str, Any] = {
        "seed": seed,
        "n_startup_trials": startup_trials(num_samples),
        "constant_liar": parallel,
    }
    tpe = (
        CostAwareTPESampler(cost_exponent=cost_exponent, **settings)
        if cost_exponent > 0
        else optuna.samplers.TPESampler(**settings)
    )
    return BoundedHistorySampler(tpe, rung_epochs=rung_epochs if algorithm == "tpe_rungs" else ())


def open_study(
    journal_path: str,
    study_name: str,
    seed: int,
    algorithm: str = "tpe",
    num_samples: int | None = None,
    max_concurrent: int | None = 1,
    rung_epochs: Sequence[int] = (),
) -> optuna.Study:
    """Opens (or creates) the experiment's study in Optuna's journal file storage.

    The journal is an append-only log in Optuna's format, written by
    :class:`~search.driver.journal.GroupCommitJournal` (no fsync per record): a driver killed
    mid-write loses at most the line it was writing, and ``optuna-dashboard <journal>`` opens it
    as it is. The sampler is :func:`make_sampler`'s.
    """
    import optuna
    from optuna.storages import JournalStorage

    from search.driver.journal import GroupCommitJournal

    storage = JournalStorage(GroupCommitJournal(journal_path))
    return optuna.create_study(
        storage=storage,
        study_name=study_name,
        sampler=make_sampler(seed, algorithm, num_samples, max_concurrent, rung_epochs),
        # ASHA does all the stopping; Optuna's own pruner must never second-guess it.
        pruner=optuna.pruners.NopPruner(),
        direction="maximize" if MODE == "max" else "minimize",
        load_if_exists=True,
    )
