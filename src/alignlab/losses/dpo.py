"""Direct Preference Optimization and its label-smoothed (conservative) variant.

DPO (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model", eq. 7) is a Bradley–Terry loss on the implicit reward β·log(π/π_ref):

    Δ = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))
    loss = −log σ(βΔ)

cDPO (Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO") assumes each
label is flipped with probability ε and minimises the expected loss:

    (1 − ε)·(−log σ(βΔ)) + ε·(−log σ(−βΔ))

Soft labels p per pair (e.g. AI-feedback probabilities) use the same cross-entropy with p in
place of 1 − ε. The sequence log-probs are sums over response tokens (`sequence_logps(...,
"sum")`), as in the paper.
"""

from __future__ import annotations

from torch import Tensor

from alignlab.losses.objective import PairLogps, PreferenceSettings
from alignlab.losses.bradley_terry import preference_nll
from alignlab.ops.stats import check_reduction, pairwise_accuracy, reduce_loss


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    labels: Tensor | None = None,
    reduction: str = "mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """DPO loss on `[B]` sequence log-probs of chosen/rejected responses under policy and reference.

    beta > 0 is the KL-regularisation strength (0.1 is the usual default). label_smoothing ε in
    [0, 0.5) turns on cDPO. labels: optional soft labels p in [0, 1] (probability that chosen
    beats rejected), per pair: p·(−log σ(βΔ)) + (1 − p)·(−log σ(−βΔ)); they cannot be combined
    with ε > 0 (both say how much to trust the label — give one). At a fresh reference
    (policy == reference) every pair's loss is ln 2.

    metrics (detached batch means): loss, reward_margin (βΔ), accuracy (βΔ > 0; with soft labels,
    agreement with p > 0.5, ties p = 0.5 count 0.5), chosen_reward (β·(π_w − ref_w)),
    rejected_reward, chosen_logratio (π_w − ref_w), rejected_logratio, chosen_logps (policy),
    rejected_logps.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if labels is not None and label_smoothing != 0:
        raise ValueError("give either soft labels or label_smoothing, not both")
    check_reduction(reduction)

    chosen_logratio = policy_chosen_logps - ref_chosen_logps
    rejected_logratio = policy_rejected_logps - ref_rejected_logps
    logits = beta * (chosen_logratio - rejected_logratio)
    if labels is None and label_smoothing > 0:
        per_pair = (1 - label_smoothing) * preference_nll(logits) + label_smoothing * preference_nll(
            -logits
        )
    else:
        per_pair = preference_nll(logits, labels)
    loss = reduce_loss(per_pair, reduction)

    metrics = preference_pair_metrics(
        per_pair,
        logits,
        chosen_logratio,
        rejected_logratio,
        policy_chosen_logps,
        policy_rejected_logps,
        reward_scale=beta,
        labels=labels,
    )
    return loss, metrics


def preference_pair_metrics(
    per_pair: Tensor,
    logits: Tensor,
    chosen_logratio: Tensor,
    rejected_logratio: Tensor,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reward_scale: float,
    labels: Tensor | None = None,
) -> dict[str, Tensor]:
    """The metrics every reference-based pairwise loss (DPO, IPO, hinge, robust DPO) reports.

    `logits` is the scaled margin reward_scale·Δ; the implicit reward of a response is
    reward_scale·(log π − log π_ref). All values are detached batch means (see `dpo_loss`).
    """
    chosen_logratio = chosen_logratio.detach()
    rejected_logratio = rejected_logratio.detach()
    return {
        "loss": per_pair.detach().mean(),
        "reward_margin": logits.detach().mean(),
        "accuracy": pairwise_accuracy(logits, labels),
        "chosen_reward": reward_scale * chosen_logratio.mean(),
        "rejected_reward": reward_scale * rejected_logratio.mean(),
        "chosen_logratio": chosen_logratio.mean(),
        "rejected_logratio": rejected_logratio.mean(),
        "chosen_logps": policy_chosen_logps.detach().mean(),
        "rejected_logps": policy_rejected_logps.detach().mean(),
    }


def dpo_objective(lp: PairLogps, s: PreferenceSettings, beta: float, labels: Tensor | None, reduction: str):
    return dpo_loss(*lp.with_reference("sigmoid"), beta=beta, label_smoothing=s.label_smoothing, labels=labels,
                    reduction=reduction)
