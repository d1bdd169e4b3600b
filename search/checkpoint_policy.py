"""When a trial writes a checkpoint: ``train.checkpoint`` and ``train.checkpoint_minutes``.

A checkpoint is a whole model with its optimizer state (119 MB for VGG16 at 32x32), written and
then copied to the experiment's storage inside ``tune.report``: written every epoch it cost a
third of an epoch (``benchmarks/overhead/overhead.py``). What needs one:

- ASHA's decisions: a trial continues past a rung only if ASHA lets it, and ``export`` takes a
  stopped trial's model from where it stopped, so every rung gets a checkpoint;
- the last epoch (``max_t``): the finished model;
- long epochs: a crash, a lost node or ``resume`` repeats the epochs since the last
  checkpoint, so at least every ``checkpoint_minutes`` one is written, at an epoch's end.

Ray-free and TensorFlow-free: the spec, the driver and the trial all read it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from search._validate import check_float, check_one_of

# `asha_rungs`: ASHA's rungs, the last epoch, and every `checkpoint_minutes`; `every_epoch`:
# after each epoch (resume and crash retries then repeat at most the epoch in flight).
CHECKPOINT_POLICIES = ("asha_rungs", "every_epoch")
DEFAULT_CHECKPOINT_MINUTES = 10.0
# The keys a trial's settings carry (the spec's train section; never searched).
CHECKPOINT_KEYS = ("checkpoint", "checkpoint_minutes")
RUNG_EPOCHS_KEY = "checkpoint_rungs"  # set by the driver from the scheduler


def check_checkpoint_settings(policy: Any, minutes: Any, where: str = "train") -> None:
    """Checks ``train.checkpoint`` and ``train.checkpoint_minutes``.

    Raises:
        SpecError: Naming the key, the rule and the value received.
    """
    check_one_of(policy, CHECKPOINT_POLICIES, f"{where}.checkpoint")
    check_float(minutes, f"{where}.checkpoint_minutes", positive=True)


def asha_rung_epochs(grace_period: int, reduction_factor: float, max_t: int) -> tuple[int, ...]:
    """The epochs at which Ray's ASHA decides, below ``max_t``.

    Ray's one-bracket ASHA (``ray.tune.schedulers.async_hyperband._Bracket``) has
    ``int(log(max_t / grace_period) / log(reduction_factor) + 1)`` rungs at
    ``grace_period * reduction_factor ** k``, and decides for a trial at the first report whose
    epoch reaches a rung: with one report per epoch, at the rung rounded up.
    """
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    rungs = {math.ceil(grace_period * reduction_factor**k) for k in range(count)}
    return tuple(sorted(r for r in rungs if r < max_t))


@dataclass(frozen=True)
class CheckpointPolicy:
    """Decides, at each epoch's end, whether the trial writes a checkpoint.

    Attributes:
        last_epoch: ``train.epochs`` (``max_t``): always checkpointed.
        rungs: The epochs where the scheduler decides (none for FIFO).
        every_epoch: ``train.checkpoint: every_epoch``.
        max_seconds: At most this long between checkpoints (``checkpoint_minutes``).
    """

    last_epoch: int
    rungs: frozenset[int] = frozenset()
    every_epoch: bool = False
    max_seconds: float = DEFAULT_CHECKPOINT_MINUTES * 60

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> CheckpointPolicy:
        """The policy of a trial's settings (``fixed`` plus its config)."""
        return cls(
            last_epoch=int(settings["epochs"]),
            rungs=frozenset(int(e) for e in settings.get(RUNG_EPOCHS_KEY, ())),
            every_epoch=settings.get("checkpoint", "asha_rungs") == "every_epoch",
            max_seconds=float(settings.get("checkpoint_minutes", DEFAULT_CHECKPOINT_MINUTES)) * 60,
        )

    def due(self, epoch: int, seconds_since_last: float) -> bool:
        """Whether to checkpoint after ``epoch`` (1-based), ``seconds_since_last`` after the
        last checkpoint (or the attempt's start)."""
        return (
            self.every_epoch
            or epoch >= self.last_epoch
            or epoch in self.rungs
            or seconds_since_last >= self.max_seconds
        )
