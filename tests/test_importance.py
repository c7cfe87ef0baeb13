"""Importance weights for the sampler/trainer mismatch, against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.ops.importance import importance_weights

# two sequences of 3 tokens, the second one token shorter (masked out)
OLD = torch.tensor([[0.0, -1.0, -2.0], [-0.5, -0.5, 0.0]])
SAMPLER = torch.tensor([[-0.1, -1.0, -3.0], [-0.5, -1.5, 7.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
# per-token log ratios: [0.1, 0, 1] and [0, 1, (masked)]


def test_token_level_truncate_is_min_of_the_ratio_and_the_bound():
    w, stats = importance_weights(OLD, SAMPLER, MASK, level="token", mode="truncate", threshold=2.0)
    e = math.e
    expected = torch.tensor([[math.exp(0.1), 1.0, 2.0], [1.0, 2.0, 0.0]])  # e > 2: bounded at 2
    assert torch.allclose(w, expected)
    assert float(stats["ratio_mean"]) == pytest.approx((math.exp(0.1) + 1 + e + 1 + e) / 5, rel=1e-6)
    assert float(stats["weight_mean"]) == pytest.approx((math.exp(0.1) + 1 + 2 + 1 + 2) / 5, rel=1e-6)
    assert float(stats["bounded_share"]) == pytest.approx(2 / 5)


def test_token_level_mask_drops_the_tokens_over_the_bound():
    w, _ = importance_weights(OLD, SAMPLER, MASK, level="token", mode="mask", threshold=2.0)
    assert torch.allclose(w, torch.tensor([[math.exp(0.1), 1.0, 0.0], [1.0, 0.0, 0.0]]))


def test_sequence_level_uses_the_product_over_the_sequence():
    # sequence 1: exp(1.1) = 3.004 > 3 -> bounded; sequence 2: exp(1) = 2.718 < 3 -> kept whole
    w, stats = importance_weights(OLD, SAMPLER, MASK, level="sequence", mode="truncate", threshold=3.0)
    assert torch.allclose(w, torch.tensor([[3.0, 3.0, 3.0], [math.e, math.e, 0.0]]))
    assert float(stats["bounded_share"]) == pytest.approx(1 / 2)
    w, _ = importance_weights(OLD, SAMPLER, MASK, level="sequence", mode="mask", threshold=3.0)
    assert torch.allclose(w, torch.tensor([[0.0, 0.0, 0.0], [math.e, math.e, 0.0]]))


def test_weights_are_constants_and_equal_one_when_sampler_and_trainer_agree():
    old = OLD.clone().requires_grad_()
    w, stats = importance_weights(old, old.detach(), MASK, level="token", mode="truncate", threshold=2.0)
    assert not w.requires_grad
    assert torch.equal(w, MASK.float()) and float(stats["bounded_share"]) == 0.0


def test_policy_losses_weigh_each_tokens_loss_and_its_gradient():
    from alignlab.losses.policy_gradient import clipped_policy_loss, grpo_loss

    torch.manual_seed(0)
    logps = (torch.randn(2, 3) - 1).requires_grad_()
    old, ref = logps.detach() + 0.05 * torch.randn(2, 3), logps.detach() - 0.1
    adv, mask = torch.tensor([1.0, -0.5]), MASK
    w = torch.tensor([[0.5, 1.0, 2.0], [0.0, 1.5, 9.0]])  # the last is off the mask

    def per_token(fn, **kw):  # the unweighted per-token losses, read back through unit weights
        values = []
        for i in range(2):
            for j in range(3):
                unit = torch.zeros(2, 3)
                unit[i, j] = 1.0
                loss, _ = fn(logps, old, adv=adv, token_weights=unit, **kw)
                values.append(float(loss.detach()))
        return torch.tensor(values).view(2, 3)

    for fn, kw in ((lambda lp, o, adv, **k: clipped_policy_loss(lp, o, adv, mask, aggregation="token_mean", **k), {}),
                   (lambda lp, o, adv, **k: grpo_loss(lp, o, ref, adv, mask, beta=0.1, aggregation="sequence_sum", **k), {})):
        parts = per_token(fn, **kw)
        weighted, _ = fn(logps, old, adv=adv, token_weights=w)
        # the loss is linear in the per-token losses: Σ w·(each token's share) over the masked tokens
        assert float(weighted) == pytest.approx(float((w * parts * MASK).sum()), rel=1e-6)
        (grad_w,) = torch.autograd.grad(weighted, logps)
        (grad_1,) = torch.autograd.grad(fn(logps, old, adv=adv)[0], logps)
        assert torch.allclose(grad_w, w * grad_1 * MASK, atol=1e-7)  # the weights are constants
