"""When a trial checkpoints: ASHA's rungs (as Ray's ASHA places them), the last epoch, and at
most every ``checkpoint_minutes``; ``every_epoch`` on request."""

from __future__ import annotations

import math

import pytest
from ray.tune.schedulers import ASHAScheduler

from search.checkpoint_policy import CheckpointPolicy, asha_rung_epochs


@pytest.mark.parametrize(
    "grace_period, reduction_factor, max_t",
    [
        (1, 3, 3),
        (1, 3, 9),
        (1, 3, 10),
        (2, 3, 4),
        (1, 2, 8),
        (1, 2.5, 20),
        (3, 3, 27),
        (1, 4, 100),
        (5, 3, 5),
    ],
)
def test_rung_epochs_are_where_rays_asha_decides(grace_period, reduction_factor, max_t):
    asha = ASHAScheduler(
        time_attr="epoch",
        metric="m",
        mode="max",
        max_t=max_t,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
    )
    # ASHA decides at the first report whose epoch reaches a milestone.
    milestones = {math.ceil(m) for m, _ in asha._brackets[0]._rungs}
    assert asha_rung_epochs(grace_period, reduction_factor, max_t) == tuple(
        sorted(m for m in milestones if m < max_t)
    )


def test_default_policy_checkpoints_rungs_and_the_last_epoch_only():
    policy = CheckpointPolicy.from_settings({"epochs": 9, "checkpoint_rungs": (1, 3)})
    due = [epoch for epoch in range(1, 10) if policy.due(epoch, seconds_since_last=5.0)]
    assert due == [1, 3, 9]


def test_long_epochs_checkpoint_at_most_every_checkpoint_minutes():
    policy = CheckpointPolicy.from_settings(
        {"epochs": 9, "checkpoint_rungs": (), "checkpoint_minutes": 2}
    )
    assert not policy.due(4, seconds_since_last=119.0)
    assert policy.due(4, seconds_since_last=120.0)


def test_every_epoch_checkpoints_each_epoch():
    policy = CheckpointPolicy.from_settings(
        {"epochs": 4, "checkpoint": "every_epoch", "checkpoint_rungs": (1,)}
    )
    assert all(policy.due(epoch, seconds_since_last=0.0) for epoch in range(1, 5))
