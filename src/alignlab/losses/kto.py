"""KTO: alignment from unpaired desirable / undesirable examples.

Ethayarajh, Xu, Muennighoff, Jurafsky & Kiela 2024, "KTO: Model Alignment as Prospect Theoretic
Optimization" (ICML 2024). With the implicit reward ρ = log π(y|x) − log π_ref(y|x) and a
reference point z₀, a Kahneman–Tversky value function is maximised; as a loss, per example:

    desirable y:    λ_D·(1 − σ(β(ρ − z₀)))
    undesirable y:  λ_U·(1 − σ(β(z₀ − ρ)))

z₀ estimates KL(π ‖ π_ref) from the batch: the mean of ρ over mismatched pairs (x, y′) — each
prompt paired with another example's response — clamped at 0 and not back-propagated through.
The paper's guideline is to set the weights so that λ_D·n_D / (λ_U·n_U) lies in [1, 4/3];
`kto_weight_ratio_ok` checks it. β = 0.1 as in DPO.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from alignlab.ops.stats import check_reduction, masked_mean, reduce_loss

# The paper's recommended range for λ_D·n_D / (λ_U·n_U).
WEIGHT_RATIO_RANGE = (1.0, 4.0 / 3.0)


def kto_reference_point(mismatched_policy_logps: Tensor, mismatched_ref_logps: Tensor) -> Tensor:
    """z₀ = max(0, mean(log π(y′|x) − log π_ref(y′|x))) over `[M]` mismatched pairs, detached.

    The clamp keeps z₀ ≥ 0, the value a true KL takes (the batch estimate can dip below it).
    The mean is over this batch only; under data parallelism a caller that wants the paper's
    whole-batch estimate all-reduces it first. Raises ValueError when there is no pair: to train
    without a reference point pass `reference_point=0.0` to `kto_loss` instead.
    """
    if mismatched_policy_logps.numel() == 0:
        raise ValueError("kto_reference_point needs at least one mismatched (x, y') pair")
    log_ratio = mismatched_policy_logps.detach() - mismatched_ref_logps.detach()
    return log_ratio.mean().clamp_min(0)


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    reference_point: Tensor | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    reduction: str = "mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """KTO loss on `[B]` sequence log-probs under policy and reference.

    desirable: `[B]` bool (True = desirable / thumbs-up; a 0/1 tensor is read as "!= 0").
    reference_point: z₀, e.g. from `kto_reference_point`; it is detached here in any case.
    beta > 0; desirable_weight λ_D and undesirable_weight λ_U > 0. "mean" averages the weighted
    per-example losses over all B examples of both kinds.

    metrics (detached): loss (batch mean), reference_point (z₀), desirable_reward (mean βρ over
    the desirable examples, 0 when there is none), undesirable_reward (likewise),
    desirable_fraction.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    for name, weight in (("desirable_weight", desirable_weight), ("undesirable_weight", undesirable_weight)):
        if not weight > 0 or math.isinf(weight):
            raise ValueError(f"{name} must be a finite number > 0, got {weight}")
    if desirable.shape != policy_logps.shape:
        raise ValueError(
            f"desirable must have the shape of policy_logps {tuple(policy_logps.shape)}, "
            f"got {tuple(desirable.shape)}"
        )
    check_reduction(reduction)

    is_desirable = desirable if desirable.dtype == torch.bool else desirable != 0
    z0 = torch.as_tensor(reference_point, dtype=policy_logps.dtype, device=policy_logps.device).detach()
    reward = beta * (policy_logps - ref_logps)
    shifted = reward - beta * z0  # β(ρ − z₀)
    # 1 − σ(a) = σ(−a), exact in floating point where the subtraction would cancel for large a.
    desirable_loss = desirable_weight * torch.sigmoid(-shifted)
    undesirable_loss = undesirable_weight * torch.sigmoid(shifted)
    per_example = torch.where(is_desirable, desirable_loss, undesirable_loss)
    loss = reduce_loss(per_example, reduction)

    reward = reward.detach()
    metrics = {
        "loss": per_example.detach().mean(),
        "reference_point": z0,
        # masked_mean gives 0, not NaN, for a kind absent from the batch (and needs no host sync).
        "desirable_reward": masked_mean(reward, is_desirable),
        "undesirable_reward": masked_mean(reward, ~is_desirable),
        "desirable_fraction": is_desirable.to(reward.dtype).mean(),
    }
    return loss, metrics


def kto_weight_ratio_ok(
    desirable_weight: float, undesirable_weight: float, n_desirable: int, n_undesirable: int
) -> bool:
    """True when λ_D·n_D / (λ_U·n_U) lies in the paper's recommended [1, 4/3].

    n_desirable, n_undesirable are the example counts of each kind in the data. A data set
    without one of the kinds is never "ok" (KTO needs both). The comparison is made without
    dividing, λ_U·n_U ≤ λ_D·n_D ≤ (4/3)·λ_U·n_U, so the ends of the range count as inside.
    """
    if not desirable_weight > 0 or not undesirable_weight > 0:
        raise ValueError(
            f"weights must be > 0, got desirable_weight={desirable_weight}, "
            f"undesirable_weight={undesirable_weight}"
        )
    if n_desirable < 0 or n_undesirable < 0:
        raise ValueError(f"counts must be >= 0, got n_desirable={n_desirable}, n_undesirable={n_undesirable}")
    if n_desirable == 0 or n_undesirable == 0:
        return False
    desirable_mass = desirable_weight * n_desirable
    undesirable_mass = undesirable_weight * n_undesirable
    # WEIGHT_RATIO_RANGE = [1, 4/3], multiplied out.
    return undesirable_mass <= desirable_mass and 3 * desirable_mass <= 4 * undesirable_mass


__all__ = ["WEIGHT_RATIO_RANGE", "kto_loss", "kto_reference_point", "kto_weight_ratio_ok"]
