"""Policy-gradient objectives of online RLHF: PPO (policy and value), GRPO, REINFORCE.

Inputs are per-token log-probs of the sampled response tokens `[B, T]` with a response mask
`[B, T]` (non-zero = response token). Advantages are `[B, T]` (PPO with GAE) or `[B]` (one value
per sequence, broadcast over its tokens: RLOO, GRPO). Each loss returns `(loss, metrics)` with
detached 0-dim metric tensors. `old_logps`, `old_values`, `returns` and `advantages` are treated as
constants (detached here), so passing `old_logps=logps` for a single on-policy update still gives
the policy gradient rather than zero.

Entropy cannot be computed from the sampled tokens' log-probs alone (it needs the full
distribution), so no entropy bonus lives here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignlab.ops.stats import kl_k3, masked_mean, masked_sum

AGGREGATIONS = ("token_mean", "sequence_mean", "sequence_sum", "token_sum_norm")


def aggregate(per_token: Tensor, mask: Tensor, mode: str, max_tokens: int | None = None) -> Tensor:
    """Reduce a per-token loss `[B, T]` to a scalar over the masked tokens.

    - "token_mean": Σ over every masked token of the batch / their number; each token weighs the
      same, so long responses are not down-weighted (DAPO, Yu et al. 2025, eq. 12).
    - "sequence_mean": mean over each row's masked tokens, then mean over rows; each response
      weighs the same (the original GRPO, Shao et al. 2024, eq. 3). A row with no masked token
      counts as 0.
    - "sequence_sum": Σ over each row's masked tokens, then mean over rows; with on-policy samples
      its gradient is REINFORCE on the whole sequence's log-prob (RLOO, Ahmadian et al. 2024).
    - "token_sum_norm": Σ over masked tokens / (B × max_tokens) with a constant max_tokens (the
      sampling's max_new_tokens, required), so the weight of a token depends on neither its
      response's length, nor the batch's token count, nor how wide padding made the tensor
      (Dr. GRPO, Liu et al. 2025; TRL divides by batch × max_completion_length too).
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; choose one of {', '.join(AGGREGATIONS)}")
    if mode == "token_mean":
        return masked_mean(per_token, mask)
    if mode == "sequence_mean":
        return masked_mean(per_token, mask, dim=-1).mean()
    if mode == "sequence_sum":
        return masked_sum(per_token, mask, dim=-1).mean()
    if max_tokens is None:
        # a constant is the point of this mode: the padded width changes with each batch's longest row
        raise ValueError("aggregation 'token_sum_norm' needs max_tokens (e.g. the sampling's max_new_tokens)")
    if not max_tokens > 0:
        raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
    return masked_sum(per_token, mask) / (per_token.shape[0] * max_tokens)


def _per_token(advantages: Tensor, like: Tensor) -> Tensor:
    """Advantages `[B]` broadcast over the tokens of each row; `[B, T]` passed through."""
    advantages = advantages.detach()
    return advantages.unsqueeze(-1) if advantages.dim() == like.dim() - 1 else advantages


def _weighted(per_token: Tensor, token_weights: Tensor | None) -> Tensor:
    return per_token if token_weights is None else per_token * token_weights.detach()


def _clipped_surrogate(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, clip_low: float,
    clip_high: float | None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)·A) and its metrics."""
    clip_high = clip_low if clip_high is None else clip_high
    if not (clip_low >= 0 and clip_high >= 0):
        raise ValueError(
            f"clip ranges must be >= 0, got clip_low={clip_low}, clip_high={clip_high}"
        )
    log_ratio = logps - old_logps.detach()
    ratio = torch.exp(log_ratio)
    advantages = _per_token(advantages, logps)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    with torch.no_grad():
        metrics = {
            # The clipped branch is taken (and binding) where it is strictly the larger loss.
            "clip_fraction": masked_mean((clipped > unclipped).to(logps.dtype), mask),
            # k3 estimate of KL(π_old ‖ π_θ) from tokens sampled by π_old: (ρ − 1) − log ρ
            # (Schulman 2020).
            "approx_kl": masked_mean(kl_k3(old_logps, logps), mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return per_token, metrics


def clipped_policy_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    aggregation: str = "token_mean",
    max_tokens: int | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate, per token, aggregated over the masked tokens.

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7, as a loss:

        ρ_t = exp(log π_θ(y_t) − log π_old(y_t))
        loss_t = −min(ρ_t·A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high)·A_t)

    clip_high defaults to clip_low (symmetric, as in PPO); a larger clip_high is DAPO's
    "clip-higher" (Yu et al. 2025). Where the clipped branch is taken the token's gradient is 0;
    elsewhere it is −A_t·ρ_t·∇log π_θ(y_t) times the aggregation weight (1/N for "token_mean").

    metrics: loss; clip_fraction (share of masked tokens where the clipped branch is taken, i.e.
    the clip is active and binding); approx_kl (mean over masked tokens of the k3 estimator
    (ρ − 1) − log ρ of KL(π_old‖π_θ), ≥ 0); ratio_mean (mean ρ; near 1 on the first epoch means
    sampler and trainer agree on the log-probs).

    `token_weights` `[B, T]` (constants) multiply each token's loss before aggregation: the
    importance weights that correct a rollout engine's mismatch (`alignlab.ops.importance`).
    """
    per_token, metrics = _clipped_surrogate(logps, old_logps, advantages, mask, clip_low, clip_high)
    loss = aggregate(_weighted(per_token, token_weights), mask, aggregation, max_tokens)
    return loss, {"loss": loss.detach(), **metrics}


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float | None = 0.2,
    aggregation: str = "token_mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped value loss, per token, aggregated over the masked tokens.

    As in OpenAI baselines' PPO2 and TRL's PPO trainer (see Huang et al. 2022, "The 37
    Implementation Details of PPO", detail 9):

        v_clip = v_old + clip(v − v_old, −ε, ε)
        loss_t = ½·max((v − R)², (v_clip − R)²)

    clip=None gives the plain ½(v − R)². returns R and old_values are constants.

    metrics: loss; value_clip_fraction (share of masked tokens where the clipped error is the
    larger one, so the token gets no gradient); value_mse (mean (v − R)² over masked tokens).
    """
    returns = returns.detach()
    error = (values - returns) ** 2
    if clip is None:
        per_token = 0.5 * error
        clipped_taken = torch.zeros_like(error, dtype=torch.bool)
    else:
        if not clip >= 0:
            raise ValueError(f"value clip must be >= 0 or None, got {clip}")
        old_values = old_values.detach()
        clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
        clipped_error = (clipped_values - returns) ** 2
        per_token = 0.5 * torch.maximum(error, clipped_error)
        clipped_taken = clipped_error > error
    loss = aggregate(per_token, mask, aggregation)
    with torch.no_grad():
        metrics = {
            "loss": loss.detach(),
            "value_clip_fraction": masked_mean(clipped_taken.to(values.dtype), mask),
            "value_mse": masked_mean(error, mask),
        }
    return loss, metrics


def ppo_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float = 0.2,
    value_clip: float | None = 0.2,
    vf_coef: float = 0.1,
    aggregation: str = "token_mean",
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO-RLHF loss: clipped policy surrogate + vf_coef × clipped value loss.

    Schulman et al. 2017, eq. 9 without the entropy term, with the RLHF defaults (clip 0.2,
    value clip 0.2, vf_coef 0.1; Ziegler et al. 2019, Ouyang et al. 2022). advantages usually come
    from `alignlab.ops.advantages.gae`, whitened.

    metrics: "loss" (the total), and each part's metrics as "policy/<key>" and "value/<key>"
    (policy/loss, policy/clip_fraction, policy/approx_kl, policy/ratio_mean, value/loss,
    value/value_clip_fraction, value/value_mse).

    `token_weights` (rollout correction's importance weights) multiply the policy surrogate's tokens
    only: the value loss fits returns, whatever distribution the samples came from.
    """
    policy, policy_metrics = clipped_policy_loss(
        logps, old_logps, advantages, mask, clip_low=clip, aggregation=aggregation, token_weights=token_weights
    )
    value, value_metrics = clipped_value_loss(
        values, old_values, returns, mask, clip=value_clip, aggregation=aggregation
    )
    loss = policy + vf_coef * value
    metrics = {"loss": loss.detach()}
    metrics.update({f"policy/{k}": v for k, v in policy_metrics.items()})
    metrics.update({f"value/{k}": v for k, v in value_metrics.items()})
    return loss, metrics


def grpo_loss(
    logps: Tensor,
    old_logps: Tensor,
    ref_logps: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    beta: float = 0.04,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    aggregation: str = "sequence_mean",
    max_tokens: int | None = None,
    kl_bias_correction: bool = False,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO loss: PPO's clipped surrogate plus a per-token KL penalty to the reference.

    Shao et al. 2024, "DeepSeekMath", eq. 3–4: per token

        loss_t = −min(ρ_t·A, clip(ρ_t, 1 − ε_low, 1 + ε_high)·A) + β·k3_t
        k3_t = π_ref(y_t)/π_θ(y_t) − log(π_ref(y_t)/π_θ(y_t)) − 1

    aggregated as `aggregation` says ("sequence_mean" is the paper's 1/G Σ_i 1/|o_i| Σ_t; TRL's
    "dapo" is "token_mean"; Dr. GRPO is "token_sum_norm" with unscaled advantages and
    `max_tokens` = the sampling's max_new_tokens, a constant). advantages: `[B]` (from
    `group_normalised_advantages`) or `[B, T]`. beta is a Python number (paper 0.04); with
    beta = 0 the reference is not needed (ref_logps may be None).

    kl_bias_correction: the KL term becomes ρ_t·k3_t (ρ_t = π_θ/π_old, gradient through ρ), as TRL
    1.16 does by default (`use_bias_correction_kl`, after DeepSeek-V3.2). Its expected gradient over
    tokens drawn from π_old is exactly ∇KL(π_θ‖π_ref), on- and off-policy. The plain k3 term's
    expected gradient is E_π_old[(1 − π_ref/π_θ)∇log π_θ]: on-policy that is ∇KL(π_ref‖π_θ), the
    KL the other way round (TRL's docs call KL(π_θ‖π_ref) the reverse KL), and off-policy neither.
    Both vanish at π_θ = π_ref and both pull towards the reference; they differ in which KL they
    descend. Since ρ is differentiable, the correction changes the gradient even on-policy, where
    its value is 1. The logged `kl` metric is the plain k3 mean either way.

    `token_weights` multiply each token's whole loss (surrogate and KL term: both are estimated
    from the sampled tokens), as in `clipped_policy_loss`.

    metrics: loss; policy_loss (the aggregated surrogate alone); kl (mean k3 over masked tokens,
    present whenever ref_logps is given); clip_fraction; approx_kl (k3 of KL(π_old‖π_θ));
    ratio_mean.
    """
    if ref_logps is None and beta != 0:
        raise ValueError(f"grpo_loss with beta={beta} needs ref_logps (or pass beta=0)")
    surrogate, metrics = _clipped_surrogate(logps, old_logps, advantages, mask, clip_low, clip_high)
    per_token = surrogate
    kl_metric = {}
    if ref_logps is not None:
        kl = kl_k3(logps, ref_logps.detach())
        if beta != 0:
            penalty = kl * torch.exp(logps - old_logps.detach()) if kl_bias_correction else kl
            per_token = surrogate + beta * penalty
        kl_metric = {"kl": masked_mean(kl.detach(), mask)}
    loss = aggregate(_weighted(per_token, token_weights), mask, aggregation, max_tokens)
    policy_loss = aggregate(_weighted(surrogate.detach(), token_weights), mask, aggregation, max_tokens)
    return loss, {"loss": loss.detach(), "policy_loss": policy_loss, **kl_metric, **metrics}


def reinforce_loss(
    logps: Tensor, advantages: Tensor, mask: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """REINFORCE with a per-sequence advantage: mean over sequences of −A_i·Σ_t log π_θ(y_i,t).

    The form RLOO trains with (Ahmadian et al. 2024, eq. 8 / Williams 1992): the whole response
    is one action whose log-prob is the sum of its tokens' log-probs. advantages: `[B]`, e.g.
    from `leave_one_out_advantages`.

    metrics: loss; sequence_logp (mean Σ_t log π over sequences); advantage_mean.
    """
    advantages = advantages.detach()
    sequence_logps = masked_sum(logps, mask, dim=-1)
    loss = (-advantages * sequence_logps).mean()
    metrics = {
        "loss": loss.detach(),
        "sequence_logp": sequence_logps.detach().mean(),
        "advantage_mean": advantages.mean(),
    }
    return loss, metrics


__all__ = [
    "AGGREGATIONS",
    "aggregate",
    "clipped_policy_loss",
    "clipped_value_loss",
    "grpo_loss",
    "ppo_loss",
    "reinforce_loss",
]
