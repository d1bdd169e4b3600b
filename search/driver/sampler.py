"""TPE over a bounded history, so a suggestion costs the same at 2,000 trials as at 500.

Optuna's TPE rebuilds its two densities from every finished trial of the study at each
suggestion, in Python, so a suggestion's cost grows linearly with the trials (measured with
``benchmarks/run.py --only scale``: about 90 ms at 2,000 trials on a shared 2-core machine).
:class:`BoundedHistorySampler` wraps the TPE sampler and shows it a view of the study that holds
the running trials, the most recent ``window`` finished trials, and the ``keep_best`` best of
the older ones, ranked as TPE ranks them (complete trials by value, then pruned trials by the
last epoch they reached and their value there). TPE's "good" group is at most 25 trials, so
with ``keep_best = 25`` it is the same as over the whole study; only the density of the rest
is estimated from the recent trials. Up to ``window + keep_best`` finished trials TPE sees
every trial it reads (complete, pruned, running) and suggests exactly what it would alone.
"""

from __future__ import annotations

import bisect
import copy
import heapq
import math
import operator
from collections.abc import Container, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

HISTORY_WINDOW = 500  # recent finished trials TPE sees
KEEP_BEST = 25  # and the best older ones: TPE's good group never holds more than 25
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_NUMBER = operator.attrgetter("number")


def history_rank(trial: FrozenTrial, maximize: bool) -> tuple[int, float, float]:
    """A finished trial's place in TPE's order; a larger tuple is a better trial.

    Complete trials come first, by value; then pruned trials, by the last step (epoch) they
    reported and the value there (NaN last); pruned trials that reported nothing come last.

    Args:
        trial: A COMPLETE or PRUNED trial.
        maximize: The study's direction.

    Returns:
        ``(tier, step, value)`` where ``value`` is negated for a minimized study.
    """
    sign = 1.0 if maximize else -1.0
    if trial.state == TrialState.COMPLETE and trial.value is not None:
        return 2, 0.0, -math.inf if math.isnan(trial.value) else sign * trial.value
    if trial.intermediate_values:
        step, value = max(trial.intermediate_values.items())
        return 1, float(step), -math.inf if math.isnan(value) else sign * value
    return 0, 0.0, -math.inf


class TrialHistory:
    """Which trials TPE sees: the recent window, the best older ones, and unfinished ones.

    A call costs O(window), not O(study): finished trials never change, so the best older
    trials are ranked once, as they leave the window, and kept in a small heap.
    """

    def __init__(self, window: int, keep_best: int) -> None:
        self.window = window
        self.keep_best = keep_best
        self._ranked_below = 0  # every trial numbered below this has left the window
        self._best: list[tuple[tuple[int, float, float], int]] = []  # min-heap (rank, number)
        self._unfinished: set[int] = set()  # older trials still running or waiting

    def select(self, trials: Sequence[FrozenTrial], maximize: bool) -> list[FrozenTrial]:
        """The trials TPE may see, in number order.

        Args:
            trials: Every trial of the study, in number order (as Optuna lists them).
            maximize: The study's direction.

        Returns:
            All of ``trials`` while fewer than ``window`` trials have finished; after that the
            trials from the ``window``-th last finished one on, plus the ``keep_best`` best
            finished and the still unfinished trials before it (failed ones, which TPE never
            reads, are left out).
        """
        start, finished = len(trials), 0
        while start > 0 and finished < self.window:
            start -= 1
            finished += trials[start].state in _FINISHED
        if start == 0:
            return list(trials)
        older = [_find(trials, n) for n in sorted(self._unfinished)]
        older += trials[_index(trials, self._ranked_below) : start]
        self._unfinished.clear()
        for trial in older:
            if trial is None:
                continue
            if trial.state in _FINISHED:
                item = (history_rank(trial, maximize), trial.number)
                if len(self._best) < self.keep_best:
                    heapq.heappush(self._best, item)
                elif self.keep_best and item > self._best[0]:
                    heapq.heapreplace(self._best, item)
            elif not trial.state.is_finished():
                self._unfinished.add(trial.number)
        self._ranked_below = max(self._ranked_below, trials[start].number)
        first_recent = trials[start].number
        kept = sorted(
            n for n in {number for _, number in self._best} | self._unfinished if n < first_recent
        )
        return [t for t in (_find(trials, n) for n in kept) if t is not None] + list(
            trials[start:]
        )


def _index(trials: Sequence[FrozenTrial], number: int) -> int:
    return bisect.bisect_left(trials, number, key=_NUMBER)


def _find(trials: Sequence[FrozenTrial], number: int) -> FrozenTrial | None:
    index = _index(trials, number)
    return trials[index] if index < len(trials) and trials[index].number == number else None


