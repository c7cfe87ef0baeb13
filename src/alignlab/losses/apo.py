"""Anchored Preference Optimization (D'Oosterlinck et al. 2024, "Anchored Preference Optimization
and Contrastive Revisions"): DPO says only that chosen should beat rejected; APO also anchors each
response's own likelihood ratio r = β(log π − log π_ref), choosing the direction by what the data
says about the model.

- APO-zero, when the chosen answers are better than the model's own: push chosen up and rejected
  down, (1 − σ(r_w)) + σ(r_l).
- APO-down, when the model is already better than the chosen answers: push both down, the
  rejected more, σ(r_w) + (1 − σ(r_w − r_l)).

At the start (policy = reference, r = 0) both losses equal 1. Metrics are those of `dpo_loss`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignlab.losses.dpo import preference_pair_metrics
from alignlab.losses.objective import PairLogps, PreferenceSettings
from alignlab.ops.stats import check_reduction, reduce_loss


def apo_zero_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                  ref_rejected_logps: Tensor, beta: float = 0.1, reduction: str = "mean") -> tuple[Tensor, dict[str, Tensor]]:
    """APO-zero on `[B]` sequence log-probs: (1 − σ(β·lr_w)) + σ(β·lr_l), lr = log π − log π_ref."""
    return _apo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta, reduction,
                lambda rw, rl: (1 - torch.sigmoid(rw)) + torch.sigmoid(rl))


def apo_down_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                  ref_rejected_logps: Tensor, beta: float = 0.1, reduction: str = "mean") -> tuple[Tensor, dict[str, Tensor]]:
    """APO-down on `[B]` sequence log-probs: σ(β·lr_w) + (1 − σ(β·(lr_w − lr_l)))."""
    return _apo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta, reduction,
                lambda rw, rl: torch.sigmoid(rw) + (1 - torch.sigmoid(rw - rl)))


def _apo(chosen, rejected, ref_chosen, ref_rejected, beta, reduction, per_pair_of):
    check_reduction(reduction)
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen_logratio, rejected_logratio = chosen - ref_chosen, rejected - ref_rejected
    per_pair = per_pair_of(beta * chosen_logratio, beta * rejected_logratio)
    metrics = preference_pair_metrics(per_pair, beta * (chosen_logratio - rejected_logratio), chosen_logratio,
                                      rejected_logratio, chosen, rejected, reward_scale=beta)
    return reduce_loss(per_pair, reduction), metrics


def apo_zero_objective(lp: PairLogps, s: PreferenceSettings, beta: float, labels, reduction: str):
    return apo_zero_loss(*lp.with_reference("apo_zero"), beta=beta, reduction=reduction)


def apo_down_objective(lp: PairLogps, s: PreferenceSettings, beta: float, labels, reduction: str):
    return apo_down_loss(*lp.with_reference("apo_down"), beta=beta, reduction=reduction)
