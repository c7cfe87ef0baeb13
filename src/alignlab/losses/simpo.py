"""SimPO: a reference-free preference loss on length-normalised log-probs.

Meng, Xia & Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward"
(NeurIPS 2024). The implicit reward of a response is β times its mean per-token log-prob under
the policy — no reference model — and a target margin γ separates chosen from rejected:

    loss = −log σ(β·avg log π(y_w) − β·avg log π(y_l) − γ)

The paper's defaults are β = 2.0 and γ/β = 0.25, i.e. γ = 0.5 at β = 2 (it tunes β in 2–10 and
γ/β in 0–1 per model). The averaging matters: with summed log-probs the reward would favour
short responses, and β, γ would not transfer between lengths. Compute the inputs with
`sequence_logps(..., "mean")`.
"""

from __future__ import annotations

from torch import Tensor

from alignlab.losses.objective import PairLogps, PreferenceSettings
from alignlab.losses.bradley_terry import preference_nll
from alignlab.ops.stats import check_reduction, pairwise_accuracy, reduce_loss


def simpo_loss(
    policy_chosen_avg_logps: Tensor,
    policy_rejected_avg_logps: Tensor,
    beta: float = 2.0,
    gamma: float = 0.5,
    reduction: str = "mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """SimPO loss on `[B]` mean per-token log-probs of chosen and rejected responses.

    beta > 0 scales the reward; gamma >= 0 is the target reward margin. With γ = 0 it is the
    Bradley–Terry loss of the rewards β·avg log π.

    metrics (detached batch means): loss, reward_margin (β·avg_w − β·avg_l, without γ: the
    margin is a training target, not part of the prediction, as in `bradley_terry_loss`),
    accuracy (reward_margin > 0), chosen_reward (β·avg_w), rejected_reward (β·avg_l).
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    check_reduction(reduction)

    chosen_reward = beta * policy_chosen_avg_logps
    rejected_reward = beta * policy_rejected_avg_logps
    reward_margin = chosen_reward - rejected_reward
    per_pair = preference_nll(reward_margin - gamma)
    loss = reduce_loss(per_pair, reduction)
    metrics = {
        "loss": per_pair.detach().mean(),
        "reward_margin": reward_margin.detach().mean(),
        "accuracy": pairwise_accuracy(reward_margin),
        "chosen_reward": chosen_reward.detach().mean(),
        "rejected_reward": rejected_reward.detach().mean(),
    }
    return loss, metrics


__all__ = ["simpo_loss"]


def simpo_objective(lp: PairLogps, s: PreferenceSettings, beta: float, labels, reduction: str):
    return simpo_loss(lp.chosen_mean, lp.rejected_mean, beta=beta, gamma=s.gamma, reduction=reduction)
