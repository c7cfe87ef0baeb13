"""ORPO: odds-ratio preference optimisation, an SFT loss plus a reference-free preference term.

Hong, Lee & Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference Model"
(EMNLP 2024). With P(y|x) = exp(mean per-token log π(y|x)) and odds(y) = P / (1 − P):

    loss = NLL(y_w) − λ·log σ(log odds(y_w) − log odds(y_l))

where NLL(y_w) is the mean per-token negative log-likelihood of the chosen response (the SFT
term) and λ = 0.1 is the paper's usual weight. There is no reference model: the odds ratio
itself keeps the rejected response from being pushed to zero probability too fast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from alignlab.losses.objective import PairLogps, PreferenceSettings
from alignlab.ops.stats import check_reduction, pairwise_accuracy, reduce_loss

_LN2 = math.log(2)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − exp(x)) for x < 0, accurate over the whole range.

    Mächler 2012, "Accurately Computing log(1 − exp(−|a|))": near 0, exp(x) rounds to 1 and
    1 − exp(x) cancels, so use log(−expm1(x)); far below 0, expm1 loses the tiny difference
    from −1, so use log1p(−exp(x)). The switch is at −ln 2. Each branch is fed only inputs from
    its own side, so the branch `torch.where` discards cannot produce an inf whose gradient
    (inf · 0 = NaN) would poison the backward pass.
    """
    near_zero = x > -_LN2
    switch = torch.full((), -_LN2, dtype=x.dtype, device=x.device)
    small = torch.log(-torch.expm1(torch.where(near_zero, x, switch)))
    large = torch.log1p(-torch.exp(torch.where(near_zero, switch, x)))
    return torch.where(near_zero, small, large)


def log_odds(avg_logps: Tensor) -> Tensor:
    """log(P / (1 − P)) for P = exp(avg_logps), computed from the log-prob without forming P.

    avg_logps should be ≤ 0. It is capped at −(machine epsilon) first: a response the policy
    is certain of (mean log-prob rounding to 0) then gets a large finite log odds, about
    −log(eps), instead of +inf; below the cap the value is exact. Half-precision inputs are
    computed in float32, where the cap is 1.2e-7 rather than bf16's 7.8e-3.
    """
    if avg_logps.dtype in (torch.float16, torch.bfloat16):
        avg_logps = avg_logps.float()
    capped = avg_logps.clamp(max=-torch.finfo(avg_logps.dtype).eps)
    return capped - log1mexp(capped)


def orpo_loss(
    policy_chosen_avg_logps: Tensor,
    policy_rejected_avg_logps: Tensor,
    chosen_nll: Tensor,
    lambda_: float = 0.1,
    reduction: str = "mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """ORPO loss on `[B]` mean per-token log-probs of chosen/rejected and `[B]` chosen NLL.

    chosen_nll: each example's mean token NLL of the chosen response (−avg log π(y_w) when the
    SFT term covers exactly the response tokens; it is a separate input so the caller decides
    which tokens it covers). lambda_ >= 0 weighs the odds-ratio term; 0 leaves plain SFT.

    metrics (detached batch means): loss, nll, log_odds_ratio (log odds_w − log odds_l),
    or_loss (λ·(−log σ(log_odds_ratio)), the term added to the NLL), accuracy
    (log_odds_ratio > 0), chosen_reward and rejected_reward (the log odds of each response).
    """
    if not lambda_ >= 0 or math.isinf(lambda_):
        raise ValueError(f"lambda_ must be a finite number >= 0, got {lambda_}")
    if chosen_nll.shape != policy_chosen_avg_logps.shape:
        # A batch-mean NLL would broadcast silently and be counted B times under "sum".
        raise ValueError(
            f"chosen_nll must be per example, shape {tuple(policy_chosen_avg_logps.shape)}, "
            f"got {tuple(chosen_nll.shape)}"
        )
    check_reduction(reduction)

    chosen_log_odds = log_odds(policy_chosen_avg_logps)
    rejected_log_odds = log_odds(policy_rejected_avg_logps)
    log_odds_ratio = chosen_log_odds - rejected_log_odds
    or_term = -lambda_ * F.logsigmoid(log_odds_ratio)
    per_pair = chosen_nll + or_term
    loss = reduce_loss(per_pair, reduction)
    metrics = {
        "loss": per_pair.detach().mean(),
        "nll": chosen_nll.detach().mean(),
        "log_odds_ratio": log_odds_ratio.detach().mean(),
        "or_loss": or_term.detach().mean(),
        "accuracy": pairwise_accuracy(log_odds_ratio),
        "chosen_reward": chosen_log_odds.detach().mean(),
        "rejected_reward": rejected_log_odds.detach().mean(),
    }
    return loss, metrics


__all__ = ["log1mexp", "log_odds", "orpo_loss"]


def orpo_objective(lp: PairLogps, s: PreferenceSettings, beta: float, labels, reduction: str):
    """ORPO on per-token means; its NLL term is the chosen response's mean NLL."""
    return orpo_loss(lp.chosen_mean, lp.rejected_mean, -lp.chosen_mean, lambda_=s.orpo_lambda, reduction=reduction)
