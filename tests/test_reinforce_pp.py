"""REINFORCE++'s advantages against their closed form, and its settings reaching them."""

from __future__ import annotations

import statistics

import pytest
import torch

from alignlab.ops.advantages import batch_normalised_group_advantages


def test_group_mean_removed_then_one_batch_scale():
    rewards = [1.0, 0.0, 0.5, 0.5, 2.0, 2.1, 1.9, 2.0]  # two prompts, k = 4
    centred = []
    for g in (rewards[:4], rewards[4:]):
        m = sum(g) / 4
        centred += [r - m for r in g]
    scale = statistics.stdev(centred)  # Bessel-corrected, like torch.std
    got = batch_normalised_group_advantages(torch.tensor(rewards, dtype=torch.float64), 4).tolist()
    assert got == pytest.approx([c / (scale + 1e-8) for c in centred], rel=1e-12)
    # unlike GRPO's per-group std, the near-tied second group keeps small advantages
    assert max(abs(a) for a in got[4:]) < max(abs(a) for a in got[:4])


def test_equal_rewards_give_zero_advantages():
    assert batch_normalised_group_advantages(torch.ones(6), 3).tolist() == [0.0] * 6


def test_the_stage_is_registered_with_its_own_defaults():
    from alignlab.stages import STAGES

    config_cls, run = STAGES["reinforce_pp"].load()
    cfg = config_cls(model="m", prompts="p", reward={"type": "gold", "task": "sentiment"})
    assert (cfg.beta, cfg.aggregation, run.__name__) == (0.01, "sequence_sum", "run_reinforce_pp")
