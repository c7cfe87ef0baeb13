"""Correcting the sampler/trainer mismatch: importance weights from the rollout engine's log-probs
to the trainer's, truncated or masked (TIS and MIS).

A rollout engine (vLLM, or generate under other kernels or precision) samples from π_sampler, not
quite the π_old the trainer computes for the same weights. The policy-gradient estimate then needs
each token's loss weighted by ρ = π_old / π_sampler (Yao et al. 2025, "Your Efficient RL Framework
Secretly Brings You Off-Policy RL Training"; the peers' `tis`/`icepop`/rollout correction).
Unbounded ρ has unbounded variance, so it is bounded at `threshold`:

- level "token": ρ_t = exp(old_t − sampler_t) for each response token;
  level "sequence": one ρ per sequence, exp(Σ_t (old_t − sampler_t)), given to all of its tokens;
- mode "truncate" (TIS): min(ρ, threshold); mode "mask" (MIS, IcePop): ρ where ρ ≤ threshold,
  else 0 (the token or sequence is left out of the gradient).

The weights are constants (no gradient flows through them) that multiply the per-token loss.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from alignlab.ops.stats import masked_mean

Level = Literal["token", "sequence"]
Mode = Literal["truncate", "mask"]


def importance_weights(old_logps: Tensor, sampler_logps: Tensor, mask: Tensor, *, level: Level, mode: Mode,
                       threshold: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Weights `[B, T]` (0 off the mask) and their statistics: the mean raw ratio, the mean weight,
    and the share of tokens (or sequences) the bound changed."""
    keep = mask.to(torch.bool)
    log_ratio = (old_logps.detach().float() - sampler_logps.detach().float()).masked_fill(~keep, 0.0)
    if level == "sequence":
        log_ratio = log_ratio.sum(-1, keepdim=True).expand_as(log_ratio)
    ratio = log_ratio.exp()
    over = ratio > threshold
    weights = ratio.clamp(max=threshold) if mode == "truncate" else ratio.masked_fill(over, 0.0)
    weights = weights.masked_fill(~keep, 0.0)
    rows = keep.any(-1)
    changed = over[:, 0][rows].float().mean() if level == "sequence" else masked_mean(over.float(), keep)
    stats = {"ratio_mean": masked_mean(ratio, keep), "weight_mean": masked_mean(weights, keep), "bounded_share": changed}
    return weights, stats
