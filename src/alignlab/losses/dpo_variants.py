"""Other losses on DPO's reference-normalised margin: IPO, hinge (SLiC) and robust DPO.

All three read the same quantity as DPO (`alignlab.losses.dpo`),

    Δ = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)),

and differ only in the function of Δ they minimise:

- IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
  Preferences", the empirical IPO loss): (Δ − 1/(2τ))². A squared loss with a finite target,
  so Δ cannot run off to infinity on deterministic preferences as it can under DPO's logistic
  loss.
- hinge: relu(1 − βΔ). The hinge "calibration" loss of SLiC (Zhao et al. 2023, "SLiC-HF:
  Sequence Likelihood Calibration with Human Feedback") with its margin δ = 1/β, in the
  reference-normalised form of Liu et al. 2024 ("Statistical Rejection Sampling Improves
  Preference Optimization", the "hinge-norm" loss).
- robust DPO (Chowdhury et al. 2024, "Provably Robust DPO: Aligning Language Models with Noisy
  Feedback", ICML 2024): with labels flipped at rate ε, [(1−ε)·ℓ(βΔ) − ε·ℓ(−βΔ)]/(1−2ε), where
  ℓ(z) = −log σ(z). Its expectation over the noise is the clean DPO loss (unbiased), unlike
  cDPO's (1−ε)·ℓ(βΔ) + ε·ℓ(−βΔ). It can be negative and is not bounded below in Δ.

Each returns the metrics of `dpo_loss`, with the implicit reward scaled by β (by τ for IPO,
whose regulariser plays β's role).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from alignlab.losses.objective import PairLogps, PreferenceSettings
from alignlab.losses.bradley_terry import preference_nll
from alignlab.losses.dpo import preference_pair_metrics
from alignlab.ops.stats import check_reduction, reduce_loss


def _reference_pair_loss(
    loss_of_delta: Callable[[Tensor], Tensor],
    reward_scale: float,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    reduction: str,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Compute Δ, apply the per-pair loss, reduce, and report DPO's metrics."""
    check_reduction(reduction)
    chosen_logratio = policy_chosen_logps - ref_chosen_logps
    rejected_logratio = policy_rejected_logps - ref_rejected_logps
    delta = chosen_logratio - rejected_logratio
    per_pair = loss_of_delta(delta)
    metrics = preference_pair_metrics(
        per_pair,
        reward_scale * delta,
        chosen_logratio,
        rejected_logratio,
        policy_chosen_logps,
        policy_rejected_logps,
        reward_scale=reward_scale,
    )
    return reduce_loss(per_pair, reduction), metrics


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    tau: float = 0.1,
    reduction: str = "mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """IPO loss (Δ − 1/(2τ))² on `[B]` log-probs (Azar et al. 2023).

    tau > 0 is the regularisation strength; the loss is minimal (zero, with zero gradient) at
    Δ = 1/(2τ), so a smaller τ asks for a larger margin.

    The function is agnostic about how the sequence log-probs were reduced, and the choice
    matters because the target 1/(2τ) is absolute: the paper sums over response tokens
    (`sequence_logps(..., "sum")`), while TRL averages per token ("mean"), which makes Δ — and
    so the right τ — independent of response length. Pass whichever you mean.

    metrics: as `dpo_loss`, with rewards τ·(log π − log π_ref) and reward_margin τΔ.
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    target = 1 / (2 * tau)
    return _reference_pair_loss(
        lambda delta: (delta - target) ** 2,
        tau,
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        reduction,
    )


def hinge_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    reduction: str = "mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Hinge loss relu(1 − βΔ) on `[B]` log-probs (SLiC, Zhao et al. 2023; normalised by the
    reference as in Liu et al. 2024).

    beta > 0; 1/β is the margin Δ must reach, after which a pair gives zero loss and zero
    gradient. metrics: as `dpo_loss`.
    """
    _check_beta(beta)
    return _reference_pair_loss(
        lambda delta: torch.relu(1 - beta * delta),
        beta,
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        reduction,
    )


def robust_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
    reduction: str = "mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Robust DPO on `[B]` log-probs (Chowdhury et al. 2024):

        [(1 − ε)·(−log σ(βΔ)) − ε·(−log σ(−βΔ))] / (1 − 2ε)

    label_smoothing ε in [0, 0.5) is the assumed rate at which preference labels are flipped;
    ε = 0 is plain DPO. The per-pair loss may be negative. metrics: as `dpo_loss`.
    """
    _check_beta(beta)
    eps = label_smoothing
    if not 0 <= eps < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")

    def loss_of_delta(delta: Tensor) -> Tensor:
        logits = beta * delta
        return ((1 - eps) * preference_nll(logits) - eps * preference_nll(-logits)) / (1 - 2 * eps)

    return _reference_pair_loss(
        loss_of_delta,
        beta,
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        reduction,
    )


__all__ = ["hinge_loss", "ipo_loss", "robust_dpo_loss"]


def robust_dpo_objective(lp: PairLogps, s: PreferenceSettings, beta: float, labels, reduction: str):
    return robust_dpo_loss(*lp.with_reference("robust"), beta=beta, label_smoothing=s.label_smoothing,
                           reduction=reduction)


def hinge_objective(lp: PairLogps, s: PreferenceSettings, beta: float, labels, reduction: str):
    return hinge_loss(*lp.with_reference("hinge"), beta=beta, reduction=reduction)


def ipo_objective(lp: PairLogps, s: PreferenceSettings, beta: float, labels, reduction: str):
    """IPO on summed log-probs (the paper), or per-token means with `ipo_length_normalize` (TRL's choice)."""
    args = lp.with_reference("ipo")
    if s.ipo_length_normalize:
        args = (lp.chosen_mean, lp.rejected_mean, lp.mean(lp.ref_chosen, lp.chosen_tokens),
                lp.mean(lp.ref_rejected, lp.rejected_tokens))
    return ipo_loss(*args, tau=s.tau, reduction=reduction)