def model_epoch(trials: Sequence[FrozenTrial], rung_epochs: Sequence[int]) -> int | None:
    """The epoch TPE models at under BOHB's rule: the highest rung that at least ``d + 2``
    finished trials reached (``d`` the number of searched settings), or ``None`` when no rung
    has that many yet (TPE then sees the trials as they are)."""
    finished = [t for t in trials if t.state in _FINISHED]
    if not finished or not rung_epochs:
        return None
    needed = max(len(t.params) for t in finished) + 2
    for epoch in sorted(rung_epochs, reverse=True):
        if sum(1 for t in finished if epoch in t.intermediate_values) >= needed:
            return epoch
    return None


def at_epoch(trials: Sequence[FrozenTrial], epoch: int) -> list[FrozenTrial]:
    """The trials as TPE should see them when it models ``epoch``: every finished trial that
    reported that epoch is COMPLETE with its value there (however far it trained on); those
    stopped before it stay PRUNED (ranked below, as TPE ranks pruned trials); the rest as they
    are. Copies: the study's own trials are never changed."""
    out = []
    for trial in trials:
        value = trial.intermediate_values.get(epoch)
        if trial.state in _FINISHED and value is not None and math.isfinite(value):
            trial = copy.copy(trial)
            trial.state = TrialState.COMPLETE
            trial.value = value
        out.append(trial)
    return out


class _StudyView:
    """The study as TPE sees it: the real study, with its trial lists cut to the history and,
    with ``rung_epochs``, its trials valued at the rung TPE models (:func:`model_epoch`).

    TPE reads trials through ``Study._get_trials`` (and a sampler may use the public
    ``get_trials``/``trials``); everything else is the real study's.
    """

    def __init__(
        self, study: optuna.Study, history: TrialHistory, rung_epochs: Sequence[int] = ()
    ) -> None:
        self._study = study
        self._history = history
        self._rung_epochs = tuple(rung_epochs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        # The real study's cache is the one Optuna clears on ask and tell.
        trials = self._study._get_trials(deepcopy=False, states=None, use_cache=use_cache)
        kept = self._history.select(trials, self._study.direction == StudyDirection.MAXIMIZE)
        if self._rung_epochs:
            epoch = model_epoch(kept, self._rung_epochs)
            if epoch is not None and epoch < max(self._rung_epochs):
                kept = at_epoch(kept, epoch)
        if states is not None:
            kept = [t for t in kept if t.state in states]
        return copy.deepcopy(kept) if deepcopy else kept

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class BoundedHistorySampler(optuna.samplers.BaseSampler):
    """A sampler (TPE) that sees only a bounded history of the study; see the module docs.

    Args:
        sampler: The sampler to bound, e.g. ``optuna.samplers.TPESampler(...)``.
        window: Recent finished trials it sees.
        keep_best: Best older finished trials it also sees.
        rung_epochs: ASHA's rungs and ``max_t`` (``algorithm: tpe_rungs``): TPE models the
            highest rung enough trials reached (:func:`model_epoch`, BOHB's rule) instead of
            ranking trials by how far they trained. Empty: TPE sees the trials as they are.

    Raises:
        ValueError: When ``window < 1`` or ``keep_best < 0``.
    """

    def __init__(
        self,
        sampler: optuna.samplers.BaseSampler,
        *,
        window: int = HISTORY_WINDOW,
        keep_best: int = KEEP_BEST,
        rung_epochs: Sequence[int] = (),
    ) -> None:
        if window < 1 or keep_best < 0:
            raise ValueError(
                f"window must be >= 1 and keep_best >= 0, got window={window}, "
                f"keep_best={keep_best}"
            )
        self.sampler = sampler
        self._history = TrialHistory(window, keep_best)
        self._rung_epochs = tuple(rung_epochs)

    def __getattr__(self, name: str) -> Any:
        # Reads the wrapped sampler's settings (e.g. TPE's ``_n_startup_trials``) through the
        # wrapper. "sampler" itself is excluded: unpickling looks it up before it is set.
        if name == "sampler":
            raise AttributeError(name)
        return getattr(self.sampler, name)

    def _view(self, study: optuna.Study) -> Any:
        # Samplers pickled before rung_epochs existed have none.
        return _StudyView(study, self._history, getattr(self, "_rung_epochs", ()))

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.sampler.infer_relative_search_space(self._view(study), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.sampler.sample_relative(self._view(study), trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.sampler.sample_independent(
            self._view(study), trial, param_name, param_distribution
        )

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.sampler.before_trial(self._view(study), trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.sampler.after_trial(self._view(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()
