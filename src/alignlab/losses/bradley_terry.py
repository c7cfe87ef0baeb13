"""Pairwise reward-model loss under the Bradley–Terry preference model.

P(y_w ≻ y_l) = σ(r(y_w) − r(y_l)) (Bradley & Terry 1952), trained by maximum likelihood as in
Christiano et al. 2017 and Ouyang et al. 2022 (InstructGPT, eq. 1). Options:

- margin m: −log σ(r_w − r_l − m), the preference-strength margin of Touvron et al. 2023
  (Llama 2, §3.2.2);
- centring: + c·(r_w + r_l)², the auxiliary loss of Eisenstein et al. 2023 ("Helping or Herding?
  Reward Model Ensembles Mitigate but do not Eliminate Reward Hacking", §3) that pins the
  otherwise free offset of the rewards near zero;
- soft labels p = P(chosen ≻ rejected) (e.g. AI feedback probabilities, Bai et al. 2022).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from alignlab.ops.stats import check_reduction, pairwise_accuracy, reduce_loss


def preference_nll(logits: Tensor, labels: Tensor | float | None = None) -> Tensor:
    """Per-pair −log-likelihood of a preference whose log-odds for "chosen wins" is `logits`.

    Without labels (chosen is known to win): −log σ(z). With a soft label p, the probability
    that chosen wins, it is the binary cross-entropy against p:
    p·(−log σ(z)) + (1 − p)·(−log σ(−z)). p = 1 gives the hard loss, p = 0 the reversed one.
    `labels` may be a tensor (one per pair) or a single number. Values are not range-checked
    (that would need a host sync); keep them in [0, 1].
    """
    if labels is None:
        return -F.logsigmoid(logits)
    if isinstance(labels, Tensor):
        labels = labels.to(logits.dtype)
    return -(labels * F.logsigmoid(logits) + (1 - labels) * F.logsigmoid(-logits))


def bradley_terry_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    margin: Tensor | float | None = None,
    labels: Tensor | None = None,
    center_coef: float = 0.0,
    reduction: str = "mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Reward-model loss on `[B]` scores of chosen and rejected responses.

    Per pair, with Δ = r_w − r_l − margin:

        hard labels:  −log σ(Δ)
        soft label p: p·(−log σ(Δ)) + (1 − p)·(−log σ(−Δ))
        plus, when center_coef = c > 0:  c·(r_w + r_l)²

    then reduced by `reduction` ("mean", "sum" or "none"); with "mean" the centring term is
    c·mean((r_w + r_l)²) as in Eisenstein et al. 2023.

    Soft labels with a margin: the model's probability that chosen wins is read as σ(Δ), so the
    soft loss is the cross-entropy between p and σ(Δ) — the margin shifts the decision boundary
    for both terms rather than being applied to each side separately. At p = 1 it is exactly
    the hard loss.

    metrics (detached batch means): loss, accuracy, reward_margin = mean(r_w − r_l),
    chosen_reward, rejected_reward. accuracy judges the rewards' ranking, r_w − r_l > 0, not
    the margin-shifted Δ (a margin is a training target, not part of the prediction); with soft
    labels see `alignlab.ops.pairwise_accuracy` (agreement with p > 0.5, ties p = 0.5 count 0.5).
    """
    check_reduction(reduction)
    if not center_coef >= 0:
        raise ValueError(f"center_coef must be >= 0, got {center_coef}")
    reward_diff = chosen_rewards - rejected_rewards
    logits = reward_diff if margin is None else reward_diff - margin
    per_pair = preference_nll(logits, labels)
    if center_coef > 0:
        per_pair = per_pair + center_coef * (chosen_rewards + rejected_rewards) ** 2
    loss = reduce_loss(per_pair, reduction)
    metrics = {
        "loss": per_pair.detach().mean(),
        "accuracy": pairwise_accuracy(reward_diff, labels),
        "reward_margin": reward_diff.detach().mean(),
        "chosen_reward": chosen_rewards.detach().mean(),
        "rejected_reward": rejected_rewards.detach().mean(),
    }
    return loss, metrics


__all__ = ["bradley_terry_loss", "preference_nll"]
